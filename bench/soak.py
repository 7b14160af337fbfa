"""Soak: does one gateway's memory stay flat over a million requests?

Starts the bench upstream with a short delay (so throughput is high) and ONE gateway (every
feature on, as in bench/run.py: in-memory limiter, or `--target redis` with a private
redis-server), pinned as bench/run.py pins them, then drives it with wrk (64 connections) in
phases of --phase-s seconds, alternating plain and streamed requests, until --requests are done
or --max-s have passed. After each phase (every ~10 s) it samples the gateway's RSS (VmRSS from
/proc/PID/status); the first sample past --warmup requests is the baseline. At the end: RSS after
warm-up and at the end, the growth (MiB, and KiB per 100k requests), VmHWM, the /metrics series
count at start and end, the access-log lines written to the log file (the gateway's stderr is a
file, never a pipe) and a verdict: "no growth" when RSS grew less than --max-growth-mib after
warm-up and did not rise at every 100k checkpoint, else "GROWS". Writes the run to
bench/results/soak.json under the target's name (the other target's last run is kept).

    python bench/soak.py                                  # 1,000,000 requests, memory limiter
    python bench/soak.py --requests 300000 --target redis
    python bench/soak.py --requests 20000 --max-s 30      # a quick check of the harness
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import load
import stack
from processes import (
    EXIT_NO_TOOL,
    ROOT,
    Children,
    MissingTool,
    Pinning,
    ensure_tool,
    peak_rss_mib,
    raise_fd_limit,
    rss_mib,
)

DEFAULT_JSON = ROOT / "bench" / "results" / "soak.json"
CHECKPOINT = 100_000  # requests between the checkpoints of the verdict and the per-100k figure


@dataclass
class Sample:
    t_s: float
    requests: int
    rss_mib: float
    hwm_mib: float
    fds: int  # open file descriptors: sockets that were never closed would pile up here
    series: int  # /metrics sample lines


@dataclass
class Soak:
    target: str
    requested: int
    requests: int = 0
    plain: int = 0
    streams: int = 0
    non2xx: int = 0
    socket_errors: int = 0
    elapsed_s: float = 0.0
    phases: int = 0
    samples: list[Sample] = field(default_factory=list)
    idle_rss_mib: float = 0.0
    new_series: list[str] = field(default_factory=list)  # at the end, not before the load
    access_log_lines: int = 0
    log_bytes: int = 0
    stderr: str = ""
    redis: dict[str, Any] = field(default_factory=dict)
    stopped_by: str = ""
    error: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="See docs/performance.md, 'Soak: memory over a million requests'.",
    )
    parser.add_argument("--requests", type=int, default=1_000_000, help="stop after (1000000)")
    parser.add_argument("--max-s", type=float, default=600.0, help="or after seconds (600)")
    parser.add_argument("--target", choices=("memory", "redis"), default="memory", help="limiter")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--phase-s", type=int, default=10, help="seconds per wrk phase (10)")
    parser.add_argument(
        "--modes",
        default="plain,stream",
        help="phases cycle through these (plain,stream); one of them for a single kind",
    )
    parser.add_argument("--delay-ms", type=float, default=1.0, help="upstream latency (1)")
    parser.add_argument("--chunks", type=int, default=5, help="content chunks per stream (5)")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=1.0, help="upstream gap between chunks (1)"
    )
    parser.add_argument(
        "--warmup", type=int, default=50_000, help="requests before the baseline RSS (50000)"
    )
    parser.add_argument(
        "--max-growth-mib", type=float, default=5.0, help="verdict threshold after warm-up (5)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="bench/results/soak.json")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or not set(args.modes) <= {"plain", "stream"}:
        parser.error("--modes: plain, stream or both")
    if args.requests < 1 or args.max_s <= 0 or args.phase_s < 1 or args.connections < 1:
        parser.error("--requests, --max-s, --phase-s and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through `finally`
    raise_fd_limit()
    pinning = Pinning.plan(not args.no_pin)
    if pinning.active:
        os.sched_setaffinity(0, pinning.load)
    try:
        wrk = ensure_tool("wrk", "wrk")
        redis_server = ensure_tool("redis-server", "redis-server") if args.target == "redis" else ""
    except MissingTool as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return EXIT_NO_TOOL
    print(f"pinning: {pinning.describe()}")
    print(
        f"soak: {args.requests:,} requests or {args.max_s:g} s, gateway-{args.target}, "
        f"{args.connections} connections, {args.phase_s} s phases of {'/'.join(args.modes)}; "
        f"upstream delay {args.delay_ms:g} ms, {args.chunks} chunks {args.chunk_delay_ms:g} ms "
        "apart",
        flush=True,
    )

    workdir = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    children = Children(workdir)
    soak = Soak(args.target, args.requests)
    try:
        upstream = stack.start_upstream(
            children, pinning, args.delay_ms, args.chunks, args.chunk_delay_ms
        )
        redis_url = None
        if args.target == "redis":
            redis_url = stack.start_redis(children, pinning, redis_server)
        gateway = stack.start_gateway(children, pinning, upstream, args.target, redis_url)
        drive(args, pinning, wrk, gateway, redis_url, soak)
    except Exception as exc:  # a child failed, wrk hung, the gateway died: report what we have
        soak.error = f"{type(exc).__name__}: {exc}".split("\n")[0]
    except BaseException:  # interrupted (SIGTERM, Ctrl-C): nothing worth keeping
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        children.stop_all()

    summary = summarise(soak, args)
    print_summary(soak, summary)
    write_json(args.json, args, soak, summary)
    print(f"\nJSON: {args.json} (key {args.target!r})")
    if soak.error or soak.non2xx or soak.socket_errors:
        print(f"error: {soak.error or 'some requests failed'}", file=sys.stderr)
        print(f"logs and generated configs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)  # the access log alone: ~200 MB per 1M requests
    return 0


def drive(
    args: argparse.Namespace,
    pinning: Pinning,
    wrk: str,
    gateway: stack.Target,
    redis_url: str | None,
    soak: Soak,
) -> None:
    pid = gateway.child.pid
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    soak.stderr = os.readlink(f"/proc/{pid}/fd/2")
    soak.idle_rss_mib = round(rss_mib(pid), 1)
    series = metrics_names(gateway.port)
    if redis_url:
        soak.redis["start"] = redis_stats(redis_url)
    rate = {mode: 0.0 for mode in args.modes}
    started = time.monotonic()
    sample(soak, gateway, 0.0)
    while True:
        elapsed = time.monotonic() - started
        left = args.requests - soak.requests
        if left <= 0 or elapsed >= args.max_s - 1:
            soak.stopped_by = "requests" if left <= 0 else "time"
            break
        mode = args.modes[soak.phases % len(args.modes)]
        seconds = min(args.phase_s, int(args.max_s - elapsed))
        if rate[mode]:  # the last phase: only as long as the requests still to do need
            seconds = min(seconds, max(1, math.ceil(left / rate[mode])))
        result = load.run_wrk(
            wrk,
            url,
            mode=mode,
            key=gateway.key,
            connections=args.connections,
            duration_s=seconds,
            prefix=pinning.prefix(pinning.load),
        )
        if not gateway.child.alive():
            raise RuntimeError(f"the gateway exited ({gateway.child.proc.returncode})")
        soak.phases += 1
        soak.requests += result.requests
        soak.plain += result.requests if mode == "plain" else 0
        soak.streams += result.requests if mode == "stream" else 0
        soak.non2xx += result.non2xx
        soak.socket_errors += result.socket_errors
        rate[mode] = result.rps
        s = sample(soak, gateway, time.monotonic() - started)
        print(
            f"  {s.t_s:6.0f} s  {soak.requests:>9,} requests  {mode:6} {result.rps:6.0f}/s  "
            f"RSS {s.rss_mib:6.1f} MiB  HWM {s.hwm_mib:6.1f} MiB  fds {s.fds:4}  "
            f"series {s.series}",
            flush=True,
        )
    soak.elapsed_s = round(time.monotonic() - started, 1)
    time.sleep(1)  # the usage store's flush and the last access-log lines
    if redis_url:
        soak.redis["end"] = redis_stats(redis_url)
    sample(soak, gateway, time.monotonic() - started)
    soak.new_series = sorted(metrics_names(gateway.port) - series)
    soak.log_bytes = gateway.child.log.stat().st_size
    with gateway.child.log.open("rb") as f:
        soak.access_log_lines = sum(1 for line in f if b" gateway.access: " in line)


def sample(soak: Soak, gateway: stack.Target, t_s: float) -> Sample:
    pid = gateway.child.pid
    s = Sample(
        round(t_s, 1),
        soak.requests,
        round(rss_mib(pid), 2),
        round(peak_rss_mib(pid), 2),
        len(os.listdir(f"/proc/{pid}/fd")),
        metrics_series(gateway.port),
    )
    soak.samples.append(s)
    return s


def metrics_series(port: int) -> int:
    """Sample lines in the gateway's /metrics: every label set of every metric."""
    return len(metrics_names(port))


def metrics_names(port: int) -> set[str]:
    """Every series of the gateway's /metrics: name and labels, without the value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {line.rpartition(" ")[0] for line in text.splitlines() if line[:1] not in ("", "#")}


def redis_stats(url: str) -> dict[str, int]:
    """Keys and memory of the private redis-server: the Redis limiter's state lives there."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        used = client.info("memory")["used_memory"]
        return {"keys": int(client.dbsize()), "used_memory_bytes": int(used)}
    finally:
        client.close()


def summarise(soak: Soak, args: argparse.Namespace) -> dict[str, Any]:
    after = [s for s in soak.samples if s.requests >= args.warmup]
    if len({s.requests for s in after}) < 2:
        return {"verdict": "too short: fewer than two samples after warm-up"}
    base, end = after[0], after[-1]
    growth = end.rss_mib - base.rss_mib
    span = end.requests - base.requests
    # the first sample past each 100k boundary
    checkpoints: list[Sample] = []
    for s in after:
        if not checkpoints or s.requests // CHECKPOINT > checkpoints[-1].requests // CHECKPOINT:
            checkpoints.append(s)
    if checkpoints[-1].requests == end.requests:
        checkpoints[-1] = end  # the last sample, taken after the load stopped
    else:
        checkpoints.append(end)
    # a leak rises at every checkpoint; the allocator's arenas settle (judged over 300k+)
    rising = len(checkpoints) >= 4 and all(
        b.rss_mib > a.rss_mib for a, b in itertools.pairwise(checkpoints)
    )
    grows = growth >= args.max_growth_mib or rising
    return {
        "baseline": asdict(base),
        "end": asdict(end),
        "growth_mib": round(growth, 2),
        "growth_kib_per_100k": round(growth * 1024 * CHECKPOINT / span, 1) if span else None,
        "vmhwm_mib": end.hwm_mib,
        "checkpoints": [(s.requests, s.rss_mib) for s in checkpoints],
        "rises_at_every_checkpoint": rising,
        "verdict": "GROWS" if grows else "no growth",
    }


def print_summary(soak: Soak, summary: dict[str, Any]) -> None:
    print(f"\ngateway-{soak.target}: {soak.requests:,} requests in {soak.elapsed_s:g} s", end="")
    print(f" ({soak.plain:,} plain, {soak.streams:,} streamed; stopped by {soak.stopped_by})")
    print(f"  failures: {soak.non2xx} non-2xx, {soak.socket_errors} socket errors")
    print(f"  RSS idle (before load): {soak.idle_rss_mib:.1f} MiB")
    if "baseline" in summary:
        base, end = summary["baseline"], summary["end"]
        print(f"  RSS after warm-up: {base['rss_mib']:.1f} MiB at {base['requests']:,} requests")
        print(f"  RSS at the end:    {end['rss_mib']:.1f} MiB at {end['requests']:,} requests")
        per_100k = summary["growth_kib_per_100k"]
        print(
            f"  growth: {summary['growth_mib']:+.2f} MiB, "
            f"{'-' if per_100k is None else f'{per_100k:+.1f}'} KiB per 100k requests; "
            f"VmHWM {summary['vmhwm_mib']:.1f} MiB"
        )
        marks = ", ".join(f"{n // 1000}k: {mib:.1f}" for n, mib in summary["checkpoints"])
        print(f"  RSS (MiB) at checkpoints: {marks}")
    if soak.samples:
        first, last = soak.samples[0], soak.samples[-1]
        print(f"  /metrics series: {first.series} at start, {last.series} at the end", end="")
        names = collections.Counter(name.partition("{")[0] for name in soak.new_series)
        print(
            "; new: " + ", ".join(f"{n} ({k})" for n, k in sorted(names.items())) if names else ""
        )
        print(f"  open fds: {first.fds} at start, {last.fds} at the end")
    print(
        f"  access log: {soak.access_log_lines:,} lines, {soak.log_bytes / 2**20:.1f} MiB, "
        f"written to {soak.stderr}"
    )
    if soak.redis:
        print(f"  redis-server: {soak.redis.get('start')} at start, {soak.redis.get('end')} at end")
    if soak.error:
        print(f"  error: {soak.error}")
    print(f"verdict: {summary['verdict']}")


def write_json(path: Path, args: argparse.Namespace, soak: Soak, summary: dict[str, Any]) -> None:
    """One entry per target in the same file: a Redis run keeps the last memory run, and so on."""
    runs: dict[str, Any] = {}
    if path.exists():
        try:
            runs = json.loads(path.read_text())
        except ValueError:
            runs = {}
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    runs[soak.target] = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings,
        "summary": summary,
        "run": asdict(soak),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
