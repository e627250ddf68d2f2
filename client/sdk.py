"""Client SDK for the ``asr.v1.Recognizer`` gRPC service: :class:`Client` (blocking) and :class:`AsyncClient`.

>>> from client import Client, RecognitionConfig
>>> with Client("localhost:50051") as asr:
...     print(asr.recognize("speech.wav").text)
...     for result in asr.stream("speech.wav", realtime=True):
...         print(result.is_final, result.text)

Both clients have the same surface: ``recognize``, ``stream``, ``list_models`` and ``close``. Failures raise
the exceptions of :mod:`client.errors`. Only UNAVAILABLE is retried, with exponential backoff, and a stream
only before its first response (the audio sent so far is kept until then and replayed).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import random
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from asr_grpc import asr_pb2 as pb
from asr_grpc import asr_pb2_grpc
from client import convert, errors
from client.audio import (
    DEFAULT_CHUNK_MS,
    AudioSource,
    apace,
    audio_duration,
    pace,
    pcm_chunks,
    resample,
    split_at_quiet,
    to_linear16,
)
from client.types import ModelInfo, RecognitionConfig, StreamingConfig, StreamingResult, Transcript

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
Pem = bytes | str | os.PathLike | None  # PEM bytes or a path to a PEM file
Chunk = bytes | np.ndarray  # LINEAR16 bytes, or float32 / int16 samples
StreamSource = AudioSource | Iterable[Chunk]
AsyncStreamSource = AudioSource | Iterable[Chunk] | AsyncIterable[Chunk]

DEFAULT_TARGET = "localhost:50051"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 - 16 * 1024  # the server's default limit, less room for the config
LONG_AUDIO_SECONDS = 240.0  # longer recordings go as a stream (the server's Recognize takes up to 300 s)
STREAM_PIECE_SECONDS = 540.0  # longer still: several streams cut at quiet points (a stream takes 600 s)


def _pem(value: Pem) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class _Options:
    """Connection settings shared by both clients."""

    def __init__(
        self,
        target: str,
        tls: bool,
        root_certificates: Pem,
        client_certificate: Pem,
        client_key: Pem,
        credentials: grpc.ChannelCredentials | None,
        token: str | None,
        timeout: float | None,
        retries: int,
        backoff: float,
        max_backoff: float,
        max_message_bytes: int,
    ) -> None:
        if not target:
            raise ValueError("target must be HOST:PORT, got an empty string")
        if (client_certificate is None) != (client_key is None):
            raise ValueError("mutual TLS needs both client_certificate and client_key")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.target = target
        self.credentials = credentials
        if credentials is None and (tls or root_certificates or client_certificate):
            self.credentials = grpc.ssl_channel_credentials(
                _pem(root_certificates), _pem(client_key), _pem(client_certificate)
            )
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_message_bytes = max_message_bytes
        self.channel_options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # gRPC waits between reconnection attempts on its own (1 s, then longer) and fails calls at once
            # meanwhile. Align its schedule with ours so that a retry after a backoff really tries to connect.
            ("grpc.initial_reconnect_backoff_ms", max(1, int(backoff * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(max_backoff * 1000))),
        ]

    def channel(self, kind: Any) -> Any:
        """A channel from ``grpc`` (blocking) or ``grpc.aio`` with these settings."""
        if self.credentials is not None:
            return kind.secure_channel(self.target, self.credentials, options=self.channel_options)
        return kind.insecure_channel(self.target, options=self.channel_options)

    def delay(self, attempt: int) -> float:
        """Backoff before retry ``attempt`` (0-based): exponential with "equal jitter"."""
        d = min(self.max_backoff, self.backoff * 2**attempt)
        return d / 2 + random.uniform(0, d / 2)


def _check_chunk(chunk: Chunk) -> bytes:
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


def _chunk_rate(sample_rate: int | None) -> int:
    """The rate of a stream of chunks: ``sample_rate``, 16000 when not given."""
    convert.check_rate(sample_rate)
    return 16000 if sample_rate is None else sample_rate


def _default_model(models: list[ModelInfo]) -> str:
    return next((m.name for m in models if m.is_default), "")


class _SourceGuard:
    """Feeds a stream's audio source to gRPC, keeping the source's own exception for the caller.

    Left alone, gRPC turns an exception of the request iterator into a failed call: UNKNOWN "Exception
    iterating requests!" (blocking API) or a bare ``asyncio.CancelledError`` (``grpc.aio``). Here the
    exception is stored, the call cancelled and the audio ended; the stream then raises it unchanged.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None
        self._cancel: Callable[[], object] | None = None
        self._lock = threading.Lock()

    def attach(self, cancel: Callable[[], object]) -> None:
        """Cancel with ``cancel`` (the current attempt's call) when the source fails, or now if it has."""
        with self._lock:
            self._cancel = cancel
            failed = self.error is not None
        if failed:
            cancel()

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            self.error = exc
            cancel = self._cancel
        if cancel is not None:
            cancel()

    def reraise(self) -> None:
        """Raise the source's exception, if it raised one."""
        if self.error is not None:
            raise self.error from None

    def wrap(self, source: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from source
        except Exception as exc:  # kept for reraise(): the caller gets it, not gRPC
            self._fail(exc)

    async def awrap(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in source:
                yield chunk
        except Exception as exc:  # kept for reraise(): the caller gets it, not gRPC
            self._fail(exc)


def _cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (Python 3.11+; False where that is unknown)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return bool(cancelling and cancelling())


def _whole(audio: object) -> bool:
    return isinstance(audio, (str, os.PathLike, bytes, np.ndarray))


def _wave(audio: AudioSource, sample_rate: int | None, resample_to: int | None) -> tuple[np.ndarray, int]:
    """A whole recording as float32 samples and their rate, resampled on the client if asked."""
    wave, rate = convert.linear_audio(audio, sample_rate)
    if resample_to:
        wave, rate = resample(wave, rate, resample_to), resample_to
    return wave, rate


def _decode(
    audio: AudioSource, sample_rate: int | None, resample_to: int | None, chunk_ms: int
) -> tuple[list[bytes], int, float]:
    """LINEAR16 chunks of a whole recording, its rate and its duration in seconds."""
    wave, rate = _wave(audio, sample_rate, resample_to)
    return list(pcm_chunks(to_linear16(wave), rate, chunk_ms)), rate, len(wave) / rate


def _long_pieces(
    audio: AudioSource, sample_rate: int | None, resample_to: int | None
) -> tuple[list[tuple[float, list[bytes]]], int, float]:
    """A long recording as streams of at most ``STREAM_PIECE_SECONDS``: ``(offset s, LINEAR16 chunks)`` each,
    with the rate and the whole duration."""
    wave, rate = _wave(audio, sample_rate, resample_to)
    pieces = [
        (start / rate, list(pcm_chunks(to_linear16(wave[start:end]), rate, 1000)))
        for start, end in split_at_quiet(wave, rate, STREAM_PIECE_SECONDS)
    ]
    return pieces, rate, len(wave) / rate


def _too_big(audio: AudioSource, request: pb.RecognizeRequest, max_bytes: int) -> bool:
    """Whether to send a recording as a stream: over the message size or the Recognize duration limit."""
    if request.ByteSize() > max_bytes:
        return True
    if isinstance(audio, np.ndarray):
        return False
    return audio_duration(io.BytesIO(audio) if isinstance(audio, bytes) else audio) > LONG_AUDIO_SECONDS


_DEADLINE = "Deadline Exceeded"  # gRPC's own wording


def _past(started: float, timeout: float | None) -> bool:
    """Whether a call started at ``started`` (``time.monotonic()``) has run past its ``timeout``."""
    return timeout is not None and time.monotonic() - started >= timeout


def _masked_by_core(exc: grpc.RpcError) -> bool:
    code = exc.code() if callable(getattr(exc, "code", None)) else None  # type: ignore[attr-defined]
    details = exc.details() if callable(getattr(exc, "details", None)) else ""  # type: ignore[attr-defined]
    return code == grpc.StatusCode.INTERNAL and details == "Internal error from Core"


class _Replay:
    """Hands a stream's audio to successive attempts, keeping what was sent until the first response."""

    def __init__(self, source: Iterator[bytes]) -> None:
        self._source = source
        self._kept: list[bytes] = []
        self._keep = True
        self._exhausted = False
        self._lock = threading.Lock()

    def stop_keeping(self) -> None:
        self._keep = False

    def attempt(self) -> Iterator[bytes]:
        pos = 0
        while True:
            with self._lock:
                if pos < len(self._kept):
                    chunk: bytes | None = self._kept[pos]
                    pos += 1
                elif self._exhausted:
                    return
                else:
                    chunk = next(self._source, None)
                    if chunk is None:
                        self._exhausted = True
                        return
                    if self._keep:
                        self._kept.append(chunk)
                        pos += 1
            assert chunk is not None
            yield chunk


class _AsyncReplay:
    """:class:`_Replay` for async sources."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._kept: list[bytes] = []
        self._keep = True
        self._exhausted = False
        self._lock = asyncio.Lock()

    def stop_keeping(self) -> None:
        self._keep = False

    async def attempt(
        self, first: pb.StreamingRecognizeRequest
    ) -> AsyncIterator[pb.StreamingRecognizeRequest]:
        yield first
        pos = 0
        while True:
            async with self._lock:
                if pos < len(self._kept):
                    chunk = self._kept[pos]
                    pos += 1
                elif self._exhausted:
                    return
                else:
                    try:
                        chunk = await self._source.__anext__()
                    except StopAsyncIteration:
                        self._exhausted = True
                        return
                    if self._keep:
                        self._kept.append(chunk)
                        pos += 1
            yield pb.StreamingRecognizeRequest(audio_content=chunk)


class Client:
    """A blocking client. Thread-safe: one client can serve many threads (the CLI's ``--jobs``).

    ``target`` is ``HOST:PORT``. TLS: ``tls=True`` uses the system roots; ``root_certificates`` (PEM bytes or
    path) trusts a private CA; ``client_certificate`` + ``client_key`` add mutual TLS; or pass ready-made gRPC
    ``credentials``. ``token`` is sent as ``authorization: Bearer TOKEN``. ``timeout`` is the deadline of
    ``recognize`` and ``list_models`` calls in seconds (streams have none unless given; a recording that
    ``recognize`` sends as several streams has it for each of them). ``retries`` is how
    many times an UNAVAILABLE call is tried again, waiting ``backoff``, 2 x ``backoff``, ... (at most
    ``max_backoff``).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool = False,
        root_certificates: Pem = None,
        client_certificate: Pem = None,
        client_key: Pem = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        timeout: float | None = 120.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._opts = _Options(
            target, tls, root_certificates, client_certificate, client_key, credentials, token, timeout,
            retries, backoff, max_backoff, max_message_bytes,
        )
        self._channel = self._opts.channel(grpc)
        self._stub = asr_pb2_grpc.RecognizerStub(self._channel)

    @property
    def target(self) -> str:
        return self._opts.target

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, call: Callable[[], T]) -> T:
        for attempt in itertools.count():
            try:
                return call()
            except grpc.RpcError as exc:
                if errors.is_retryable(exc) and attempt < self._opts.retries:
                    time.sleep(self._opts.delay(attempt))
                    continue
                raise errors.from_grpc(exc, self._opts.target) from exc
        raise AssertionError("unreachable")

    def recognize(
        self,
        audio: AudioSource,
        config: RecognitionConfig | None = None,
        *,
        sample_rate: int | None = None,
        resample_to: int | None = None,
        timeout: float | None = None,
    ) -> Transcript:
        """Recognise a whole recording: a path, encoded bytes (WAV, FLAC, Ogg/Opus, MP3), or a mono array.

        ``sample_rate`` is the rate of an array (float32 in [-1, 1] or int16); ``resample_to`` resamples on
        the client first. Audio too large for one message or over ``LONG_AUDIO_SECONDS`` is sent as a stream
        instead (no pacing), or as several cut at quiet points; ``timeout`` (else the client's) is then the
        deadline of each stream, and ``request_id`` lists their ids, comma-separated.
        """
        config = config or RecognitionConfig()
        request = convert.recognize_request(audio, config, sample_rate, resample_to)
        metadata, deadline = self._opts.metadata, timeout or self._opts.timeout
        if _too_big(audio, request, self._opts.max_message_bytes):
            return self._recognize_long(audio, config, sample_rate, resample_to, deadline)
        response = self._unary(lambda: self._stub.Recognize(request, timeout=deadline, metadata=metadata))
        return convert.transcript(response)

    def _recognize_long(
        self,
        audio: AudioSource,
        config: RecognitionConfig,
        sample_rate: int | None,
        resample_to: int | None,
        timeout: float | None,
    ) -> Transcript:
        """A recording too long or too large for Recognize, as streams of ``timeout`` seconds each at most."""
        pieces, rate, duration = _long_pieces(audio, sample_rate, resample_to)
        stream_config = StreamingConfig(config, interim_results=False)
        request_ids: list[str] = []
        finals = [
            convert.shifted(result, offset)
            for offset, chunks in pieces
            for result in self._stream(chunks, rate, stream_config, timeout, request_ids)
        ]
        model = config.model or _default_model(self.list_models(timeout=timeout))
        return convert.transcript_from_finals(finals, duration, model, ",".join(request_ids))

    def stream(
        self,
        audio: StreamSource,
        config: StreamingConfig | None = None,
        *,
        sample_rate: int | None = None,
        resample_to: int | None = None,
        realtime: bool = False,
        chunk_ms: int = DEFAULT_CHUNK_MS,
        timeout: float | None = None,
    ) -> Iterator[StreamingResult]:
        """Stream audio and iterate over the results, interim (``is_final=False``) and final.

        ``audio`` is a whole recording (as for :meth:`recognize`, cut into ``chunk_ms`` chunks) or an iterable
        of chunks: LINEAR16 bytes or numpy arrays at ``sample_rate`` (default 16000), e.g. from a microphone.
        ``realtime`` sends no faster than the audio plays. Stopping the iteration cancels the stream.
        """
        config = config or StreamingConfig()
        if _whole(audio):
            chunks, rate, _ = _decode(audio, sample_rate, resample_to, chunk_ms)  # type: ignore[arg-type]
            source: Iterable[bytes] = chunks
        else:
            if resample_to:
                raise ValueError("resample_to works on whole recordings; send chunks at their sample_rate")
            rate = _chunk_rate(sample_rate)
            source = (_check_chunk(c) for c in audio)  # type: ignore[union-attr,arg-type]
        if realtime:
            source = pace(source, rate * 2)
        return self._stream(source, rate, config, timeout)

    def _stream(
        self,
        source: Iterable[bytes],
        rate: int,
        config: StreamingConfig,
        timeout: float | None,
        request_ids: list[str] | None = None,
    ) -> Iterator[StreamingResult]:
        """Results of one stream, retried while UNAVAILABLE before its first response. The server's id of
        the stream is appended to ``request_ids`` when that is given."""
        first = convert.streaming_config(config, rate)
        guard = _SourceGuard()
        replay = _Replay(guard.wrap(iter(source)))
        got_response = False
        for attempt in itertools.count():
            requests = itertools.chain(
                [first], (pb.StreamingRecognizeRequest(audio_content=c) for c in replay.attempt())
            )
            call = self._stub.StreamingRecognize(requests, timeout=timeout, metadata=self._opts.metadata)
            guard.attach(call.cancel)
            request_id = ""
            try:
                for response in call:
                    if not got_response:
                        got_response = True
                        replay.stop_keeping()
                        if request_ids is not None:
                            request_ids.append(response.request_id)
                    request_id = response.request_id
                    yield from convert.streaming_results(response)
                guard.reraise()
                return
            except grpc.RpcError as exc:
                guard.reraise()
                if not got_response and errors.is_retryable(exc) and attempt < self._opts.retries:
                    time.sleep(self._opts.delay(attempt))
                    continue
                raise errors.from_grpc(exc, self._opts.target, request_id) from exc
            finally:
                call.cancel()  # a no-op once finished; stops the call when the caller stops iterating

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        metadata, deadline = self._opts.metadata, timeout or self._opts.timeout
        response = self._unary(
            lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=deadline, metadata=metadata)
        )
        return convert.models(response)


async def _async_chunks(audio: Iterable[Chunk] | AsyncIterable[Chunk]) -> AsyncIterator[bytes]:
    if isinstance(audio, AsyncIterable):
        async for chunk in audio:
            yield _check_chunk(chunk)
        return
    it = iter(audio)
    done = object()
    while True:
        # A sync iterator may block (a microphone); read it in a thread so the event loop keeps running.
        chunk = await asyncio.to_thread(next, it, done)  # type: ignore[arg-type]
        if chunk is done:
            return
        yield _check_chunk(chunk)  # type: ignore[arg-type]


async def _list_chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class AsyncClient:
    """The asyncio twin of :class:`Client` (``grpc.aio``): same arguments, awaitable calls, async iteration.

    >>> async with AsyncClient("localhost:50051") as asr:
    ...     transcript = await asr.recognize("speech.wav")
    ...     async for result in asr.stream("speech.wav"):
    ...         print(result.text)
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool = False,
        root_certificates: Pem = None,
        client_certificate: Pem = None,
        client_key: Pem = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        timeout: float | None = 120.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._opts = _Options(
            target, tls, root_certificates, client_certificate, client_key, credentials, token, timeout,
            retries, backoff, max_backoff, max_message_bytes,
        )
        self._channel = self._opts.channel(grpc.aio)
        self._stub = asr_pb2_grpc.RecognizerStub(self._channel)

    @property
    def target(self) -> str:
        return self._opts.target

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in itertools.count():
            try:
                return await call()
            except grpc.RpcError as exc:
                if errors.is_retryable(exc) and attempt < self._opts.retries:
                    await asyncio.sleep(self._opts.delay(attempt))
                    continue
                raise errors.from_grpc(exc, self._opts.target) from exc
        raise AssertionError("unreachable")

    async def recognize(
        self,
        audio: AudioSource,
        config: RecognitionConfig | None = None,
        *,
        sample_rate: int | None = None,
        resample_to: int | None = None,
        timeout: float | None = None,
    ) -> Transcript:
        """See :meth:`Client.recognize`."""
        config = config or RecognitionConfig()
        request = await asyncio.to_thread(convert.recognize_request, audio, config, sample_rate, resample_to)
        metadata, deadline = self._opts.metadata, timeout or self._opts.timeout
        if await asyncio.to_thread(_too_big, audio, request, self._opts.max_message_bytes):
            return await self._recognize_long(audio, config, sample_rate, resample_to, deadline)
        response: Any = await self._unary(
            lambda: self._stub.Recognize(request, timeout=deadline, metadata=metadata)
        )
        return convert.transcript(response)

    async def _recognize_long(
        self,
        audio: AudioSource,
        config: RecognitionConfig,
        sample_rate: int | None,
        resample_to: int | None,
        timeout: float | None,
    ) -> Transcript:
        """See :meth:`Client._recognize_long`."""
        pieces, rate, duration = await asyncio.to_thread(_long_pieces, audio, sample_rate, resample_to)
        stream_config = StreamingConfig(config, interim_results=False)
        request_ids: list[str] = []
        finals = [
            convert.shifted(result, offset)
            for offset, chunks in pieces
            async for result in self._stream(_list_chunks(chunks), rate, stream_config, timeout, request_ids)
        ]
        model = config.model or _default_model(await self.list_models(timeout=timeout))
        return convert.transcript_from_finals(finals, duration, model, ",".join(request_ids))

    async def stream(
        self,
        audio: AsyncStreamSource,
        config: StreamingConfig | None = None,
        *,
        sample_rate: int | None = None,
        resample_to: int | None = None,
        realtime: bool = False,
        chunk_ms: int = DEFAULT_CHUNK_MS,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamingResult]:
        """See :meth:`Client.stream`; ``audio`` may also be an async iterable of chunks."""
        config = config or StreamingConfig()
        if _whole(audio):
            chunks, rate, _ = await asyncio.to_thread(
                _decode, audio, sample_rate, resample_to, chunk_ms  # type: ignore[arg-type]
            )
            source = _list_chunks(chunks)
        else:
            if resample_to:
                raise ValueError("resample_to works on whole recordings; send chunks at their sample_rate")
            rate = _chunk_rate(sample_rate)
            source = _async_chunks(audio)  # type: ignore[arg-type]
        if realtime:
            source = apace(source, rate * 2)
        async for result in self._stream(source, rate, config, timeout):
            yield result

    async def _stream(
        self,
        source: AsyncIterator[bytes],
        rate: int,
        config: StreamingConfig,
        timeout: float | None,
        request_ids: list[str] | None = None,
    ) -> AsyncIterator[StreamingResult]:
        """See :meth:`Client._stream`."""
        first = convert.streaming_config(config, rate)
        guard = _SourceGuard()
        replay = _AsyncReplay(guard.awrap(source))
        got_response = False
        for attempt in itertools.count():
            started = time.monotonic()
            call = self._stub.StreamingRecognize(
                replay.attempt(first), timeout=timeout, metadata=self._opts.metadata
            )
            guard.attach(call.cancel)
            request_id = ""
            try:
                async for response in call:
                    if not got_response:
                        got_response = True
                        replay.stop_keeping()
                        if request_ids is not None:
                            request_ids.append(response.request_id)
                    request_id = response.request_id
                    for result in convert.streaming_results(response):
                        yield result
                guard.reraise()
                return
            except asyncio.CancelledError:
                # grpc.aio ends a call cancelled on this side with CancelledError: the guard's doing when the
                # source failed; a call that ended by itself (its deadline passed while the audio was being
                # sent) can surface the same way; otherwise this task is being cancelled.
                if _cancelled_from_outside():
                    raise
                guard.reraise()
                code, details = (await call.code(), await call.details()) if call.done() else (None, "")
                if _past(started, timeout):  # grpc.aio may end a call whose deadline passed mid-send so
                    code, details = grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE
                if code not in (None, grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                    raise errors.from_status(code, details or "", self._opts.target, request_id) from None
                raise
            except grpc.RpcError as exc:
                guard.reraise()
                if _masked_by_core(exc) and _past(started, timeout):  # (or as "Internal error from Core")
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    raise errors.from_status(code, _DEADLINE, self._opts.target, request_id) from exc
                if not got_response and _masked_by_core(exc):
                    exc = await self._probe(first, timeout) or exc
                if not got_response and errors.is_retryable(exc) and attempt < self._opts.retries:
                    await asyncio.sleep(self._opts.delay(attempt))
                    continue
                raise errors.from_grpc(exc, self._opts.target, request_id) from exc
            finally:
                call.cancel()

    async def _probe(
        self, first: pb.StreamingRecognizeRequest, timeout: float | None
    ) -> grpc.RpcError | None:
        """The status a stream really ended with, when grpc.aio hid it behind "Internal error from Core".

        grpc.aio replaces the server's status with INTERNAL when the server ends a stream (bad token, too many
        streams, bad config) while the client is still writing (grpc/grpc#36066). The blocking API reports the
        server's status, so ask again through it with the config alone.
        """
        o = self._opts

        def ask() -> grpc.RpcError | None:
            if o.credentials is not None:
                channel = grpc.secure_channel(o.target, o.credentials, options=o.channel_options)
            else:
                channel = grpc.insecure_channel(o.target, options=o.channel_options)
            with channel:
                call = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(
                    iter([first]), timeout=timeout or o.timeout, metadata=o.metadata
                )
                try:
                    for _ in call:
                        pass
                except grpc.RpcError as exc:
                    return exc
            return None

        return await asyncio.to_thread(ask)

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        metadata, deadline = self._opts.metadata, timeout or self._opts.timeout
        response: Any = await self._unary(
            lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=deadline, metadata=metadata)
        )
        return convert.models(response)
