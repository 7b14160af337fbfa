"""The fuzz run's processes: the bundled fake W&B upstream and one gateway in front of it, on free
ports of 127.0.0.1, with a config and keys made fresh for the run.

Both children are told by the kernel to stop when the runner dies (PR_SET_PDEATHSIG), so not
even a killed runner leaves one behind; `Stack.close()` stops them in order otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.keys import hash_key, new_key

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import processes
from processes import die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA70 = "meta-llama/Llama-3.3-70B-Instruct"
PHI = "microsoft/Phi-4-mini-instruct"
RETIRED = "deepseek-ai/DeepSeek-R1-0528"  # priced in the config, gone upstream (404)
ALIASES = {"gpt-4o-mini": LLAMA, "gpt-4o": LLAMA70}
MEMORY_LIMIT = 4 * 1024**3  # address space of each child


@dataclass(frozen=True)
class Keys:
    """The run's secrets: none outlives it, and no answer may hold one."""

    wandb: str = field(default_factory=lambda: "wandb-fuzz-" + secrets.token_hex(24))
    tenant: str = field(default_factory=new_key)
    restricted: str = field(default_factory=new_key)  # a tenant allowed LLAMA only
    admin: str = field(default_factory=new_key)

    def all(self) -> list[str]:
        return [self.wandb, self.tenant, self.restricted, self.admin]


def config(upstream: str, keys: Keys) -> dict[str, Any]:
    """Two tenants on one account, aliases, a model retired upstream, an admin key."""
    return {
        "upstream": {
            "base_url": upstream + "/v1",
            "retries": 2,
            "backoff_base_s": 0.02,
            "backoff_max_s": 0.1,
            "read_timeout_s": 20,
        },
        "limiter": {"backend": "memory", "queue_timeout_s": 5},
        "server": {"admin_keys": [hash_key(keys.admin)], "reload_poll_s": 0},
        "accounts": {"main": {"api_key": keys.wandb, "max_concurrency": 32}},
        "tenants": {
            "fuzz": {
                "keys": [hash_key(keys.tenant)],
                "account": "main",
                "project": "fuzz/gateway",
                "max_concurrency": 16,
            },
            "restricted": {
                "keys": [hash_key(keys.restricted)],
                "account": "main",
                "project": "fuzz/restricted",
                "max_concurrency": 4,
                "models": [LLAMA],
            },
        },
        "models": {
            LLAMA: {
                "input_usd_per_mtok": 0.22,
                "output_usd_per_mtok": 0.22,
                "aliases": ["gpt-4o-mini"],
            },
            LLAMA70: {
                "input_usd_per_mtok": 0.71,
                "output_usd_per_mtok": 0.71,
                "aliases": ["gpt-4o"],
            },
            PHI: {"input_usd_per_mtok": 0.08, "output_usd_per_mtok": 0.35},
            RETIRED: {"input_usd_per_mtok": 1.35, "output_usd_per_mtok": 5.40},
        },
    }


def allowed_models() -> list[str]:
    """What the `fuzz` tenant may name: every configured model and alias."""
    return [LLAMA, LLAMA70, PHI, *ALIASES]


def _server_child() -> None:
    die_with_parent()
    # A server that grows without bound fails by itself (MemoryError), a finding the run
    # reports, instead of taking the machine with it.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@dataclass
class Child(processes.Child):  # the bench's, with where it answers
    url: str = ""


def _wait(child: Child, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            break
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(child.url + path, timeout=1),
        ):
            return
        time.sleep(0.1)
    child.stop()
    log = child.log.read_text(errors="replace")[-4000:]
    raise RuntimeError(f"{child.name} did not start (log {child.log}):\n{log}")


def spawn(name: str, args: list[str], health: str, workdir: Path) -> Child:
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args, "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_server_child,
            start_new_session=True,  # Ctrl-C reaches the runner, which stops them in order
        )
    child = Child(name, proc, log, f"http://127.0.0.1:{port}")
    _wait(child, health)
    return child


@dataclass
class Stack:
    """The fake upstream and the gateway, started in that order and stopped in the other."""

    workdir: Path
    keys: Keys
    children: list[Child] = field(default_factory=list)

    def start(self) -> str:
        fake = spawn(
            "fake-upstream",
            ["fake-upstream", "--concurrency", "64", "--key", self.keys.wandb],
            "/_fake/stats",
            self.workdir,
        )
        self.children.append(fake)
        path = self.workdir / "gateway.yaml"
        path.write_text(json.dumps(config(fake.url, self.keys), indent=1))  # JSON is YAML
        path.chmod(0o600)
        gateway = spawn("gateway", ["serve", "--config", str(path)], "/healthz", self.workdir)
        self.children.append(gateway)
        return gateway.url

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def exited(self) -> list[str]:
        """The children that exited by themselves: a crash is a finding."""
        return [
            f"{c.name} exited with {c.proc.returncode}"
            for c in self.children
            if c.proc.poll() is not None
        ]
