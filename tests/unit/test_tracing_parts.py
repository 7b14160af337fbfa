"""The parts of tracing that need no collector: the `tracing:` settings, what a trace notes of
an answer, the shape of captured messages, the traceparent sent upstream, and the export
queue's bounds and its once-an-outage log lines."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, Settings, parse_settings
from gateway.headers import upstream_headers
from gateway.tracing import batches
from gateway.tracing.content import input_attributes, output_messages
from gateway.tracing.notes import Trace
from gateway.tracing.settings import WEAVE_ENDPOINT
from tests.procs import ROOT, base_config

CLIENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def settings(**tracing: Any) -> Settings:
    return parse_settings(base_config("http://127.0.0.1:1", tracing=tracing), env={})


def problems(**tracing: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        settings(**tracing)
    return err.value.problems


def test_tracing_is_off_unless_it_has_somewhere_to_send() -> None:
    assert settings().tracing.url == ""
    assert settings(endpoint="").tracing.url == ""
    assert settings(weave=True).tracing.url == WEAVE_ENDPOINT
    own = "https://acme.wandb.io/traces/otel/v1/traces"
    assert settings(weave=True, endpoint=own).tracing.url == own
    assert settings(endpoint=" http://c:4318/v1/traces ").tracing.url == "http://c:4318/v1/traces"


def test_the_default_config_reads_the_standard_variable() -> None:
    shipped = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())["tracing"]
    config = base_config("http://127.0.0.1:1", tracing=shipped)
    url = "http://c:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url}
    assert parse_settings(config, env=env).tracing.url == url
    assert parse_settings(config, env={}).tracing.url == ""


@pytest.mark.parametrize(
    ("tracing", "expected"),
    [
        ({"endpoint": "collector:4318"}, "tracing.endpoint: must be an http(s) URL"),
        ({"endpoint": "ftp://c/v1/traces"}, "tracing.endpoint: must be an http(s) URL"),
        ({"endpoint": 5}, "tracing.endpoint: must be an http(s) URL"),
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: must be a number from 0 to 1"),
        ({"sample_ratio": -0.1}, "tracing.sample_ratio: must be a number from 0 to 1"),
        ({"headers": ["a"]}, "tracing.headers: must be a mapping"),
        ({"headers": {"wandb-api-key": "x"}}, "is set by the gateway itself"),
        ({"headers": {"Content-Type": "x"}}, "is set by the gateway itself"),
        ({"headers": {"x-token": ""}}, "tracing.headers.x-token: must be a non-empty string"),
        ({"max_queue": 0}, "tracing.max_queue: must be a positive integer"),
        ({"capture": True}, "tracing.capture: unknown key"),
    ],
)
def test_bad_tracing_settings_say_what_is_wrong(tracing: dict[str, Any], expected: str) -> None:
    found = problems(**tracing)
    assert any(expected in p for p in found), found


def test_a_header_value_is_never_echoed_in_a_problem() -> None:
    found = problems(headers={"x-token": ["s3cr3t-value"]})
    assert found and not any("s3cr3t" in p for p in found)


def test_a_tenant_overrides_content_capture() -> None:
    config = base_config("http://127.0.0.1:1", tracing={"capture_content": True})
    config["tenants"]["ads"]["capture_content"] = False
    parsed = parse_settings(config, env={})
    assert parsed.tracing.capture_content is True
    assert parsed.tenants["ads"].capture_content is False
    assert parsed.tenants["search"].capture_content is None  # the global setting applies


def trace(capture: bool = True, max_chars: int = 1000) -> Trace:
    return Trace(None, None, (1, 2, True), "acme/search", capture, max_chars)


def test_the_traceparent_upstream_is_the_gateways_own() -> None:
    sampled, dropped = trace(), Trace(None, None, (0xAB, 0xCD, False), "p", False, 10)
    assert sampled.traceparent == f"00-{1:032x}-{2:016x}-01"
    assert dropped.traceparent == f"00-{0xAB:032x}-{0xCD:016x}-00"
    assert not dropped.capture  # nothing is kept of an unsampled trace
    settings_ = settings()
    account = settings_.accounts["main"]
    raw = [(b"traceparent", CLIENT.encode()), (b"tracestate", b"app=1")]
    ours = ("00-x-y-01", "app=1")  # the client's span was the parent: its state goes on
    headers = upstream_headers(raw, account, "acme/search", "req_1", frozenset(), ours)
    assert headers["traceparent"] == "00-x-y-01" and headers["tracestate"] == "app=1"
    new = ("00-x-y-01", None)  # a trace of the gateway's own: the client's state is dropped
    headers = upstream_headers(raw, account, "acme/search", "req_1", frozenset(), new)
    assert headers["traceparent"] == "00-x-y-01" and "tracestate" not in headers
    assert upstream_headers(raw, account, "acme/search", "req_1")["traceparent"] == CLIENT


def sse(*payloads: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)


def delta(**fields: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": fields}]}


def test_a_stream_is_assembled_text_and_tool_calls() -> None:
    notes = trace()
    call = {"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": ""}}
    notes.chunk(sse(delta(role="assistant", content="It is "), delta(content="sunny")))
    notes.chunk(sse(delta(tool_calls=[call])))
    notes.chunk(sse(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}])))
    notes.chunk(sse(delta(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}])))
    last = {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    notes.chunk(sse(last) + b"data: [DONE]\n\n")
    assert (notes.response_id, notes.response_model) == ("chatcmpl-1", "m")
    assert notes.finish_reasons == ["tool_calls"]
    text, calls = notes.output() or ("", [])
    assert text == "It is sunny"
    assert calls == [{"type": "tool_call", "name": "get_weather", "arguments": '{"city":"Oslo"}'}]
    message = json.loads(output_messages(text, calls, notes.finish_reasons, 1000))
    assert message == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "It is sunny"}, *calls],
            "finish_reason": "tool_calls",
        }
    ]


def test_without_capture_only_ids_and_reasons_are_kept() -> None:
    notes = trace(capture=False)
    notes.chunk(sse(delta(content="secret words")) + b"data: not json\n\n")
    notes.chunk(sse({"choices": [{"delta": {}, "finish_reason": "length"}]}))
    assert notes.output() is None and notes.response_id == "chatcmpl-1"
    assert notes.finish_reasons == ["length"]
    assert "secret" not in repr(notes._parts)


def test_captured_text_is_bounded() -> None:
    notes = trace(max_chars=10)
    for _ in range(100):
        notes.chunk(sse(delta(content="0123456789abc")))
    assert notes.output() == ("0123456789", [])
    whole = trace(max_chars=5)
    whole.answer({"choices": [{"message": {"content": "a long answer"}, "finish_reason": "stop"}]})
    assert whole.output() == ("a lon", []) and whole.finish_reasons == ["stop"]


def test_answers_of_any_shape_are_read_defensively() -> None:
    notes = trace()
    junk: list[Any] = [None, [], "x", {"choices": "x"}, {"choices": [1, {"message": 5}]}]
    for payload in [*junk, {"id": 5}]:
        notes.answer(payload)
    notes.chunk(b"data: [1,2]\n\ndata: {\n\n: comment\n\n")
    assert notes.response_id is None and notes.output() == ("", [])


def test_input_messages_in_the_conventions_shape() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        "not a message",
    ]
    found = input_attributes(json.dumps({"model": "m", "messages": messages}).encode(), 1000)
    assert json.loads(found["input.value"]) == messages
    assert json.loads(found["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "hi"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": "{}"}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]},
    ]


class Stub:
    """An exporter's stand-in: what it was sent, and whether the collector takes it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.ok = True

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        if not self.ok:  # as the SDK's exporter does, while it sends
            logging.getLogger("opentelemetry.exporter").warning("refused with key s3cr3t")
        return self.ok

    def close(self) -> None:
        pass


def queue(max_queue: int) -> tuple[batches.Batches, Stub, list[tuple[str, int]]]:
    drops: list[tuple[str, int]] = []
    processor = batches.Batches(max_queue, lambda r, n: drops.append((r, n)), lambda: {"s3cr3t"})
    stub = Stub()
    processor.routes[1] = batches.Route(None, None, (b"", b"", b""), stub)  # type: ignore[arg-type]
    return processor, stub, drops


def test_a_full_queue_drops_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    processor, stub, drops = queue(3)
    try:
        for _ in range(3):
            processor.put(1, b"span")
        with caplog.at_level(logging.WARNING, "gateway.tracing.batches"):
            assert [processor.room() for _ in range(5)] == [False] * 5
        assert drops == [("queue_full", 1)] * 5
        assert sum("new spans are dropped" in r.message for r in caplog.records) == 1
        processor._send(whole_only=False)
        assert processor.room() and len(stub.sent) == 1
    finally:
        processor.shutdown(1)


def test_a_failing_export_is_logged_once_then_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor, stub, drops = queue(100)
    stub.ok = False
    try:
        with caplog.at_level(logging.WARNING, "gateway.tracing.batches"):
            logging.getLogger("opentelemetry.exporter").warning("refused with key s3cr3t")
            for _ in range(3):
                processor.put(1, b"a")
                processor.put(1, b"b")
                processor._send(whole_only=False)
            stub.ok = True
            processor.put(1, b"c")
            processor._send(whole_only=False)
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.tracing.batches"]
        assert lines[0].startswith("trace export failed (refused with key ***)")
        assert lines[1:] == ["trace export works again"]
        assert drops == [("export_failed", 2)] * 3
        assert all(
            "s3cr3t" not in r.getMessage()
            for r in caplog.records
            if r.name != "opentelemetry.exporter"
        )
    finally:
        processor.shutdown(1)


def test_whole_batches_only_until_the_delay_is_up() -> None:
    processor, stub, _ = queue(10_000)
    try:
        for _ in range(batches.BATCH + 7):
            processor.put(1, b"x")
        processor._send(whole_only=True)
        assert len(stub.sent) == 1 and len(processor._queue) == 7
        processor._send(whole_only=False)
        assert len(stub.sent) == 2 and not processor._queue
    finally:
        processor.shutdown(1)
