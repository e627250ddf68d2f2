"""The audio side of an SDK stream (client.stream_source): replay across attempts, the source's own errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from client.stream_source import AsyncReplay, Replay, check_chunk, open_source


def _chunks(n: int) -> list[bytes]:
    return [bytes([i]) * 4 for i in range(n)]


async def _aiter(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _alist(it: AsyncIterator[bytes], limit: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    async for x in it:
        out.append(x)
        if limit is not None and len(out) == limit:
            break
    return out


def test_replay_sends_what_was_read_again_until_told_to_stop_keeping() -> None:
    audio = _chunks(5)
    replay = Replay(audio)
    first = replay.attempt()
    assert [next(first), next(first)] == audio[:2]  # an attempt that failed after two chunks
    assert list(replay.attempt()) == audio  # the retry: the two kept, then the rest
    replay = Replay(audio)
    first = replay.attempt()
    next(first)
    replay.stop_keeping()  # the first response came: nothing more is kept
    assert list(first) == audio[1:]
    assert list(replay.attempt()) == audio[:1]  # only what was kept before


def test_async_replay_matches_the_blocking_one() -> None:
    audio = _chunks(5)

    async def run() -> tuple[list[bytes], list[bytes], list[bytes]]:
        replay = AsyncReplay(_aiter(audio))
        head = await _alist(replay.attempt(), limit=2)
        again = await _alist(replay.attempt())
        replay.stop_keeping()
        return head, again, await _alist(replay.attempt())

    head, again, after = asyncio.run(run())
    assert head == audio[:2] and again == audio and after == audio


def test_a_failing_source_cancels_the_call_and_is_raised_unchanged() -> None:
    def source() -> Iterator[bytes]:
        yield b"\0\0"
        raise RuntimeError("microphone unplugged")

    cancelled: list[bool] = []
    replay = Replay(source())
    replay.attach(lambda: cancelled.append(True))
    assert list(replay.attempt()) == [b"\0\0"]  # the audio just ends for gRPC
    assert cancelled == [True]
    with pytest.raises(RuntimeError, match="unplugged"):
        replay.reraise()
    late: list[bool] = []
    replay.attach(lambda: late.append(True))  # a later attempt is cancelled at once
    assert late == [True]


def test_a_failing_async_source_is_raised_unchanged() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield b"\0\0"
        raise RuntimeError("socket closed")

    async def run() -> tuple[list[bytes], AsyncReplay]:
        replay = AsyncReplay(source())
        return await _alist(replay.attempt()), replay

    sent, replay = asyncio.run(run())
    assert sent == [b"\0\0"]
    with pytest.raises(RuntimeError, match="socket closed"):
        replay.reraise()


def test_chunks_and_sources_are_checked() -> None:
    assert check_chunk(np.array([1, -2], dtype=np.int16)) == b"\x01\x00\xfe\xff"
    assert check_chunk(bytearray(b"ab")) == b"ab"
    with pytest.raises(TypeError, match="got list"):
        check_chunk([1, 2])  # type: ignore[arg-type]
    assert open_source(iter([b"\0\0"]), None, None, 100) == (None, 16000)
    with pytest.raises(ValueError, match="resample_to"):
        open_source(iter([b"\0\0"]), 8000, 16000, 100)
    chunks, rate = open_source(np.zeros(1600, dtype=np.float32), 16000, None, 50)
    assert rate == 16000 and chunks is not None and [len(c) for c in chunks] == [1600, 1600]
