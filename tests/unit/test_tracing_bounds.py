"""What no request can make tracing do: capture content past its bound or as broken JSON, fail
on a body of any depth or with lone surrogates, grow a stream's notes without end, fill the
export queue past its bytes or send a batch past its size, log a secret in any form, send the
environment's OTLP headers to Weave, or lose a span to too many routes without saying so."""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
import pytest

from gateway.config import ConfigError, parse_settings
from gateway.tracing import batches, export
from gateway.tracing.content import CUT, MAX_DEPTH, bounded, input_attributes
from gateway.tracing.notes import Trace
from gateway.tracing.spans import _params
from gateway.tracing.wire import OtlpExporter
from tests.procs import base_config
from tests.unit.test_tracing_parts import Stub, queue, sse, trace

PROMPT = "Tell the tracing test a story about a lighthouse keeper and a very patient cat"


def body(messages: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": messages})


def test_captured_input_is_cut_before_it_is_written_so_it_stays_json() -> None:
    found = input_attributes(body([{"role": "user", "content": PROMPT}]), 40)
    # 40 characters: the keys and values before it (each one more), then 22 of the prompt.
    assert json.loads(found["input.value"]) == [{"role": "user", "content": PROMPT[:22] + CUT}]
    assert json.loads(found["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": PROMPT[:22] + CUT}]}
    ]
    many = [{"role": "user", "content": "x" * 100}] * 10_000  # 1 MB of prompt, 10k messages
    found = input_attributes(body(many), 1000)
    assert len(found["input.value"]) < 1200 and json.loads(found["input.value"])[-1] == CUT


def test_a_body_of_any_depth_or_with_lone_surrogates_is_captured_not_a_failure() -> None:
    deep: Any = "bottom"
    for _ in range(900):  # orjson writes at most 255 levels; the stdlib reads about 1000
        deep = [deep]
    raw = json.dumps({"messages": [{"role": "user", "content": "hi", "x": deep}]}).encode()
    found = input_attributes(raw, 10_000)
    kept = json.loads(found["input.value"])
    assert kept[0]["content"] == "hi" and len(found["input.value"]) < 10_000
    assert bounded(deep, 10_000)[0] != deep  # cut at MAX_DEPTH
    assert json.dumps(bounded(deep, 10_000)[0]).count("[") == MAX_DEPTH
    lone = b'{"model":"m","messages":[{"role":"user","content":"a\\ud800b"}]}'
    found = input_attributes(lone, 100)
    assert json.loads(found["input.value"]) == [{"role": "user", "content": "a?b"}]
    abyss = b'{"messages":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    assert input_attributes(abyss, 100) == {}  # deeper than either parser goes: not captured
    assert input_attributes(b"{not json", 100) == {} and input_attributes(b"[1]", 100) == {}
    assert input_attributes(body("not a list"), 100) == {}


def test_a_streams_notes_stay_bounded_however_many_deltas_come() -> None:
    notes = trace(max_chars=10)
    call = {"index": 0, "function": {"name": "f", "arguments": "0123456789"}}
    for _ in range(2000):
        notes.chunk(sse({"id": "c", "choices": [{"delta": {"content": "", "tool_calls": []}}]}))
        notes.chunk(sse({"choices": [{"delta": {"content": "abcdef", "tool_calls": [call]}}]}))
    assert notes.output() == (
        "abcdefabcd",
        [{"type": "tool_call", "name": "f", "arguments": "0123456789"}],
    )
    assert len(notes._parts) == 2 and len(notes._calls[0].parts) == 1  # nothing more kept
    many = Trace(None, None, (1, 2, True), "p", True, 10)
    many.answer({"choices": [{"message": {"tool_calls": [call] * 200}}]})  # 200 at index 0..199
    calls = [{"index": i, "function": {"name": "f"}} for i in range(200)]
    many.answer({"choices": [{"message": {"tool_calls": calls}}]})
    assert len(many._calls) == 64


def params(fields: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    _params(fields, found)
    return found


def test_parameters_are_typed_as_the_conventions_say() -> None:
    fields = {"temperature": 1, "top_p": 0.5, "max_tokens": 100.0, "seed": 1.5, "model": "m"}
    fields |= {"frequency_penalty": 0, "presence_penalty": True, "max_completion_tokens": 2**70}
    assert params(fields) == {
        "gen_ai.request.temperature": 1.0,
        "gen_ai.request.top_p": 0.5,
        "gen_ai.request.max_tokens": 100,
        "gen_ai.request.frequency_penalty": 0.0,
    }
    assert isinstance(params({"temperature": 1})["gen_ai.request.temperature"], float)
    assert isinstance(params({"max_tokens": 100.0})["gen_ai.request.max_tokens"], int)
    assert params({"seed": "7", "temperature": None, "top_p": [1]}) == {}


def test_the_queue_is_bounded_by_bytes_and_batches_by_size() -> None:
    processor, stub, drops = queue(100_000)
    try:
        big = b"x" * (3 << 20)
        while processor.room():
            processor.put(1, big)
        assert processor.waiting() >= batches.MAX_QUEUE_BYTES
        assert len(processor._queue) == -(-batches.MAX_QUEUE_BYTES // len(big))
        assert drops == [("queue_full", 1)]
        processor._send(whole_only=True)
        # One 3 MiB span a request: two would pass BATCH_BYTES; the queue drains, room again.
        assert all(len(sent) < batches.BATCH_BYTES + 1024 for sent in stub.sent)
        assert len(stub.sent) >= 10 and processor.room()
        processor._send(whole_only=False)
        assert processor.waiting() == 0 and not processor._queue
    finally:
        processor.shutdown(1)


def test_each_route_is_logged_once_when_it_fails_whatever_the_others_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor, good, drops = queue(1000)
    bad = Stub()
    bad.ok = False
    resource = type("R", (), {"attributes": {"wandb.entity": "acme", "wandb.project": "ads"}})()
    processor.routes[2] = batches.Route(resource, None, (b"", b"", b""), bad)  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.WARNING, "gateway.tracing.batches"):
            for _ in range(5):
                processor.put(1, b"a")
                processor.put(2, b"b")
                processor._send(whole_only=False)
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.tracing.batches"]
        assert len(lines) == 1 and lines[0].startswith("trace export failed to acme/ads (")
        assert drops == [("export_failed", 1)] * 5 and len(good.sent) == 5
    finally:
        processor.shutdown(1)


def test_a_secret_is_masked_in_every_form_and_bad_header_values_are_refused() -> None:
    secrets = {"tok\nen", "plain-secret"}
    said = "header value: 'Bearer tok\\nen' then plain-secret and tok\nen"
    assert "tok" not in batches.masked(said, secrets).replace("***", "")
    assert "plain-secret" not in batches.masked(said, secrets)
    for value in ("Bearer abc\n", " Bearer abc", "Bearer a\x00b"):
        config = base_config("http://127.0.0.1:1", tracing={"headers": {"authorization": value}})
        with pytest.raises(ConfigError) as err:
            parse_settings(config, env={})
        assert any("control character" in p for p in err.value.problems)
        assert not any("abc" in p for p in err.value.problems)  # the value is never echoed


def test_the_environments_otlp_headers_never_reach_an_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-token=abc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer xyz")
    url = "http://127.0.0.1:9/v1/traces"
    weave = OtlpExporter(endpoint=url, headers={"wandb-api-key": "k"}, timeout=1)
    collector = OtlpExporter(endpoint=url, headers={}, timeout=1)
    try:
        assert set(weave._client._headers) == {"user-agent", "wandb-api-key"}
        assert set(collector._client._headers) == {"user-agent"}
    finally:
        weave.close()
        collector.close()


def test_past_the_routes_bound_spans_are_dropped_counted_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(export, "MAX_ROUTES", 2)
    settings = parse_settings(
        base_config(
            "http://127.0.0.1:1", tracing={"weave": True, "endpoint": "http://127.0.0.1:9/t"}
        ),
        env={},
    )
    drops: list[tuple[str, int]] = []
    routes = export.Export(settings.tracing, lambda r, n: drops.append((r, n)))
    account = settings.accounts["main"]
    try:
        with caplog.at_level(logging.WARNING, "gateway.tracing.export"):
            assert routes.route(account, "acme/a") and routes.route(account, "acme/b")
            assert routes.route(account, "acme/a") is not None  # a known one still goes
            assert routes.route(account, "acme/c") is None and routes.route(account, "d/e") is None
        assert drops == [("too_many_routes", 1)] * 2
        assert sum("routes" in r.getMessage() for r in caplog.records) == 1
    finally:
        routes.close(1)
