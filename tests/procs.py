"""Real processes for tests: free ports, the fake upstream, gateways and redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.keys import hash_key
from tests.poll import until_sync

ROOT = Path(__file__).resolve().parent.parent

# Test keys: their hashes live only in configs the tests write.
SEARCH_KEY = "sk-gw-test-search"
ADS_KEY = "sk-gw-test-ads"
LIMITED_KEY = "sk-gw-test-limited"
WANDB_KEY = "wandb-test-key-0123456789"  # what the fake upstream accepts
OTHER_WANDB_KEY = "wandb-test-key-other"

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA70 = "meta-llama/Llama-3.3-70B-Instruct"
PHI = "microsoft/Phi-4-mini-instruct"
RETIRED = "deepseek-ai/DeepSeek-R1-0528"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(proc: subprocess.Popen[bytes]) -> None:
    """Raise if the process exited: a wait for it to answer ends there, not at its timeout."""
    if proc.poll() is not None:
        raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    def answers() -> bool:
        alive(proc)
        httpx.get(url, timeout=1.0)
        return True

    until_sync(answers, timeout_s, f"an answer on {url}", ignore=httpx.TransportError)


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(args: list[str], port: int, health: str, name: str) -> Proc:
    log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + health, proc)
    except (RuntimeError, AssertionError):  # it exited, or never answered
        proc.kill()
        raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')}") from None
    return Proc(proc, url, log)


def start_fake(concurrency: int = 4, keys: tuple[str, ...] = (WANDB_KEY, OTHER_WANDB_KEY)) -> Proc:
    port = free_port()
    args = ["fake-upstream", "--port", str(port), "--concurrency", str(concurrency)]
    for key in keys:
        args += ["--key", key]
    return spawn(args, port, "/_fake/stats", "fake-upstream")


def base_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """The test configuration: two tenants on one account, one restricted tenant, aliases."""
    config: dict[str, Any] = {
        "upstream": {
            "base_url": upstream_url + "/v1",
            "retries": 2,
            "backoff_base_s": 0.02,
            "backoff_max_s": 0.1,
            "read_timeout_s": 30,
        },
        "limiter": {"backend": "memory", "queue_timeout_s": 10},
        "accounts": {"main": {"api_key": WANDB_KEY, "max_concurrency": 4}},
        "tenants": {
            "search": {
                "keys": [hash_key(SEARCH_KEY)],
                "account": "main",
                "project": "acme/search",
                "max_concurrency": 4,
                "projects": ["acme/search-eval"],
            },
            "ads": {
                "keys": [hash_key(ADS_KEY)],
                "account": "main",
                "project": "acme/ads",
                "max_concurrency": 2,
            },
            "limited": {
                "keys": [hash_key(LIMITED_KEY)],
                "account": "main",
                "project": "acme/limited",
                "max_concurrency": 1,
                "models": ["gpt-4o-mini"],
            },
        },
        "models": {
            LLAMA: {
                "input_usd_per_mtok": 0.22,
                "output_usd_per_mtok": 0.22,
                "aliases": ["gpt-4o-mini"],
            },
            PHI: {"input_usd_per_mtok": 0.08, "output_usd_per_mtok": 0.35},
        },
    }
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def start_gateway(config: dict[str, Any], *extra: str, env: dict[str, str] | None = None) -> Proc:
    port = free_port()
    fd, path = tempfile.mkstemp(prefix="gateway-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    args = ["serve", "--config", path, "--port", str(port), *extra]
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return spawn(args, port, "/healthz", "gateway")
    finally:
        os.environ.clear()
        os.environ.update(old)


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A private redis-server on a free port (or this one), stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `make test` installs Debian's package")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listens() -> bool:
        alive(proc)
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True

    try:
        until_sync(listens, 10, f"redis-server listening on {port}", ignore=OSError)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
