"""``asr serve``: build, run and stop the gRPC speech service.

    server, port = await create_server(config, model)   # bound and started, for tests and embedding
    await server.stop(grace=5)

    asr serve --port 50051 --model models/default.pt --metrics-port 9090
    ASR_PORT=50051 ASR_TOKEN=secret asr serve                 # every flag has an ASR_* variable

SIGTERM or SIGINT: the health status turns NOT_SERVING, the server stops accepting calls, calls in flight get
``grace_s`` seconds to finish, then the model thread and the metrics endpoint stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from asr import precision
from asr.checkpoint import load_model, resolve_model_path, summarize, with_chunk_ms, with_early_lookahead
from asr.endpointing import EndpointConfig
from asr.model import ASRModel
from asr.model_decoding import ModelDecoding
from asr_grpc import asr_pb2, asr_pb2_grpc
from server.auth import BearerTokenInterceptor
from server.config import ServerConfig
from server.metrics import Metrics
from server.models import start_models
from server.servicer import RecognizerService
from server.workers import report_ready, run_workers

log = logging.getLogger("server")

SERVICE_NAME = asr_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name  # "asr.v1.Recognizer"


class SpeechServer:
    """A started ``grpc.aio.Server`` with what it owns: batchers, health status, the metrics endpoint."""

    def __init__(
        self,
        server: grpc.aio.Server,
        service: RecognizerService,
        health_servicer: health.aio.HealthServicer,
        metrics: Metrics,
        metrics_port: int | None,
    ) -> None:
        self.grpc = server
        self.service = service
        self.health = health_servicer
        self.metrics = metrics
        self.metrics_port = metrics_port
        self._stopped = False

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, give calls in flight ``grace`` seconds, then release everything."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)
        for m in self.service.models.values():
            await m.batcher.stop()
        self.metrics.close()

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()


async def create_server(
    config: ServerConfig,
    model: ASRModel | None = None,
    models: dict[str, ASRModel] | None = None,
    worker: int | None = None,
) -> tuple[SpeechServer, int]:
    """Build, bind and start the server; returns it and the bound port (``config.port`` 0 picks one).

    ``model`` (served as ``config.model_name`` or "default") or ``models`` (name -> model, the first is the
    default) skip loading ``config.model`` from disk. ``config.lm`` is fused into every model's beam search
    (each model's tokenizer must match it). ``worker``: this server is that worker of several sharing the
    port (:mod:`server.workers`).
    """
    decodings = _own_decodings(config) if model is None and models is None else {}
    models = _models_to_serve(config, model, models)
    torch.set_num_threads(config.torch_threads())
    if config.precision:
        precision.set_mode(config.precision)
    metrics = Metrics()
    loaded = await start_models(models, config, metrics, decodings)
    default = loaded[next(iter(loaded))]
    service = RecognizerService(loaded, default.name, config, metrics)
    server, health_servicer = _grpc_server(config, service, reuse_port=worker is not None)
    port = _bind(server, config)
    # /metrics listens where gRPC does: all interfaces for the wildcard hosts, else the given address
    metrics_host = "0.0.0.0" if config.host in ("[::]", "::", "0.0.0.0", "") else config.host.strip("[]")
    metrics_port = metrics.serve(config.metrics_port, metrics_host) if config.metrics_port >= 0 else None
    await server.start()
    for svc in ("", SERVICE_NAME):
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving" if worker is None else "worker serving",
        extra={
            **({} if worker is None else {"worker": worker, "pid": os.getpid()}),
            "port": port,
            "metrics_port": metrics_port,
            "tls": bool(config.tls_cert),
            "mtls": bool(config.tls_client_ca),
            "auth": bool(config.tokens),
            "models": sorted(models),
            "lm": default.info.language_model or None,  # the default model's
        },
    )
    return SpeechServer(server, service, health_servicer, metrics, metrics_port), port


def _own_decodings(config: ServerConfig) -> dict[str, ModelDecoding]:
    """Each model's own decoding settings (``NAME.decoding.json``) by served name, unless ``--lm`` or
    ``--no-model-decoding`` says otherwise."""
    if config.lm or not config.model_decoding:
        return {}
    names = config.model_names or [None] * len(config.models)
    out = {}
    for spec, name in zip(config.models, names, strict=True):
        path = resolve_model_path(spec)
        out[name or path.stem] = ModelDecoding.of(path)
    return out


def _models_to_serve(
    config: ServerConfig, model: ASRModel | None, models: dict[str, ASRModel] | None
) -> dict[str, ASRModel]:
    """``models`` as given, else ``model``, else each of ``config.models`` loaded from disk by name."""
    if models is None:
        if model is None:
            models = {}
            names = config.model_names or [None] * len(config.models)
            for spec, name in zip(config.models, names, strict=True):
                path = resolve_model_path(spec)
                log.info("loading model", extra={"path": str(path)})
                models[name or path.stem] = load_model(path, device=config.device or None).eval()
            if len(models) < len(config.models):
                raise ValueError(f"--model {config.model!r}: two models would share a name; set --model-name")
        else:
            name = config.model_name or "default"
            if config.device:
                model = model.to(config.device)
            models = {name: model.eval()}
    if not models:
        raise ValueError("create_server needs at least one model")
    if config.chunk_ms:
        models = {
            k: with_chunk_ms(m, config.chunk_ms) if m.config.encoder.streaming else m
            for k, m in models.items()
        }
    if config.early_lookahead:
        whisper = [k for k, m in models.items() if m.config.encoder.streaming and m.config.encoder.whisper]
        if not whisper:
            raise ValueError(
                "--early-lookahead applies to streaming models over a Whisper front end (e.g. streaming); "
                f"none of {', '.join(models)} is one"
            )
        early, when_arrived = config.early_lookahead != "off", config.early_lookahead == "auto"
        models = {
            k: with_early_lookahead(m, early, block_when_arrived=when_arrived) if k in whisper else m
            for k, m in models.items()
        }
    return models


def _grpc_server(
    config: ServerConfig, service: RecognizerService, reuse_port: bool = False
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The unbound ``grpc.aio.Server`` with the recognizer, health and reflection services; ``reuse_port``
    for a worker that shares its port with the others (:mod:`server.workers`)."""
    interceptors = [BearerTokenInterceptor(config.tokens)] if config.tokens else []
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # gRPC sets SO_REUSEPORT by default: a second server on a busy port would silently take half its
        # connections. Off, so that binding a used port fails; on for workers (whose parent checked the port).
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    asr_pb2_grpc.add_RecognizerServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health_servicer


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Bind ``config.host:config.port``, with TLS (and client certificates) when configured; the port."""
    address = f"{config.host}:{config.port}"
    try:
        if config.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
                root_certificates=Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None,
                require_client_auth=bool(config.tls_client_ca),
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise OSError(
            f"could not bind {address}: the port is in use or the address is not this machine's; "
            "pick another --port / ASR_PORT or --host"
        )
    return port


async def serve(
    config: ServerConfig,
    worker: int | None = None,
    on_ready: Callable[[int, int | None], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully. ``worker``: one of several processes on the port
    (:mod:`server.workers`); ``on_ready(port, metrics_port)`` once it serves."""
    server, port = await create_server(config, worker=worker)
    if on_ready is not None:
        on_ready(port, server.metrics_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # a worker leaves SIGINT (a ^C sent to the whole process group) to its parent, which sends it SIGTERM
    for sig in (signal.SIGTERM,) if worker is not None else (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waiter = loop.create_task(server.wait_for_termination())
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down", extra={"grace_s": config.grace_s})
    await server.stop(config.grace_s)
    waiter.cancel()
    stopper.cancel()
    log.info("stopped")


# -- logging -------------------------------------------------------------------------------------------------

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra={...}`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        fmt = JSONFormatter()
        fmt.converter = time.gmtime
        handler.setFormatter(fmt)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())


# -- command line --------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``asr serve`` to the ``asr`` command line (client/cli.py)."""
    p = subparsers.add_parser(
        "serve",
        help="run the gRPC speech service",
        description="Serve a model over gRPC (asr.v1.Recognizer) with health, reflection and metrics. "
        "Every option also reads an ASR_* environment variable (e.g. ASR_PORT); flags win.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


# help of each `asr serve` flag (ServerConfig field); a field without one shows its default
SERVE_HELP = {
    "host": "address to bind (default [::], all interfaces)",
    "port": "gRPC port (default 50051; 0 picks a free one)",
    "metrics_port": "Prometheus /metrics HTTP port (default 9090; -1 disables)",
    "model": "model name under models/ or checkpoint path; several comma-separated, the first the "
    "default, e.g. default,streaming (default: default)",
    "model_name": "name(s) to serve the model(s) under, comma-separated (default: the files' stems)",
    "blank_ms": "streams of chunked-encoder models: ms of CTC blanks after speech that end an utterance "
    "(default 0: the energy rule only; e.g. 240)",
    "blank_quiet_ms": "a blank run ends an utterance only where the energy VAD heard no speech over its "
    f"last this many ms, so that the model's blanks over a long vowel do not cut a word (default "
    f"{EndpointConfig.blank_quiet_ms}; 0: blanks alone, e.g. for audio whose noise the VAD takes for speech)",
    "growing_finals": "streams of chunked-encoder models: search each final while its utterance is "
    "heard, on the finals thread when it is idle, so that only its last tokens are left at the endpoint "
    "(default on; --no-growing-finals searches finals whole at their endpoint, batched); a request's "
    "growing_finals overrides it",
    "growing_lag_ms": "a growing search that falls this many ms behind its audio (the server is "
    "loaded) is dropped, and its final searched whole with the other finals (default 500; 0: never)",
    "searched_partials": "streams of chunked-encoder models with growing finals: partials show the "
    "growing search's best hypothesis so far, then greedy CTC's newer tokens (default on; "
    "--no-searched-partials: greedy CTC alone, only ever extended)",
    "silence_gate": "streams of chunked-encoder models: while the energy VAD hears no speech, audio waits "
    "unencoded and all but the last pre_speech_ms (300) of it is dropped, so silence costs the server "
    "the VAD, not the encoder (default on; --no-silence-gate encodes every chunk, silence too, for audio "
    "whose speech the VAD misses)",
    "chunk_ms": "chunk-streaming models: encode chunks of this many ms (a multiple of 40) instead of "
    "their checkpoint's: 80 against the bundled model's 160 gives finals and partials 50-70 ms sooner "
    "for about 0.6 WER points and 1.6x the CPU (default 0: each model's own)",
    "early_lookahead": "streaming models over a Whisper front end: on reads each chunk's look-ahead as "
    "soon as its own audio has arrived, from the part of Whisper's next block heard so far; off waits for "
    "the whole next block; auto reads it early unless the whole block has already arrived (a stream that "
    "is behind), so that a loaded server catches up at off's cost (default: each model's own setting)",
    "streaming_finals": "streams of chunk-streaming models: the served model (a name, e.g. default) that "
    "decodes each utterance's audio again at its endpoint for the final, while the streaming model gives "
    "the partials and endpoints: finals as accurate as that model's, for its encoding time after each "
    "endpoint (default: none, the streaming model's own search)",
    "model_decoding": "decode each model loaded from disk with its own settings (NAME.decoding.json beside "
    "NAME.pt: the bundled default's word LM at weight 0.3 and CTC weight 0.5) unless --lm is given (default "
    "on; --no-model-decoding: --ctc-weight for every model, no LM)",
    "second_pass_budget_ms": "with --streaming-finals: a final whose second pass would end more than this "
    "many ms after its endpoint (its wait so far plus its batch's expected time) is the streaming model's "
    "own instead, so that finals keep up under load (default 0: every final is the second pass's)",
    "workers": "server processes sharing the port (SO_REUSEPORT; the kernel spreads connections over "
    "them), each with its own models, model threads, limits and metrics port (--metrics-port plus its "
    "index). On a CPU one process's model threads wait for each other's GIL: 2 workers used 1.7-1.8 of 2 "
    "cores with 32 streams against 1.4-1.5 for one (docs/BENCHMARKS.md). Default 1",
    "finals_threads": "threads decoding finals beside the model thread, so partials and chunk steps "
    "never wait behind a beam search (default 1; 0: finals on the model thread)",
    "load_beam_size": "chunk-streaming models: beam of the stream finals' search while they are "
    "behind (4 or more streams' finals at once, or more waiting): a little accuracy for keeping up with "
    "many streams (default 4; 0: off)",
    "device": "cpu, cuda, cuda:1 (default: cuda when available)",
    "cpu_threads": "torch threads of each model thread on CPU (default 0: the cores shared among the "
    "model thread and the finals threads)",
    "precision": "number format of the LSTMs' products: auto (the encoder's in bfloat16 on CPUs with "
    "AMX or AVX-512 BF16, the decoder's steps on int8 weights on CPUs), float32, bfloat16 or int8 "
    "(default auto)",
    "lm": "language model from 'asr lm train', fused into beam search (default: none)",
    "lm_weight": "default weight of --lm in beam search; requests may set their own (default 0.3)",
    "max_phrases": "phrase hints a request may carry (default 1000)",
    "phrase_boost": "default score per token of a completed phrase hint "
    f"(default {ServerConfig.phrase_boost:g})",
    "tta_speeds": "default test-time augmentation of beam finals: also decode at these speeds, "
    "e.g. 0.9,1.1 (about 5x the decoding time of finals; default: none)",
    "token": "require 'authorization: Bearer TOKEN' (comma-separate several; prefer ASR_TOKEN)",
    "tls_cert": "PEM certificate chain (enables TLS with --tls-key)",
    "tls_key": "PEM private key",
    "tls_client_ca": "PEM CA bundle: require client certificates it signed (mutual TLS)",
    "idle_timeout_s": "seconds without a message before a stream ends with DEADLINE_EXCEEDED",
    "grace_s": "seconds in-flight calls get to finish on SIGTERM",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    f = {fl.name: fl for fl in dataclasses.fields(ServerConfig)}
    helps = SERVE_HELP
    for name, fl in f.items():
        flag = "--" + name.replace("_", "-")
        if fl.type in ("bool", bool):
            p.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=helps.get(name, f"(default {fl.default})"),
            )
        else:
            typ = {"int": int, "float": float}.get(str(fl.type), str)
            p.add_argument(
                flag, dest=name, type=typ, default=None, help=helps.get(name, f"(default {fl.default})")
            )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    names = {fl.name for fl in dataclasses.fields(ServerConfig)}
    return ServerConfig.from_env(**{k: v for k, v in vars(args).items() if k in names})


STREAMING_PRIMITIVE_CACHE = 128  # oneDNN primitives kept when every model served is a chunk-streaming one


def primitive_cache_capacity(streaming: list[bool]) -> int:
    """oneDNN's primitive cache for a server of models with (True) or without a chunked encoder.

    oneDNN compiles a primitive per input shape of the LSTMs (and keeps up to 1,024 by default). Segment
    streaming encodes every length of segment, so a cache only grows: RSS rose ~60 MiB per 1,000 streams
    (bench/soak.py); it is off for those. A chunk-streaming model's steps come in few shapes (a window per
    layer, by the number of streams batched), and compiling them again at every step was most of a small
    step's time: with 128 kept, its 1,000 soak streams ran in 152 s instead of 241, RSS +0.9 % (off: -0.7 %),
    docs/BENCHMARKS.md."""
    return STREAMING_PRIMITIVE_CACHE if streaming and all(streaming) else 0


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(config)
    try:
        paths = [resolve_model_path(spec) for spec in config.models]
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc}. Train one (asr train) or pass --model PATH / ASR_MODEL=PATH to a las-asr checkpoint."
        ) from None
    # before the first oneDNN primitive; the operator's setting wins
    capacity = primitive_cache_capacity([summarize(p).streaming for p in paths])
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))
    if config.workers > 1:
        return run_workers(config, run_worker)
    asyncio.run(serve(config))
    return 0


def run_worker(config: ServerConfig, index: int, ready: Any) -> None:
    """A process of ``asr serve --workers N`` (:mod:`server.workers`): the whole server on the shared port."""
    setup_logging(config)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns a ^C (sent to all of us) into one SIGTERM
    asyncio.run(serve(config, worker=index, on_ready=report_ready(ready, index)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr-serve", description="Serve a speech model over gRPC.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
