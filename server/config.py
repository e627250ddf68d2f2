"""Server configuration: one frozen dataclass, filled from flags, then environment variables, then defaults.

Every setting has an ``ASR_*`` environment variable (the field name upper-cased), e.g. ``ASR_PORT=50051``,
``ASR_MODEL=models/default.pt``, ``ASR_TOKEN=secret``. Flags win over the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from asr import precision
from asr.decoding import DecodingOptions
from asr.lm import DEFAULT_LM_WEIGHT
from asr.streaming import EndpointConfig, StreamOptions
from asr.tta import speeds_from_text

MAX_PHRASE_BOOST = 10.0

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    # network
    host: str = "[::]"
    port: int = 50051  # 0 picks a free port (tests)
    metrics_port: int = 9090  # Prometheus /metrics over HTTP; -1 disables, 0 picks a free port
    # model
    # name under models/ or a path to a checkpoint; several comma-separated (the first is the default)
    model: str = "default"
    model_name: str = ""  # name(s) in ListModels and RecognitionConfig.model, as many; "" = the files' stems
    device: str = ""  # "" = cuda when available, else cpu
    # torch intra-op threads of each model thread on CPU; 0 = the cores shared among the model threads (the
    # model lane and finals_threads): many small ops run best one thread each, side by side
    cpu_threads: int = 0
    # number format of the recurrent products (asr.precision): auto = the encoder's in bfloat16 on CPUs
    # with AMX or AVX-512 BF16, the decoder's steps on int8 weights on CPUs; "" = the process's (set_mode,
    # else auto)
    precision: str = ""
    warmup: bool = True
    lm: str = ""  # language model from `asr lm train`, fused into beam search; "" = none
    lm_weight: float = DEFAULT_LM_WEIGHT  # its default weight (requests may set DecodingConfig.lm_weight)
    # batching
    # segments or streams per model call; 32 real-time streams of a chunk-streaming model kept up on 2 cores
    # only when one chunk step could take them all (docs/BENCHMARKS.md)
    max_batch_size: int = 32
    # server processes sharing the port (SO_REUSEPORT: the kernel spreads connections over them), each with
    # the models, its own model threads, limits and metrics port (metrics_port + its index). On CPUs, one
    # process's model threads wait for each other's GIL: two processes get more out of 2 cores
    # (bench/thread_contention.py, docs/BENCHMARKS.md)
    workers: int = 1
    max_wait_ms: float = 10.0  # how long a lone chunk or interim waits for company (finals never wait)
    # threads decoding finals (beam search) beside the model thread, so that they never hold up partials and
    # chunk steps; 0 = finals on the model thread. One: since finals step on int8 weights, a second thread
    # made 32 real-time streams' finals later on 2 cores, though streams sent faster than real time (the
    # soak) finish 1.8x sooner with two (docs/BENCHMARKS.md)
    finals_threads: int = 1
    # a chunk-streaming model's stream finals' beam while they are behind (4 streams' finals in one batch, or
    # more queued): 32 real-time streams on 2 cores kept up with 4 and fell behind with 8 (docs/BENCHMARKS.md,
    # session 27); 0 = never
    load_beam_size: int = 4
    # limits
    max_streams: int = 64  # concurrent StreamingRecognize calls; more get RESOURCE_EXHAUSTED
    max_message_bytes: int = 4 * MiB  # per request message, both RPCs
    max_stream_seconds: float = 600.0  # audio per stream; more gets RESOURCE_EXHAUSTED
    max_audio_seconds: float = 300.0  # audio per Recognize request; more gets INVALID_ARGUMENT
    idle_timeout_s: float = 30.0  # a stream with no message for this long gets DEADLINE_EXCEEDED
    max_beam_size: int = 16
    max_phrases: int = 1000  # phrase hints per request
    beam_size: int = 8  # default beam when a request does not set one
    ctc_weight: float = 0.3  # default CTC weight of finals
    phrase_boost: float = DecodingOptions.phrase_boost  # default score per token of a completed phrase hint
    tta_speeds: str = ""  # default test-time augmentation of beam finals, e.g. "0.9,1.1" (asr.tta); "" = none
    # streams: silence an utterance keeps after its speech; its final is decoded once that much is in and
    # sent at the endpoint (early finals). At or above a stream's silence_ms, finals wait for the endpoint
    final_tail_ms: int = 300
    # streams of chunked-encoder models: CTC blanks after speech that end an utterance; 0 = energy rule only
    blank_ms: int = EndpointConfig.blank_ms
    # ... only where the energy VAD heard no speech over the run's last this many ms (0: no check)
    blank_quiet_ms: int = EndpointConfig.blank_quiet_ms
    # streams of chunked-encoder models: search finals while their utterance is heard (asr.growing_search)
    growing_finals: bool = True
    # ... unless a search lags this far behind its audio (the server is loaded): that final is searched whole
    growing_lag_ms: int = 500
    # streams of chunked-encoder models: partials show the growing search's best hypothesis so far
    searched_partials: bool = True
    # streams of chunked-encoder models: silence before speech waits unencoded and is dropped
    silence_gate: bool = True
    # chunked-encoder models: run with chunks of this many ms instead of their checkpoint's; 0 = their own
    chunk_ms: int = 0
    # streaming Whisper models: "on" reads each chunk's look-ahead early
    # (asr.checkpoint.with_early_lookahead), "off" from the whole next block, "auto" early unless the whole
    # block has arrived (a stream behind); "" = each model's own
    early_lookahead: str = ""
    # streams of chunked-encoder models: the served model (a name) that decodes each utterance's audio for
    # its final, a second pass at the endpoint (asr.online); "" = the streaming model's own search
    streaming_finals: str = ""
    # ... a final whose second pass would end more than this many ms after its endpoint (its wait, plus its
    # batch's expected time) is the streaming model's own instead (0: every final is the second pass's)
    second_pass_budget_ms: int = 0
    # models loaded from disk decode with their own settings (NAME.decoding.json beside NAME.pt: an LM, its
    # weight, a CTC weight) unless --lm is given; False: every model as --ctc-weight says, without an LM
    model_decoding: bool = True
    # security
    tls_cert: str = ""  # PEM server certificate chain; with tls_key enables TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle; enables mutual TLS (clients must present a cert it signed)
    token: str = ""  # bearer token(s), comma-separated; "" disables auth
    # lifecycle and logs
    grace_s: float = 10.0  # SIGTERM: stop accepting, let in-flight calls finish for this long
    log_format: str = "json"  # "json" or "text"
    log_level: str = "INFO"

    def torch_threads(self) -> int:
        """Intra-op threads for each model thread: ``cpu_threads``, else the cores this process may use
        divided among the model threads of every worker (at least 1)."""
        if self.cpu_threads:
            return self.cpu_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // ((1 + self.finals_threads) * self.workers))

    def __post_init__(self) -> None:
        if not -1 <= self.metrics_port <= 65535 or not 0 <= self.port <= 65535:
            raise ValueError(
                f"ports must be in [0, 65535], got port={self.port} metrics_port={self.metrics_port}"
            )
        if self.load_beam_size < 0:
            raise ValueError(f"load_beam_size must be >= 0 (0: off), got {self.load_beam_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.finals_threads < 0:
            raise ValueError(f"finals_threads must be >= 0, got {self.finals_threads}")
        for name in ("max_batch_size", "max_streams", "max_message_bytes", "max_beam_size", "beam_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "max_stream_seconds", "max_audio_seconds", "idle_timeout_s", "grace_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.final_tail_ms < 20:
            raise ValueError(f"final_tail_ms must be at least 20 (one VAD frame), got {self.final_tail_ms}")
        if self.second_pass_budget_ms < 0:
            raise ValueError(f"second_pass_budget_ms must be >= 0, got {self.second_pass_budget_ms}")
        if self.growing_lag_ms < 0:
            raise ValueError(f"growing_lag_ms must be >= 0 (0: never), got {self.growing_lag_ms}")
        if self.early_lookahead not in ("", "on", "off", "auto"):
            raise ValueError(
                "early_lookahead must be on, off, auto or empty (each model's own), "
                f"got {self.early_lookahead!r}"
            )
        if self.chunk_ms < 0:
            raise ValueError(f"chunk_ms must be >= 0 (0: each model's own), got {self.chunk_ms}")
        if not 0 <= self.blank_ms <= 10_000:
            raise ValueError(f"blank_ms must be in [0, 10000] (0 disables), got {self.blank_ms}")
        if len(self.model_names) != len(self.models) and self.model_name:
            raise ValueError(
                f"model_name {self.model_name!r} names {len(self.model_names)} models, "
                f"model {self.model!r} has {len(self.models)}"
            )
        if self.beam_size > self.max_beam_size:
            raise ValueError(
                f"beam_size ({self.beam_size}) must not exceed max_beam_size ({self.max_beam_size})"
            )
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.max_phrases < 0:
            raise ValueError(f"max_phrases must be >= 0, got {self.max_phrases}")
        if not 0.0 <= self.phrase_boost <= MAX_PHRASE_BOOST:
            raise ValueError(f"phrase_boost must be in [0, {MAX_PHRASE_BOOST:g}], got {self.phrase_boost}")
        if not 0.0 <= self.lm_weight < float("inf"):
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")
        self.tta_speed_values  # noqa: B018 (validates)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("mutual TLS (tls_client_ca) needs tls_cert and tls_key")
        if self.precision and self.precision not in precision.MODES:
            raise ValueError(f"precision must be one of {', '.join(precision.MODES)}, got {self.precision!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be 'json' or 'text', got {self.log_format!r}")

    @functools.cached_property
    def tta_speed_values(self) -> tuple[float, ...]:
        """``tta_speeds`` as numbers, parsed once: ``"0.9,1.1"`` -> ``(0.9, 1.1)``."""
        try:
            return speeds_from_text(self.tta_speeds)
        except ValueError as exc:
            raise ValueError(f"tta_speeds {self.tta_speeds!r}: {exc}") from None

    @property
    def models(self) -> tuple[str, ...]:
        """``model`` split at commas: the checkpoints to serve, the default first."""
        return tuple(m.strip() for m in self.model.split(",") if m.strip()) or ("default",)

    @property
    def model_names(self) -> tuple[str, ...]:
        """``model_name`` split at commas ("" names none)."""
        return tuple(n.strip() for n in self.model_name.split(",") if n.strip())

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.token.split(",") if t.strip())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, replaced by ``ASR_<FIELD>`` variables, replaced by ``overrides`` other than ``None``."""
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"ASR_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(raw, hints[f.name], f"ASR_{f.name.upper()}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def default_stream_options(
    config: ServerConfig, lm_weight: float = 0.0, ctc_weight: float | None = None
) -> StreamOptions:
    """What a stream gets for every field its request leaves unset (``ctc_weight``: the model's own, else
    ``config.ctc_weight``)."""
    return StreamOptions(
        decoding=DecodingOptions(
            beam_size=config.beam_size,
            ctc_weight=config.ctc_weight if ctc_weight is None else ctc_weight,
            lm_weight=lm_weight,
            tta_speeds=config.tta_speed_values,
        ),
        endpoint=EndpointConfig(
            final_tail_ms=config.final_tail_ms,
            blank_ms=config.blank_ms,
            blank_quiet_ms=config.blank_quiet_ms,
        ),
        growing_finals=config.growing_finals,
    )


def _parse(raw: str, typ: Any, name: str) -> Any:
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {typ.__name__}") from None
    return raw
