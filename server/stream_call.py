"""One StreamingRecognize call: the first message's config, then audio read into a stream on one task while
results are decoded and sent on the other.

The reader task decodes each message's audio (containers off the event loop, since they are decoded again as
they grow), checks the stream's length limit, feeds the samples to the recognizer and wakes the sender; the
sender sends what the stream has, asks the model's batcher for the next decode when the stream is ready, and
ends when the stream is done. An error on either side ends the call with a :class:`CallError`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import numpy as np

from asr.audio import SAMPLE_RATE
from asr.streaming import Recognizer, Stream, StreamOptions, StreamResult
from asr_grpc import asr_pb2
from server.audio import ChunkDecoder, ContainerChunkDecoder, stream_decoder
from server.calls import CallError
from server.config import ServerConfig
from server.convert import duration, stream_options, streaming_result
from server.metrics import Metrics
from server.models import LoadedModel

log = logging.getLogger("server.servicer")  # the call's records keep the service's logger name

Chunker = ChunkDecoder | ContainerChunkDecoder


class StreamCall:
    """One StreamingRecognize call: a reader task feeds audio into the stream while :meth:`run` decodes and
    yields responses; one decode is in flight per stream at a time."""

    def __init__(
        self,
        pick_model: Callable[[str], LoadedModel],
        config: ServerConfig,
        metrics: Metrics,
        rid: str,
        requests: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
    ) -> None:
        self.pick_model = pick_model  # RecognitionConfig.model -> the model (ValueError for an unknown one)
        self.config = config
        self.metrics = metrics
        self.rid = rid
        self.requests = requests
        self.wake = asyncio.Event()
        self.error: CallError | None = None
        self.reader: asyncio.Task[None] | None = None
        self.stream: Stream | None = None
        self.arrivals: tuple[list[int], list[float]] = ([], [])  # stream sample count -> wall time it arrived
        self.t_start = time.perf_counter()
        self.event_sent = False  # END_OF_SINGLE_UTTERANCE

    async def _next(self) -> asr_pb2.StreamingRecognizeRequest | None:
        try:
            return await asyncio.wait_for(self.requests.__anext__(), self.config.idle_timeout_s)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise CallError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no message on the stream for {self.config.idle_timeout_s:g} s (idle timeout)",
            ) from None

    async def run(self) -> AsyncIterator[asr_pb2.StreamingRecognizeResponse]:
        model, sc, options, chunker = await self._open()
        cfg, rec = sc.config, model.recognizer
        stream = self.stream = rec.create_stream(options)
        log.info(
            "stream opened",
            extra={
                "request_id": self.rid,
                "model": model.name,
                "sample_rate": cfg.sample_rate_hertz,
                "interim": sc.interim_results,
            },
        )
        self.reader = asyncio.get_running_loop().create_task(self._read(rec, stream, chunker))
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.error is not None:
                raise self.error
            while True:  # an early final confirmed by the endpoint is out without decoding
                for response in self._pending(rec, stream, cfg):
                    yield response
                if not rec.is_ready(stream):
                    break
                await model.batcher.decode(stream)
            if self.error is not None:
                raise self.error
            if stream.is_done:
                break
        self._closed(stream)

    async def _open(self) -> tuple[LoadedModel, asr_pb2.StreamingRecognitionConfig, StreamOptions, Chunker]:
        """Read the first message, the config: the model, the config, the stream's options and the audio
        decoder. ``CallError(INVALID_ARGUMENT)`` for a bad one."""
        first = await self._next()
        if first is None:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before its streaming_config")
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry streaming_config")
        sc = first.streaming_config
        try:
            if not sc.HasField("config"):
                raise ValueError("StreamingRecognitionConfig.config is required")
            cfg = sc.config
            model = self.pick_model(cfg.model)
            options = stream_options(sc, model, self.config)
            encoding = cfg.encoding or asr_pb2.LINEAR16
            chunker = stream_decoder(encoding, cfg.sample_rate_hertz, cfg.audio_channel_count or 1)
        except ValueError as exc:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        return model, sc, options, chunker

    def _pending(
        self, rec: Recognizer, stream: Stream, cfg: asr_pb2.RecognitionConfig
    ) -> Iterator[asr_pb2.StreamingRecognizeResponse]:
        """What the stream has to send now: the end-of-utterance event, then its results."""
        if stream.ended and not self.event_sent:  # the event comes before the utterance's final
            self.event_sent = True
            yield self._response([], speech_event=asr_pb2.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE)
        for r in rec.pop_results(stream):
            self._observe(r)
            yield self._response([streaming_result(r, cfg)])

    def _closed(self, stream: Stream) -> None:
        early = self.metrics.early_finals
        early.labels("sent").inc(stream.early_finals_sent)
        early.labels("wasted").inc(stream.early_finals_wasted)
        log.info(
            "stream closed",
            extra={
                "request_id": self.rid,
                "audio_s": round(stream.duration, 3),
                "finals": stream.finals_emitted,
                "early_finals": stream.early_finals_sent,
                "early_finals_wasted": stream.early_finals_wasted,
                "elapsed_s": round(time.perf_counter() - self.t_start, 3),
            },
        )

    async def _read(self, rec: Recognizer, stream: Stream, chunker: Chunker) -> None:
        try:
            while True:
                msg = await self._next()
                if msg is None:
                    tail = await self._decode(chunker, None)
                    self._check_length(chunker)  # a FLAC stream's audio all comes at its end
                    self.metrics.audio_seconds.labels("StreamingRecognize").inc(len(tail) / SAMPLE_RATE)
                    if tail.size:
                        rec.accept_audio(stream, tail)
                    rec.input_finished(stream)
                    return
                kind = msg.WhichOneof("streaming_request")
                if kind == "streaming_config":
                    raise CallError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "streaming_config may only be sent in the first message",
                    )
                if stream.ended:
                    continue  # single utterance reached its end: later audio is ignored
                if not msg.audio_content:
                    continue
                samples = await self._decode(chunker, msg.audio_content)
                self._check_length(chunker)
                self.metrics.audio_seconds.labels("StreamingRecognize").inc(len(samples) / SAMPLE_RATE)
                if samples.size:
                    rec.accept_audio(stream, samples)
                    self.arrivals[0].append(stream.num_samples)
                    self.arrivals[1].append(time.perf_counter())
                self.wake.set()
        except CallError as exc:
            self.error = exc
        except ValueError as exc:  # audio that cannot be decoded (AudioError)
            self.error = CallError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("reading the stream failed", extra={"request_id": self.rid})
            self.error = CallError(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.wake.set()

    @staticmethod
    async def _decode(chunker: Chunker, data: bytes | None) -> np.ndarray:
        """The chunk's samples (``None``: the rest at the end of input). Containers are decoded again from
        their start as they grow, which takes a while on long streams: off the event loop."""
        step = chunker.flush if data is None else functools.partial(chunker.push, data)
        if isinstance(chunker, ContainerChunkDecoder):
            return await asyncio.to_thread(step)
        return step()

    def _check_length(self, chunker: Chunker) -> None:
        if chunker.input_seconds > self.config.max_stream_seconds:
            raise CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"stream audio exceeds the limit of {self.config.max_stream_seconds:g} s",
            )

    def _observe(self, r: StreamResult) -> None:
        samples, times = self.arrivals
        i = bisect.bisect_left(samples, round((r.closed_at if r.is_final else r.end) * SAMPLE_RATE))
        if i < len(times):
            kind = "final" if r.is_final else "interim"
            self.metrics.result_latency.labels(kind).observe(time.perf_counter() - times[i])

    def _response(self, results: list[asr_pb2.StreamingRecognitionResult], speech_event: int = 0) -> Any:
        billed = self.stream.duration if self.stream is not None else 0.0
        return asr_pb2.StreamingRecognizeResponse(
            results=results,
            speech_event_type=speech_event,  # type: ignore[arg-type]
            total_billed_time=duration(billed),
            request_id=self.rid,
        )

    async def close(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
