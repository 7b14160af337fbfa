"""`chat_request()`: pure, so tested as a function: body and headers in, a Call or an error out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.chat_request import chat_request
from gateway.config import Settings, parse_settings
from gateway.errors import BadRequest, GatewayError, ModelNotFound, PermissionDenied
from gateway.exchange import Call
from tests.procs import LLAMA, PHI, WANDB_KEY, base_config

# The bodies here are compared byte for byte: the cache salt, which every tenant gets by
# default, has tests of its own (SALTED).
UNSALTED = {f"tenants__{t}__cache_salt": False for t in ("search", "ads", "limited")}
SALTED = parse_settings(base_config("http://upstream.invalid"))
SETTINGS = parse_settings(base_config("http://upstream.invalid", **UNSALTED))
BUDGETED = parse_settings(
    base_config("http://upstream.invalid", tenants__ads__monthly_budget_usd=5, **UNSALTED)
)
MESSAGES = [{"role": "user", "content": "hi"}]


def call(
    body: Any,
    headers: list[tuple[bytes, bytes]] | None = None,
    tenant: str = "search",
    settings: Settings = SETTINGS,
) -> Call:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return chat_request(
        raw,
        headers or [(b"authorization", b"Bearer sk-gw-caller")],
        settings.tenants[tenant],
        settings,
        request_id="req_1",
        key_id="key_test",
        start=100.0,
        label=lambda model: model if model in (LLAMA, PHI) else "other",
    )


def refused(body: Any, **kw: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        call(body, **kw)
    return info.value


def test_a_plain_request_goes_up_as_sent_with_the_credentials_swapped() -> None:
    body = b'{"model": "' + PHI.encode() + b'", "messages": [{"role": "user", "content": "hi"}]}'
    c = call(body, [(b"authorization", b"Bearer sk-gw-caller"), (b"user-agent", b"1")])
    assert c.body == body  # byte for byte
    assert c.model == c.label == PHI and not c.stream and c.price is SETTINGS.models[PHI]
    assert c.headers["Authorization"] == f"Bearer {WANDB_KEY}"
    assert c.headers["OpenAI-Project"] == "acme/search" and c.headers["user-agent"] == "1"
    assert c.headers["X-Request-Id"] == "req_1"
    assert c.deadline == 100.0 + SETTINGS.limiter.queue_timeout_s


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{oops", None),
        (b"", None),
        (b'"a string"', None),
        (b"[]", None),
        ({"messages": MESSAGES}, "model"),
        ({"model": "", "messages": MESSAGES}, "model"),
        ({"model": 7, "messages": MESSAGES}, "model"),
        ({"model": PHI}, "messages"),
        ({"model": PHI, "messages": "hi"}, "messages"),
        ({"model": PHI, "messages": MESSAGES, "stream": 1}, "stream"),
        ({"model": PHI, "messages": MESSAGES, "stream": "true"}, "stream"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(body: Any, param: str | None) -> None:
    error = refused(body)
    assert isinstance(error, BadRequest) and error.status == 400 and error.param == param


def test_an_alias_is_resolved_and_every_number_kept_exactly() -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [], "seed": 123456789012345678901234567890}'
    c = call(body)
    assert c.model == LLAMA
    sent = json.loads(c.body)
    assert sent["model"] == LLAMA and sent["seed"] == 123456789012345678901234567890


def test_a_stream_always_asks_for_usage_and_hides_it_when_the_client_did_not() -> None:
    body = b'{"model": "' + PHI.encode() + b'", "stream": true, "messages": []}'
    c = call(body)
    assert c.stream and c.strip_usage
    assert c.body == b'{"stream_options":{"include_usage":true},' + body[1:]  # inserted only
    assert json.loads(c.body)["stream_options"] == {"include_usage": True}
    own = call({"model": PHI, "stream": True, "messages": [], "stream_options": {"x": 1}})
    assert json.loads(own.body)["stream_options"] == {"x": 1, "include_usage": True}
    assert own.strip_usage
    asked = call(
        {"model": PHI, "stream": True, "messages": [], "stream_options": {"include_usage": True}}
    )
    assert not asked.strip_usage


def test_the_allow_list_is_on_resolved_ids() -> None:
    assert call({"model": "gpt-4o-mini", "messages": []}, tenant="limited").model == LLAMA
    assert call({"model": LLAMA, "messages": []}, tenant="limited").model == LLAMA
    error = refused({"model": PHI, "messages": []}, tenant="limited")
    assert isinstance(error, ModelNotFound) and error.status == 404 and error.param == "model"


def test_a_budgeted_tenant_may_not_use_an_unpriced_model() -> None:
    error = refused({"model": "other/model", "messages": []}, tenant="ads", settings=BUDGETED)
    assert isinstance(error, PermissionDenied) and error.code == "model_not_priced"
    assert call({"model": PHI, "messages": []}, tenant="ads", settings=BUDGETED).model == PHI
    assert call({"model": "other/model", "messages": []}).label == "other"


def test_the_project_header_picks_an_allowed_project_only() -> None:
    auth = (b"authorization", b"Bearer k")
    allowed = call({"model": PHI, "messages": []}, [auth, (b"openai-project", b"acme/search-eval")])
    assert allowed.headers["OpenAI-Project"] == "acme/search-eval"
    error = refused({"model": PHI, "messages": []}, headers=[auth, (b"openai-project", b"x/y")])
    assert isinstance(error, PermissionDenied) and error.code == "project_not_allowed"


# One body, read one way (#11): what the gateway reads is what W&B will read.


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "' + PHI.encode() + b'", "model": "other", "messages": []}', "model"),
        (b'{"model": "gpt-4o-mini", "\\u006dodel": "x", "messages": []}', "model"),  # escaped
        (b'{"model": "' + PHI.encode() + b'", "messages": [], "messages": []}', "messages"),
        (b'{"model": "\\ud800", "messages": []}', "model"),  # a lone surrogate, echoed nowhere
        (b'{"model": "x", "messages": [], "t": NaN}', None),
        (b'{"model": "x", "messages": []} {}', None),
        (b'{"model": "x", "messages": [], "n": 1' + b"0" * 5000 + b"}", None),
        (b"\xef\xbb\xbf{}", None),  # a byte-order mark is not JSON
        (b'{"model": "x\xff", "messages": []}', None),  # not UTF-8
    ],
)
def test_bodies_two_parsers_could_read_differently_are_400(body: bytes, param: str | None) -> None:
    error = refused(body)
    assert isinstance(error, BadRequest) and error.status == 400 and error.param == param
    assert error.body().decode()  # renders: no surrogate, no traceback


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_bodies_are_refused_not_corrupted(encoding: str) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode(encoding)
    assert isinstance(refused(body), BadRequest)


def test_an_alias_rewrite_is_one_splice_that_keeps_every_other_byte() -> None:
    tail = b', "messages": [{"role": "user", "content": "\\ud800 caf\xc3\xa9"}], "seed": 1' + (
        b"0" * 25
    )
    body = b'{ "model" : "gpt-4o-mini"' + tail + b"}"
    c = call(body)
    assert c.body == b'{ "model" : "' + LLAMA.encode() + b'"' + tail + b"}"
    streamed = call(b'{"stream": true, "model": "gpt-4o-mini"' + tail + b"}")
    assert streamed.body == (
        b'{"stream_options":{"include_usage":true},"stream": true, "model": "'
        + LLAMA.encode()
        + b'"'
        + tail
        + b"}"
    )


def test_stream_options_null_or_unpassable_are_handled() -> None:
    c = call({"model": PHI, "stream": True, "messages": [], "stream_options": None})
    assert json.loads(c.body)["stream_options"] == {"include_usage": True} and c.strip_usage
    body = b'{"model": "' + PHI.encode() + b'", "stream": true, "messages": [], '
    error = refused(body + b'"stream_options": {"x": "\\udc00"}}')
    assert isinstance(error, BadRequest) and error.param == "stream_options"
    error = refused(body + b'"stream_options": {"x": 1' + b"0" * 30 + b"}}")
    assert isinstance(error, BadRequest) and error.param == "stream_options"


def test_the_prompt_estimate_is_kept_not_the_messages() -> None:
    c = call({"model": PHI, "messages": [{"role": "user", "content": "x" * 400}]})
    assert c.prompt_tokens == 100
    assert "messages" not in Call.__dataclass_fields__
    assert WANDB_KEY not in repr(c)  # the upstream headers hold the W&B key: not in a repr


def test_a_key_twice_in_stream_options_reaches_upstream_once_as_read() -> None:
    body = (
        b'{"model": "' + PHI.encode() + b'", "stream": true, "messages": [], '
        b'"stream_options": {"include_usage": false, "include_usage": true}}'
    )
    c = call(body)
    assert c.body.endswith(b'"stream_options": {"include_usage":true}}') and not c.strip_usage


@pytest.mark.parametrize("field", ["model", "stream", "stream_options"])
def test_a_deeply_nested_read_field_is_a_400_or_passed_on(field: str) -> None:
    deep = "[" * 600 + "]" * 600
    fields = {"model": f'"{PHI}"', "stream": "true", "messages": "[]", field: deep}
    body = ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()
    if field == "stream_options":  # not an object: passed on as sent, for W&B to refuse
        assert call(body).body == body
    else:
        assert refused(body).param == field


# --- the cache salt ------------------------------------------------------------------------


def salted(body: Any, tenant: str = "search") -> dict[str, Any]:
    sent: dict[str, Any] = json.loads(call(body, tenant=tenant, settings=SALTED).body)
    return sent


def test_every_tenant_gets_its_own_salt_spliced_in() -> None:
    body = {"model": LLAMA, "messages": MESSAGES}
    search, ads = salted(body)["cache_salt"], salted(body, "ads")["cache_salt"]
    assert search == salted(body)["cache_salt"] and search != ads  # stable, not shared
    assert len(search) == 32 and int(search, 16) >= 0 and "search" not in search
    c = call(body, settings=SALTED)
    assert c.body == b'{"cache_salt":"%s",' % search.encode() + json.dumps(body).encode()[1:]


def test_a_stream_gets_both_the_salt_and_the_usage_request() -> None:
    sent = salted({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
    assert sent["model"] == LLAMA and sent["stream_options"] == {"include_usage": True}
    assert len(sent["cache_salt"]) == 32


@pytest.mark.parametrize("own", ["mine", "", 7, None, {"a": 1}])
def test_the_clients_own_salt_goes_up_as_sent(own: object) -> None:
    raw = json.dumps({"model": LLAMA, "messages": MESSAGES, "cache_salt": own}).encode()
    assert call(raw, settings=SALTED).body == raw


def test_the_salt_depends_on_the_accounts_key() -> None:
    other = parse_settings(base_config("http://upstream.invalid", accounts__main__api_key="k2"))
    body = {"model": LLAMA, "messages": MESSAGES}
    theirs = json.loads(call(body, settings=other).body)["cache_salt"]
    assert theirs != salted(body)["cache_salt"]
