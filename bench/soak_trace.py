"""Where does a growing gateway's memory go? tracemalloc snapshots under the soak's load.

bench/soak.py says whether RSS grows; this says where. It runs the gateway in this process
(`create_app` + uvicorn in a thread, the same config as bench/stack.py, the access log to a file),
drives it with wrk like the soak (phases of --phase-s seconds, alternating plain and streamed
requests) and takes tracemalloc snapshots at --at requests: tracing starts at the first mark
(the warm-up runs at full speed); at each later one it snapshots twice: as the process holds
it, and after `gc.collect()`. Growth that a collection frees is cyclic garbage the collector had
not reached yet; growth that survives it is still referenced: a leak. Prints the top growing
sites (file:line, then the tracebacks of the largest), the object types whose count grew and one
reference cycle of the garbage, and writes the same to --out. Tracing slows the gateway
several-fold (~250 req/s): its throughput is not the soak's.

    python bench/soak_trace.py                # marks at 100k and 150k requests: about 5 min
    python bench/soak_trace.py --at 100000,300000 --frames 4   # ~15 min
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import load
import stack
import uvicorn
from processes import ROOT, Children, Pinning, ensure_tool, free_port, raise_fd_limit, rss_mib

from gateway import logs
from gateway.app import create_app
from gateway.config import load_settings

DEFAULT_OUT = ROOT / "bench" / "results" / "soak-trace.txt"
IGNORED = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "<unknown>", __file__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak_trace.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--at", default="100000,150000", help="snapshot marks (100000,150000)")
    parser.add_argument("--modes", default="plain,stream", help="phases cycle (plain,stream)")
    parser.add_argument("--phase-s", type=int, default=5, help="seconds per wrk phase (5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--frames", type=int, default=12, help="traceback depth kept (12)")
    parser.add_argument("--top", type=int, default=15, help="sites to print (15)")
    parser.add_argument("--max-s", type=float, default=1200.0, help="give up after (1200)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    args.at = sorted(int(n) for n in args.at.split(","))
    args.modes = args.modes.split(",")
    if len(args.at) < 2 or not set(args.modes) <= {"plain", "stream"}:
        parser.error("--at needs two marks or more; --modes plain, stream or both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    pinning = Pinning.plan()
    wrk = ensure_tool("wrk", "wrk")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-soak-trace-"))
    children = Children(workdir)
    lines: list[str] = []
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        upstream = stack.start_upstream(children, pinning, 1.0, 5, 1.0)
        if pinning.active:
            os.sched_setaffinity(0, pinning.gateway)  # this process is the gateway now
        key = "sk-gw-bench-trace"
        config = workdir / "gateway.yaml"
        config.write_text(json.dumps(stack.gateway_config(upstream.port, "memory", key, None)))
        logging.basicConfig(filename=workdir / "gateway.log")  # the access log: to a file
        logs.setup()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(load_settings(config)),
                host="127.0.0.1",
                port=port,
                access_log=False,
                log_level="warning",
            )
        )
        thread = threading.Thread(target=server.run, name="gateway", daemon=True)
        thread.start()
        target = stack.Target("memory", port, children.started[0], key)
        wait_ready(server)
        stack.check(target)
        lines = drive(args, pinning, wrk, target)
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=15)
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


def wait_ready(server: uvicorn.Server, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the in-process gateway did not start")
        time.sleep(0.05)


def drive(args: argparse.Namespace, pinning: Pinning, wrk: str, target: stack.Target) -> list[str]:
    url = f"http://127.0.0.1:{target.port}/v1/chat/completions"
    done, phases, marks = 0, 0, list(args.at)
    started = time.monotonic()
    base: tracemalloc.Snapshot | None = None
    base_types: collections.Counter[str] = collections.Counter()
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    while marks and time.monotonic() - started < args.max_s:
        mode = args.modes[phases % len(args.modes)]
        result = load.run_wrk(
            wrk,
            url,
            mode=mode,
            key=target.key,
            connections=args.connections,
            duration_s=args.phase_s,
            prefix=pinning.prefix(pinning.load),
        )
        phases += 1
        done += result.requests
        traced = tracemalloc.get_traced_memory()[0] / 2**20
        print(
            f"  {done:>9,} requests  {mode:6} {result.rps:5.0f}/s  non-2xx {result.non2xx}  "
            f"RSS {rss_mib(os.getpid()):6.1f} MiB  traced {traced:6.1f} MiB",
            flush=True,
        )
        if done < marks[0]:
            continue
        marks.pop(0)
        time.sleep(0.5)  # let the phase's cut requests finish
        if base is None:
            # Tracing starts here (the warm-up ran at full speed), with no gc.collect(): one
            # would reset the collector's heuristics to other than the gateway's after
            # gc.freeze(). What was allocated before is not traced, garbage or not.
            tracemalloc.start(args.frames)
            gc.disable()
            base_types, base = type_counts(), snapshot()
            gc.enable()
            say(f"base at {done:,} requests: RSS {rss_mib(os.getpid()):.1f} MiB")
            say(f"  collections so far (gen 0, 1, 2): {collections_so_far()}")
            continue
        # The collector stays off from here to the sweep: a snapshot makes enough objects to
        # start one, and it would take the very garbage being measured.
        gc.disable()
        young = gc.get_count()
        held_types, held = type_counts(), snapshot()
        say(f"\nat {done:,} requests ({phases} wrk phases), against the base:")
        say(f"  collections so far (gen 0, 1, 2): {collections_so_far()}")
        say(f"  objects counted towards the next collection (gen 0, 1, 2): {young}")
        report(say, "as held (before gc.collect())", held, base, held_types - base_types, args)
        del held  # its traces are objects too: they must not count as growth below
        rss = rss_mib(os.getpid())
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep what it finds in gc.garbage, to look at
        took = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - took
        gc.set_debug(0)
        say(f"\n== gc.collect(): {found:,} unreachable objects, in {took * 1000:.1f} ms")
        describe_garbage(say, gc.garbage)
        gc.garbage.clear()
        gc.collect()  # now free them
        swept_types, swept = type_counts(), snapshot()
        gc.enable()
        say(f"  RSS {rss:.1f} MiB before the collection, {rss_mib(os.getpid()):.1f} MiB after")
        report(
            say,
            "after gc.collect() (still referenced)",
            swept,
            base,
            swept_types - base_types,
            args,
        )
    return lines


def describe_garbage(say: Callable[[str], None], garbage: list[object]) -> None:
    """What the collector found, by type, and one reference cycle through the most common class
    that is not a builtin (the cycle that keeps the rest alive until a collection)."""
    kinds = collections.Counter(type(o) for o in garbage)
    say(
        "  unreachable, by type: "
        + ", ".join(f"{t.__qualname__} {n:,}" for t, n in kinds.most_common(12))
    )
    classes = [t for t, _ in kinds.most_common() if t.__module__ != "builtins"]
    if not classes:
        return
    start = next(o for o in garbage if type(o) is classes[0])
    cycle = find_cycle(start, {id(o) for o in garbage})
    if cycle:
        say("  a cycle through a " + classes[0].__qualname__ + ": " + " -> ".join(cycle))


def find_cycle(start: object, among: set[int], limit: int = 20_000) -> list[str]:
    """The shortest chain of references from `start` back to itself, within `among`."""
    parents: dict[int, tuple[object, object]] = {}
    queue = collections.deque([start])
    while queue and len(parents) < limit:
        here = queue.popleft()
        for ref in gc.get_referents(here):
            if ref is start:
                path = [_step(here, ref)]
                while here is not start:
                    up, _ = parents[id(here)]
                    path.append(_step(up, here))
                    here = up
                return [type(start).__qualname__, *reversed(path)]
            if id(ref) in among and id(ref) not in parents:
                parents[id(ref)] = (here, ref)
                queue.append(ref)
    return []


def _step(holder: object, held: object) -> str:
    """`held`'s type, with the key or attribute `holder` keeps it under when one says so."""
    name = type(held).__qualname__
    if isinstance(holder, dict):
        key = next((k for k, v in holder.items() if v is held), None)
        return f"[{key!r}] {name}" if key is not None else name
    return name


def snapshot() -> tracemalloc.Snapshot:
    """Traced memory now (call it with the collector off: it makes ~100k objects)."""
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, name) for name in IGNORED]
    )


def type_counts() -> collections.Counter[str]:
    """Objects the cyclic collector tracks, by type (before a snapshot: it adds tuples)."""
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def collections_so_far() -> str:
    return ", ".join(str(gen["collections"]) for gen in gc.get_stats())


def report(
    say: Callable[[str], None],
    title: str,
    now: tracemalloc.Snapshot,
    base: tracemalloc.Snapshot,
    types: collections.Counter[str],
    args: argparse.Namespace,
) -> None:
    stats = now.compare_to(base, "lineno")
    total = sum(s.size_diff for s in stats)
    say(f"\n== {title}: traced memory {total / 1024:+,.0f} KiB")
    ours = [s for s in stats if f"{os.sep}gateway{os.sep}" in s.traceback[0].filename]
    say(
        f"allocated in gateway/ itself: {sum(s.size_diff for s in ours) / 1024:+,.1f} KiB, "
        f"{sum(s.count_diff for s in ours):+,} blocks"
    )
    for s in ours[:5]:
        frame = s.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        say(f"  {s.size_diff / 1024:+9.1f} KiB {s.count_diff:+8,}  {where}")
    say("top growing sites (size, count):")
    for s in stats[: args.top]:
        frame = s.traceback[0]
        say(
            f"  {s.size_diff / 1024:+9.1f} KiB {s.count_diff:+8,}  "
            f"{_short(frame.filename)}:{frame.lineno}"
        )
    say("object types whose count grew (gc-tracked objects):")
    for name, count in types.most_common(12):
        say(f"  {count:+8,}  {name}")
    say("tracebacks of the 3 largest (oldest call first):")
    for s in now.compare_to(base, "traceback")[:3]:
        say(f"  {s.size_diff / 1024:+.1f} KiB in {s.count_diff:+,} blocks:")
        for frame in s.traceback:
            say(f"      {_short(frame.filename)}:{frame.lineno}")


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/lib/", 1)[-1]  # the standard library: python3.11/asyncio/...


if __name__ == "__main__":
    sys.exit(main())
