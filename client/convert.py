"""Between the SDK's types and the protobuf messages of ``asr.v1``; the only module that touches both."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from google.protobuf.duration_pb2 import Duration

from asr_grpc import asr_pb2 as pb
from client.audio import AudioSource, read_audio, resample, to_linear16
from client.types import (
    Alternative,
    ModelInfo,
    RecognitionConfig,
    Segment,
    StreamingConfig,
    StreamingResult,
    Transcript,
    WordInfo,
)

_METHODS = {
    None: pb.DecodingConfig.METHOD_UNSPECIFIED,
    "greedy": pb.DecodingConfig.GREEDY,
    "beam": pb.DecodingConfig.BEAM,
}


def seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def recognition_config(
    config: RecognitionConfig, encoding: int, sample_rate: int = 0
) -> pb.RecognitionConfig:
    decoding = pb.DecodingConfig(
        method=_METHODS[config.method], beam_size=config.beam_size or 0, tta_speeds=config.tta_speeds
    )
    if config.ctc_weight is not None:
        decoding.ctc_weight = config.ctc_weight
    if config.lm_weight is not None:
        decoding.lm_weight = config.lm_weight
    out = pb.RecognitionConfig(
        encoding=encoding,  # type: ignore[arg-type]
        sample_rate_hertz=sample_rate,
        audio_channel_count=1,
        model=config.model,
        max_alternatives=config.max_alternatives,
        enable_word_time_offsets=config.word_time_offsets,
        enable_word_confidence=config.word_confidence,
        decoding=decoding,
        language_code=config.language_code,
        phrases=config.phrases,
    )
    if config.phrase_boost is not None:
        out.phrase_boost = config.phrase_boost
    return out


def streaming_config(config: StreamingConfig, sample_rate: int) -> pb.StreamingRecognizeRequest:
    endpointing = pb.EndpointConfig(
        silence_ms=config.silence_ms or 0,
        max_segment_seconds=config.max_segment_seconds or 0.0,
        speech_threshold_db=config.speech_threshold_db or 0.0,
    )
    if config.blank_ms is not None:
        endpointing.blank_ms = config.blank_ms
    sc = pb.StreamingRecognitionConfig(
        config=recognition_config(config.recognition, pb.LINEAR16, sample_rate),
        interim_results=config.interim_results,
        single_utterance=config.single_utterance,
        endpointing=endpointing,
        interim_interval_ms=config.interim_interval_ms or 0,
    )
    if config.growing_finals is not None:
        sc.growing_finals = config.growing_finals
    return pb.StreamingRecognizeRequest(streaming_config=sc)


def recognize_request(
    audio: AudioSource,
    config: RecognitionConfig,
    sample_rate: int | None = None,
    resample_to: int | None = None,
) -> pb.RecognizeRequest:
    """Encoded files go as they are (the server reads the header); arrays and resampled audio as LINEAR16.

    ``sample_rate`` is the rate of an array; ``resample_to`` asks the client to resample before sending.
    """
    if isinstance(audio, np.ndarray) or resample_to:
        wave, rate = linear_audio(audio, sample_rate)
        if resample_to:
            wave, rate = resample(wave, rate, resample_to), resample_to
        return pb.RecognizeRequest(
            config=recognition_config(config, pb.LINEAR16, rate),
            audio=pb.RecognitionAudio(content=to_linear16(wave)),
        )
    content = audio if isinstance(audio, bytes) else read_bytes(audio)
    return pb.RecognizeRequest(
        config=recognition_config(config, pb.ENCODING_UNSPECIFIED), audio=pb.RecognitionAudio(content=content)
    )


def read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"audio file not found: {p}")
    return p.read_bytes()


def check_rate(sample_rate: int | None) -> None:
    """Reject a sample rate that is not a positive number of Hz (``None`` means "not given")."""
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive (samples per second, e.g. 16000), got {sample_rate}")


def linear_audio(audio: AudioSource, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """A float32 mono waveform and its rate from a path, encoded bytes, or an array at ``sample_rate``."""
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise ValueError("an array of samples needs its sample_rate (e.g. sample_rate=16000)")
        check_rate(sample_rate)
        if audio.ndim != 1:
            raise ValueError(f"expected a mono waveform of shape (samples,), got shape {audio.shape}")
        if audio.dtype == np.int16:
            return audio.astype(np.float32) / 32768.0, sample_rate
        return audio.astype(np.float32, copy=False), sample_rate
    return read_audio(audio)


def _words(words: object) -> tuple[WordInfo, ...]:
    return tuple(
        WordInfo(w.word, seconds(w.start_offset), seconds(w.end_offset), float(w.confidence))
        for w in words  # type: ignore[attr-defined]
    )


def _alternatives(alts: object) -> tuple[Alternative, ...]:
    return tuple(
        Alternative(a.transcript, float(a.confidence), _words(a.words))
        for a in alts  # type: ignore[attr-defined]
    )


def transcript(resp: pb.RecognizeResponse) -> Transcript:
    segments = tuple(
        Segment(seconds(r.result_start_offset), seconds(r.result_end_offset), _alternatives(r.alternatives))
        for r in resp.results
    )
    return Transcript.from_segments(segments, seconds(resp.total_billed_time), resp.model, resp.request_id)


def streaming_results(resp: pb.StreamingRecognizeResponse) -> list[StreamingResult]:
    # END_OF_SINGLE_UTTERANCE needs no result of its own: the final follows and the server closes the stream.
    return [
        StreamingResult(
            text=r.alternatives[0].transcript if r.alternatives else "",
            is_final=r.is_final,
            stability=float(r.stability),
            start=seconds(r.result_start_offset),
            end=seconds(r.result_end_offset),
            utterance_index=r.utterance_index,
            alternatives=_alternatives(r.alternatives),
        )
        for r in resp.results
    ]


def shifted(result: StreamingResult, offset: float) -> StreamingResult:
    """A result of a stream that began ``offset`` seconds into the recording, in the recording's time."""
    if not offset:
        return result
    alts = tuple(
        replace(a, words=tuple(replace(w, start=w.start + offset, end=w.end + offset) for w in a.words))
        for a in result.alternatives
    )
    return replace(result, start=result.start + offset, end=result.end + offset, alternatives=alts)


def transcript_from_finals(
    finals: list[StreamingResult], duration: float, model: str = "", request_id: str = ""
) -> Transcript:
    segments = tuple(Segment(r.start, r.end, r.alternatives) for r in finals)
    return Transcript.from_segments(segments, duration, model, request_id)


def models(resp: pb.ListModelsResponse) -> list[ModelInfo]:
    return [
        ModelInfo(
            m.name,
            m.sample_rate_hertz,
            m.vocabulary_kind,
            m.vocabulary_size,
            m.is_default,
            m.num_parameters,
            m.device,
            m.language_model,
            m.streaming,
        )
        for m in resp.models
    ]
