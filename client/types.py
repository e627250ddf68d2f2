"""The SDK's own types: options in, results out. Frozen dataclasses, never raw protobuf messages.

Times are seconds from the beginning of the audio (a stream's first sample).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Alternative",
    "ModelInfo",
    "RecognitionConfig",
    "Segment",
    "StreamingConfig",
    "StreamingResult",
    "Transcript",
    "WordInfo",
]

METHODS = ("greedy", "beam")


@dataclass(frozen=True)
class RecognitionConfig:
    """What to recognise and how; ``None`` or ``""`` means the server's default.

    Change with ``dataclasses.replace``.

    The audio's encoding and sample rate are not here: the SDK fills them in from the audio it sends.
    """

    model: str = ""  # a name from list_models(); "" = the server's default model
    max_alternatives: int = 1
    word_time_offsets: bool = True  # words with start/end times (needed for subtitle cues)
    word_confidence: bool = True
    method: str | None = None  # "greedy" (CTC best path) or "beam" (joint CTC/attention)
    beam_size: int | None = None
    ctc_weight: float | None = None  # in [0, 1]
    lm_weight: float | None = None  # >= 0: weight of the server's language model; 0 turns it off
    language_code: str = ""  # informational; the model decides the language
    phrases: tuple[str, ...] = ()  # phrase hints: names and terms the audio is likely to contain
    phrase_boost: float | None = None  # score per token of a completed hint, in [0, 10]
    tta_speeds: tuple[float, ...] = ()  # test-time augmentation of beam finals, e.g. (0.9, 1.1)

    def __post_init__(self) -> None:
        if isinstance(self.phrases, str):
            raise ValueError("phrases must be a sequence of strings, not one string")
        object.__setattr__(self, "phrases", tuple(self.phrases))
        if isinstance(self.tta_speeds, str):
            raise ValueError("tta_speeds must be a sequence of numbers, e.g. (0.9, 1.1), not a string")
        object.__setattr__(self, "tta_speeds", tuple(float(x) for x in self.tta_speeds))
        if self.phrase_boost is not None and not 0.0 <= self.phrase_boost <= 10.0:
            raise ValueError(f"phrase_boost must be in [0, 10], got {self.phrase_boost}")
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"unknown decoding method {self.method!r}; choose one of {METHODS}")
        if self.max_alternatives < 1:
            raise ValueError(f"max_alternatives must be at least 1, got {self.max_alternatives}")
        if self.beam_size is not None and self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.ctc_weight is not None and not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.lm_weight is not None and self.lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")


@dataclass(frozen=True)
class StreamingConfig:
    """How to run a stream. ``None`` fields take the server's defaults."""

    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    interim_results: bool = True
    single_utterance: bool = False  # stop after the first utterance's final result
    silence_ms: int | None = None  # silence that ends an utterance
    max_segment_seconds: float | None = None  # longest utterance before a forced cut
    speech_threshold_db: float | None = None  # energy above the noise floor that counts as speech
    interim_interval_ms: int | None = None  # least time between two interim results
    # streaming models: CTC blanks after speech that end an utterance, in ms; 0 disables (energy rule only)
    blank_ms: int | None = None
    # streaming models: search finals as the utterance is heard (sooner) or whole at its end (a little more
    # accurate on unfamiliar speakers)
    growing_finals: bool | None = None


@dataclass(frozen=True)
class WordInfo:
    word: str
    start: float
    end: float
    confidence: float = 0.0  # in [0, 1]; 0 when not asked for


@dataclass(frozen=True)
class Alternative:
    text: str
    confidence: float = 0.0  # in [0, 1]
    words: tuple[WordInfo, ...] = ()  # only on the best alternative of a final result


@dataclass(frozen=True)
class Segment:
    """A piece of a recording (long audio is cut at quiet points), with its alternatives, best first."""

    start: float
    end: float
    alternatives: tuple[Alternative, ...] = ()

    @property
    def text(self) -> str:
        return self.alternatives[0].text if self.alternatives else ""

    @property
    def words(self) -> tuple[WordInfo, ...]:
        return self.alternatives[0].words if self.alternatives else ()


@dataclass(frozen=True)
class Transcript:
    """The result of recognising one recording."""

    text: str
    segments: tuple[Segment, ...] = ()
    duration: float = 0.0  # seconds of audio
    model: str = ""
    request_id: str = ""

    @property
    def words(self) -> tuple[WordInfo, ...]:
        return tuple(w for s in self.segments for w in s.words)

    @property
    def confidence(self) -> float:
        """Mean word confidence, else the mean of the segments' best-alternative confidences."""
        words = self.words
        if words and any(w.confidence for w in words):
            return sum(w.confidence for w in words) / len(words)
        confs = [s.alternatives[0].confidence for s in self.segments if s.alternatives]
        return sum(confs) / len(confs) if confs else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["confidence"] = self.confidence
        d["words"] = [asdict(w) for w in self.words]
        return d

    @classmethod
    def from_segments(
        cls, segments: tuple[Segment, ...], duration: float, model: str = "", request_id: str = ""
    ) -> Transcript:
        text = " ".join(s.text for s in segments if s.text)
        return cls(text, segments, duration, model, request_id)


@dataclass(frozen=True)
class StreamingResult:
    """An interim (``is_final=False``) or final result for one utterance of a stream."""

    text: str
    is_final: bool
    stability: float = 0.0  # how likely an interim result is to stay as it is; 1 on finals
    start: float = 0.0  # start of the utterance
    end: float = 0.0  # end of the audio this result covers
    utterance_index: int = 0
    alternatives: tuple[Alternative, ...] = ()

    @property
    def words(self) -> tuple[WordInfo, ...]:
        return self.alternatives[0].words if self.alternatives else ()

    @property
    def confidence(self) -> float:
        return self.alternatives[0].confidence if self.alternatives else 0.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    sample_rate: int
    vocabulary_kind: str  # "char" or "bpe"
    vocabulary_size: int
    is_default: bool
    num_parameters: int
    device: str
    language_model: str = ""  # the LM fused into its beam search; "" = none
    streaming: bool = False  # a chunked encoder: streams are encoded as the audio arrives
