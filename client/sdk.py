"""Client SDK for the ``asr.v1.Recognizer`` gRPC service: :class:`Client` (blocking) and :class:`AsyncClient`.

>>> from client import Client, RecognitionConfig
>>> with Client("localhost:50051") as asr:
...     print(asr.recognize("speech.wav").text)
...     for result in asr.stream("speech.wav", realtime=True):
...         print(result.is_final, result.text)

Both clients have the same surface: ``recognize``, ``stream``, ``list_models`` and ``close``. What they share
lives once, in :class:`BaseClient`: the settings, channel options and TLS credentials, the token sent as call
metadata, request building, the retry policy and error mapping. ``Client`` and ``AsyncClient`` only do the
I/O, blocking or with ``grpc.aio``. Failures raise the exceptions of :mod:`client.errors`. Only UNAVAILABLE is
retried, with exponential backoff, and a stream only before its first response (the audio sent so far is kept
until then and replayed: :mod:`client.stream_source`).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

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
    split_at_quiet,
    to_linear16,
)
from client.stream_source import (
    AsyncReplay,
    Chunk,
    Replay,
    async_chunks,
    check_chunk,
    list_chunks,
    open_source,
    whole_wave,
)
from client.types import ModelInfo, RecognitionConfig, StreamingConfig, StreamingResult, Transcript

__all__ = ["AsyncClient", "BaseClient", "Client"]

Pem = bytes | str | os.PathLike | None  # PEM bytes or a path to a PEM file
StreamSource = AudioSource | Iterable[Chunk]
AsyncStreamSource = AudioSource | Iterable[Chunk] | AsyncIterable[Chunk]

R = TypeVar("R", Replay, AsyncReplay)

DEFAULT_TARGET = "localhost:50051"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 - 16 * 1024  # the server's default limit, less room for the config
LONG_AUDIO_SECONDS = 240.0  # longer recordings go as a stream (the server's Recognize takes up to 300 s)
STREAM_PIECE_SECONDS = 540.0  # longer still: several streams cut at quiet points (a stream takes 600 s)


def _pem(value: Pem) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _default_model(models: list[ModelInfo]) -> str:
    return next((m.name for m in models if m.is_default), "")


def _too_big(audio: AudioSource, request: pb.RecognizeRequest, max_bytes: int) -> bool:
    """Whether to send a recording as a stream: over the message size or the Recognize duration limit."""
    if request.ByteSize() > max_bytes:
        return True
    if isinstance(audio, np.ndarray):
        return False
    return audio_duration(io.BytesIO(audio) if isinstance(audio, bytes) else audio) > LONG_AUDIO_SECONDS


@dataclass
class _LongAudio:
    """A recording too long or too large for Recognize, sent as streams cut at quiet points, and what they
    gave back."""

    pieces: list[tuple[float, list[bytes]]]  # (offset in s, LINEAR16 chunks), STREAM_PIECE_SECONDS at most
    rate: int
    duration: float  # of the whole recording, in s
    config: StreamingConfig
    finals: list[StreamingResult] = field(default_factory=list)  # in the recording's time
    request_ids: list[str] = field(default_factory=list)  # the server's id of each stream

    @classmethod
    def cut(
        cls, audio: AudioSource, config: RecognitionConfig, sample_rate: int | None, resample_to: int | None
    ) -> _LongAudio:
        """Decode and cut ``audio`` (blocking)."""
        wave, rate = whole_wave(audio, sample_rate, resample_to)
        pieces = [
            (start / rate, list(pcm_chunks(to_linear16(wave[start:end]), rate, 1000)))
            for start, end in split_at_quiet(wave, rate, STREAM_PIECE_SECONDS)
        ]
        return cls(pieces, rate, len(wave) / rate, StreamingConfig(config, interim_results=False))

    def add(self, offset: float, results: list[StreamingResult]) -> None:
        """The final results of the piece at ``offset``."""
        self.finals += [convert.shifted(result, offset) for result in results]

    def transcript(self, model: str) -> Transcript:
        return convert.transcript_from_finals(self.finals, self.duration, model, ",".join(self.request_ids))


class _StreamState(Generic[R]):
    """One stream across its attempts: its first request (the config), its audio and what the server said."""

    def __init__(self, first: pb.StreamingRecognizeRequest, audio: R, request_ids: list[str] | None) -> None:
        self.first = first
        self.audio: R = audio
        self.request_ids = request_ids  # where to note the server's id of the stream, if given
        self.got_response = False  # after the first response a stream is not retried
        self.request_id = ""  # of the current attempt

    def start(self, call: Any) -> None:
        """A new attempt, on ``call``: cancelled when the audio source fails."""
        self.audio.attach(call.cancel)
        self.request_id = ""

    def results(self, response: pb.StreamingRecognizeResponse) -> list[StreamingResult]:
        if not self.got_response:
            self.got_response = True
            self.audio.stop_keeping()
            if self.request_ids is not None:
                self.request_ids.append(response.request_id)
        self.request_id = response.request_id
        return convert.streaming_results(response)


def _requests(
    first: pb.StreamingRecognizeRequest, audio: Iterable[bytes]
) -> Iterator[pb.StreamingRecognizeRequest]:
    return itertools.chain([first], (pb.StreamingRecognizeRequest(audio_content=c) for c in audio))


async def _arequests(
    first: pb.StreamingRecognizeRequest, audio: AsyncIterator[bytes]
) -> AsyncIterator[pb.StreamingRecognizeRequest]:
    yield first
    async for chunk in audio:
        yield pb.StreamingRecognizeRequest(audio_content=chunk)


class BaseClient:
    """What :class:`Client` and :class:`AsyncClient` share: settings, channel, request building, retries and
    error mapping. Not used on its own."""

    _grpc: ClassVar[Any] = grpc  # the module whose channels the client opens: grpc, or grpc.aio

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
        """``target`` is ``HOST:PORT``. TLS: ``tls=True`` uses the system roots; ``root_certificates`` (PEM
        bytes or path) trusts a private CA; ``client_certificate`` + ``client_key`` add mutual TLS; or pass
        ready-made gRPC ``credentials``. ``token`` is sent as ``authorization: Bearer TOKEN``. ``timeout`` is
        the deadline of ``recognize`` and ``list_models`` calls in seconds (streams have none unless given; a
        recording that ``recognize`` sends as several streams has it for each of them). ``retries`` is how
        many times an UNAVAILABLE call is tried again, waiting ``backoff``, 2 x ``backoff``, ... (at most
        ``max_backoff``). ``max_message_bytes``: a larger ``recognize`` request goes as a stream.
        """
        if not target:
            raise ValueError("target must be HOST:PORT, got an empty string")
        if (client_certificate is None) != (client_key is None):
            raise ValueError("mutual TLS needs both client_certificate and client_key")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self._target = target
        self._credentials = credentials
        if credentials is None and (tls or root_certificates or client_certificate):
            self._credentials = grpc.ssl_channel_credentials(
                _pem(root_certificates), _pem(client_key), _pem(client_certificate)
            )
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._max_message_bytes = max_message_bytes
        self._channel_options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # gRPC waits between reconnection attempts on its own (1 s, then longer) and fails calls at once
            # meanwhile. Align its schedule with ours so that a retry after a backoff really tries to connect.
            ("grpc.initial_reconnect_backoff_ms", max(1, int(backoff * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(max_backoff * 1000))),
        ]
        self._channel = self._open_channel(self._grpc)
        self._stub = asr_pb2_grpc.RecognizerStub(self._channel)

    @property
    def target(self) -> str:
        return self._target

    def _open_channel(self, kind: Any) -> Any:
        """A channel from ``grpc`` (blocking) or ``grpc.aio`` with this client's settings."""
        if self._credentials is not None:
            return kind.secure_channel(self._target, self._credentials, options=self._channel_options)
        return kind.insecure_channel(self._target, options=self._channel_options)

    def _deadline(self, timeout: float | None) -> float | None:
        """A unary call's deadline: ``timeout``, else the client's."""
        return timeout or self._timeout

    def _retry_delay(
        self, exc: grpc.RpcError, attempt: int, stream: _StreamState[Any] | None = None
    ) -> float:
        """Seconds to wait before trying ``exc``'s call again (retry ``attempt``, 0-based), or the SDK's error
        for it, raised. Only UNAVAILABLE is retried, and a stream only before its first response. The wait is
        exponential with "equal jitter"."""
        if errors.is_retryable(exc) and attempt < self._retries and not (stream and stream.got_response):
            d = min(self._max_backoff, self._backoff * 2**attempt)
            return d / 2 + random.uniform(0, d / 2)
        raise errors.from_grpc(exc, self._target, stream.request_id if stream else "") from exc

    def _attempt(self, state: _StreamState[Any], requests: Any, timeout: float | None) -> Any:
        """The call of a stream's next attempt, sending ``requests``."""
        call = self._stub.StreamingRecognize(requests, timeout=timeout, metadata=self._metadata)
        state.start(call)
        return call

    def _recognize_request(
        self, audio: AudioSource, config: RecognitionConfig, sample_rate: int | None, resample_to: int | None
    ) -> pb.RecognizeRequest | None:
        """The Recognize request for a recording, or None when it is to go as streams (blocking: decodes)."""
        request = convert.recognize_request(audio, config, sample_rate, resample_to)
        return None if _too_big(audio, request, self._max_message_bytes) else request


class Client(BaseClient):
    """A blocking client. Thread-safe: one client can serve many threads (the CLI's ``--jobs``).

    Its arguments are :class:`BaseClient`'s (``Client("host:50051", tls=True, token=..., timeout=...)``).
    """

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, rpc: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        for attempt in itertools.count():
            try:
                return rpc(request, timeout=self._deadline(timeout), metadata=self._metadata)
            except grpc.RpcError as exc:
                time.sleep(self._retry_delay(exc, attempt))
        raise AssertionError("unreachable")

    def recognize(
        self, audio: AudioSource, config: RecognitionConfig | None = None, *,
        sample_rate: int | None = None, resample_to: int | None = None, timeout: float | None = None,
    ) -> Transcript:
        """Recognise a whole recording: a path, encoded bytes (WAV, FLAC, Ogg/Opus, MP3), or a mono array.

        ``sample_rate`` is the rate of an array (float32 in [-1, 1] or int16); ``resample_to`` resamples on
        the client first. Audio too large for one message or over ``LONG_AUDIO_SECONDS`` is sent as a stream
        instead (no pacing), or as several cut at quiet points; ``timeout`` (else the client's) is then the
        deadline of each stream, and ``request_id`` lists their ids, comma-separated.
        """
        config = config or RecognitionConfig()
        request = self._recognize_request(audio, config, sample_rate, resample_to)
        if request is None:
            return self._recognize_long(audio, config, sample_rate, resample_to, self._deadline(timeout))
        return convert.transcript(self._unary(self._stub.Recognize, request, timeout))

    def _recognize_long(
        self, audio: AudioSource, config: RecognitionConfig, sample_rate: int | None,
        resample_to: int | None, timeout: float | None,
    ) -> Transcript:
        """A recording too long or too large for Recognize, as streams of ``timeout`` seconds each at most."""
        long = _LongAudio.cut(audio, config, sample_rate, resample_to)
        for offset, chunks in long.pieces:
            long.add(offset, list(self._stream(chunks, long.rate, long.config, timeout, long.request_ids)))
        return long.transcript(config.model or _default_model(self.list_models(timeout=timeout)))

    def stream(
        self, audio: StreamSource, config: StreamingConfig | None = None, *,
        sample_rate: int | None = None, resample_to: int | None = None, realtime: bool = False,
        chunk_ms: int = DEFAULT_CHUNK_MS, timeout: float | None = None,
    ) -> Iterator[StreamingResult]:
        """Stream audio and iterate over the results, interim (``is_final=False``) and final.

        ``audio`` is a whole recording (as for :meth:`recognize`, cut into ``chunk_ms`` chunks) or an iterable
        of chunks: LINEAR16 bytes or numpy arrays at ``sample_rate`` (default 16000), e.g. from a microphone.
        ``realtime`` sends no faster than the audio plays. Stopping the iteration cancels the stream.
        """
        config = config or StreamingConfig()
        chunks, rate = open_source(audio, sample_rate, resample_to, chunk_ms)
        source: Iterable[bytes] = chunks if chunks is not None else map(check_chunk, audio)  # type: ignore
        if realtime:
            source = pace(source, rate * 2)
        return self._stream(source, rate, config, timeout)

    def _stream(
        self, source: Iterable[bytes], rate: int, config: StreamingConfig, timeout: float | None,
        request_ids: list[str] | None = None,
    ) -> Iterator[StreamingResult]:
        """Results of one stream, retried while UNAVAILABLE before its first response. The server's id of
        the stream is appended to ``request_ids`` when that is given."""
        state = _StreamState(convert.streaming_config(config, rate), Replay(source), request_ids)
        audio = state.audio
        for attempt in itertools.count():
            requests = _requests(state.first, audio.attempt())
            call = self._attempt(state, requests, timeout)
            try:
                for response in call:
                    yield from state.results(response)
                audio.reraise()
                return
            except grpc.RpcError as exc:
                audio.reraise()
                time.sleep(self._retry_delay(exc, attempt, state))
            finally:
                call.cancel()  # a no-op once finished; stops the call when the caller stops iterating

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        return convert.models(self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout))


_DEADLINE = "Deadline Exceeded"  # gRPC's own wording


def _past(started: float, timeout: float | None) -> bool:
    """Whether a call started at ``started`` (``time.monotonic()``) has run past its ``timeout``."""
    return timeout is not None and time.monotonic() - started >= timeout


def _masked_by_core(exc: grpc.RpcError) -> bool:
    code = exc.code() if callable(getattr(exc, "code", None)) else None  # type: ignore[attr-defined]
    details = exc.details() if callable(getattr(exc, "details", None)) else ""  # type: ignore[attr-defined]
    return code == grpc.StatusCode.INTERNAL and details == "Internal error from Core"


def _cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (Python 3.11+; False where that is unknown)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return bool(cancelling and cancelling())


class AsyncClient(BaseClient):
    """The asyncio twin of :class:`Client` (``grpc.aio``): same arguments, awaitable calls, async iteration.

    >>> async with AsyncClient("localhost:50051") as asr:
    ...     transcript = await asr.recognize("speech.wav")
    ...     async for result in asr.stream("speech.wav"):
    ...         print(result.text)
    """

    _grpc = grpc.aio

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, rpc: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        for attempt in itertools.count():
            try:
                return await rpc(request, timeout=self._deadline(timeout), metadata=self._metadata)
            except grpc.RpcError as exc:
                await asyncio.sleep(self._retry_delay(exc, attempt))
        raise AssertionError("unreachable")

    async def recognize(
        self, audio: AudioSource, config: RecognitionConfig | None = None, *,
        sample_rate: int | None = None, resample_to: int | None = None, timeout: float | None = None,
    ) -> Transcript:
        """See :meth:`Client.recognize`."""
        config = config or RecognitionConfig()
        request = await asyncio.to_thread(self._recognize_request, audio, config, sample_rate, resample_to)
        if request is None:
            deadline = self._deadline(timeout)
            return await self._recognize_long(audio, config, sample_rate, resample_to, deadline)
        return convert.transcript(await self._unary(self._stub.Recognize, request, timeout))

    async def _recognize_long(
        self, audio: AudioSource, config: RecognitionConfig, sample_rate: int | None,
        resample_to: int | None, timeout: float | None,
    ) -> Transcript:
        """See :meth:`Client._recognize_long`."""
        long = await asyncio.to_thread(_LongAudio.cut, audio, config, sample_rate, resample_to)
        for offset, chunks in long.pieces:
            results = self._stream(list_chunks(chunks), long.rate, long.config, timeout, long.request_ids)
            long.add(offset, [r async for r in results])
        return long.transcript(config.model or _default_model(await self.list_models(timeout=timeout)))

    async def stream(
        self, audio: AsyncStreamSource, config: StreamingConfig | None = None, *,
        sample_rate: int | None = None, resample_to: int | None = None, realtime: bool = False,
        chunk_ms: int = DEFAULT_CHUNK_MS, timeout: float | None = None,
    ) -> AsyncIterator[StreamingResult]:
        """See :meth:`Client.stream`; ``audio`` may also be an async iterable of chunks."""
        config = config or StreamingConfig()
        chunks, rate = await asyncio.to_thread(open_source, audio, sample_rate, resample_to, chunk_ms)
        source = list_chunks(chunks) if chunks is not None else async_chunks(audio)  # type: ignore[arg-type]
        if realtime:
            source = apace(source, rate * 2)
        async for result in self._stream(source, rate, config, timeout):
            yield result

    async def _stream(
        self, source: AsyncIterator[bytes], rate: int, config: StreamingConfig, timeout: float | None,
        request_ids: list[str] | None = None,
    ) -> AsyncIterator[StreamingResult]:
        """See :meth:`Client._stream`."""
        state = _StreamState(convert.streaming_config(config, rate), AsyncReplay(source), request_ids)
        audio = state.audio
        for attempt in itertools.count():
            started = time.monotonic()
            requests = _arequests(state.first, audio.attempt())
            call = self._attempt(state, requests, timeout)
            try:
                async for response in call:
                    for result in state.results(response):
                        yield result
                audio.reraise()
                return
            except asyncio.CancelledError:
                # grpc.aio ends a call cancelled on this side with CancelledError: the audio source's doing
                # when it failed; a call that ended by itself (its deadline passed while the audio was being
                # sent) can surface the same way; otherwise this task is being cancelled.
                if _cancelled_from_outside():
                    raise
                audio.reraise()
                error = await self._ended_with(call, started, timeout, state.request_id)
                if error is None:
                    raise
                raise error from None
            except grpc.RpcError as exc:
                audio.reraise()
                exc = await self._unmasked(exc, state, started, timeout)
                await asyncio.sleep(self._retry_delay(exc, attempt, state))
            finally:
                call.cancel()

    async def _ended_with(
        self, call: Any, started: float, timeout: float | None, request_id: str
    ) -> errors.ASRError | None:
        """The error of a call that grpc.aio ended with CancelledError, if it ended with a status of its
        own."""
        code, details = (await call.code(), await call.details()) if call.done() else (None, "")
        if _past(started, timeout):  # grpc.aio may end a call whose deadline passed mid-send so
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE
        if code in (None, grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            return None
        return errors.from_status(code, details or "", self._target, request_id)

    async def _unmasked(
        self, exc: grpc.RpcError, state: _StreamState[AsyncReplay], started: float, timeout: float | None
    ) -> grpc.RpcError:
        """``exc``, or the status it stands for when grpc.aio reports "Internal error from Core" instead: a
        deadline that passed (raised as DeadlineExceeded), or what :meth:`_probe` finds."""
        if not _masked_by_core(exc):
            return exc
        if _past(started, timeout):
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            raise errors.from_status(code, _DEADLINE, self._target, state.request_id) from exc
        if state.got_response:
            return exc
        return await self._probe(state.first, timeout) or exc

    async def _probe(
        self, first: pb.StreamingRecognizeRequest, timeout: float | None
    ) -> grpc.RpcError | None:
        """The status a stream really ended with, when grpc.aio hid it behind "Internal error from Core".

        grpc.aio replaces the server's status with INTERNAL when the server ends a stream (bad token, too many
        streams, bad config) while the client is still writing (grpc/grpc#36066). The blocking API reports the
        server's status, so ask again through it with the config alone.
        """

        def ask() -> grpc.RpcError | None:
            with self._open_channel(grpc) as channel:
                call = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(
                    iter([first]), timeout=self._deadline(timeout), metadata=self._metadata
                )
                try:
                    for _ in call:
                        pass
                except grpc.RpcError as exc:
                    return exc
            return None

        return await asyncio.to_thread(ask)

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        return convert.models(await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout))
