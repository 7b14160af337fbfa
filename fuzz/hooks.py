"""The fuzz run's schemathesis hooks (SCHEMATHESIS_HOOKS=hooks, fuzz/ on PYTHONPATH): two checks
and the one hook that keeps the fake upstream alive.

- `openai_error_envelope`: every error answer is OpenAI's envelope with a JSON content type;
- `no_secret_in_answer`: no answer holds the W&B key or a gateway key of the run.

Beside raising (schemathesis then reports the failure and its curl line), each check appends the
failing request to $FUZZ_FINDINGS as one JSON line, so that `fuzz/run.py` can list every distinct
finding (schemathesis folds failures raised from one line of code into one per operation).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from answers import error_problem, leak_problem, secrets_from_env
from reproduce import curl_line

FINDINGS_ENV = "FUZZ_FINDINGS"
COUNTS_ENV = "FUZZ_COUNTS"
MAX_CHOICES = 128  # OpenAI's documented bound for `n`


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    """Keep the fake upstream alive: it builds all `n` choices in memory (n = 10**8 took 23 GB
    before the kernel killed it), and `x_fake` is its test knob (delays, cuts). The gateway
    reads neither field, so what it is tested with is unchanged."""
    body = case.body
    if isinstance(body, dict):
        choices = body.get("n")
        if isinstance(choices, int) and not isinstance(choices, bool) and choices > MAX_CHOICES:
            body["n"] = MAX_CHOICES
        body.pop("x_fake", None)


def _note(check: str, response: Any, case: Any, problem: str) -> None:
    path = os.environ.get(FINDINGS_ENV)
    if not path:
        return
    request = response.request
    body = request.body.encode() if isinstance(request.body, str) else request.body or b""
    finding = {
        "check": check,
        "operation": case.operation.label,
        "status": response.status_code,
        "problem": problem,
        "curl": curl_line(
            request.method, request.url, dict(request.headers), body, secrets_from_env()
        ),
    }
    with open(path, "a") as out:
        out.write(json.dumps(finding) + "\n")


def _headers(response: Any) -> list[tuple[str, str]]:
    return [(name, value) for name, values in response.headers.items() for value in values]


@schemathesis.check
def openai_error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """An error answer is OpenAI's envelope `{"error": {"message","type","param","code"}}`."""
    content_type = (response.headers.get("content-type") or [""])[0]
    problem = error_problem(response.status_code, content_type, response.content)
    if problem is not None:
        _note("openai_error_envelope", response, case, problem)
        raise AssertionError(problem)
    return None


@schemathesis.check
def no_secret_in_answer(ctx: Any, response: Any, case: Any) -> bool | None:
    """No header or body holds the run's W&B key or a gateway key, whole or in part."""
    problem = leak_problem(_headers(response), response.content, secrets_from_env())
    if problem is not None:
        _note("no_secret_in_answer", response, case, problem)
        raise AssertionError(problem)
    return None


@schemathesis.check
class answers_counted:
    """Counts the answers checked, for the run's summary (appended to $FUZZ_COUNTS); never fails."""

    def __init__(self) -> None:
        self.count = 0

    def after_response(self, ctx: Any, response: Any, case: Any) -> bool | None:
        self.count += 1
        return None

    def after_run(self, ctx: Any) -> None:
        path = os.environ.get(COUNTS_ENV)
        if path:
            with open(path, "a") as out:
                out.write(f"{self.count}\n")


@schemathesis.check
def no_server_error_noted(ctx: Any, response: Any, case: Any) -> bool | None:
    """Only notes a 5xx for the run's summary; `not_a_server_error` is the check that fails it."""
    if response.status_code >= 500:
        _note("not_a_server_error", response, case, f"{response.status_code}")
    return None
