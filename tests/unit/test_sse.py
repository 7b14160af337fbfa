"""StreamMeter: what a relayed stream looks like to the client, and what the gateway learns."""

from __future__ import annotations

import orjson
import pytest

from gateway.cost import Usage
from gateway.sse import StreamMeter

ROLE = b'data: {"id":"1","choices":[{"delta":{"role":"assistant","content":""}}],"usage":null}\n\n'
WORD = b'data: {"id":"1","choices":[{"delta":{"content":"Hi \\"usage\\":null"}}],"usage":null}\n\n'
FINISH = (
    b'data: {"id":"1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
)
USAGE = b'data: {"id":"1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"
STREAM = ROLE + WORD + WORD + FINISH + USAGE + DONE


def relay(meter: StreamMeter, data: bytes, size: int) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(meter.feed(p) for p in pieces) + meter.flush()


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_client_that_asked_for_usage_gets_every_byte(size: int) -> None:
    meter = StreamMeter(strip_usage=False)
    assert relay(meter, STREAM, size) == STREAM
    assert meter.usage == Usage(5, 2)
    assert meter.done
    assert meter.content_chunks == 2


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_usage_is_hidden_from_a_client_that_did_not_ask(size: int) -> None:
    meter = StreamMeter(strip_usage=True)
    out = relay(meter, STREAM, size)
    assert b'"usage":null}' not in out and b'"usage":{' not in out
    assert b'\\"usage\\":null' in out  # text inside a string is never touched
    assert out.count(b"data: ") == 5  # the usage chunk is gone
    assert meter.usage == Usage(5, 2)


def test_spaced_json_and_crlf() -> None:
    spaced = (
        b'data: {"choices": [{"delta": {"content": "a"}}], "usage": null}\r\n\r\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    meter = StreamMeter(strip_usage=True)
    out = relay(meter, spaced, 5)
    assert out == b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: [DONE]\n\n'
    assert meter.usage == Usage(1, 1)
    assert meter.content_chunks == 1


def test_a_cut_stream_counts_what_was_relayed() -> None:
    meter = StreamMeter(strip_usage=True)
    out = relay(meter, ROLE + WORD + WORD + WORD[:20], 1000)
    assert meter.content_chunks == 2
    assert not meter.done and meter.usage is None
    assert out == ROLE.replace(b',"usage":null', b"") + 2 * WORD.replace(b',"usage":null', b"")
    # the partial event is dropped: glued to the error event that follows, it would break it


def test_usage_with_spaces_is_found_on_the_fast_path() -> None:
    spaced = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
    meter = StreamMeter(strip_usage=True)
    assert meter.feed(ROLE + spaced) == ROLE.replace(b',"usage":null', b"")
    assert meter.usage == Usage(3, 4)


def test_reasoning_deltas_count_and_done_without_blank_line() -> None:
    think = b'data: {"choices": [{"delta": {"reasoning_content": "hmm"}}]}\n\n'
    meter = StreamMeter(strip_usage=False)
    assert meter.feed(think + think + b"data: [DONE]\n") == think + think
    assert meter.flush() == b"data: [DONE]\n\n"
    assert meter.content_chunks == 2 and meter.done


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', 1),
        (b'data: {"choices":[{"delta":{"content":""}}]}\n\n', 0),
        (b'data: {"choices":[{"delta":{"content":null,"tool_calls":[]}}]}\n\n', 0),
        (b'data: {"choices":[{"delta":{"reasoning_content":"x"}}]}\n\n', 1),
        (b'data: {"choices":[{"delta":{"content" : "a"}}]}\n\n', 1),  # spaced: the regex
        (b'data: {"choices":[{"delta":{"x_content":"a","content":"b"}}]}\n\n', 1),
        (b'data: {"choices":[{"delta":{"content":"say \\"content\\":\\"x"}}]}\n\n', 1),
        (2 * b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', 2),
    ],
)
def test_text_deltas_are_counted_as_the_exact_pattern_counts_them(
    chunk: bytes, expected: int
) -> None:
    meter = StreamMeter(strip_usage=False)
    assert meter.feed(chunk) == chunk
    assert meter.content_chunks == expected


def test_usage_null_first_in_an_object_is_stripped_too() -> None:
    first = b'data: {"usage":null,"choices":[{"delta":{"content":"a"}}]}\n\n'
    meter = StreamMeter(strip_usage=True)
    assert meter.feed(first + WORD) == (
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n' + WORD.replace(b',"usage":null', b"")
    )


def test_done_quoted_inside_content_is_not_the_end() -> None:
    quoting = b'data: {"choices":[{"delta":{"content":"say data: [DONE]"}}]}\n\n'
    meter = StreamMeter(strip_usage=False)
    assert meter.feed(quoting) == quoting
    assert not meter.done
    assert meter.feed(quoting + DONE) == quoting  # the end is held back...
    assert meter.done and meter.flush() == DONE  # ...until the proxy has charged the request


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_events_after_the_usage_chunk_still_count(size: int) -> None:
    late = STREAM.replace(DONE, WORD + DONE)  # a content event after the usage one
    meter = StreamMeter(strip_usage=True)
    out = relay(meter, late, size)
    assert meter.content_chunks == 3 and meter.done
    assert out.count(b"data: ") == 6 and b'"usage":{' not in out


def test_done_after_a_stray_blank_line_split_across_reads() -> None:
    meter = StreamMeter(strip_usage=False)
    meter.feed(WORD + b"\n")  # one newline too many, the rest comes in the next read
    meter.feed(b"\n" + DONE)
    assert meter.done


def test_many_usage_events_in_one_read() -> None:
    meter = StreamMeter(strip_usage=True)
    out = meter.feed(2000 * (WORD + USAGE) + DONE)  # a loop: no recursion limit
    assert out.count(b"data: ") == 2000 and meter.content_chunks == 2000 and meter.done
    assert meter.flush() == DONE


def delta(**fields: str) -> bytes:
    payload = orjson.dumps({"choices": [{"index": 0, "delta": fields}]})
    return b"data: " + payload + b"\n\n"


@pytest.mark.parametrize(
    ("events", "tokens"),
    [
        ([delta(reasoning="a"), delta(reasoning="b"), delta(content="c")], 3),
        ([delta(reasoning_content="a"), delta(content="b")], 2),
        # vLLM, for a while, sent its reasoning under both names: one token, not two
        ([delta(reasoning="a", reasoning_content="a"), delta(content="b")], 2),
        ([delta(reasoning=""), delta(content=""), delta(content="x")], 1),
    ],
)
def test_reasoning_deltas_count_as_tokens_and_pass_untouched(
    events: list[bytes], tokens: int
) -> None:
    for spaced in (False, True):  # the exact count, and the pattern's for other spellings
        data = b"".join(e.replace(b'":', b'": ') if spaced else e for e in events)
        meter = StreamMeter(strip_usage=True)
        assert relay(meter, data, 5) == data
        assert meter.content_chunks == tokens


def test_a_usage_block_with_details_is_read_whole() -> None:
    usage = {
        "prompt_tokens": 9,
        "completion_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    event = b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"
    meter = StreamMeter(strip_usage=True)
    assert relay(meter, event + b"data: [DONE]\n\n", 3) == b"data: [DONE]\n\n"
    assert meter.usage == Usage(9, 6, cached_tokens=4, reasoning_tokens=5)


def test_done_is_held_back_with_all_that_follows_it() -> None:
    """The client gets `[DONE]` only from `flush()`, after the proxy has charged the request;
    nothing W&B sends after it is relayed before it."""
    for tail in (b"", WORD, USAGE, b"data: [DONE]\n\n"):
        meter = StreamMeter(strip_usage=False)
        assert meter.feed(WORD + DONE + tail) == WORD
        assert meter.done and meter.content_chunks == 1
        assert meter.flush() == DONE + tail and meter.flush() == b""


def test_tool_call_argument_fragments_count_as_tokens_of_a_cut_stream() -> None:
    first = {"index": 0, "id": "call_1", "type": "function"}
    first["function"] = {"name": "get_weather", "arguments": ""}
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]},
        *(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                    }
                ]
            }
            for piece in ('{"city', '": "Par', 'is"}')
        ),
    ]
    data = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)  # no [DONE]: cut
    meter = StreamMeter(strip_usage=False)
    relay(meter, data, 9)
    assert meter.content_chunks == 3 and not meter.done  # the fragments, not the empty start
