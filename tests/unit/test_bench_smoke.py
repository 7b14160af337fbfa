"""`make bench` stays runnable: a smoke run of bench/run.py with a tiny budget.

Only that every scenario ran and every response was a success is checked here; how fast the
gateway is belongs to `make bench` and docs/performance.md, never to an assertion in the suite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXIT_NO_TOOL = 3  # bench/processes.py: wrk or redis-server missing and not installable


def test_bench_smoke_measures_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # installing wrk (apt-get) on a fresh machine takes longer than the run itself
    timeout = 120 if shutil.which("wrk") else 600
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode == EXIT_NO_TOOL:
        pytest.skip(f"the benchmark's tools cannot be installed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr

    data = json.loads(out.read_text())
    rows = {(r["target"], r["mode"], r["conns"]): r for r in data["rows"]}
    assert set(rows) == {
        (target, mode, conns)
        for target in ("direct", "bare", "memory", "redis", "traced")
        for mode in ("plain", "stream")
        for conns in (1, 4)
    }
    for scenario, row in rows.items():
        assert row["error"] is None, scenario
        assert row["requests"] > 0 and row["rps"] > 0, scenario
        assert row["non2xx"] == 0 and row["socket_errors"] == 0, scenario
        if row["target"] != "direct":
            assert row["cpu_ms_per_req"] is not None and row["rss_peak_mib"] > 0, scenario
            assert row["vs_direct"]["rps_ratio"] is not None, scenario
        if row["mode"] == "stream":
            assert row["ttfb_samples"] > 0 and not row["probe_errors"], scenario
    assert data["meta"]["idle_rss_mib"].keys() == {"bare", "memory", "redis", "traced"}
    assert data["rows"] and all(
        r["vs_memory"] for r in data["rows"] if r["target"] in ("redis", "traced")
    )
    assert "gateway-redis" in done.stdout  # the table was printed
