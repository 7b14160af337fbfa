"""The Responses API as apps call it: the official SDK's `client.responses` against the gateway
and the fake upstream, over real sockets."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from gateway.chat_body import estimate_prompt_tokens
from tests.e2e.helpers import client, faults, seen
from tests.procs import ADS_KEY, LLAMA, SEARCH_KEY, Proc, base_config, start_gateway

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake image bytes").decode()
WORDS = "Hello from the fake W&B upstream for testing"  # the fake's 8 default tokens


@pytest.fixture(scope="module")
def budgeted(fake: Proc) -> Iterator[Proc]:
    config = base_config(fake.url)
    config["tenants"]["ads"]["monthly_budget_usd"] = 0.000002  # less than one request costs
    proc = start_gateway(config)
    yield proc
    proc.stop()


def test_a_string_input_gets_a_response_object(gateway: Proc, fake: Proc) -> None:
    response = client(gateway).responses.create(
        model="gpt-4o-mini", input="Say hello", instructions="Be brief."
    )
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.output_text == WORDS
    assert response.model == LLAMA  # the alias resolved, as on the chat path
    assert response.instructions == "Be brief."
    [upstream] = seen(fake)
    assert upstream["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]
    assert response.usage is not None
    assert response.usage.input_tokens == (3 + 2) + (3 + 2)  # the fake's formula
    assert response.usage.output_tokens == 8


def test_item_input_with_an_image_part_reaches_upstream_as_chat_parts(
    gateway: Proc, fake: Proc
) -> None:
    response = client(gateway).responses.create(
        model=LLAMA,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this picture?"},
                    {"type": "input_image", "image_url": PNG, "detail": "low"},
                ],
            }
        ],
    )
    assert response.status == "completed"
    [upstream] = seen(fake)
    [message] = upstream["body"]["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
    ]
    assert response.usage is not None and response.usage.input_tokens == 3 + 5 + 85


def test_a_conversation_continues_by_previous_response_id(gateway: Proc, fake: Proc) -> None:
    c = client(gateway)
    first = c.responses.create(model=LLAMA, input="First question", instructions="Be brief.")
    second = c.responses.create(model=LLAMA, input="And then?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    upstream = seen(fake)[-1]["body"]["messages"]
    assert upstream == [  # the instructions do not carry over, as OpenAI says
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": WORDS},
        {"role": "user", "content": "And then?"},
    ]
    stored = c.responses.retrieve(first.id)
    assert stored.id == first.id and stored.output_text == first.output_text


def test_stored_responses_are_each_tenants_own(gateway: Proc) -> None:
    mine = client(gateway).responses.create(model=LLAMA, input="mine")
    other = client(gateway, ADS_KEY)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as refused:
        other.responses.create(model=LLAMA, input="next", previous_response_id=mine.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    client(gateway).responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        client(gateway).responses.retrieve(mine.id)


def test_store_false_keeps_nothing(gateway: Proc) -> None:
    response = client(gateway).responses.create(model=LLAMA, input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client(gateway).responses.retrieve(response.id)


def test_a_stream_read_with_the_sdk_gives_the_final_response(gateway: Proc) -> None:
    with client(gateway).responses.stream(model=LLAMA, input="Stream it") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 8
    assert final.output_text == WORDS and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 8
    assert client(gateway).responses.retrieve(final.id).output_text == WORDS


def test_usage_and_spend_equal_the_chat_path_for_the_same_tokens(gateway: Proc) -> None:
    def spend() -> dict[str, Any]:
        r = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {SEARCH_KEY}"})
        model: dict[str, Any] = r.json()["models"].get(LLAMA, {})
        return model

    c = client(gateway)
    start = spend()
    c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "same words"}])
    after_chat = spend()
    c.responses.create(model=LLAMA, input="same words")
    after_responses = spend()
    for field in ("prompt_tokens", "completion_tokens", "spend_usd"):
        chat = after_chat.get(field, 0) - start.get(field, 0)
        responses = after_responses[field] - after_chat[field]
        assert responses == pytest.approx(chat) and chat > 0, field


def test_upstream_errors_reach_the_sdk_as_on_chat(gateway: Proc, fake: Proc) -> None:
    faults(fake, {"kind": "quota"})
    with pytest.raises(openai.RateLimitError) as quota:
        client(gateway).responses.create(model=LLAMA, input="hi")
    assert quota.value.code == "insufficient_quota"


def test_a_budget_reached_is_refused_before_upstream(budgeted: Proc, fake: Proc) -> None:
    c = client(budgeted, ADS_KEY)
    c.responses.create(model=LLAMA, input="spend it all please now")
    sent = len(seen(fake))
    with pytest.raises(openai.RateLimitError) as refused:
        c.responses.create(model=LLAMA, input="one more")
    assert refused.value.code == "insufficient_quota" and len(seen(fake)) == sent


def test_a_stream_cut_mid_way_ends_with_response_failed(gateway: Proc, fake: Proc) -> None:
    faults(fake, {"kind": "cut", "after": 3})
    events = list(client(gateway).responses.create(model=LLAMA, input="cut me", stream=True))
    kinds = [e.type for e in events]
    assert kinds.count("response.output_text.delta") == 3
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    with pytest.raises(openai.NotFoundError):
        client(gateway).responses.retrieve(failed.id)  # a failed response is not kept


class Answer(BaseModel):
    title: str
    score: int


def test_json_schema_output_is_parsed_by_the_sdk(gateway: Proc, fake: Proc) -> None:
    parsed = client(gateway).responses.parse(model=LLAMA, input="Rate it", text_format=Answer)
    assert isinstance(parsed.output_parsed, Answer)
    body = seen(fake)[-1]["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Answer"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("tools", [{"type": "web_search"}], "tools[0].type"),
        ("tools", [{"type": "file_search", "vector_store_ids": ["vs_1"]}], "tools[0].type"),
        ("tools", [{"type": "code_interpreter", "container": {"type": "auto"}}], "tools[0].type"),
        ("background", True, "background"),
        ("conversation", "conv_123", "conversation"),
    ],
)
def test_what_cannot_be_translated_is_refused_naming_the_field(
    gateway: Proc, fake: Proc, field: str, value: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateway).responses.create(model=LLAMA, input="hi", **{field: value})
    assert refused.value.body["param"] == param  # type: ignore[index]
    assert refused.value.status_code == 400 and seen(fake) == []


def test_a_body_nested_too_deep_is_a_400_before_upstream(gateway: Proc, fake: Proc) -> None:
    deep: Any = {"type": "object"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"x": deep}}
    tool = {"type": "function", "name": "f", "parameters": deep}
    r = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": LLAMA, "input": "hi", "tools": [tool]},
        headers={"Authorization": f"Bearer {SEARCH_KEY}"},
    )
    assert r.status_code == 400 and "nested" in r.json()["error"]["message"]
    assert seen(fake) == []


def test_a_conversation_is_bounded_in_items_and_an_unknown_id_is_a_404(
    gateway: Proc, fake: Proc
) -> None:
    c = client(gateway)
    with pytest.raises(openai.BadRequestError) as many:
        c.responses.create(model=LLAMA, input=[{"role": "user", "content": "x"}] * 10_001)
    assert many.value.body["param"] == "input"  # type: ignore[index]
    missing = "resp_" + "0" * 48
    with pytest.raises(openai.NotFoundError) as unknown:
        c.responses.retrieve(missing)
    assert unknown.value.code == "response_not_found"
    assert seen(fake) == []


def test_a_cut_stream_is_charged_its_estimated_tokens(gateway: Proc, fake: Proc) -> None:
    def estimated() -> int:
        r = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {SEARCH_KEY}"})
        return int(r.json()["models"].get(LLAMA, {}).get("estimated_tokens", 0))

    before = estimated()
    faults(fake, {"kind": "cut", "after": 3})
    list(client(gateway).responses.create(model=LLAMA, input="cut me again", stream=True))
    prompt = estimate_prompt_tokens([{"role": "user", "content": "cut me again"}])
    assert estimated() - before == prompt + 3  # the prompt's estimate and the 3 chunks relayed


def test_a_stored_conversation_counts_toward_the_body_bound(fake: Proc) -> None:
    small = start_gateway(base_config(fake.url, server__max_body_bytes=4096))
    try:
        c = client(small)
        first = c.responses.create(model=LLAMA, input="word " * 500)  # 2.5 KB: under the bound
        with pytest.raises(openai.APIStatusError) as refused:
            c.responses.create(model=LLAMA, input="more " * 400, previous_response_id=first.id)
        assert refused.value.status_code == 413
        assert "stored conversation" in refused.value.message
    finally:
        small.stop()


def test_a_thinking_model_s_keep_alives_reach_the_sdk_as_nothing(fake: Proc) -> None:
    warm = start_gateway(base_config(fake.url, upstream__sse_keepalive_s=0.2))
    try:
        faults(fake, {"kind": "think", "seconds": 0.7})
        with httpx.stream(
            "POST",
            warm.url + "/v1/responses",
            json={"model": LLAMA, "input": "think first", "stream": True},
            headers={"Authorization": f"Bearer {SEARCH_KEY}"},
            timeout=10,
        ) as r:
            raw = b"".join(r.iter_bytes())
        assert raw.count(b": keep-alive") >= 2  # while W&B thought, before any event of text
        assert raw.index(b"response.created") < raw.index(b": keep-alive")
        final = client(warm).responses.create(model=LLAMA, input="after", stream=False)
        assert final.status == "completed"
        assert b"response.completed" in raw and raw.count(b"response.output_text.delta") == 16
    finally:
        warm.stop()
