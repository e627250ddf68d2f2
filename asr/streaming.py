"""Streaming recognition with endpointing: live audio in, interim and final results out.

The encoder is bidirectional, so it cannot look at audio that has not arrived. A stream is therefore cut into
utterances (segments) by an endpointer, and each segment is decoded as a whole, exactly as offline decoding
would decode the same samples:

* **interim results** while an utterance is open: greedy CTC over the open segment, re-encoded every
  ``interim_interval_ms`` of new audio (cheap, ``stability < 1``);
* **a final result** at each endpoint: joint CTC/attention beam search over the closed segment, words timed
  from the stream start.

The final of an utterance is decoded *ahead of its endpoint*: a segment keeps only ``final_tail_ms`` of the
silence after its last speech, so once that much silence has passed its audio is known, and its final is
decoded then, while the endpointer waits out the rest of ``silence_ms``. If speech resumes first, that early
result is thrown away; if the endpoint comes, it is sent at once. The user waits ``silence_ms`` for a final,
not ``silence_ms`` plus a beam search.

Endpointing is an energy VAD (20 ms frame RMS against an adaptive noise floor): an utterance starts after
``min_speech_ms`` of speech and ends after ``silence_ms`` of silence; a segment that reaches
``max_segment_seconds`` is cut at the quietest 100 ms of its last third, and the rest carries over.

The API follows sherpa's ``OnlineRecognizer``; state lives in :class:`Stream`, never in the recognizer::

    rec = Recognizer(model)
    s = rec.create_stream(StreamOptions(interim_results=True))
    for chunk in chunks:                      # float32 16 kHz mono
        rec.accept_audio(s, chunk)
        if rec.is_ready(s):
            rec.decode_streams([s])           # batch many streams here
        for r in rec.pop_results(s): print(r.is_final, r.text)
    rec.input_finished(s)
    rec.decode_streams([s])                   # the last final

Thread safety: each stream has a lock; ``accept_audio`` may run on one thread while ``decode_streams`` runs on
another (the server accepts audio on its event loop and decodes on a worker thread). The model itself is only
called from ``decode_streams``; call that from one thread at a time.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from asr.alignment import Word, voiced_span
from asr.audio import SAMPLE_RATE, check_finite
from asr.decoding import DecodingOptions, LanguageModel
from asr.transcribe import Alternative, decode_encoded, encode_views, encode_waveforms, split_long_audio

if TYPE_CHECKING:
    from asr.model import ASRModel

__all__ = ["EndpointConfig", "Recognizer", "RecognizerConfig", "Stream", "StreamOptions", "StreamResult"]

_FRAME = SAMPLE_RATE // 50  # 20 ms VAD frame
_CUT_WINDOW = SAMPLE_RATE // 10  # forced cuts land in the middle of the quietest 100 ms


@dataclass(frozen=True)
class EndpointConfig:
    """Where an utterance ends. All times in milliseconds except ``max_segment_seconds``."""

    silence_ms: int = 800  # silence after speech that ends an utterance
    # silence kept at the end of an utterance's segment; once this much has passed the final is decoded early
    # (at most silence_ms; equal to it, finals are decoded only after the endpoint)
    final_tail_ms: int = 300
    max_segment_seconds: float = 20.0  # longer segments are cut at the quietest point near their end
    speech_threshold_db: float = 10.0  # frame energy above the noise floor that counts as speech
    min_speech_ms: int = 60  # consecutive speech that opens an utterance (ignores clicks)
    pre_speech_ms: int = 300  # audio kept before the speech onset
    min_level_db: float = -55.0  # frames quieter than this (dBFS) are never speech

    def __post_init__(self) -> None:
        if not 100 <= self.silence_ms <= 10_000:
            raise ValueError(f"silence_ms must be in [100, 10000], got {self.silence_ms}")
        if not 1.0 <= self.max_segment_seconds <= 60.0:
            raise ValueError(f"max_segment_seconds must be in [1, 60], got {self.max_segment_seconds}")
        if not 3.0 <= self.speech_threshold_db <= 40.0:
            raise ValueError(f"speech_threshold_db must be in [3, 40], got {self.speech_threshold_db}")
        if self.min_speech_ms < 0 or self.pre_speech_ms < 0:
            raise ValueError("min_speech_ms and pre_speech_ms must be >= 0")
        if self.final_tail_ms < 20:
            raise ValueError(f"final_tail_ms must be at least one 20 ms frame, got {self.final_tail_ms}")

    @property
    def tail_frames(self) -> int:
        """20 ms frames of silence a segment keeps after its speech."""
        return min(self.final_tail_ms, self.silence_ms) // 20


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

    def __post_init__(self) -> None:
        if not 100 <= self.interim_interval_ms <= 10_000:
            raise ValueError(f"interim_interval_ms must be in [100, 10000], got {self.interim_interval_ms}")
        if not 0.0 <= self.interim_growth <= 1.0:
            raise ValueError(f"interim_growth must be in [0, 1], got {self.interim_growth}")


@dataclass(frozen=True)
class RecognizerConfig:
    max_batch_size: int = 16  # segments per encoder call; more are split into several calls
    default_options: StreamOptions = field(default_factory=StreamOptions)
    # Audio the interims of one decode_streams call may re-encode, in seconds. Interims past it wait for a
    # later call (the streams that waited longest go first), which keeps each call short, so a final that
    # arrives meanwhile waits little. At least one due interim is always decoded.
    max_interim_seconds: float = 12.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_interim_seconds <= 0:
            raise ValueError(f"max_interim_seconds must be positive, got {self.max_interim_seconds}")


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
class _Job:
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
        self.noise_floor: float | None = None
        self.in_speech = False  # the open segment holds an utterance
        self._speech_run = 0  # consecutive speech frames
        self._silence_run = 0  # consecutive non-speech frames since the last speech frame
        # decoding state
        self.utterance = 0  # index of the open utterance
        self._pending: deque[_Job] = deque()  # closed segments waiting for their final
        self._tentative: _Job | None = None  # the open utterance's early final, if its tail of silence is in
        self._tentative_result: StreamResult | None = None  # its result, held until the endpoint
        self._unresolved: _Job | None = None  # a confirmed early final still being decoded
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
        n = (len(data) // _FRAME) * _FRAME
        self._residual = data[n:].copy()
        for i in range(0, n, _FRAME):
            self._frame(data[i : i + _FRAME])
            if self.ended:
                return

    def _frame(self, frame: np.ndarray) -> None:
        ep = self.options.endpoint
        energy = 10.0 * math.log10(float(np.mean(frame.astype(np.float64) ** 2)) + 1e-10)
        floor = energy if self.noise_floor is None else self.noise_floor
        speech = energy > max(floor + ep.speech_threshold_db, ep.min_level_db)
        if not speech:  # track the floor down at once, up slowly, and never below digital silence
            floor = energy if energy < floor else floor + 0.05 * (energy - floor)
            self.noise_floor = max(floor, -100.0)
        elif self.noise_floor is None:
            self.noise_floor = -100.0
        self.segment = np.concatenate([self.segment, frame])
        self._energies.append(energy)
        if speech:
            self._speech_run += 1
            self._silence_run = 0
            self._cancel_tentative()  # the utterance goes on: its early final is void
            if not self.in_speech and self._speech_run * 20 >= ep.min_speech_ms:
                self.in_speech = True
        else:
            self._speech_run = 0
            self._silence_run += 1
        if not self.in_speech:
            keep = (ep.pre_speech_ms // 20 + self._speech_run) * _FRAME
            if len(self.segment) > keep:  # drop leading silence, keep some context before the onset
                drop = len(self.segment) - keep
                self.segment = self.segment[drop:]
                self.segment_start += drop
                self._energies = self._energies[drop // _FRAME :]
            return
        if self._silence_run * 20 >= ep.silence_ms:
            self._close_segment(self._utterance_end(), utterance_done=True)
            return
        if self._silence_run == ep.tail_frames and self._tentative is None:
            # the segment's audio is complete unless speech resumes: decode its final now
            self._tentative = _Job(
                self, self.segment.copy(), self.segment_start, self.utterance, True, tentative=True
            )
            self._pending.append(self._tentative)
        if len(self.segment) >= int(ep.max_segment_seconds * SAMPLE_RATE):
            if self._tentative is not None:  # a pause of final_tail_ms is in: the utterance ends there
                self._close_segment(len(self._tentative.audio), utterance_done=True)
            else:
                self._close_segment(self._quiet_cut(), utterance_done=False)

    def _quiet_cut(self) -> int:
        """Sample offset in the open segment of the quietest 100 ms window in its last third."""
        e = np.asarray(self._energies)
        per = _CUT_WINDOW // _FRAME
        lo = (2 * len(e)) // 3
        windows = [float(np.mean(e[i : i + per])) for i in range(lo, len(e) - per + 1)]
        best = lo + int(np.argmin(windows)) if windows else len(e)
        return (best + per // 2) * _FRAME  # frame-aligned, so the energies stay in step with the samples

    def _utterance_end(self) -> int:
        """Where the open utterance's segment ends: ``final_tail_ms`` after its last speech frame."""
        if self._tentative is not None:
            return len(self._tentative.audio)
        tail = self.options.endpoint.tail_frames
        extra = max(0, self._silence_run - tail)
        # (a forced cut inside the silence leaves less than that: keep the tail then)
        return max(len(self.segment) - extra * _FRAME, min(len(self.segment), tail * _FRAME))

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
                _Job(
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
        self._energies = self._energies[cut // _FRAME :]
        self.utterance += 1
        self._last_interim_len = 0
        self._last_interim_text = ""
        if utterance_done:
            self.in_speech = False
            self._silence_run = 0
            self._speech_run = 0
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

    def _take_finals(self) -> list[_Job]:
        jobs = list(self._pending)
        self._pending.clear()
        return jobs

    def _take_interim(self, turn: int) -> _Job:
        self._last_interim_len = len(self.segment)
        self._interim_turn = turn
        return _Job(self, self.segment.copy(), self.segment_start, self.utterance, False)

    def _deliver(self, job: _Job, result: StreamResult) -> None:
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


class Recognizer:
    """Decodes many :class:`Stream` objects with one model, batching their segments together."""

    def __init__(
        self, model: ASRModel, config: RecognizerConfig | None = None, lm: LanguageModel | None = None
    ) -> None:
        self.model = model.eval()
        self.config = config or RecognizerConfig()
        self.lm = lm  # fused into the beam search of finals whose options set lm_weight > 0
        self._turn = 0  # decode calls that took interims

    def create_stream(self, options: StreamOptions | None = None) -> Stream:
        return Stream(options or self.config.default_options)

    def create_offline_stream(self, audio: np.ndarray, options: StreamOptions | None = None) -> Stream:
        """A stream holding a whole recording, cut like :func:`asr.transcribe.transcribe` cuts long audio
        (no endpointing), so its finals equal offline transcription piece by piece."""
        options = dataclasses.replace(options or self.config.default_options, interim_results=False)
        s = Stream(options)
        with s.lock:
            s.num_samples = len(audio)
            for i, (a, b) in enumerate(split_long_audio(audio)):
                s._pending.append(_Job(s, audio[a:b], a, i, True, closed_at=b))
            s.utterance = len(s._pending)
            s.input_done = True
        return s

    def accept_audio(self, stream: Stream, samples: np.ndarray) -> None:
        """Append float32 16 kHz mono samples ``(S,)``; ignored after :meth:`input_finished` or the end of a
        single utterance. NaN or infinite samples raise :class:`asr.audio.AudioError`."""
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples of shape (S,), got shape {tuple(samples.shape)}")
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        check_finite(samples, "streamed audio")  # one NaN would poison the endpointer's noise floor for good
        with stream.lock:
            stream._accept(samples)

    def input_finished(self, stream: Stream) -> None:
        """No more audio: the open utterance is closed and will get its final at the next decode."""
        with stream.lock:
            stream._finish()

    def is_ready(self, stream: Stream) -> bool:
        """Whether :meth:`decode_streams` has work for this stream (a final or a due interim)."""
        with stream.lock:
            return stream._ready()

    def has_final(self, stream: Stream) -> bool:
        """Whether the stream has a final to decode: a closed utterance's, or an early one (see above)."""
        with stream.lock:
            return bool(stream._pending)

    def result(self, stream: Stream) -> StreamResult | None:
        """The latest result (interim or final), or ``None`` before the first one."""
        with stream.lock:
            return stream.last_result

    def pop_results(self, stream: Stream) -> list[StreamResult]:
        """Results produced since the last call, oldest first."""
        with stream.lock:
            out = list(stream._results)
            stream._results.clear()
            return out

    @torch.inference_mode()
    def decode_streams(self, streams: list[Stream], *, interims: bool = True) -> None:
        """Decode the due finals and interims of ``streams``, ``max_batch_size`` segments per model call.

        ``interims=False`` decodes only the finals and leaves due interims for a later call: a server under
        load uses it to put finals (what users wait for) ahead of interims (which are best effort).
        """
        jobs: list[_Job] = []
        for s in streams:
            with s.lock:
                jobs.extend(s._take_finals())
        if interims:
            jobs.extend(self._take_interims(streams))
        order = sorted(range(len(jobs)), key=lambda i: len(jobs[i].audio))  # similar lengths pad little
        size = self.config.max_batch_size
        results: dict[int, StreamResult] = {}
        try:
            for k in range(0, len(order), size):
                idx = order[k : k + size]
                results.update(zip(idx, self._decode([jobs[i] for i in idx]), strict=True))
        except BaseException:
            # give the finals back (latest first, so they keep their order) for a retry stream by stream
            for job in sorted(jobs, key=lambda j: j.start, reverse=True):
                if job.final and not job.cancelled:
                    with job.stream.lock:
                        job.stream._pending.appendleft(job)
            raise
        for i, job in enumerate(jobs):  # in the order taken: each stream's results stay in time order
            with job.stream.lock:
                job.stream._deliver(job, results[i])

    def _take_interims(self, streams: list[Stream]) -> list[_Job]:
        """Due interims within ``max_interim_seconds`` of audio, the longest-waiting streams first."""
        self._turn += 1
        budget = int(self.config.max_interim_seconds * SAMPLE_RATE)
        jobs: list[_Job] = []
        used = 0
        for s in sorted(dict.fromkeys(streams), key=lambda s: s._interim_turn):
            with s.lock:
                if not s._interim_due():
                    continue
                if jobs and used + len(s.segment) > budget:
                    break
                used += len(s.segment)
                jobs.append(s._take_interim(self._turn))
        return jobs

    def _decode(self, jobs: list[_Job]) -> list[StreamResult]:
        enc, enc_lengths, short = encode_waveforms(self.model, [j.audio for j in jobs])
        out: list[StreamResult | None] = [None] * len(jobs)
        # interims: greedy CTC, one alternative
        interim = [i for i, j in enumerate(jobs) if not j.final]
        if interim:
            lp = self.model.ctc_log_probs(enc[interim])
            best = lp.argmax(-1).cpu()
            tok = self.model.tokenizer
            for row, i in enumerate(interim):
                j = jobs[i]
                path = torch.unique_consecutive(best[row, : int(enc_lengths[i])]).tolist()
                text = "" if short[i] else tok.decode([t for t in path if t != tok.blank_id])
                out[i] = self._interim_result(j, text)
        # finals: one beam search per distinct decoding options
        groups: dict[DecodingOptions, list[int]] = {}
        for i, j in enumerate(jobs):
            if j.final:
                groups.setdefault(j.stream.options.decoding, []).append(i)
        for opts, idx in groups.items():
            lengths = enc_lengths[idx]
            sub = enc[idx, : int(lengths.max())]
            starts = [jobs[i].start / SAMPLE_RATE for i in idx]
            durations = [len(jobs[i].audio) / SAMPLE_RATE for i in idx]
            word_times = any(jobs[i].stream.options.word_times for i in idx)
            voiced = [voiced_span(jobs[i].audio) for i in idx] if word_times else None
            views = (
                encode_views(self.model, [jobs[i].audio for i in idx], opts.tta_speeds)
                if opts.tta_speeds
                else ()
            )
            transcripts = decode_encoded(
                self.model,
                sub,
                lengths,
                opts,
                offsets=starts,
                durations=durations,
                word_times=word_times,
                voiced=voiced,
                lm=self.lm,
                views=views,
            )
            for i, t in zip(idx, transcripts, strict=True):
                j = jobs[i]
                empty = short[i]
                out[i] = StreamResult(
                    text="" if empty else t.text,
                    alternatives=() if empty else t.alternatives,
                    words=() if empty or not j.stream.options.word_times else t.words,
                    is_final=True,
                    stability=1.0,
                    start=j.start / SAMPLE_RATE,
                    end=(j.start + len(j.audio)) / SAMPLE_RATE,
                    utterance=j.utterance,
                    end_of_single_utterance=j.closes_stream,
                    closed_at=j.closed_at / SAMPLE_RATE,
                )
        assert all(r is not None for r in out)
        return [r for r in out if r is not None]

    @staticmethod
    def _interim_result(job: _Job, text: str) -> StreamResult:
        s = job.stream
        prev = s._last_interim_text
        common = len(_common_prefix(prev, text))
        stability = min(0.9, common / len(text)) if text else 0.0
        return StreamResult(
            text=text,
            alternatives=(Alternative(text, 0.0, 0.0),),
            words=(),
            is_final=False,
            stability=stability,
            start=job.start / SAMPLE_RATE,
            end=(job.start + len(job.audio)) / SAMPLE_RATE,
            utterance=job.utterance,
        )


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]
