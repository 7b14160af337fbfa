"""`make fuzz`: schemathesis and a set of hand-made bad requests against a real gateway.

    fake W&B upstream <- gateway (fresh config and keys) <- schemathesis, 3 phases
                                                         <- fuzz/cases.py over raw sockets

Phases: the gateway's own `/openapi.json`, every operation, with a tenant key; its `/admin/...`
operations with an admin key; OpenAI's chat-completions request schema (from the installed
openai SDK, see fuzz/openai_schema.py) with a tenant key. Every answer is checked: no 5xx,
an error is OpenAI's envelope with a JSON content type, no secret of the run in it; afterwards
the gateway's log and /metrics are searched for the run's secrets too.

Environment: FUZZ_EXAMPLES (cases per operation and phase), FUZZ_WORKERS, FUZZ_SEED, FUZZ_ARGS
(more schemathesis options, for every phase), FUZZ_PHASES (a comma-separated subset of
gateway, admin, openai, cases). Exits 1 on any finding; everything it started stops with it.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import cases
import openai_schema
import procs
from answers import SECRETS_ENV, fragments, selftest
from reproduce import BASE_ENV, BODIES_ENV

HERE = Path(__file__).resolve().parent
CHECKS = ",".join(
    (
        "not_a_server_error",
        "openai_error_envelope",
        "no_secret_in_answer",
        "no_server_error_noted",
        "answers_counted",
    )
)


@dataclass(frozen=True)
class Phase:
    name: str
    what: str
    location: str
    key: str
    options: tuple[str, ...] = ()


def _phases(base: str, keys: procs.Keys, workdir: Path) -> list[Phase]:
    schema = workdir / "openai-chat.json"
    schema.write_text(json.dumps(openai_schema.document(procs.allowed_models())))
    own = f"{base}/openapi.json"
    return [
        Phase(
            "gateway", "the gateway's /openapi.json, every operation, tenant key", own, keys.tenant
        ),
        Phase(
            "admin",
            "the gateway's /admin/... operations, admin key",
            own,
            keys.admin,
            ("--include-path-regex", "^/admin/"),
        ),
        Phase(
            "openai",
            "OpenAI's chat-completions request schema (openai SDK), tenant key",
            str(schema),
            keys.tenant,
            ("--url", base),
        ),
    ]


def _environment(base: str, keys: procs.Keys, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "SCHEMATHESIS_HOOKS": "hooks",
        SECRETS_ENV: "\n".join(keys.all()),
        "FUZZ_FINDINGS": str(workdir / "findings.jsonl"),
        "FUZZ_COUNTS": str(workdir / "counts"),
        BASE_ENV: base,
        BODIES_ENV: str(workdir / "bodies"),
    }


def run_phase(phase: Phase, env: dict[str, str], seed: int) -> bool:
    """One schemathesis run; True when it found nothing."""
    examples = int(os.environ.get("FUZZ_EXAMPLES", "300"))
    timeout_s = 120 + examples / 2  # a phase takes about examples / 5 s here; a hang ends
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        phase.location,
        *phase.options,
        "--header",
        f"Authorization: Bearer {phase.key}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(examples),
        "--workers",
        os.environ.get("FUZZ_WORKERS", "2"),
        "--seed",
        str(seed),
        "--continue-on-failure",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        *shlex.split(os.environ.get("FUZZ_ARGS", "")),
    ]
    print(f"\n=== fuzz phase {phase.name}: {phase.what}", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            env=env,
            cwd=env["FUZZ_BODIES"],  # schemathesis writes nothing into the worktree
            timeout=timeout_s,
            preexec_fn=procs.die_with_parent,
        )
    except subprocess.TimeoutExpired:
        print(f"phase {phase.name} did not finish in {timeout_s:.0f} s", flush=True)
        return False
    print(f"=== phase {phase.name}: exit {done.returncode}, {time.monotonic() - started:.0f} s")
    return done.returncode == 0


def run_cases(base: str, keys: procs.Keys) -> bool:
    """The hand-made cases: each one's status, and whether it fails the run."""
    print("\n=== fuzz phase cases: hand-made bad requests over raw sockets", flush=True)
    bearers = {"tenant": keys.tenant, "restricted": keys.restricted, "admin": keys.admin}
    ok = True
    for case in cases.cases():
        answer = cases.send(base, case, bearers.get(case.key))
        failure, note = cases.verdict(answer, keys.all())
        status = answer.status or "---"
        mark = "FAIL" if failure else "ok  "
        detail = failure or note or _error_code(answer.body)
        print(f"{mark} {status} {answer.seconds:5.2f}s  {case.name}: {detail}")
        if failure:
            ok = False
            print(f"     reproduce: {cases.reproducer(case)}")
    return ok


def _error_code(body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        return f"{error['type']}/{error['code']}: {error['message'][:100]}"
    except (ValueError, KeyError, TypeError):
        return ""


def scan_leftovers(base: str, stack: procs.Stack, keys: procs.Keys) -> bool:
    """The gateway's log and /metrics hold no secret; the children are still running."""
    ok = True
    wanted = fragments(keys.all())
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    gateway_log = stack.children[-1].log.read_text(errors="replace")
    for where, text in (("/metrics", metrics), ("the gateway's log", gateway_log)):
        if any(fragment in text for fragment in wanted):
            print(f"FAIL {where} holds a secret of the run")
            ok = False
    for problem in stack.exited():
        print(f"FAIL {problem} during the run")
        ok = False
    statuses = collections.Counter[str]()
    for line in metrics.splitlines():
        if line.startswith("gateway_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            statuses[status] += int(float(line.rsplit(" ", 1)[1]))
    print(f"gateway_requests_total by status: {dict(sorted(statuses.items()))}")
    print(f"tracebacks in the gateway's log: {gateway_log.count('Traceback (most recent call')}")
    return ok


def summarize(workdir: Path, hand_made: int) -> None:
    """How many answers were checked; every distinct finding of the schemathesis phases, with
    its shortest reproducer."""
    counts = workdir / "counts"
    total = sum(int(n) for n in counts.read_text().split()) if counts.exists() else 0
    print(f"\nschemathesis: {total} answers checked; hand-made cases: {hand_made}")
    findings = workdir / "findings.jsonl"
    if not findings.exists():
        return
    distinct: dict[tuple[str, str, str], list[str]] = {}
    for line in findings.read_text().splitlines():
        found = json.loads(line)
        key = (found["check"], found["operation"], found["problem"])
        distinct.setdefault(key, []).append(found["curl"])
    print(f"\n=== {len(distinct)} distinct finding(s) ($GATEWAY: a gateway, $KEY: its key)")
    for (check, operation, problem), curls in sorted(distinct.items()):
        print(f"- {check} {operation}: {problem} ({len(curls)}x)")
        print(f"  {min(curls, key=len)}")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    wanted = set(os.environ.get("FUZZ_PHASES", "gateway,admin,openai,cases").split(","))
    seed = int(os.environ.get("FUZZ_SEED") or random.randrange(2**31))
    keys = procs.Keys()
    broken = selftest(keys.all())
    if broken:
        print(f"make fuzz: its own checks let these through: {', '.join(broken)}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gateway-fuzz-"))
    (workdir / "bodies").mkdir()
    stack = procs.Stack(workdir, keys)
    ok = False
    try:
        base = stack.start()
        print(f"gateway {base}, fake upstream {stack.children[0].url}, seed {seed} (FUZZ_SEED)")
        env = _environment(base, keys, workdir)
        results = [
            run_phase(p, env, seed) for p in _phases(base, keys, workdir) if p.name in wanted
        ]
        if "cases" in wanted:
            results.append(run_cases(base, keys))
        results.append(scan_leftovers(base, stack, keys))
        summarize(workdir, len(cases.cases()) if "cases" in wanted else 0)
        ok = all(results)
    finally:
        stack.close()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nlogs, config and long bodies kept in {workdir}")
    print("make fuzz: nothing found" if ok else "make fuzz: FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # main's `finally` has stopped everything it started
        print("make fuzz: interrupted")
        sys.exit(130)
