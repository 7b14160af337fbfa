"""The load: wrk (closed loop, N keep-alive connections) and the time-to-first-byte probe.

wrk measures each request to the end of its response, so it cannot see when a stream's first
byte came. The probe does, with one more keep-alive connection that sends streamed requests one
after another while wrk runs, timing each from sending the request to the first body byte.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from processes import BENCH, die_with_parent

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
WRK_SCRIPT = BENCH / "wrk.lua"


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    raw: dict[str, Any]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(
    wrk: str,
    url: str,
    *,
    mode: str,
    key: str,
    connections: int,
    duration_s: int,
    prefix: list[str],
) -> WrkResult:
    args = [
        *prefix,
        wrk,
        "-t1",  # one thread: the load side has one core, and one thread drives > 50k req/s
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        mode,
        key,
        MODEL,
    ]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=duration_s + 30,
        preexec_fn=die_with_parent,
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line[len("BENCH_JSON ") :])
            break
    else:
        raise RuntimeError(f"wrk printed no result (exit {done.returncode}):\n{done.stderr}")
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        non2xx=raw["non2xx"],
        socket_errors=raw["connect_errors"]
        + raw["read_errors"]
        + raw["write_errors"]
        + raw["timeouts"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        raw=raw,
    )


def request_body(stream: bool) -> bytes:
    """The body wrk sends (see wrk.lua), for the probe and the sanity checks."""
    return json.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Say hello to the benchmark."},
            ],
            "max_tokens": 64,
            "temperature": 0.2,
            "stream": stream,
        },
        separators=(",", ":"),
    ).encode()


def post(port: int, key: str, stream: bool, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """One chat completion, for the sanity check before a target is measured."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/v1/chat/completions", request_body(stream), _headers(key))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


@dataclass
class TtfbProbe:
    """Streamed requests one after another on one connection, until stopped or `limit` done."""

    port: int
    key: str
    limit: int
    samples_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ttfb-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        body, headers = request_body(True), _headers(self.key)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            while not self._stop.is_set() and len(self.samples_ms) < self.limit:
                try:
                    start = time.perf_counter()
                    conn.request("POST", "/v1/chat/completions", body, headers)
                    resp = conn.getresponse()
                    first = resp.read(1)
                    took = (time.perf_counter() - start) * 1000
                    rest = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                    time.sleep(0.05)
                    continue
                if resp.status != 200 or not first or b"[DONE]" not in rest:
                    self.errors.append(f"status {resp.status}: {(first + rest)[:200]!r}")
                    continue
                self.samples_ms.append(took)
        finally:
            conn.close()
