"""The benchmark's processes: tools it needs, core pinning, children it starts and stops, /proc.

Every child is started through `Children`, which stops them all (SIGTERM, then SIGKILL) however
the run ends; each also gets PR_SET_PDEATHSIG, so none outlives a run.py that was killed.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
EXIT_NO_TOOL = 3  # run.py's exit status when wrk (or redis-server) cannot be had


class MissingTool(Exception):
    """A program the benchmark needs is not installed and could not be installed."""


def ensure_tool(program: str, package: str) -> str:
    """The program's path, installing Debian's package when it is missing (root or sudo -n)."""
    found = shutil.which(program)
    if found:
        return found
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    if shutil.which("apt-get") is None:
        raise MissingTool(f"{program} is not installed and there is no apt-get to install it")
    print(f"{program} not found: installing Debian's package {package}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*apt, "install", "-y", "-qq", package]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        # a fresh machine has no package lists yet
        subprocess.run([*apt, "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(install, env=env, capture_output=True, timeout=600)
    found = shutil.which(program)
    if not found:
        raise MissingTool(f"{program} is not installed and `{' '.join(install)}` failed")
    return found


@dataclass(frozen=True)
class Pinning:
    """Which cores the gateway gets and which the load side (upstream, wrk, redis, probes) gets."""

    gateway: tuple[int, ...]
    load: tuple[int, ...]

    @classmethod
    def plan(cls, enabled: bool = True) -> Pinning:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        if not enabled or len(cpus) < 2:
            return cls((), ())
        return cls(cpus[:1], cpus[1:])

    @property
    def active(self) -> bool:
        return bool(self.gateway)

    def describe(self) -> str:
        if not self.active:
            return "not pinned (fewer than 2 cores, or --no-pin): every process shares the cores"
        return (
            f"gateways and bare pass-through on core {_cores(self.gateway)}; bench upstream, wrk, "
            "redis-server and the "
            f"TTFB probe on core {_cores(self.load)}"
        )

    def prefix(self, cores: tuple[int, ...]) -> list[str]:
        if not cores or shutil.which("taskset") is None:
            return []
        return ["taskset", "-c", ",".join(map(str, cores))]


def _cores(cores: tuple[int, ...]) -> str:
    return ",".join(map(str, cores))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    """256 client connections plus the gateway's upstream pools need more than 1024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGTERM when this script dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: kept across exec (taskset, then python)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Children:
    """Every process the run started; `stop_all()` ends them, newest first."""

    workdir: Path
    started: list[Child] = field(default_factory=list)

    def spawn(self, name: str, args: list[str]) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        child = Child(name, proc, log)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        while self.started:
            child = self.started.pop()
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {child.name} (pid {child.pid}): {exc}", file=sys.stderr)


def wait_port(child: Child, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not listen on port {port} within {timeout_s:g}s")


def wait_http(child: Child, url: str, timeout_s: float = 30.0) -> None:
    """Until `url` answers 200 (a gateway's /readyz: config loaded, limiter reachable)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{child.name}: {url} did not answer 200 within {timeout_s:g}s ({last})")


# --- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int) -> bool:
    """Restart VmHWM from the current RSS (Linux >= 4.0), so each scenario has its own peak."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def core_times() -> dict[int, tuple[float, float]]:
    """Per core: (busy, total) seconds since boot, from /proc/stat."""
    times: dict[int, tuple[float, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                numbers = [float(v) / CLK_TCK for v in values[:8]]
                idle = numbers[3] + numbers[4]  # idle + iowait
                times[int(name[3:])] = (sum(numbers) - idle, sum(numbers))
    return times


def _own_cpu_seconds() -> float:
    """This script (the TTFB probe) and its reaped children (wrk, once it has exited)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far: by the measured gateway, by every process of the benchmark on
    each side of the pinning, and by each core (whoever used it)."""

    at: float
    measured: float  # the gateway under load (0 for direct)
    gateway_side: float  # every gateway: all are pinned to the gateway's core
    load_side: float  # upstream, redis-server, wrk, this script
    cores: dict[int, tuple[float, float]]

    @classmethod
    def take(cls, measured: int | None, gateways: list[int], load_pids: list[int]) -> CpuSnapshot:
        return cls(
            at=time.monotonic(),
            measured=cpu_seconds(measured) if measured else 0.0,
            gateway_side=sum(cpu_seconds(pid) for pid in gateways),
            load_side=sum(cpu_seconds(pid) for pid in load_pids) + _own_cpu_seconds(),
            cores=core_times(),
        )


@dataclass(frozen=True)
class CpuWindow:
    """What happened between two snapshots, in % of one core where it says pct.

    `foreign_*` is what the cores were busy with beyond the benchmark's own processes: other
    work on the machine (a test suite, a build) that disturbs the figures.
    """

    wall_s: float
    measured_s: float
    load_core_busy_pct: float | None
    foreign_gateway_core_pct: float | None
    foreign_load_cores_pct: float | None
    foreign_total_pct: float

    @classmethod
    def between(cls, a: CpuSnapshot, b: CpuSnapshot, pinning: Pinning) -> CpuWindow:
        wall = max(b.at - a.at, 1e-9)

        def busy(cores: tuple[int, ...]) -> float:
            return sum(b.cores[c][0] - a.cores.get(c, b.cores[c])[0] for c in cores)

        gateway_ours = b.gateway_side - a.gateway_side
        load_ours = b.load_side - a.load_side
        everything = busy(tuple(b.cores))
        total = max(0.0, everything - gateway_ours - load_ours) * 100 / wall
        if not pinning.active:
            return cls(wall, b.measured - a.measured, None, None, None, round(total, 1))
        load_busy = busy(pinning.load)
        return cls(
            wall_s=wall,
            measured_s=b.measured - a.measured,
            load_core_busy_pct=round(load_busy * 100 / wall / len(pinning.load), 1),
            foreign_gateway_core_pct=round(
                max(0.0, busy(pinning.gateway) - gateway_ours) * 100 / wall, 1
            ),
            foreign_load_cores_pct=round(max(0.0, load_busy - load_ours) * 100 / wall, 1),
            foreign_total_pct=round(total, 1),
        )


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy the whole machine is, in % of one core, before the benchmark loads it."""
    a = core_times()
    time.sleep(seconds)
    b = core_times()
    return round(sum(b[c][0] - a[c][0] for c in b) * 100 / seconds, 1)
