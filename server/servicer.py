"""The ``asr.v1.Recognizer`` service: a thin ``grpc.aio`` layer over :mod:`asr.streaming`.

Each call turns its protobuf config into :class:`asr.streaming.StreamOptions` (:mod:`server.convert`), its
audio into float32 16 kHz samples (:mod:`server.audio`), and hands decoding to the model's
:class:`server.batcher.Batcher`; a stream's two halves live in :mod:`server.stream_call`. Errors map to
status codes (:mod:`server.calls`):

    ValueError / AudioError (bad config, undecodable audio)     INVALID_ARGUMENT
    too many open streams, stream audio over the limit          RESOURCE_EXHAUSTED
    no message on a stream for ``idle_timeout_s``                DEADLINE_EXCEEDED
    anything else                                                INTERNAL (logged with its traceback)

A client cancel or deadline cancels the handler; its ``finally`` frees the stream slot, and the batcher skips
work whose caller has gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from asr.audio import SAMPLE_RATE
from asr_grpc import asr_pb2, asr_pb2_grpc
from server.audio import decode_request_audio
from server.calls import CallError, cancel_code, finished_code, request_id
from server.config import ServerConfig
from server.convert import duration, recognition_result, recognize_options
from server.metrics import Metrics
from server.models import LoadedModel
from server.stream_call import StreamCall

log = logging.getLogger(__name__)


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

    def model(self, name: str) -> LoadedModel:
        """The model a request names; "" is the default."""
        if not name:
            return self.models[self.default]
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}; this server has {sorted(self.models)}")
        return self.models[name]

    # -- Recognize -------------------------------------------------------------------------------------------

    async def Recognize(
        self, request: asr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> asr_pb2.RecognizeResponse:
        rid = request_id(context)
        code = grpc.StatusCode.OK
        try:
            response = await self._recognize(request, rid)
            code = finished_code(context)
            return response
        except CallError as exc:
            code = exc.code
            log.info("request failed", extra={"request_id": rid, "code": code.name, "error": exc.message})
            await context.abort(code, exc.message)
            raise  # not reached: abort raises
        except asyncio.CancelledError:
            code = cancel_code(context)
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("Recognize failed", extra={"request_id": rid})
            await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
            raise
        finally:
            self.metrics.count("Recognize", code.name)

    async def _recognize(self, request: asr_pb2.RecognizeRequest, rid: str) -> asr_pb2.RecognizeResponse:
        """Decode one request; a bad config or audio is ``CallError(INVALID_ARGUMENT)``."""
        t0 = time.perf_counter()
        try:
            if not request.HasField("config"):
                raise ValueError("RecognizeRequest.config is required")
            cfg = request.config
            model = self.model(cfg.model)
            options = recognize_options(cfg, model, self.config)
            audio = await self._request_audio(request)
            seconds = len(audio) / SAMPLE_RATE
            self.metrics.audio_seconds.labels("Recognize").inc(seconds)
            stream = model.recognizer.create_offline_stream(audio, options)
            await model.batcher.decode(stream)
            results = model.recognizer.pop_results(stream)
        except ValueError as exc:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        response = asr_pb2.RecognizeResponse(
            results=[recognition_result(r, cfg) for r in results],
            total_billed_time=duration(seconds),
            request_id=rid,
            model=model.name,
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
        return response

    async def _request_audio(self, request: asr_pb2.RecognizeRequest) -> np.ndarray:
        """The request's audio as float32 16 kHz samples; ``ValueError`` past ``max_audio_seconds``."""
        cfg = request.config
        audio = await asyncio.to_thread(
            decode_request_audio,
            request.audio.content,
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
        return audio

    # -- StreamingRecognize ----------------------------------------------------------------------------------

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.StreamingRecognizeResponse]:
        rid = request_id(context)
        code = grpc.StatusCode.OK
        if self.active_streams >= self.config.max_streams:
            self.metrics.count("StreamingRecognize", grpc.StatusCode.RESOURCE_EXHAUSTED.name)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent streams (limit {self.config.max_streams}); retry later",
            )
        self.active_streams += 1
        self.metrics.active_streams.inc()
        call = StreamCall(self.model, self.config, self.metrics, rid, request_iterator)
        try:
            async for response in call.run():
                yield response
            code = finished_code(context)  # a cancel or deadline can end the requests like a half-close
        except CallError as exc:
            code = exc.code
            log.info("stream failed", extra={"request_id": rid, "code": code.name, "error": exc.message})
            await context.abort(code, exc.message)
        except asyncio.CancelledError:
            code = cancel_code(context)
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
            self.metrics.count("StreamingRecognize", code.name)

    # -- ListModels ------------------------------------------------------------------------------------------

    async def ListModels(
        self, request: asr_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> asr_pb2.ListModelsResponse:
        self.metrics.count("ListModels", grpc.StatusCode.OK.name)
        return asr_pb2.ListModelsResponse(models=[m.info for m in self.models.values()])
