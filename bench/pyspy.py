"""Profiling the gateway under load with py-spy, and a plain-text summary of where time went.

py-spy samples the running gateway from outside (no code change, no restart) and writes collapsed
stacks (`--format raw`: `frame;frame;...;leaf count` per line). The summary ranks functions by
own time (the leaf frame of each sample) and by total time (anywhere on the stack), and adds
own time up by package, so that "aiohttp" or "prometheus_client" shows as one share.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE_NO = re.compile(r":\d+\)$")


def ensure_pyspy() -> str:
    """py-spy from the venv or PATH, installing it into the venv (pip) when missing."""
    local = Path(sys.executable).parent / "py-spy"
    found = shutil.which("py-spy") or (str(local) if local.exists() else None)
    if found:
        return found
    print("py-spy not found: installing it into the venv (pip install py-spy)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(local)


def record_args(
    pyspy: str, pid: int, duration_s: int, out: Path, *, native: bool = False, rate: int = 200
) -> list[str]:
    """`--native` adds C frames (uvloop, httptools, syscalls) below the Python ones."""
    return [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(duration_s),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out),
        *(["--native"] if native else []),
    ]


def _function(frame: str) -> str:
    """`name (file.py:123)` -> `name (file.py)`: one entry per function, not per line."""
    return _LINE_NO.sub(")", frame.strip())


def _package(frame: str) -> str:
    inside = frame.rpartition("(")[2].rstrip(")")
    path = _LINE_NO.sub("", "(" + inside + ")").strip("()")
    if "/" not in path:
        return path.removesuffix(".py") or "?"
    return path.split("/", 1)[0]


def summarise(raw: Path, top: int = 15) -> str:
    """Own time and total time per function, and own time per package, as text."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        own[_function(leaf)] += count
        packages[_package(leaf)] += count
        for name in {_function(f) for f in frames}:
            total[name] += count
    if not samples:
        return "no samples (was the gateway busy while py-spy ran?)\n"

    def share(n: int) -> str:
        return f"{100 * n / samples:5.1f}%"

    out = [f"{samples} samples of a busy gateway (idle time not sampled)", ""]
    out.append(f"Top {top} functions by own time:")
    out += [f"  {share(n)}  {name}" for name, n in own.most_common(top)]
    out += ["", "Own time by package (module for the standard library):"]
    out += [f"  {share(n)}  {name}" for name, n in packages.most_common(12)]
    # the entry chain (runpy, cli, uvicorn's Server.run, the event loop) is on every stack
    inner = [(name, n) for name, n in total.most_common() if n < 0.99 * samples]
    out += ["", f"Top {top} functions by total time (on the stack; the entry chain left out):"]
    out += [f"  {share(n)}  {name}" for name, n in inner[:top]]
    return "\n".join(out) + "\n"


def callers(raw: Path, needle: str, depth: int = 4, top: int = 10) -> str:
    """Where the samples whose leaf function contains `needle` came from (the frames above)."""
    paths: Counter[str] = Counter()
    samples = hits = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        samples += int(count_text)
        frames = [_function(f) for f in stack.split(";") if f]
        if frames and needle in frames[-1]:
            hits += int(count_text)
            paths[" <- ".join(reversed(frames[-depth:]))] += int(count_text)
    out = [f"{hits} of {samples} samples have a leaf matching {needle!r}:"]
    out += [f"  {100 * n / max(samples, 1):5.1f}%  {path}" for path, n in paths.most_common(top)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python bench/pyspy.py PROFILE.raw [LEAF-SUBSTRING]
    raw_file = Path(sys.argv[1])
    if len(sys.argv) > 2:
        print(callers(raw_file, sys.argv[2]), end="")
    else:
        print(summarise(raw_file), end="")
