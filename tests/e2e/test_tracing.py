"""Tracing end to end: a real gateway exports OTLP/HTTP protobuf to a real receiver in this
process, over loopback, while the openai SDK calls it as apps do."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.keys import config_key_id, hash_key
from tests.e2e.helpers import USER, client, faults, seen
from tests.otlp import Receiver, receiver
from tests.poll import until_sync
from tests.procs import (
    ADS_KEY,
    LLAMA,
    OTHER_WANDB_KEY,
    PHI,
    SEARCH_KEY,
    WANDB_KEY,
    Proc,
    base_config,
    start_gateway,
)

ANSWER = "Hello from the fake W&B upstream for testing"
PROMPT = "Tell the tracing test a story about a lighthouse keeper and a very patient cat. " * 3
CAP = 160
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def otlp() -> Iterator[Receiver]:
    yield from receiver()


@pytest.fixture(scope="module")
def traced(fake: Proc, otlp: Receiver) -> Iterator[Proc]:
    """Capture off, but for tenant `ads`, whose captured values are cut at CAP characters."""
    config = base_config(
        fake.url,
        tracing={"endpoint": otlp.url(), "headers": {"x-collector-token": "collector-secret"}},
    )
    config["tracing"]["content_max_chars"] = CAP
    config["tenants"]["ads"]["capture_content"] = True
    proc = start_gateway(config)
    yield proc
    proc.stop()


def call(gateway: Proc, key: str = SEARCH_KEY, **kw: Any) -> tuple[str, Any]:
    """(the request id, the completion), the openai SDK's raw response."""
    raw = client(gateway, key).chat.completions.with_raw_response.create(
        model=kw.pop("model", LLAMA), messages=kw.pop("messages", USER), **kw
    )
    return raw.headers["x-request-id"], raw.parse()


def test_plain_call_span(traced: Proc, otlp: Receiver) -> None:
    request_id, resp = call(traced, temperature=0.5, top_p=0.9, seed=7, max_tokens=20)
    span = otlp.of(request_id)
    a = span.attributes
    assert span.span.name == f"chat {LLAMA}"
    assert span.span.kind == span.span.SPAN_KIND_CLIENT
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "wandb.inference"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == LLAMA
    assert a["gen_ai.response.id"] == resp.id
    assert a["gen_ai.response.finish_reasons"] == (resp.choices[0].finish_reason,)
    assert a["gen_ai.request.stream"] is False
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.top_p"]) == (0.5, 0.9)
    assert (a["gen_ai.request.seed"], a["gen_ai.request.max_tokens"]) == (7, 20)
    assert a["gen_ai.usage.input_tokens"] == a["llm.token_count.prompt"] == resp.usage.prompt_tokens
    tokens = resp.usage.completion_tokens
    assert a["gen_ai.usage.output_tokens"] == a["llm.token_count.completion"] == tokens
    assert a["openinference.span.kind"] == "LLM" and a["llm.model_name"] == LLAMA
    assert a["http.response.status_code"] == 200 and "error.type" not in a
    assert a["gateway.tenant"] == "search"
    assert a["gateway.key_id"] == config_key_id(hash_key(SEARCH_KEY))
    assert a["gateway.retries"] == 0 and a["gateway.queue_wait_ms"] >= 0
    expected = (resp.usage.prompt_tokens * 0.22 + tokens * 0.22) / 1e6
    assert a["gateway.cost_usd"] == pytest.approx(expected)
    assert span.resource["service.name"] == "inference-gateway"
    assert span.headers["x-collector-token"] == "collector-secret"
    assert span.span.end_time_unix_nano > span.span.start_time_unix_nano
    assert not [k for k in a if k.startswith(("input.", "output.", "gen_ai.input", "gen_ai.out"))]


def test_streamed_call_span(traced: Proc, otlp: Receiver) -> None:
    raw = client(traced).chat.completions.with_raw_response.create(
        model=PHI, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    a = otlp.of(raw.headers["x-request-id"]).attributes
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.id"] == chunks[0].id
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens == 8
    assert 0 < a["gateway.time_to_first_chunk_ms"] < 10_000


def test_upstream_error_span(traced: Proc, fake: Proc, otlp: Receiver) -> None:
    faults(fake, {"kind": "500", "count": 3})
    with pytest.raises(openai.InternalServerError) as caught:
        client(traced).chat.completions.create(model=LLAMA, messages=USER)
    span = otlp.of(caught.value.response.headers["x-request-id"])
    assert span.attributes["error.type"] == "upstream_5xx"
    assert span.attributes["http.response.status_code"] == 502
    assert span.attributes["gateway.retries"] == 2
    assert span.span.status.code == span.span.status.STATUS_CODE_ERROR


def test_refused_request_span(traced: Proc, otlp: Receiver) -> None:
    """Refused before W&B: a span all the same, named for the operation alone."""
    with pytest.raises(openai.BadRequestError) as caught:
        client(traced).chat.completions.create(model=LLAMA, messages="not a list")
    span = otlp.wait(1, lambda s: s.attributes.get("error.type") == "bad_request")[0]
    assert span.span.name == "chat"
    assert span.attributes["http.response.status_code"] == caught.value.status_code == 400


def test_client_traceparent_continued_and_sent_upstream(
    traced: Proc, fake: Proc, otlp: Receiver
) -> None:
    parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    request_id, _ = call(traced, extra_headers={"traceparent": parent, "tracestate": "app=1"})
    span = otlp.of(request_id)
    assert span.trace_id == CLIENT_TRACE
    assert span.span.parent_span_id.hex() == CLIENT_SPAN
    assert span.span.trace_state == "app=1"
    upstream = seen(fake)[-1]["headers"]
    assert upstream["traceparent"] == f"00-{CLIENT_TRACE}-{span.span_id}-01"
    assert upstream["tracestate"] == "app=1"


def test_no_or_bad_traceparent_starts_a_trace(traced: Proc, fake: Proc, otlp: Receiver) -> None:
    request_id, _ = call(traced, extra_headers={"traceparent": "00-zz-not-a-trace"})
    span = otlp.of(request_id)
    assert span.span.parent_span_id == b"" and span.trace_id != "0" * 32
    sent = seen(fake)[-1]["headers"]["traceparent"]
    assert sent[:-2] == f"00-{span.trace_id}-{span.span_id}-"
    assert int(sent[-2:], 16) & 1  # sampled (the SDK marks its random trace ids too: 03)


def test_content_absent_when_capture_is_off(traced: Proc, otlp: Receiver) -> None:
    request_id, _ = call(traced, messages=[{"role": "user", "content": PROMPT}])
    otlp.of(request_id)
    for export in otlp.exports:
        assert PROMPT.encode() not in export.body and ANSWER.encode() not in export.body


def test_content_present_and_capped_when_capture_is_on(traced: Proc, otlp: Receiver) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    request_id, _ = call(traced, ADS_KEY, messages=messages)
    a = otlp.of(request_id).attributes
    assert a["gateway.tenant"] == "ads"
    # CAP characters in all, the keys and values before the prompt counted (one more each):
    # the system message whole, then the prompt cut, and the JSON whole.
    kept = CAP - (1 + 5 + 6 + 8 + 9) - (1 + 5 + 4 + 8)
    cut = [messages[0], {"role": "user", "content": PROMPT[:kept] + "…"}]
    assert json.loads(a["input.value"]) == cut and 100 < kept < len(PROMPT)
    assert a["input.mime_type"] == "application/json"
    assert json.loads(a["gen_ai.input.messages"])[1]["parts"][0]["content"].startswith(PROMPT[:60])
    assert a["output.value"] == ANSWER and len(ANSWER) < CAP  # the fake's answer is short
    assert json.loads(a["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": ANSWER}],
            "finish_reason": "stop",
        }
    ]
    # JSON's quotes and braces on top; the conventions' shape adds its "parts" and "type".
    assert len(a["input.value"]) < 1.2 * CAP and len(a["gen_ai.input.messages"]) < 2 * CAP


def test_content_of_a_stream_is_assembled(traced: Proc, otlp: Receiver) -> None:
    stream = client(traced, ADS_KEY).chat.completions.with_raw_response.create(
        model=LLAMA, messages=USER, stream=True, max_tokens=4
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    a = otlp.of(stream.headers["x-request-id"]).attributes
    assert a["output.value"] == text == "Hello from the fake"
    assert a["gen_ai.response.finish_reasons"] == ("length",)


def test_no_secret_in_any_exported_byte(traced: Proc, otlp: Receiver) -> None:
    call(traced, ADS_KEY, extra_headers={"x-api-key": "sk-should-not-appear"})
    call(traced)
    otlp.wait(2)
    secrets = [SEARCH_KEY, ADS_KEY, WANDB_KEY, "collector-secret", "sk-should-not-appear"]
    for export in otlp.exports:
        for secret in secrets:
            assert secret.encode() not in export.body
            assert secret[:12].encode() not in export.body  # nor a part of one
        assert b"authorization" not in export.body.lower()


@pytest.fixture(scope="module")
def weave(fake: Proc) -> Iterator[tuple[Proc, Receiver]]:
    """`weave: true`, pointed at the test receiver; tenant `ads` on an account of its own."""
    otlp = Receiver()
    config = base_config(fake.url, tracing={"weave": True, "endpoint": otlp.url("/otel/v1/traces")})
    config["accounts"]["other"] = {"api_key": OTHER_WANDB_KEY, "max_concurrency": 2}
    config["tenants"]["ads"]["account"] = "other"
    proc = start_gateway(config)
    yield proc, otlp
    proc.stop()
    otlp.stop()


def test_weave_routes_each_tenant_to_its_project(weave: tuple[Proc, Receiver]) -> None:
    gateway, otlp = weave
    search_id, _ = call(gateway, SEARCH_KEY)
    eval_id, _ = call(gateway, SEARCH_KEY, extra_headers={"OpenAI-Project": "acme/search-eval"})
    ads_id, _ = call(gateway, ADS_KEY)
    routes = {
        span.attributes["gateway.request_id"]: (
            span.resource["wandb.entity"],
            span.resource["wandb.project"],
            span.headers["wandb-api-key"],
        )
        for span in otlp.wait(3)
    }
    assert routes[search_id] == ("acme", "search", WANDB_KEY)
    assert routes[eval_id] == ("acme", "search-eval", WANDB_KEY)
    assert routes[ads_id] == ("acme", "ads", OTHER_WANDB_KEY)
    assert {e.path for e in otlp.exports} == {"/otel/v1/traces"}
    assert "tracing: spans go to http://127.0.0.1:" in gateway.logs()
    assert "Weave, with each account's W&B key" in gateway.logs()
    for export in otlp.exports:  # the W&B key authenticates the export: in its header only
        assert WANDB_KEY.encode() not in export.body and OTHER_WANDB_KEY.encode() not in export.body


def dropped(gateway: Proc) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics").text
    found = re.findall(r'gateway_trace_spans_dropped_total\{reason="(\w+)"\} ([0-9.e+]+)', text)
    return {reason: float(n) for reason, n in found}


def test_requests_succeed_with_the_receiver_stopped(fake: Proc) -> None:
    otlp = Receiver()
    otlp.stop()  # its port refuses connections from here on
    config = base_config(fake.url, tracing={"endpoint": otlp.url()})
    config["tracing"]["export_timeout_s"] = 0.5
    gateway = start_gateway(config)
    try:
        for _ in range(5):
            assert call(gateway)[1].choices[0].message.content == ANSWER
        stream = client(gateway).chat.completions.create(model=LLAMA, messages=USER, stream=True)
        assert len(list(stream)) > 1
        until_sync(lambda: dropped(gateway).get("export_failed", 0) >= 6, 15, "6 dropped spans")
        for _ in range(5):
            call(gateway)
        until_sync(lambda: dropped(gateway).get("export_failed", 0) >= 11, 15, "11 dropped")
    finally:
        gateway.stop()
    logs = gateway.logs()
    assert logs.count("trace export failed") == 1, logs
    assert "] opentelemetry" not in logs  # the SDK's own lines, one a batch, are not written


def test_a_slow_receiver_fills_the_queue_not_the_requests(fake: Proc) -> None:
    """A collector that answers 503 (retried for export_timeout_s) with room for 2 spans."""
    otlp = Receiver()
    otlp.status = 503
    config = base_config(fake.url, tracing={"endpoint": otlp.url(), "max_queue": 2})
    config["tracing"]["export_timeout_s"] = 3
    gateway = start_gateway(config)
    try:
        for _ in range(12):
            call(gateway)
        until_sync(lambda: dropped(gateway).get("queue_full", 0) >= 1, 10, "a full queue")
    finally:
        gateway.stop()
        otlp.stop()
    assert gateway.logs().count("new spans are dropped") == 1


def test_responses_api_calls_are_traced(traced: Proc, otlp: Receiver) -> None:
    raw = client(traced).responses.with_raw_response.create(model=LLAMA, input="Say hello")
    response = raw.parse()
    a = otlp.of(raw.headers["x-request-id"]).attributes
    assert a["gen_ai.request.model"] == LLAMA and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.usage.input_tokens"] == response.usage.input_tokens
    assert a["gen_ai.usage.output_tokens"] == response.usage.output_tokens


def test_a_streamed_tool_call_is_captured(traced: Proc, otlp: Receiver) -> None:
    weather: Any = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    raw = client(traced, ADS_KEY).chat.completions.with_raw_response.create(
        model=LLAMA, messages=USER, tools=[weather], stream=True
    )
    chunks: list[Any] = list(raw.parse())
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    a = otlp.of(raw.headers["x-request-id"]).attributes
    assert a["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert json.loads(arguments)["city"]
    part = {"type": "tool_call", "name": "get_weather", "arguments": arguments}
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [part], "finish_reason": "tool_calls"}
    ]


@pytest.fixture(scope="module")
def half(fake: Proc, otlp: Receiver) -> Iterator[Proc]:
    proc = start_gateway(
        base_config(fake.url, tracing={"endpoint": otlp.url(), "sample_ratio": 0.5})
    )
    yield proc
    proc.stop()


def test_sampling_decides_by_trace_id(half: Proc, fake: Proc, otlp: Receiver) -> None:
    """At 0.5, a trace id whose low 64 bits are under 2**63 is sampled, one above is not,
    whatever the client's flag says; the traceparent upstream says which."""
    dropped_trace, kept_trace = "1" * 16 + "f" * 16, "2" * 16 + "0" * 15 + "1"
    first, _ = call(half, extra_headers={"traceparent": f"00-{dropped_trace}-{CLIENT_SPAN}-01"})
    assert seen(fake)[-1]["headers"]["traceparent"].endswith("-00")
    second, _ = call(half, extra_headers={"traceparent": f"00-{kept_trace}-{CLIENT_SPAN}-00"})
    assert seen(fake)[-1]["headers"]["traceparent"].endswith("-01")
    assert otlp.of(second).trace_id == kept_trace
    # spans go in order: had the first been kept, it would have come by now
    assert not [s for s in otlp.spans() if s.attributes.get("gateway.request_id") == first]
