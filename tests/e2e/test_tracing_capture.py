"""Content capture with bodies that cost: a prompt past the body reader's offload size is read
for the span in its child process, and a body nested deeper than the JSON writer goes is
captured cut, not a lost span or a request that fails; either way the request is answered and
counted as any other."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from gateway.chat_body import OFFLOAD_BYTES
from tests.e2e.helpers import USER, client
from tests.e2e.test_tracing import CAP, call, otlp, traced
from tests.otlp import Receiver
from tests.procs import ADS_KEY, LLAMA, Proc

__all__ = ["otlp", "traced"]  # the fixtures, shared with test_tracing


def requests_counted(gateway: Proc) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    found = re.findall(r'gateway_requests_total\{[^}]*tenant="ads"[^}]*\} ([0-9.e+]+)', text)
    return sum(float(n) for n in found)


def test_a_big_prompt_is_captured_off_the_loop(traced: Proc, otlp: Receiver) -> None:
    prompt = "lighthouse " * (OFFLOAD_BYTES // 10)  # past the offload size on its own
    request_id, answer = call(traced, ADS_KEY, messages=[{"role": "user", "content": prompt}])
    assert answer.choices[0].message.content
    a = otlp.of(request_id).attributes
    kept = json.loads(a["input.value"])
    assert (
        kept[0]["content"].startswith("lighthouse lighthouse") and len(a["input.value"]) < 2 * CAP
    )
    assert "gateway.content_skipped" not in a
    assert a["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens


def test_a_body_nested_past_the_writers_depth_is_captured_cut(traced: Proc, otlp: Receiver) -> None:
    before = requests_counted(traced)
    deep: Any = "bottom"
    for _ in range(400):  # orjson writes 255 levels at most
        deep = [deep]
    messages = [{"role": "user", "content": "hi", "name": "x"}]
    request_id, answer = call(traced, ADS_KEY, messages=messages, extra_body={"x_extra": deep})
    assert answer.choices[0].message.content
    deep_messages = [{"role": "user", "content": "hi", "x": deep}]
    second_id, _ = call(traced, ADS_KEY, messages=deep_messages)
    a = otlp.of(second_id).attributes
    assert json.loads(a["input.value"])[0]["content"] == "hi"
    assert otlp.of(request_id).attributes["gateway.tenant"] == "ads"
    assert requests_counted(traced) == before + 2
    assert "Traceback" not in traced.logs()


def test_the_streams_capture_is_whole_json(traced: Proc, otlp: Receiver) -> None:
    raw = client(traced, ADS_KEY).chat.completions.with_raw_response.create(
        model=LLAMA, messages=USER, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    a = otlp.of(raw.headers["x-request-id"]).attributes
    message = json.loads(a["gen_ai.output.messages"])[0]
    assert message["parts"][0]["content"] == text and message["role"] == "assistant"
