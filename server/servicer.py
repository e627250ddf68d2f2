"""The ``asr.v1.Recognizer`` service: a thin ``grpc.aio`` layer over :mod:`asr.streaming`.

Each call turns its protobuf config into :class:`asr.streaming.StreamOptions`, its audio into float32 16 kHz
samples, and hands decoding to the model's :class:`server.batcher.Batcher`. Errors map to status codes:

    ValueError / AudioError (bad config, undecodable audio)     INVALID_ARGUMENT
    too many open streams, stream audio over the limit          RESOURCE_EXHAUSTED
    no message on a stream for ``idle_timeout_s``                DEADLINE_EXCEEDED
    anything else                                                INTERNAL (logged with its traceback)

A client cancel or deadline cancels the handler; its ``finally`` frees the stream slot, and the batcher skips
work whose caller has gone.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import duration_pb2

from asr.audio import SAMPLE_RATE
from asr.biasing import check_phrases
from asr.decoding import DecodingOptions
from asr.streaming import EndpointConfig, Recognizer, Stream, StreamOptions, StreamResult
from asr.transcribe import MAX_SEGMENT_SECONDS
from asr_grpc import asr_pb2, asr_pb2_grpc
from server.audio import ChunkDecoder, ContainerChunkDecoder, decode_request_audio, stream_decoder
from server.batcher import Batcher
from server.config import MAX_PHRASE_BOOST, ServerConfig
from server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    recognizer: Recognizer
    batcher: Batcher
    info: asr_pb2.ModelInfo
    lm_weight: float = 0.0  # default weight of its language model (recognizer.lm); 0 without one


class CallError(Exception):
    """Ends a call with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


class RecognizerService(asr_pb2_grpc.RecognizerServicer):
    def __init__(
        self, models: dict[str, LoadedModel], default: str, config: ServerConfig, metrics: Metrics
    ) -> None:
        if default not in models:
            raise ValueError(f"default model {default!r} is not among the loaded models {sorted(models)}")
        self.models = models
        self.default = default
        self.config = config
        self.metrics = metrics
        self.active_streams = 0

    # -- config ----------------------------------------------------------------------------------------------

    def _model(self, name: str) -> LoadedModel:
        if not name:
            return self.models[self.default]
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}; this server has {sorted(self.models)}")
        return self.models[name]

    def _decoding(self, cfg: asr_pb2.RecognitionConfig, model: LoadedModel) -> DecodingOptions:
        d = cfg.decoding
        if d.method not in asr_pb2.DecodingConfig.Method.values():
            raise ValueError(f"unknown decoding method {d.method}; use GREEDY (1) or BEAM (2)")
        method = "greedy" if d.method == asr_pb2.DecodingConfig.GREEDY else "beam"
        beam = d.beam_size or self.config.beam_size
        if not 1 <= beam <= self.config.max_beam_size:
            raise ValueError(f"beam_size must be in [1, {self.config.max_beam_size}], got {d.beam_size}")
        ctc_weight = d.ctc_weight if d.HasField("ctc_weight") else self.config.ctc_weight
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        nbest = cfg.max_alternatives or 1
        limit = beam if method == "beam" else 1
        if not 1 <= nbest <= limit:
            raise ValueError(f"max_alternatives must be in [1, {limit}] ({method} decoding), got {nbest}")
        if cfg.audio_channel_count < 0:
            raise ValueError(f"audio_channel_count must be >= 0, got {cfg.audio_channel_count}")
        lm_weight = self._lm_weight(d, model)
        phrases, boost = self._phrase_hints(cfg, model)
        greedy = method == "greedy"  # CTC best path has no search to fuse an LM or hints into
        # float32 on the wire: 0.9 arrives as 0.89999998
        speeds = tuple(round(x, 4) for x in d.tta_speeds) or self.config.tta_speed_values
        return DecodingOptions(
            method=method,
            beam_size=beam,
            ctc_weight=ctc_weight,
            nbest=nbest,
            lm_weight=0.0 if greedy else lm_weight,
            phrases=() if greedy else phrases,
            phrase_boost=boost,
            tta_speeds=() if greedy else speeds,
        )

    @staticmethod
    def _lm_weight(d: asr_pb2.DecodingConfig, model: LoadedModel) -> float:
        lm_weight = d.lm_weight if d.HasField("lm_weight") else model.lm_weight
        if not 0.0 <= lm_weight < math.inf:
            raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")
        if lm_weight > 0 and model.recognizer.lm is None:
            raise ValueError(
                f"lm_weight {lm_weight:g} needs a language model, and model {model.name!r} has none "
                "(start the server with --lm)"
            )
        return lm_weight

    def _phrase_hints(
        self, cfg: asr_pb2.RecognitionConfig, model: LoadedModel
    ) -> tuple[tuple[str, ...], float]:
        phrases = tuple(cfg.phrases)
        if len(phrases) > self.config.max_phrases:
            raise ValueError(
                f"{len(phrases)} phrase hints; this server takes at most {self.config.max_phrases}"
            )
        check_phrases(model.recognizer.model.tokenizer, phrases)
        boost = cfg.phrase_boost if cfg.HasField("phrase_boost") else self.config.phrase_boost
        if not 0.0 <= boost <= MAX_PHRASE_BOOST:
            raise ValueError(f"phrase_boost must be in [0, {MAX_PHRASE_BOOST:g}], got {boost}")
        return phrases, boost

    def _stream_options(self, sc: asr_pb2.StreamingRecognitionConfig, model: LoadedModel) -> StreamOptions:
        cfg = sc.config
        default = default_stream_options(self.config)
        ep, dep = sc.endpointing, default.endpoint
        seconds = ep.max_segment_seconds
        if seconds != 0.0 and not 1.0 <= seconds <= MAX_SEGMENT_SECONDS:  # where offline decoding cuts, too
            raise ValueError(
                f"endpointing.max_segment_seconds must be in [1, {MAX_SEGMENT_SECONDS:g}] (0 = the server "
                f"default), got {ep.max_segment_seconds:g}"
            )
        endpoint = dataclasses.replace(
            dep,
            silence_ms=ep.silence_ms or dep.silence_ms,
            max_segment_seconds=ep.max_segment_seconds or dep.max_segment_seconds,
            speech_threshold_db=ep.speech_threshold_db or dep.speech_threshold_db,
        )
        return StreamOptions(
            decoding=self._decoding(cfg, model),
            endpoint=endpoint,
            interim_results=sc.interim_results,
            interim_interval_ms=sc.interim_interval_ms or default.interim_interval_ms,
            single_utterance=sc.single_utterance,
            word_times=cfg.enable_word_time_offsets or cfg.enable_word_confidence,
        )

    # -- results ---------------------------------------------------------------------------------------------

    @staticmethod
    def _alternatives(
        r: StreamResult, cfg: asr_pb2.RecognitionConfig
    ) -> list[asr_pb2.SpeechRecognitionAlternative]:
        alts = []
        for k, a in enumerate(r.alternatives or ()):
            alt = asr_pb2.SpeechRecognitionAlternative(
                transcript=a.text, confidence=a.confidence if r.is_final else 0.0
            )
            if k == 0 and r.is_final and (cfg.enable_word_time_offsets or cfg.enable_word_confidence):
                for w in r.words:
                    alt.words.append(
                        asr_pb2.WordInfo(
                            word=w.word,
                            start_offset=_duration(w.start),
                            end_offset=_duration(w.end),
                            confidence=w.confidence if cfg.enable_word_confidence else 0.0,
                        )
                    )
            alts.append(alt)
        if not alts:
            alts.append(asr_pb2.SpeechRecognitionAlternative(transcript=r.text))
        return alts

    # -- Recognize -------------------------------------------------------------------------------------------

    async def Recognize(
        self, request: asr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> asr_pb2.RecognizeResponse:
        rid = _request_id(context)
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            try:
                if not request.HasField("config"):
                    raise ValueError("RecognizeRequest.config is required")
                cfg = request.config
                model = self._model(cfg.model)
                options = StreamOptions(
                    decoding=self._decoding(cfg, model),
                    interim_results=False,
                    word_times=cfg.enable_word_time_offsets or cfg.enable_word_confidence,
                )
                content = request.audio.content
                audio = await asyncio.to_thread(
                    decode_request_audio,
                    content,
                    cfg.encoding,
                    cfg.sample_rate_hertz,
                    cfg.audio_channel_count or 1,
                )
                seconds = len(audio) / SAMPLE_RATE
                if seconds > self.config.max_audio_seconds:
                    raise ValueError(
                        f"audio is {seconds:.1f} s; Recognize takes at most "
                        f"{self.config.max_audio_seconds:.0f} s "
                        "(use StreamingRecognize for longer audio)"
                    )
                self.metrics.audio_seconds.labels("Recognize").inc(seconds)
                stream = model.recognizer.create_offline_stream(audio, options)
                await model.batcher.decode(stream)
                results = model.recognizer.pop_results(stream)
            except ValueError as exc:
                raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
            response = asr_pb2.RecognizeResponse(
                total_billed_time=_duration(seconds), request_id=rid, model=model.name
            )
            for r in results:
                response.results.append(
                    asr_pb2.SpeechRecognitionResult(
                        alternatives=self._alternatives(r, cfg),
                        result_start_offset=_duration(r.start),
                        result_end_offset=_duration(r.end),
                    )
                )
            self.metrics.latency.observe(time.perf_counter() - t0)
            log.info(
                "recognized",
                extra={
                    "request_id": rid,
                    "audio_s": round(seconds, 3),
                    "model": model.name,
                    "elapsed_s": round(time.perf_counter() - t0, 3),
                },
            )
            code = _finished_code(context)
            return response
        except CallError as exc:
            code = exc.code
            log.info("request failed", extra={"request_id": rid, "code": code.name, "error": exc.message})
            await context.abort(code, exc.message)
            raise  # not reached: abort raises
        except asyncio.CancelledError:
            code = _cancel_code(context)
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("Recognize failed", extra={"request_id": rid})
            await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
            raise
        finally:
            self._count("Recognize", code)

    # -- StreamingRecognize ----------------------------------------------------------------------------------

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.StreamingRecognizeResponse]:
        rid = _request_id(context)
        code = grpc.StatusCode.OK
        if self.active_streams >= self.config.max_streams:
            self._count("StreamingRecognize", grpc.StatusCode.RESOURCE_EXHAUSTED)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent streams (limit {self.config.max_streams}); retry later",
            )
        self.active_streams += 1
        self.metrics.active_streams.inc()
        call = _StreamCall(self, rid, request_iterator)
        try:
            async for response in call.run():
                yield response
            code = _finished_code(context)  # a cancel or deadline can end the requests like a half-close
        except CallError as exc:
            code = exc.code
            log.info("stream failed", extra={"request_id": rid, "code": code.name, "error": exc.message})
            await context.abort(code, exc.message)
        except asyncio.CancelledError:
            code = _cancel_code(context)
            log.info("stream cancelled", extra={"request_id": rid})
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("StreamingRecognize failed", extra={"request_id": rid})
            await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            await call.close()
            self.active_streams -= 1
            self.metrics.active_streams.dec()
            self._count("StreamingRecognize", code)

    # -- ListModels ------------------------------------------------------------------------------------------

    async def ListModels(
        self, request: asr_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> asr_pb2.ListModelsResponse:
        self._count("ListModels", grpc.StatusCode.OK)
        return asr_pb2.ListModelsResponse(models=[m.info for m in self.models.values()])

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self.metrics.requests.labels(method, code.name).inc()
        if code != grpc.StatusCode.OK:
            self.metrics.errors.labels(method, code.name).inc()


class _StreamCall:
    """One StreamingRecognize call: a reader task feeds audio into the stream while :meth:`run` decodes and
    yields responses; one decode is in flight per stream at a time."""

    def __init__(
        self, service: RecognizerService, rid: str, requests: AsyncIterator[asr_pb2.StreamingRecognizeRequest]
    ) -> None:
        self.service = service
        self.config = service.config
        self.rid = rid
        self.requests = requests
        self.wake = asyncio.Event()
        self.error: CallError | None = None
        self.reader: asyncio.Task[None] | None = None
        self.stream: Stream | None = None
        self.arrivals: tuple[list[int], list[float]] = ([], [])  # stream sample count -> wall time it arrived
        self.t_start = time.perf_counter()

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
            model = self.service._model(cfg.model)
            options = self.service._stream_options(sc, model)
            encoding = cfg.encoding or asr_pb2.LINEAR16
            chunker = stream_decoder(encoding, cfg.sample_rate_hertz, cfg.audio_channel_count or 1)
        except ValueError as exc:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        rec = model.recognizer
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
        event_sent = False
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.error is not None:
                raise self.error
            while True:  # an early final confirmed by the endpoint is out without decoding
                if stream.ended and not event_sent:  # the event comes before the utterance's final
                    event_sent = True
                    yield self._response(
                        [], speech_event=asr_pb2.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE
                    )
                for r in rec.pop_results(stream):
                    self._observe(r)
                    yield self._response([self._result(r, cfg)])
                if not rec.is_ready(stream):
                    break
                await model.batcher.decode(stream)
            if self.error is not None:
                raise self.error
            if stream.is_done:
                break
        early = self.service.metrics.early_finals
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

    async def _read(
        self, rec: Recognizer, stream: Stream, chunker: ChunkDecoder | ContainerChunkDecoder
    ) -> None:
        try:
            while True:
                msg = await self._next()
                if msg is None:
                    tail = await self._decode(chunker, None)
                    self._check_length(chunker)  # a FLAC stream's audio all comes at its end
                    self.service.metrics.audio_seconds.labels("StreamingRecognize").inc(
                        len(tail) / SAMPLE_RATE
                    )
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
                self.service.metrics.audio_seconds.labels("StreamingRecognize").inc(
                    len(samples) / SAMPLE_RATE
                )
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
    async def _decode(chunker: ChunkDecoder | ContainerChunkDecoder, data: bytes | None) -> np.ndarray:
        """The chunk's samples (``None``: the rest at the end of input). Containers are decoded again from
        their start as they grow, which takes a while on long streams: off the event loop."""
        step = chunker.flush if data is None else functools.partial(chunker.push, data)
        if isinstance(chunker, ContainerChunkDecoder):
            return await asyncio.to_thread(step)
        return step()

    def _check_length(self, chunker: ChunkDecoder | ContainerChunkDecoder) -> None:
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
            self.service.metrics.result_latency.labels(kind).observe(time.perf_counter() - times[i])

    def _result(self, r: StreamResult, cfg: asr_pb2.RecognitionConfig) -> asr_pb2.StreamingRecognitionResult:
        return asr_pb2.StreamingRecognitionResult(
            alternatives=RecognizerService._alternatives(r, cfg),
            is_final=r.is_final,
            stability=r.stability,
            result_start_offset=_duration(r.start),
            result_end_offset=_duration(r.end),
            utterance_index=r.utterance,
        )

    def _response(self, results: list[asr_pb2.StreamingRecognitionResult], speech_event: int = 0) -> Any:
        billed = self.stream.duration if self.stream is not None else 0.0
        return asr_pb2.StreamingRecognizeResponse(
            results=results,
            speech_event_type=speech_event,  # type: ignore[arg-type]
            total_billed_time=_duration(billed),
            request_id=self.rid,
        )

    async def close(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader


DEADLINE_GRACE_S = 0.5  # a cancel this close to the server's copy of the deadline is the deadline


def _cancel_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """How a cancelled call ended for the metrics: its deadline passed, or the client cancelled it.

    A client cancels at its own deadline, which the server may see before its copy of the deadline (sent as a
    timeout, so transit time and a busy server's late start shift it): within ``DEADLINE_GRACE_S`` of it
    counts as the deadline. 250 ms was too little on a loaded 2-core CI machine."""
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= DEADLINE_GRACE_S
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def _finished_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """How a call whose handler finished ended for the metrics: OK, unless its client cancelled it or its
    deadline passed (which gRPC may not have marked as cancelled yet) and it never got the response."""
    remaining = context.time_remaining()
    if context.cancelled() or (remaining is not None and remaining <= 0):
        return _cancel_code(context)
    return grpc.StatusCode.OK


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return uuid.uuid4().hex[:16]


def default_stream_options(config: ServerConfig, lm_weight: float = 0.0) -> StreamOptions:
    return StreamOptions(
        decoding=DecodingOptions(
            beam_size=config.beam_size,
            ctc_weight=config.ctc_weight,
            lm_weight=lm_weight,
            tta_speeds=config.tta_speed_values,
        ),
        endpoint=EndpointConfig(final_tail_ms=config.final_tail_ms),
    )
