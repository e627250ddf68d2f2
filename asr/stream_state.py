"""The state of one audio stream: its open segment, its utterances, their finals and interims, its results.

A :class:`Stream` is data, never hidden in the recognizer (:mod:`asr.streaming`). Audio comes in through
``_accept`` and goes frame by frame past the stream's :class:`asr.endpointing.Endpointer`; the open segment
grows while an utterance is open, and each endpoint (or forced cut, or the end of input) closes it into a
:class:`Job` for its final. An utterance's final can be queued early, as soon as its tail of silence is in
(the *tentative* job), and is then confirmed by the endpoint or void if speech resumes. The recognizer takes
the jobs (``_take_finals``, ``_take_interim``), decodes them, and hands each result back (``_deliver``).

The underscored methods are the recognizer's side of the stream; callers hold ``stream.lock``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from asr.alignment import Word
from asr.audio import SAMPLE_RATE
from asr.decoding import DecodingOptions
from asr.endpointing import FRAME, EndpointConfig, Endpointer, quietest_cut
from asr.transcribe import Alternative

__all__ = ["Job", "Stream", "StreamOptions", "StreamResult"]


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream settings. Change with ``dataclasses.replace``."""

    decoding: DecodingOptions = field(default_factory=DecodingOptions)  # for finals; interims are greedy CTC
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    interim_results: bool = True
    interim_interval_ms: int = 500  # least audio between two interims of an utterance
    # Each interim re-encodes the whole open utterance (the encoder is bidirectional), so on long utterances
    # the interval grows to this share of the utterance so far: the encoding cost stays linear in its length.
    interim_growth: float = 0.25
    single_utterance: bool = False  # stop after the first final
    word_times: bool = True  # align words on finals
    # Chunk-streaming models (asr.online): partials and blank endpoints also read greedy CTC over the
    # encoder's provisional look-ahead frames, which come a look-ahead sooner; a word seen there may change.
    lookahead_results: bool = True
    # Chunk-streaming models: search the final while its utterance is heard (asr.growing_search; sooner
    # finals) or whole at its endpoint (a little more accurate); RecognizerConfig.growing_finals can veto it.
    growing_finals: bool = True

    def __post_init__(self) -> None:
        if not 100 <= self.interim_interval_ms <= 10_000:
            raise ValueError(f"interim_interval_ms must be in [100, 10000], got {self.interim_interval_ms}")
        if not 0.0 <= self.interim_growth <= 1.0:
            raise ValueError(f"interim_growth must be in [0, 1], got {self.interim_growth}")


@dataclass(frozen=True)
class StreamResult:
    text: str
    alternatives: tuple[Alternative, ...]
    words: tuple[Word, ...]
    is_final: bool
    stability: float  # 1.0 on finals; on interims the share of the text that matched the previous interim
    start: float  # seconds from the stream start: the utterance's first sample
    end: float  # seconds from the stream start: the last sample this result covers
    utterance: int  # index of the utterance in the stream, from 0
    end_of_single_utterance: bool = False  # the final that closes a single-utterance stream
    # finals: seconds from the stream start at which the utterance was closed (its endpoint, the end of the
    # input, or a forced cut); an early final ends before that, by the silence the endpointer waited for
    closed_at: float = 0.0

    @property
    def confidence(self) -> float:
        if self.words:
            return float(sum(w.confidence for w in self.words) / len(self.words))
        return self.alternatives[0].confidence if self.alternatives else 0.0


@dataclass
class Job:
    stream: Stream
    audio: np.ndarray
    start: int  # absolute sample index of audio[0]
    utterance: int
    final: bool
    closes_stream: bool = False
    closed_at: int = 0  # stream sample at which the segment was closed
    # an early final (see the module docstring): held back until the endpoint confirms it, dropped if the
    # utterance goes on
    tentative: bool = False
    confirmed: bool = False
    cancelled: bool = False

    def settle(self, result: StreamResult) -> StreamResult:
        """An early final's result, with what its endpoint decided."""
        return dataclasses.replace(
            result, end_of_single_utterance=self.closes_stream, closed_at=self.closed_at / SAMPLE_RATE
        )


class Stream:
    """All the state of one audio stream; created by :meth:`Recognizer.create_stream`."""

    def __init__(self, options: StreamOptions) -> None:
        self.options = options
        self.lock = threading.Lock()
        self.num_samples = 0  # samples accepted so far (stream clock)
        self._residual = np.zeros(0, dtype=np.float32)  # < one VAD frame, not yet looked at
        # the open segment: samples [segment_start, segment_start + len(segment))
        self.segment = np.zeros(0, dtype=np.float32)
        self.segment_start = 0
        self._energies: list[float] = []  # dB per VAD frame of the open segment
        # endpoint state
        self.endpointer = Endpointer(options.endpoint)
        self.in_speech = False  # the open segment holds an utterance
        # decoding state
        self.utterance = 0  # index of the open utterance
        self._pending: deque[Job] = deque()  # closed segments waiting for their final
        self._tentative: Job | None = None  # the open utterance's early final, if its tail of silence is in
        self._tentative_result: StreamResult | None = None  # its result, held until the endpoint
        self._unresolved: Job | None = None  # a confirmed early final still being decoded
        self._last_interim_len = 0  # segment length at the last interim
        self._interim_turn = 0  # when (in decode calls) this stream last got an interim: fairness under load
        self._last_interim_text = ""
        self.finals_emitted = 0
        self.early_finals_sent = 0  # finals decoded before their endpoint
        self.early_finals_wasted = 0  # early finals decoded (or being decoded) when speech resumed
        self.input_done = False  # no more audio will come
        self.ended = False  # single utterance reached its endpoint; later audio is ignored
        self._results: deque[StreamResult] = deque()
        self.last_result: StreamResult | None = None

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @property
    def noise_floor(self) -> float | None:
        """The endpointer's noise floor in dB (None before the first frame)."""
        return self.endpointer.noise_floor

    @property
    def is_done(self) -> bool:
        """No audio will come and every final has been decoded."""
        with self.lock:
            return (
                (self.input_done or self.ended)
                and not self._pending
                and self._unresolved is None
                and not self._has_open_utterance()
            )

    def _has_open_utterance(self) -> bool:
        return self.in_speech and len(self.segment) > 0 and not self.ended

    # -- endpointing (callers hold the lock) -----------------------------------------------------------------

    def _accept(self, samples: np.ndarray) -> None:
        if self.ended or self.input_done:
            return
        self.num_samples += len(samples)
        data = np.concatenate([self._residual, samples]) if len(self._residual) else samples
        n = (len(data) // FRAME) * FRAME
        self._residual = data[n:].copy()
        for i in range(0, n, FRAME):
            self._frame(data[i : i + FRAME])
            if self.ended:
                return

    def _frame(self, frame: np.ndarray) -> None:
        ep, vad = self.options.endpoint, self.endpointer
        energy, speech = vad.push(frame)
        self.segment = np.concatenate([self.segment, frame])
        self._energies.append(energy)
        if speech:
            self._cancel_tentative()  # the utterance goes on: its early final is void
            if not self.in_speech and vad.onset:
                self.in_speech = True
        if not self.in_speech:
            keep = vad.context_frames * FRAME
            if len(self.segment) > keep:  # drop leading silence, keep some context before the onset
                drop = len(self.segment) - keep
                self.segment = self.segment[drop:]
                self.segment_start += drop
                self._energies = self._energies[drop // FRAME :]
            return
        if vad.endpoint:
            self._close_segment(self._utterance_end(), utterance_done=True)
            return
        if vad.tail_complete and self._tentative is None:
            # the segment's audio is complete unless speech resumes: decode its final now
            self._tentative = Job(
                self, self.segment.copy(), self.segment_start, self.utterance, True, tentative=True
            )
            self._pending.append(self._tentative)
        if len(self.segment) >= int(ep.max_segment_seconds * SAMPLE_RATE):
            if self._tentative is not None:  # a pause of final_tail_ms is in: the utterance ends there
                self._close_segment(len(self._tentative.audio), utterance_done=True)
            else:
                self._close_segment(quietest_cut(self._energies), utterance_done=False)

    def _utterance_end(self) -> int:
        """Where the open utterance's segment ends: ``final_tail_ms`` after its last speech frame."""
        if self._tentative is not None:
            return len(self._tentative.audio)
        tail = self.options.endpoint.tail_frames
        extra = max(0, self.endpointer.silence_run - tail)
        # (a forced cut inside the silence leaves less than that: keep the tail then)
        return max(len(self.segment) - extra * FRAME, min(len(self.segment), tail * FRAME))

    def _cancel_tentative(self) -> None:
        t = self._tentative
        if t is None:
            return
        t.cancelled = True
        if not any(j is t for j in self._pending):
            self.early_finals_wasted += 1  # the model has already seen it
        self._pending = deque(j for j in self._pending if j is not t)
        self._tentative = None
        self._tentative_result = None

    def _close_segment(self, cut: int, utterance_done: bool) -> None:
        """Queue samples ``[0, cut)`` of the open segment for a final; the rest starts the next segment.

        If the early final covers exactly these samples, it becomes the final: sent now if it is decoded,
        else as soon as it is.
        """
        closes = self.options.single_utterance and utterance_done
        closed_at = self.segment_start + len(self.segment)
        t = self._tentative
        if t is not None and len(t.audio) == cut:
            t.confirmed, t.closes_stream, t.closed_at = True, closes, closed_at
            self.early_finals_sent += 1
            held, self._tentative, self._tentative_result = self._tentative_result, None, None
            if held is not None:
                self._add_result(t.settle(held))
            elif not any(j is t for j in self._pending):
                self._unresolved = t  # being decoded right now
        else:
            self._cancel_tentative()
            self._pending.append(
                Job(
                    self,
                    self.segment[:cut].copy(),
                    self.segment_start,
                    self.utterance,
                    True,
                    closes_stream=closes,
                    closed_at=closed_at,
                )
            )
        self.segment = self.segment[cut:]
        self.segment_start += cut
        self._energies = self._energies[cut // FRAME :]
        self.utterance += 1
        self._last_interim_len = 0
        self._last_interim_text = ""
        if utterance_done:
            self.in_speech = False
            self.endpointer.utterance_ended()
        if closes:
            self.ended = True

    def _finish(self) -> None:
        if self.input_done:
            return
        self.input_done = True
        if self.ended:
            return
        if len(self._residual):
            self.segment = np.concatenate([self.segment, self._residual])
            self._residual = np.zeros(0, dtype=np.float32)
        if self.in_speech and len(self.segment):
            self._close_segment(self._utterance_end(), utterance_done=True)

    # -- scheduling ------------------------------------------------------------------------------------------

    def _interim_due(self) -> bool:
        if not (self.options.interim_results and self._has_open_utterance()):
            return False
        if self._tentative is not None:  # only silence since the early final's audio: nothing new to show
            return False
        interval = max(
            self.options.interim_interval_ms * SAMPLE_RATE // 1000,
            int(self.options.interim_growth * self._last_interim_len),
        )
        return len(self.segment) - self._last_interim_len >= interval

    def _ready(self) -> bool:
        return bool(self._pending) or self._interim_due()

    def _take_finals(self) -> list[Job]:
        jobs = list(self._pending)
        self._pending.clear()
        return jobs

    def _take_interim(self, turn: int) -> Job:
        self._last_interim_len = len(self.segment)
        self._interim_turn = turn
        return Job(self, self.segment.copy(), self.segment_start, self.utterance, False)

    def _deliver(self, job: Job, result: StreamResult) -> None:
        """A decoded job's result: early finals wait for their endpoint (or are dropped), the rest go out."""
        if job.tentative:
            if not job.confirmed:
                if job is self._tentative:
                    self._tentative_result = result
                return
            if self._unresolved is job:
                self._unresolved = None
            result = job.settle(result)
        self._add_result(result)

    def _add_result(self, result: StreamResult) -> None:
        self._results.append(result)
        self.last_result = result
        if not result.is_final and result.utterance == self.utterance:
            self._last_interim_text = result.text
        if result.is_final:
            self.finals_emitted += 1
