"""The error tree's two renderings, and the envelope every error takes."""

from __future__ import annotations

import json

import pytest

import gateway.errors as errors
from gateway.errors import GatewayError, QueueTimeout, RequestRefused, render, sse_event


def every_error_class() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_docstring_draws_the_whole_tree() -> None:
    doc = errors.__doc__ or ""
    for cls in every_error_class():
        assert f" {cls.__name__} " in doc, cls.__name__


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.__name__)
def test_every_error_is_typed_for_its_status(cls: type[GatewayError]) -> None:
    error = (
        RequestRefused("x", 409)
        if cls is RequestRefused
        else QueueTimeout("x", waited_s=1, retry_after_s=2)
        if cls is QueueTimeout
        else cls("ModelNotFound")
        if cls is errors.ModelNotFound
        else cls("x")
    )
    client_fault = 400 <= error.status < 500
    assert (error.type == "server_error") != client_fault, (cls, error.status, error.type)
    assert error.reason  # every error counts under a bounded cause


def test_render_is_the_envelope_with_its_headers() -> None:
    error = QueueTimeout("wait", waited_s=1.2, retry_after_s=2.5)
    status, headers, body = render(error)
    assert status == 429
    assert json.loads(body) == {
        "error": {
            "message": "wait",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert dict(headers) == {
        b"content-type": b"application/json",
        b"content-length": str(len(body)).encode(),
        b"retry-after": b"3",
        b"retry-after-ms": b"2500",
    }
    assert error.waited_s == 1.2


def test_an_sse_event_carries_the_same_envelope() -> None:
    event = sse_event(errors.StreamShutDown("bye"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"] == {
        "message": "bye",
        "type": "server_error",
        "param": None,
        "code": "shutting_down",
    }
