"""Between the wire and the library: request configs in, checked, as :class:`asr.streaming.StreamOptions`;
:class:`asr.streaming.StreamResult` out as protobuf results.

A config the server cannot honour raises ``ValueError`` naming the field, the bad value and what is allowed
(the service turns it into ``INVALID_ARGUMENT``). Defaults for unset fields come from :class:`ServerConfig`.
"""

from __future__ import annotations

import dataclasses
import math

from google.protobuf import duration_pb2

from asr.biasing import check_phrases
from asr.decoding import DecodingOptions
from asr.streaming import StreamOptions, StreamResult
from asr.transcribe import MAX_SEGMENT_SECONDS
from asr_grpc import asr_pb2
from server.config import MAX_PHRASE_BOOST, ServerConfig, default_stream_options
from server.models import LoadedModel

# -- requests ------------------------------------------------------------------------------------------------


def wants_words(cfg: asr_pb2.RecognitionConfig) -> bool:
    """Whether results carry words (with times, confidences or both)."""
    return cfg.enable_word_time_offsets or cfg.enable_word_confidence


def decoding_options(
    cfg: asr_pb2.RecognitionConfig, model: LoadedModel, config: ServerConfig
) -> DecodingOptions:
    d = cfg.decoding
    if d.method not in asr_pb2.DecodingConfig.Method.values():
        raise ValueError(f"unknown decoding method {d.method}; use GREEDY (1) or BEAM (2)")
    method = "greedy" if d.method == asr_pb2.DecodingConfig.GREEDY else "beam"
    beam = d.beam_size or config.beam_size
    if not 1 <= beam <= config.max_beam_size:
        raise ValueError(f"beam_size must be in [1, {config.max_beam_size}], got {d.beam_size}")
    ctc_weight = d.ctc_weight if d.HasField("ctc_weight") else model.ctc_weight
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
    nbest = cfg.max_alternatives or 1
    limit = beam if method == "beam" else 1
    if not 1 <= nbest <= limit:
        raise ValueError(f"max_alternatives must be in [1, {limit}] ({method} decoding), got {nbest}")
    if cfg.audio_channel_count < 0:
        raise ValueError(f"audio_channel_count must be >= 0, got {cfg.audio_channel_count}")
    lm_weight = _lm_weight(d, model)
    phrases, boost = _phrase_hints(cfg, model, config)
    greedy = method == "greedy"  # CTC best path has no search to fuse an LM or hints into
    # float32 on the wire: 0.9 arrives as 0.89999998
    speeds = tuple(round(x, 4) for x in d.tta_speeds) or config.tta_speed_values
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
    cfg: asr_pb2.RecognitionConfig, model: LoadedModel, config: ServerConfig
) -> tuple[tuple[str, ...], float]:
    phrases = tuple(cfg.phrases)
    if len(phrases) > config.max_phrases:
        raise ValueError(f"{len(phrases)} phrase hints; this server takes at most {config.max_phrases}")
    check_phrases(model.recognizer.model.tokenizer, phrases)
    boost = cfg.phrase_boost if cfg.HasField("phrase_boost") else config.phrase_boost
    if not 0.0 <= boost <= MAX_PHRASE_BOOST:
        raise ValueError(f"phrase_boost must be in [0, {MAX_PHRASE_BOOST:g}], got {boost}")
    return phrases, boost


def recognize_options(
    cfg: asr_pb2.RecognitionConfig, model: LoadedModel, config: ServerConfig
) -> StreamOptions:
    """A Recognize call's options: its decoding, finals only."""
    return StreamOptions(
        decoding=decoding_options(cfg, model, config), interim_results=False, word_times=wants_words(cfg)
    )


def stream_options(
    sc: asr_pb2.StreamingRecognitionConfig, model: LoadedModel, config: ServerConfig
) -> StreamOptions:
    """A StreamingRecognize call's options: decoding, endpointing and interim results."""
    cfg = sc.config
    default = default_stream_options(config)
    if sc.endpointing.HasField("blank_ms") and not 0 <= sc.endpointing.blank_ms <= 10_000:
        raise ValueError(
            f"endpointing.blank_ms must be in [0, 10000] (0 disables), got {sc.endpointing.blank_ms}"
        )
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
        blank_ms=ep.blank_ms if ep.HasField("blank_ms") else dep.blank_ms,
    )
    return StreamOptions(
        decoding=decoding_options(cfg, model, config),
        endpoint=endpoint,
        interim_results=sc.interim_results,
        interim_interval_ms=sc.interim_interval_ms or default.interim_interval_ms,
        single_utterance=sc.single_utterance,
        word_times=wants_words(cfg),
        growing_finals=sc.growing_finals if sc.HasField("growing_finals") else default.growing_finals,
    )


# -- results -------------------------------------------------------------------------------------------------


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def alternatives(
    r: StreamResult, cfg: asr_pb2.RecognitionConfig
) -> list[asr_pb2.SpeechRecognitionAlternative]:
    """The n-best of a result; the best one carries the words of a final when the config asks for them."""
    alts = []
    for k, a in enumerate(r.alternatives or ()):
        alt = asr_pb2.SpeechRecognitionAlternative(
            transcript=a.text, confidence=a.confidence if r.is_final else 0.0
        )
        if k == 0 and r.is_final and wants_words(cfg):
            for w in r.words:
                alt.words.append(
                    asr_pb2.WordInfo(
                        word=w.word,
                        start_offset=duration(w.start),
                        end_offset=duration(w.end),
                        confidence=w.confidence if cfg.enable_word_confidence else 0.0,
                    )
                )
        alts.append(alt)
    if not alts:
        alts.append(asr_pb2.SpeechRecognitionAlternative(transcript=r.text))
    return alts


def recognition_result(r: StreamResult, cfg: asr_pb2.RecognitionConfig) -> asr_pb2.SpeechRecognitionResult:
    """One piece of a Recognize response."""
    return asr_pb2.SpeechRecognitionResult(
        alternatives=alternatives(r, cfg),
        result_start_offset=duration(r.start),
        result_end_offset=duration(r.end),
    )


def streaming_result(r: StreamResult, cfg: asr_pb2.RecognitionConfig) -> asr_pb2.StreamingRecognitionResult:
    """An interim or final result of a stream."""
    return asr_pb2.StreamingRecognitionResult(
        alternatives=alternatives(r, cfg),
        is_final=r.is_final,
        stability=r.stability,
        result_start_offset=duration(r.start),
        result_end_offset=duration(r.end),
        utterance_index=r.utterance,
    )
