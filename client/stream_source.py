"""The audio side of a stream, for both clients: chunks checked and converted, the source's own exceptions
kept from gRPC, and what was sent replayed when an attempt is retried.

:class:`Replay` (a blocking source, read by gRPC's thread) and :class:`AsyncReplay` (an async one) share their
bookkeeping in :class:`_Kept`; only the reading of the source differs.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator

import numpy as np

from client import convert
from client.audio import AudioSource, pcm_chunks, resample, to_linear16

__all__ = [
    "AsyncReplay",
    "Chunk",
    "Replay",
    "async_chunks",
    "check_chunk",
    "list_chunks",
    "open_source",
    "whole_wave",
]

Chunk = bytes | bytearray | memoryview | np.ndarray  # LINEAR16 bytes, or float32 / int16 samples


def check_chunk(chunk: Chunk) -> bytes:
    """A chunk from the caller as LINEAR16 bytes."""
    if isinstance(chunk, np.ndarray):
        if chunk.dtype == np.int16:
            return chunk.astype("<i2").tobytes()
        return to_linear16(chunk)
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(
        "stream chunks must be LINEAR16 bytes (bytes, bytearray or memoryview) or numpy arrays "
        f"(float32 in [-1, 1] or int16), got {type(chunk).__name__}"
    )


async def async_chunks(audio: Iterable[Chunk] | AsyncIterable[Chunk]) -> AsyncIterator[bytes]:
    """Chunks from a sync or async iterable as LINEAR16 bytes, without blocking the event loop."""
    if isinstance(audio, AsyncIterable):
        async for chunk in audio:
            yield check_chunk(chunk)
        return
    it = iter(audio)
    done = object()
    while True:
        # A sync iterator may block (a microphone); read it in a thread so the event loop keeps running.
        chunk = await asyncio.to_thread(next, it, done)  # type: ignore[arg-type]
        if chunk is done:
            return
        yield check_chunk(chunk)  # type: ignore[arg-type]


async def list_chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def is_whole(audio: object) -> bool:
    """Whether ``audio`` is a whole recording (a path, encoded bytes, an array) rather than chunks."""
    return isinstance(audio, (str, os.PathLike, bytes, np.ndarray))


def whole_wave(
    audio: AudioSource, sample_rate: int | None, resample_to: int | None
) -> tuple[np.ndarray, int]:
    """A whole recording as float32 samples and their rate, resampled on the client if asked."""
    wave, rate = convert.linear_audio(audio, sample_rate)
    if resample_to:
        wave, rate = resample(wave, rate, resample_to), resample_to
    return wave, rate


def open_source(
    audio: object, sample_rate: int | None, resample_to: int | None, chunk_ms: int
) -> tuple[list[bytes] | None, int]:
    """What a stream sends, and at what rate: a whole recording decoded and cut into ``chunk_ms`` LINEAR16
    chunks; or ``None`` for chunks from the caller, which come at ``sample_rate`` (16000 when not given).
    Decodes, so a blocking call."""
    if is_whole(audio):
        wave, rate = whole_wave(audio, sample_rate, resample_to)  # type: ignore[arg-type]
        return list(pcm_chunks(to_linear16(wave), rate, chunk_ms)), rate
    if resample_to:
        raise ValueError("resample_to works on whole recordings; send chunks at their sample_rate")
    convert.check_rate(sample_rate)
    return None, 16000 if sample_rate is None else sample_rate


class _Kept:
    """A stream's audio handed to successive attempts: what was read is kept until the first response (then
    :meth:`stop_keeping`), so that a retry sends it again.

    It also keeps the source's own exception for the caller. Left alone, gRPC turns an exception of the
    request iterator into a failed call: UNKNOWN "Exception iterating requests!" (blocking API) or a bare
    ``asyncio.CancelledError`` (``grpc.aio``). Here the exception is stored, the current attempt's call
    cancelled and the audio ended; the stream then raises it unchanged with :meth:`reraise`.
    """

    def __init__(self) -> None:
        self._kept: list[bytes] = []
        self._keep = True
        self._exhausted = False
        self.error: Exception | None = None
        self._cancel: Callable[[], object] | None = None
        self._error_lock = threading.Lock()

    def stop_keeping(self) -> None:
        self._keep = False

    def _recall(self, pos: int) -> tuple[bytes | None, int] | None:
        """The kept chunk at ``pos`` and the attempt's next position; ``(None, pos)`` at the end of the
        audio; None when the source is to be read."""
        if pos < len(self._kept):
            return self._kept[pos], pos + 1
        return (None, pos) if self._exhausted else None

    def _store(self, chunk: bytes | None) -> tuple[bytes | None, int]:
        """A chunk read from the source (None at its end), kept while keeping; and the next position."""
        if chunk is None:
            self._exhausted = True
        elif self._keep:
            self._kept.append(chunk)
        return chunk, len(self._kept)

    def attach(self, cancel: Callable[[], object]) -> None:
        """Cancel with ``cancel`` (the current attempt's call) when the source fails, or now if it has."""
        with self._error_lock:
            self._cancel = cancel
            failed = self.error is not None
        if failed:
            cancel()

    def _fail(self, exc: Exception) -> None:
        with self._error_lock:
            self.error = exc
            cancel = self._cancel
        if cancel is not None:
            cancel()

    def reraise(self) -> None:
        """Raise the source's exception, if it raised one."""
        if self.error is not None:
            raise self.error from None


class Replay(_Kept):
    """:class:`_Kept` for a blocking source; gRPC reads :meth:`attempt` in a thread of its own."""

    def __init__(self, source: Iterable[bytes]) -> None:
        super().__init__()
        self._source = self._guarded(iter(source))
        self._lock = threading.Lock()

    def _guarded(self, source: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from source
        except Exception as exc:  # kept for reraise(): the caller gets it, not gRPC
            self._fail(exc)

    def attempt(self) -> Iterator[bytes]:
        """The audio for one attempt: what was kept, then the rest of the source."""
        pos = 0
        while True:
            with self._lock:
                chunk, pos = self._recall(pos) or self._store(next(self._source, None))
            if chunk is None:
                return
            yield chunk


class AsyncReplay(_Kept):
    """:class:`_Kept` for an async source."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        super().__init__()
        self._source = self._guarded(source)
        self._lock = asyncio.Lock()

    async def _guarded(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in source:
                yield chunk
        except Exception as exc:  # kept for reraise(): the caller gets it, not gRPC
            self._fail(exc)

    async def attempt(self) -> AsyncIterator[bytes]:
        """See :meth:`Replay.attempt`."""
        pos = 0
        while True:
            async with self._lock:
                chunk, pos = self._recall(pos) or self._store(await anext(self._source, None))
            if chunk is None:
                return
            yield chunk
