"""`make bench`: the gateway's cost, side by side with calling the upstream directly.

Starts the bench upstream (bench/upstream.py), a bare pass-through (bench/bare.py: the floor), a
gateway with the in-memory limiter, a private redis-server and a gateway with the Redis limiter,
then drives each with wrk: {direct, bare, memory, redis} x {plain, stream} x connections, each
for --duration seconds after --warmup seconds. Scenarios run interleaved (for each mode and
connection count: direct, bare, memory, redis), so drift on the machine touches all alike. With
2+ cores the gateways (and bare) get core 0 and everything else (upstream, wrk, redis, this
script's TTFB probe) the other cores.

Per scenario: req/s and latency percentiles (wrk, to the end of each response), time to first
byte for streams (a probe on one more connection, up to --probe-requests sequential streams while
wrk runs), the gateway's CPU per request (/proc/PID/stat utime+stime over the run / completed
requests) and its peak RSS (VmHWM, reset before each scenario). Prints a table, the issue's goals
met or missed, and writes the same as JSON. Only 127.0.0.1; every child is stopped at the end.

    python bench/run.py                      # the full run: about 5 minutes
    python bench/run.py --smoke              # seconds: what the test suite runs
    python bench/run.py --only memory --modes plain --connections 64 --duration 20 --profile
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import load
import pyspy
import report
import stack
from processes import (
    EXIT_NO_TOOL,
    ROOT,
    Children,
    CpuSnapshot,
    CpuWindow,
    MissingTool,
    Pinning,
    cpu_seconds,
    die_with_parent,
    ensure_tool,
    machine_busy_pct,
    peak_rss_mib,
    raise_fd_limit,
    reset_peak_rss,
    rss_mib,
)

TARGETS = ("direct", "bare", "memory", "redis", "traced")
MODES = ("plain", "stream")
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"


def _list(kind: type, allowed: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        items = [kind(part.strip()) for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        if allowed is not None and not set(items) <= set(allowed):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        if kind is int and min(items) < 1:
            raise argparse.ArgumentTypeError("connection counts must be positive")
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="See docs/performance.md for the method and the latest results.",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each (2)")
    parser.add_argument(
        "--connections", type=_list(int), default=[1, 16, 64, 256], help="1,16,64,256"
    )
    parser.add_argument("--delay-ms", type=float, default=50.0, help="upstream latency (50)")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream (20)")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=5.0, help="upstream gap between chunks (5)"
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        help="add 0..J ms (uniform) to each upstream delay; 0 (the default) moves in waves",
    )
    parser.add_argument(
        "--only",
        type=_list(str, TARGETS),
        default=list(TARGETS),
        help="direct,bare,memory,redis,traced",
    )
    parser.add_argument("--modes", type=_list(str, MODES), default=list(MODES), help="plain,stream")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="where to write (bench/results/latest.json)"
    )
    parser.add_argument(
        "--probe-requests", type=int, default=50, help="TTFB probe: streams per scenario (50)"
    )
    parser.add_argument(
        "--retry-noisy",
        type=int,
        default=1,
        help="measure a scenario again (up to N times) when other processes took over "
        f"{report.NOISE_LIMIT_PCT:g}%% of a benchmark core meanwhile; keep the quietest (1)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy each measured gateway scenario; summaries go beside --json "
        "(profiling slows the gateway: such a run's figures are not the table's)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile: also sample C frames (uvloop, httptools, syscalls)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the table and goals of an earlier run's JSON",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny budget for the test suite: 1 s per scenario, no warm-up, connections 1,4",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.connections, args.probe_requests = 1, 0, [1, 4], 5
        args.retry_noisy = 0
    if args.profile:
        args.retry_noisy = 0  # one profile per scenario, of the attempt in the table
    if args.duration < 1 or args.warmup < 0 or args.chunks < 1:
        parser.error("--duration >= 1, --warmup >= 0 and --chunks >= 1, please")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return reprint(args.report)
    # SIGTERM (a test timeout, Ctrl-C in make) unwinds through `finally`: children are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    pinning = Pinning.plan(not args.no_pin)
    if pinning.active:
        os.sched_setaffinity(0, pinning.load)  # the TTFB probe runs here, on the load side
    try:
        wrk = ensure_tool("wrk", "wrk")
        redis_server = ensure_tool("redis-server", "redis-server") if "redis" in args.only else ""
        profiler = pyspy.ensure_pyspy() if args.profile else None
    except MissingTool as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_NO_TOOL

    busy = machine_busy_pct()
    if busy > 15:
        print(
            f"warning: the machine is already {busy:.0f}% busy (% of one core) before the "
            "benchmark starts: other work will disturb the figures (see the 'foreign' fields)"
        )
    scenarios = len(args.only) * len(args.modes) * len(args.connections)
    budget_s = scenarios * (args.duration + args.warmup + 1.5) + 20  # more if re-measured
    print(f"pinning: {pinning.describe()}")
    print(
        f"{scenarios} scenarios x ({args.warmup} s warm-up + {args.duration} s): "
        f"about {budget_s / 60:.1f} min; upstream delay {args.delay_ms:g} ms "
        f"(+0..{args.jitter_ms:g} ms), "
        f"{args.chunks} chunks {args.chunk_delay_ms:g} ms apart",
        flush=True,
    )

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    children = Children(workdir)
    rows: list[report.Row] = []
    idle_rss: dict[str, float] = {}
    meta: dict[str, Any] = {}
    started = time.monotonic()
    try:
        try:
            upstream = stack.start_upstream(
                children, pinning, args.delay_ms, args.chunks, args.chunk_delay_ms, args.jitter_ms
            )
        except RuntimeError as exc:
            print(f"bench: the bench upstream did not start: {exc}", file=sys.stderr)
            children.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
            return 1
        targets: dict[str, stack.Target | None] = {}
        failures: dict[str, str] = {}
        for name in args.only:
            try:
                targets[name] = start_target(name, children, pinning, upstream, redis_server)
            except RuntimeError as exc:
                targets[name], failures[name] = None, str(exc)
                print(f"{report.TARGET_NAMES[name]} did not start: {exc}", file=sys.stderr)
        gateways = {n: t for n, t in targets.items() if t is not None and n != "direct"}
        for name, gateway in gateways.items():
            idle_rss[name] = round(rss_mib(gateway.child.pid), 1)
        idle_cpu = idle_cpu_pct(gateways, min(2.0, args.duration))

        for mode in args.modes:
            for conns in args.connections:
                for name in args.only:
                    chosen = targets[name]
                    if chosen is None:
                        row = report.Row(name, mode, conns, error=failures[name].split("\n")[0])
                    else:
                        row = measure_quietly(
                            args, pinning, wrk, profiler, children, chosen, mode, conns
                        )
                    rows.append(row)
                    print(report.progress(row), flush=True)

        time.sleep(1)
        meta = run_meta(args, pinning, wrk, idle_rss, targets, time.monotonic() - started)
        meta["idle_cpu_pct"] = idle_cpu
        meta["machine_busy_before_pct"] = busy
    except BaseException:  # interrupted (SIGTERM, Ctrl-C) or broken: nothing worth keeping
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        children.stop_all()

    report.compare(rows)
    found = report.goals(rows, idle_rss, args.chunks)
    report.print_results(rows, found)
    report.write_json(args.json, meta, rows, found)
    print(f"\nJSON: {args.json}")
    problems = [(r, p) for r in rows for p in r.problems()]
    for row, problem in problems:
        print(f"error: {report.TARGET_NAMES[row.target]} {row.mode} {row.conns}: {problem}")
    if problems:
        print(f"logs and generated configs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def reprint(path: Path) -> int:
    """`--report`: an earlier run's table and goals, measured again by nothing."""
    meta, rows = report.read_json(path)
    settings = meta["settings"]
    report.print_results(rows, report.goals(rows, meta["idle_rss_mib"], settings["chunks"]))
    return 0


def start_target(
    name: str, children: Children, pinning: Pinning, upstream: stack.Target, redis_server: str
) -> stack.Target:
    if name == "direct":
        return upstream
    if name == "bare":
        return stack.start_bare(children, pinning, upstream)
    redis_url = stack.start_redis(children, pinning, redis_server) if name == "redis" else None
    tracing_url = stack.start_otlp_sink(children, pinning) if name == "traced" else None
    return stack.start_gateway(children, pinning, upstream, name, redis_url, tracing_url)


def idle_cpu_pct(gateways: dict[str, stack.Target], seconds: float) -> dict[str, float]:
    """Each gateway's CPU while nothing calls it (background tasks: heartbeats, timers)."""
    before = {name: cpu_seconds(t.child.pid) for name, t in gateways.items()}
    time.sleep(seconds)
    return {
        name: round(100 * (cpu_seconds(t.child.pid) - before[name]) / seconds, 2)
        for name, t in gateways.items()
    }


def measure_quietly(
    args: argparse.Namespace,
    pinning: Pinning,
    wrk: str,
    profiler: str | None,
    children: Children,
    target: stack.Target,
    mode: str,
    conns: int,
) -> report.Row:
    """Measure; while other work on the machine disturbed it, measure again (--retry-noisy
    times at most) and keep the quietest attempt."""
    best = measure(args, pinning, wrk, profiler, children, target, mode, conns)
    for attempt in range(2, args.retry_noisy + 2):
        if best.error is not None or best.noise_pct <= report.NOISE_LIMIT_PCT:
            break
        print(f"  (other processes took {best.noise_pct:.0f}% of a core: measuring again)")
        time.sleep(2)
        row = measure(args, pinning, wrk, profiler, children, target, mode, conns)
        row.attempts = attempt
        if row.error is None and row.noise_pct < best.noise_pct:
            best = row
        best.attempts = attempt
    return best


def measure(
    args: argparse.Namespace,
    pinning: Pinning,
    wrk: str,
    profiler: str | None,
    children: Children,
    target: stack.Target,
    mode: str,
    conns: int,
) -> report.Row:
    row = report.Row(target.name, mode, conns)
    if not target.child.alive():
        row.error = f"{target.child.name} exited ({target.child.proc.returncode})"
        return row
    url = f"http://127.0.0.1:{target.port}/v1/chat/completions"

    def wrk_for(seconds: int) -> load.WrkResult:
        return load.run_wrk(
            wrk,
            url,
            mode=mode,
            key=target.key,
            connections=conns,
            duration_s=seconds,
            prefix=pinning.prefix(pinning.load),
        )

    gateway = None if target.name == "direct" else target.child.pid
    gateways = [c.pid for c in children.started if c.name.startswith("gateway")]
    load_side = [c.pid for c in children.started if not c.name.startswith("gateway")]
    upstream = next(c.pid for c in children.started if c.name == "upstream")
    probe: load.TtfbProbe | None = None
    spy: Profiling | None = None
    try:
        if args.warmup:
            wrk_for(args.warmup)
            time.sleep(0.3)  # let the warm-up's cut requests finish before counting CPU
        if gateway:
            reset_peak_rss(gateway)
        if mode == "stream" and args.probe_requests > 0:
            probe = load.TtfbProbe(target.port, target.key, args.probe_requests)
        spy = start_profiler(args, profiler, gateway, f"{target.name}-{mode}-{conns}")
        up0 = cpu_seconds(upstream)
        before = CpuSnapshot.take(gateway, gateways, load_side)
        if probe is not None:
            probe.start()
        result = wrk_for(args.duration)
        if probe is not None:
            probe.stop()
        window = CpuWindow.between(before, CpuSnapshot.take(gateway, gateways, load_side), pinning)
        up_cpu = cpu_seconds(upstream) - up0
        if spy is not None:
            finish_profiler(spy, args.duration)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        row.error = f"{type(exc).__name__}: {exc}".split("\n")[0]
        return row
    finally:  # nothing of this scenario may outlive it
        if probe is not None:
            probe.stop()
        if spy is not None and spy.proc.poll() is None:
            spy.proc.kill()
            spy.proc.wait()

    probed = len(probe.samples_ms) if probe else 0
    done = result.requests + probed
    row.requests = result.requests
    row.rps = round(result.rps, 1)
    row.p50_ms, row.p90_ms = result.p50_ms, result.p90_ms
    row.p99_ms, row.max_ms = result.p99_ms, result.max_ms
    row.non2xx, row.socket_errors = result.non2xx, result.socket_errors
    if probe is not None:
        row.ttfb_samples = probed
        row.ttfb_p50_ms = _round(report.percentile(probe.samples_ms, 50))
        row.ttfb_p90_ms = _round(report.percentile(probe.samples_ms, 90))
        row.ttfb_max_ms = _round(max(probe.samples_ms, default=None))
        row.probe_errors = probe.errors[:5]
    if gateway and done:
        row.cpu_ms_per_req = round(window.measured_s * 1000 / done, 4)
        row.cpu_pct = round(100 * window.measured_s / window.wall_s, 1)
        row.rss_peak_mib = round(peak_rss_mib(gateway), 1)
    if done:
        row.upstream_cpu_ms_per_req = round(up_cpu * 1000 / done, 4)
    row.load_core_busy_pct = window.load_core_busy_pct
    row.foreign_gateway_core_pct = window.foreign_gateway_core_pct
    row.foreign_load_cores_pct = window.foreign_load_cores_pct
    row.foreign_total_pct = window.foreign_total_pct
    if target.name == "traced" and (dropped := spans_dropped(target.port)):
        # a span dropped costs nothing: the row would not be a traced gateway's cost
        row.error = f"{dropped:g} trace spans dropped so far (gateway_trace_spans_dropped_total)"
    return row


def spans_dropped(port: int) -> float:
    """What the gateway on `port` has dropped of its spans, all reasons together."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.findall(r"^gateway_trace_spans_dropped_total\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(n) for n in found)


@dataclass
class Profiling:
    proc: subprocess.Popen[bytes]
    raw: Path


def start_profiler(
    args: argparse.Namespace, profiler: str | None, gateway: int | None, name: str
) -> Profiling | None:
    """py-spy on the gateway for the measured window (it pauses the process for each sample)."""
    if profiler is None or gateway is None:
        return None
    native = "-native" if args.profile_native else ""
    raw = args.json.parent / f"profile-{name}{native}.raw"
    raw.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        pyspy.record_args(profiler, gateway, args.duration, raw, native=args.profile_native),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    return Profiling(proc, raw)


def finish_profiler(spy: Profiling, duration_s: int) -> None:
    spy.proc.wait(timeout=duration_s + 60)
    if not spy.raw.exists():
        print(f"py-spy wrote no profile (exit {spy.proc.returncode})", file=sys.stderr)
        return
    summary = pyspy.summarise(spy.raw)
    spy.raw.with_suffix(".txt").write_text(summary)
    print(f"profile: {spy.raw} (collapsed stacks), summary {spy.raw.with_suffix('.txt')}:")
    print(summary, flush=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run_meta(
    args: argparse.Namespace,
    pinning: Pinning,
    wrk: str,
    idle_rss: dict[str, float],
    targets: dict[str, stack.Target | None],
    elapsed_s: float,
) -> dict[str, Any]:
    after = {
        name: round(rss_mib(t.child.pid), 1)
        for name, t in targets.items()
        if t is not None and name != "direct" and t.child.alive()
    }
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed_s, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "wrk": (version.stdout or version.stderr).split("\n")[0].strip(),
        },
        "pinning": pinning.describe(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "targets": args.only,
            "modes": args.modes,
            "delay_ms": args.delay_ms,
            "jitter_ms": args.jitter_ms,
            "chunks": args.chunks,
            "chunk_delay_ms": args.chunk_delay_ms,
            "probe_requests": args.probe_requests,
            "retry_noisy": args.retry_noisy,
            "smoke": args.smoke,
            "profiled": args.profile,
        },
        "idle_rss_mib": idle_rss,
        "idle_rss_after_load_mib": after,
    }


if __name__ == "__main__":
    sys.exit(main())
