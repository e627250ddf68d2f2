"""The models a server serves: each with its recognizer, batcher and ``ModelInfo``, started and warmed up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.lm import NGramLM, load_lm
from asr.model import ASRModel
from asr.model_decoding import ModelDecoding
from asr.online import FinalPass, make_recognizer
from asr.streaming import Recognizer, RecognizerConfig
from asr.word_lm import WordLM
from asr_grpc import asr_pb2
from server.batcher import Batcher
from server.config import ServerConfig, default_stream_options
from server.metrics import Metrics

log = logging.getLogger("server")  # the records of app.py's start-up, where this code lived


@dataclass
class LoadedModel:
    name: str
    recognizer: Recognizer
    batcher: Batcher
    info: asr_pb2.ModelInfo
    lm_weight: float = 0.0  # default weight of its language model (recognizer.lm); 0 without one
    ctc_weight: float = 0.3  # default CTC weight of its finals


async def start_models(
    models: dict[str, ASRModel],
    config: ServerConfig,
    metrics: Metrics,
    decodings: dict[str, ModelDecoding] | None = None,
) -> dict[str, LoadedModel]:
    """A started batcher (and recognizer) per model, warmed up unless ``config.warmup`` is off; the first
    model is the default. ``config.lm`` is loaded and fused into every model's beam search (each model's
    tokenizer must match it: ``ValueError`` otherwise); without it, a model with ``decodings`` of its own
    (its ``NAME.decoding.json``) decodes with its LM and weights."""
    default_name = next(iter(models))
    lm = _server_lm(config, models)
    lm_weight = config.lm_weight if lm is not None else 0.0
    loaded: dict[str, LoadedModel] = {}
    theirs = decodings if lm is None and decodings else {}  # --lm replaces every model's own settings
    owns = {name: _own_decoding(m, theirs.get(name)) for name, m in models.items()}
    second = _second_pass_model(config, models)
    for name, m in models.items():
        own, own_lm = owns[name]
        model_lm = lm if lm is not None else own_lm
        model_lm_weight = lm_weight if lm is not None else own.lm_weight
        ctc_weight = config.ctc_weight if own.ctc_weight is None else own.ctc_weight
        defaults = default_stream_options(config, model_lm_weight, ctc_weight)
        rec_config = RecognizerConfig(
            config.max_batch_size,
            defaults,
            growing_lag_ms=config.growing_lag_ms,
            searched_partials=config.searched_partials,
            silence_gate=config.silence_gate,
            second_pass_budget_ms=config.second_pass_budget_ms,
        )
        final_model = None
        if second is not None and m.config.encoder.streaming and second is not m:
            fown, fown_lm = owns[config.streaming_finals]  # the second pass decodes as that model would
            final_model = FinalPass(second, fown_lm, fown.ctc_weight, fown.lm_weight)
        rec = make_recognizer(m, rec_config, lm=model_lm, final_model=final_model)
        if final_model is not None:
            log.info("finals by a second pass", extra={"model": name, "final_model": config.streaming_finals})
        batcher = Batcher(
            rec,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            metrics=metrics,
            finals_threads=config.finals_threads,
            # only a chunk-streaming model's stream finals search with it (Recognizer.decode_streams)
            load_beam_size=config.load_beam_size if m.config.encoder.streaming else 0,
        )
        batcher.start()
        if m.config.encoder.streaming:  # an OnlineRecognizer, whose finals may grow
            metrics.watch_finals(name, rec)
        if config.warmup:
            t0 = time.perf_counter()
            await batcher.run_in_executor(warm_up, rec)
            log.info("warmed up", extra={"model": name, "elapsed_s": round(time.perf_counter() - t0, 3)})
        info = model_info(name, m, name == default_name, model_lm)
        loaded[name] = LoadedModel(name, rec, batcher, info, model_lm_weight, ctc_weight)
    return loaded


def _second_pass_model(config: ServerConfig, models: dict[str, ASRModel]) -> ASRModel | None:
    """The model ``--streaming-finals`` names (None without one)."""
    if config.streaming_finals and config.streaming_finals not in models:
        raise ValueError(
            f"--streaming-finals {config.streaming_finals!r} is not a served model; serve it too "
            f"(--model ...), or pick one of {list(models)}"
        )
    return models.get(config.streaming_finals) if config.streaming_finals else None


def _own_decoding(
    model: ASRModel, own: ModelDecoding | None
) -> tuple[ModelDecoding, NGramLM | WordLM | None]:
    """A model's own decoding settings (none without) and its LM, loaded."""
    own = own or ModelDecoding()
    return own, own.load_lm(model.tokenizer)


def _server_lm(config: ServerConfig, models: dict[str, ASRModel]) -> NGramLM | WordLM | None:
    """``config.lm``, loaded and checked against every model's tokenizer (None without one)."""
    if not config.lm:
        return None
    lm: NGramLM | WordLM | None = None
    for name, m in models.items():
        try:
            if lm is None:
                lm = load_lm(config.lm, m.tokenizer)
            else:
                lm.check_tokenizer(m.tokenizer)
        except ValueError as exc:
            raise ValueError(f"--lm {config.lm} cannot decode model {name!r}: {exc}") from None
    return lm


def model_info(name: str, model: ASRModel, default: bool, lm: NGramLM | WordLM | None) -> asr_pb2.ModelInfo:
    """How ListModels describes a model."""
    tok = model.tokenizer
    return asr_pb2.ModelInfo(
        language_model=lm.describe() if lm is not None else "",
        name=name,
        sample_rate_hertz=model.config.features.sample_rate,
        vocabulary_kind=tok.kind,
        vocabulary_size=tok.vocab_size,
        is_default=default,
        num_parameters=model.num_parameters(),
        device=str(model.device),
        streaming=model.config.encoder.streaming,
    )


def warm_up(recognizer: Recognizer) -> None:
    """One beam final on noise, and a stream of it, so the first real call pays no lazy initialisation."""
    noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.05).astype(np.float32)
    s = recognizer.create_offline_stream(noise)
    recognizer.decode_streams([s])
    recognizer.pop_results(s)
    s = recognizer.create_stream()
    recognizer.accept_audio(s, noise)
    recognizer.input_finished(s)
    while recognizer.is_ready(s):
        recognizer.decode_streams([s])
    recognizer.pop_results(s)
