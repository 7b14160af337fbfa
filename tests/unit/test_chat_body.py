"""`chat_body`: the top-level reader, its splice, and the child process for big bodies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import orjson
import pytest

from gateway.chat_body import BodyError, BodyReader, BodyReaderGone, read, splice
from tests.poll import until_sync


def test_only_the_top_level_is_kept_with_byte_offsets_past_non_ascii() -> None:
    body = '{"messages": [{"content": "héllo wörld"}], "model": "m", "stream": false}'.encode()
    parsed = read(body)
    assert parsed.fields == {"model": "m", "stream": False}
    start, end = parsed.spans["model"]
    assert body[start:end] == b'"m"'  # bytes, though "é" and "ö" take two each
    assert parsed.messages_is_list and parsed.prompt_tokens == 3


def test_duplicates_are_found_at_the_top_level_only() -> None:
    read(b'{"model": "m", "tools": [{"a": 1}, {"a": 2}], "x": {"k": 1, "k": 2}}')  # nested: fine
    with pytest.raises(BodyError) as info:
        read(b'{"model": "m", "tools": [], "tools": []}')
    assert info.value.param == "tools"


def test_integers_past_64_bits_are_read_exactly_and_quickly() -> None:
    parsed = read(b'{"model": "m", "seed": 36893488147419103232, "stream": true}')
    assert parsed.fields["stream"] is True  # read in one pass, the stdlib's


def test_splice_makes_one_new_body() -> None:
    body = b'{"a": 1, "b": 2}'
    assert splice(body, [(14, 15, b"20"), (6, 7, b"10"), (1, 1, b'"z": 0, ')]) == (
        b'{"z": 0, "a": 10, "b": 20}'
    )


def _big(size: int) -> bytes:
    messages = [{"role": "user", "content": "lorem ipsum " * 100}] * (size // 1300)
    return orjson.dumps({"model": "m", "messages": messages, "stream": True})


def _big_integers(size: int) -> bytes:
    """What stalled every request for seconds: orjson refused it, the stdlib re-read it."""
    numbers = b",".join([b"%d" % (2**64 + 1)] * (size // 21))
    return b'{"model": "m", "messages": [], "logit_bias": [' + numbers + b"]}"


@pytest.mark.parametrize("make", [_big, _big_integers])
def test_a_big_body_is_read_in_the_child_while_the_loop_runs_on(make: Any) -> None:
    reader = BodyReader(offload_bytes=1024 * 1024)
    body = make(16 * 1024 * 1024)

    async def run() -> tuple[int, object]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        await reader.read(body)  # the child's start is not what this measures
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        ticks = 0
        parsed = await reader.read(body)
        ticker.cancel()
        return ticks, parsed

    try:
        ticks, parsed = asyncio.run(run())
    finally:
        reader.close()
    assert parsed == read(body)
    assert ticks > 3  # the loop went on while the child parsed 16 MiB


def test_a_child_that_dies_is_replaced() -> None:
    reader = BodyReader(offload_bytes=16)
    body = b'{"model": "m", "messages": [], "padding": "' + b"x" * 64 + b'"}'

    async def run() -> None:
        await reader.read(body)
        pool = reader._pool
        assert pool is not None
        for pid in list(pool._processes):  # what the kernel's OOM killer would do
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        with pytest.raises(BodyReaderGone):
            await reader.read(body)
        assert (await reader.read(body)).fields["model"] == "m"

    try:
        asyncio.run(run())
    finally:
        reader.close()


def test_a_bad_big_body_is_a_body_error_from_the_child() -> None:
    reader = BodyReader(offload_bytes=16)

    async def run() -> None:
        with pytest.raises(BodyError) as info:
            await reader.read(b'{"model": "a", "model": "b", "padding": "xxxxxxxxxxxxxxxx"}')
        assert info.value.param == "model"

    try:
        asyncio.run(run())
    finally:
        reader.close()


def test_the_child_exits_when_its_parent_is_killed() -> None:
    script = (
        "import asyncio, os, sys\n"
        "from gateway.chat_body import BodyReader\n"
        "reader = BodyReader(offload_bytes=16)\n"
        'asyncio.run(reader.read(b\'{"model": "m", "padding": "xxxxxxxxxxxxxxxx"}\'))\n'
        "print(*reader._pool._processes, flush=True)\n"  # type: ignore[union-attr]
        "os.kill(os.getpid(), 9)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    child = int(run.stdout.split()[0])

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    until_sync(gone, 5, "the orphaned body reader's exit")


def test_a_body_of_millions_of_tiny_values_is_refused_before_it_is_parsed() -> None:
    body = b'{"model": "m", "messages": [], "x": [' + b"{}," * 3_000_000 + b"{}]}"
    with pytest.raises(BodyError) as info:
        read(body)
    assert "JSON values" in info.value.message


def test_a_big_body_with_a_deep_read_field_comes_back_from_the_child_as_a_body() -> None:
    reader = BodyReader(offload_bytes=16)
    body = b'{"model": ' + b"[" * 600 + b"]" * 600 + b', "messages": [], "pad": "xxxxxxxx"}'

    async def run() -> None:
        parsed = await reader.read(body)  # pickled back: it failed to, 600 lists deep
        assert not isinstance(parsed.fields["model"], str)

    try:
        asyncio.run(run())
    finally:
        reader.close()
