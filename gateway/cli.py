"""`inference-gateway ...` (also `python -m gateway`): serve, check-config, keys, fake, demo."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gateway import keys_cli, logs
from gateway.config import ConfigError, Settings, config_path, load_settings
from gateway.config_edit import KeyEditError, add_to_config, add_to_keys_file
from gateway.keys import hash_key, new_key
from gateway.redact import masked_url

logger = logging.getLogger("gateway")

EXIT_CONFIG = 2


def _load_or_exit(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {exc.source}: {problem}", file=sys.stderr)
            if "WANDB_API_KEY" in problem:
                print(
                    "    Set it: export WANDB_API_KEY=<your W&B API key> "
                    "(no W&B account? `make demo` runs against the bundled fake upstream)",
                    file=sys.stderr,
                )
        raise SystemExit(EXIT_CONFIG) from None


def cmd_serve(args: argparse.Namespace) -> None:
    from uvicorn.supervisors import Multiprocess

    from gateway.http_guard import Bounds, GuardedConfig

    path = config_path(args.config)
    settings = _load_or_exit(path)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    if args.workers > 1 and settings.limiter.backend == "memory":
        logger.warning(
            "%d workers with limiter.backend=memory: each worker enforces the limits on its "
            "own, so the account may see up to %d times its max_concurrency; use the redis backend",
            args.workers,
            args.workers,
        )
    common = {
        "host": host,
        "port": port,
        "access_log": False,  # the gateway writes its own access log, one line per request
        "log_level": args.log_level,
        "timeout_graceful_shutdown": round(settings.server.shutdown_grace_s),
    }
    # The HTTP server's own bounds (header size and count, timeouts, connections): see
    # gateway.http_guard. Under --workers N they reach each worker inside the pickled Config.
    bounds = Bounds.of(settings.server)
    if args.workers > 1:
        # Each worker is a fresh process: it finds its config and log level in its environment.
        os.environ["GATEWAY_CONFIG"] = str(path)
        os.environ[logs.LEVEL_ENV] = args.log_level.upper()
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Workers import prometheus-client after this is set: their samples go to files
            # there, and /metrics sums them. A fresh folder, so no old run's counts add up.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
        # What uvicorn.run does for workers, with our Config (uvicorn.run builds its own).
        config = GuardedConfig(
            "gateway.app:app_from_env", bounds, factory=True, workers=args.workers, **common
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        from gateway.app import create_app
        from gateway.lifecycle import GracefulServer, Lifecycle

        lifecycle = Lifecycle()
        grace = settings.server.shutdown_grace_s
        # uvicorn's own grace covers what is left after ours (see gateway.lifecycle).
        common["timeout_graceful_shutdown"] = 5
        config = GuardedConfig(create_app(settings, lifecycle), bounds, **common)
        GracefulServer(config, lifecycle, grace).run()


def cmd_check_config(args: argparse.Namespace) -> None:
    path = config_path(args.config)
    s = _load_or_exit(path)
    print(f"{path}: OK")
    print(f"upstream: {s.upstream.base_url} (retries {s.upstream.retries})")
    limiter = s.limiter
    where = f" at {masked_url(limiter.redis_url)}" if limiter.backend == "redis" else ""
    print(f"limiter: {limiter.backend}{where}, queue timeout {limiter.queue_timeout_s:g}s")
    print(f"accounts ({len(s.accounts)}):")
    for a in s.accounts.values():
        print(f"  {a.name}: api_key {_redact(a.api_key)}, max_concurrency {a.max_concurrency}")
    print(f"tenants ({len(s.tenants)}):")
    for t in s.tenants.values():
        models = "all" if t.models is None else ", ".join(sorted(t.models))
        print(
            f"  {t.name}: {len(t.key_hashes)} key(s), account {t.account}, project {t.project}, "
            f"max_concurrency {t.max_concurrency}, models: {models}"
        )
    print(f"models ({len(s.models)}):")
    for m in s.models.values():
        price = (
            f"${m.input_usd_per_mtok:g} in / ${m.output_usd_per_mtok:g} out per 1M tokens"
            if m.input_usd_per_mtok is not None and m.output_usd_per_mtok is not None
            else "no price"
        )
        aliases = f", aliases: {', '.join(m.aliases)}" if m.aliases else ""
        print(f"  {m.id}: {price}{aliases}")


def _redact(secret: str) -> str:
    return f"<set, {len(secret)} chars>" if secret else "<empty>"


def cmd_keys_new(args: argparse.Namespace) -> None:
    key = new_key()
    digest = hash_key(key)
    if args.tenant:
        path = config_path(args.config)
        try:
            changed = add_to_config(path, args.tenant, digest)
        except KeyEditError as exc:
            print(f"keys new: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        print(f"key:  {key}")
        print(f"hash: {digest}")
        print(
            f"Added to tenants.{args.tenant} in {changed}. Running gateways pick it up within "
            "seconds (or send SIGHUP). The key is shown only now: keep it."
        )
        return
    if args.save:
        file = Path(args.save)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            add_to_keys_file(file, digest, mode=0o600)  # locked, atomic, never world-readable
        except (OSError, KeyEditError) as exc:
            print(f"keys new: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
    print(f"key:  {key}")
    print(f"hash: {digest}")
    if args.save:
        print(f"The hash was added to {args.save}. The key is shown only now: keep it.")
    else:
        print("Put the hash line in the tenant's `keys` list. The key is shown only now.")


def cmd_fake_upstream(args: argparse.Namespace) -> None:
    from gateway.testing import fake_upstream

    settings = fake_upstream.default_settings()
    if args.key:
        settings.api_keys = dict.fromkeys(args.key)
    settings.concurrency = args.concurrency
    settings.delay_s = args.delay_s
    settings.chunk_delay_s = args.chunk_delay_s
    fake_upstream.run(settings, args.host, args.port)


def cmd_demo(args: argparse.Namespace) -> None:
    """The fake upstream in a child process, the gateway in this one, and how to call it."""
    # Both ports first, before any file is written or process started: a second demo must
    # leave the running one's key file alone.
    _refuse_busy_ports(
        (args.host, args.port, "the gateway, PORT"),
        ("127.0.0.1", args.upstream_port, "the fake upstream, DEMO_UPSTREAM_PORT"),
    )
    keys_file = Path(args.keys_file)
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    keys_file.write_text(hash_key(key) + "\n")
    keys_file.chmod(0o600)
    env = {**os.environ, "FAKE_UPSTREAM_URL": f"http://127.0.0.1:{args.upstream_port}/v1"}
    fake = subprocess.Popen(
        [sys.executable, "-m", "gateway", "fake-upstream", "--port", str(args.upstream_port)]
    )
    try:
        _wait_http(f"http://127.0.0.1:{args.upstream_port}/_fake/stats", fake)
        os.environ.update(env)
        print(demo_instructions(f"http://{args.host}:{args.port}/v1", key), flush=True)
        serve = argparse.Namespace(
            config=args.config,
            host=args.host,
            port=args.port,
            workers=1,
            log_level=args.log_level,
        )
        cmd_serve(serve)
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def _refuse_busy_ports(*ports: tuple[str, int, str]) -> None:
    """Exit with one line naming every (host, port, whose) that a bind test finds taken."""
    problems = []
    if len({port for _, port, _ in ports}) < len(ports):
        problems.append(f"the gateway and the fake upstream cannot share port {ports[0][1]}")
    for host, port, whose in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # As uvicorn and aiohttp bind: a port left in TIME_WAIT is free, a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                problems.append(f"port {port} on {host} ({whose}) is in use")
    if problems:
        print(
            f"demo: {'; '.join(problems)}. Another `make demo` running? Stop it, or choose "
            "free ports: make demo PORT=... DEMO_UPSTREAM_PORT=...",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG)


def demo_python(base: str, key: str) -> str:
    """The Python the demo prints: a chat, structured output and a tool call, as printed."""
    return f"""\
from openai import OpenAI
from pydantic import BaseModel

client = OpenAI(base_url="{base}", api_key="{key}")
hello = [{{"role": "user", "content": "Hello"}}]
print(client.chat.completions.create(model="gpt-4o-mini", messages=hello))

class City(BaseModel):  # structured output: the fake answers from the JSON schema
    name: str
    population: int

done = client.chat.completions.parse(model="gpt-4o-mini", messages=hello, response_format=City)
print(done.choices[0].message.parsed)

weather = {{"type": "function", "function": {{"name": "get_weather", "parameters": {{
    "type": "object", "properties": {{"city": {{"type": "string"}}}}, "required": ["city"]}}}}}}
reply = client.chat.completions.create(model="gpt-4o-mini", messages=hello, tools=[weather])
print(reply.choices[0].message.tool_calls)  # then send a "tool" message back: a text answer
"""


def demo_instructions(base: str, key: str) -> str:
    """What the demo prints once both servers answer."""
    return f"""
Demo gateway on {base}, in front of a fake W&B upstream (no account, no credits spent).
Your demo key (new each `make demo`): {key}

  curl {base}/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

Or in Python (pip install openai): a chat, structured output and a tool call.

{demo_python(base, key)}"""


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the fake upstream exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the fake upstream did not answer on {url}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-gateway",
        description="OpenAI-compatible gateway in front of W&B Inference.",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML file (default: $GATEWAY_CONFIG, config/gateway.yaml)")
    serve.add_argument("--host", help="bind address (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config and print a summary")
    check.add_argument("--config", help="YAML file (default: $GATEWAY_CONFIG, config/gateway.yaml)")
    check.set_defaults(func=cmd_check_config)

    keys = sub.add_parser("keys", help="gateway keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_new = keys_sub.add_parser("new", help="print a fresh key and its hash")
    keys_new.add_argument("--save", metavar="FILE", help="also append the hash to a keys_file")
    keys_new.add_argument("--tenant", help="also add the hash to this tenant in the config")
    keys_new.add_argument("--config", help="with --tenant: the YAML file to edit")
    keys_new.set_defaults(func=cmd_keys_new)
    keys_cli.add_parsers(keys_sub)  # create, list, show, revoke, rotate: the admin API

    fake = sub.add_parser("fake-upstream", help="run the bundled W&B simulator")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9090)
    fake.add_argument("--concurrency", type=int, default=8, help="per-key in-flight limit")
    fake.add_argument(
        "--key", action="append", help="accepted W&B key (repeatable; default fake-wandb-key)"
    )
    fake.add_argument("--delay-s", type=float, default=0.0, help="delay before each answer")
    fake.add_argument("--chunk-delay-s", type=float, default=0.0, help="delay between chunks")
    fake.set_defaults(func=cmd_fake_upstream)

    demo = sub.add_parser("demo", help="fake upstream + gateway, no W&B account needed")
    demo.add_argument("--config", default="config/demo.yaml")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--upstream-port", type=int, default=9090)
    demo.add_argument("--keys-file", default="config/demo.keys")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    args.func(args)
