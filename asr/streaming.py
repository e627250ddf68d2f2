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

The rooms: :mod:`asr.endpointing` (``EndpointConfig``, the energy VAD), :mod:`asr.stream_state` (``Stream``,
``StreamOptions``, ``StreamResult``: a stream's segments, utterances and results) and this module (the
``Recognizer``, which batches the streams' segments through the model). Every name is importable from here.

Thread safety: each stream has a lock; ``accept_audio`` may run on one thread while ``decode_streams`` runs on
another (the server accepts audio on its event loop and decodes on a worker thread). The model itself is only
called from ``decode_streams``; call that from one thread at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from asr.alignment import voiced_span
from asr.audio import SAMPLE_RATE, check_finite
from asr.decoding import DecodingOptions, Hypothesis, LanguageModel
from asr.endpointing import EndpointConfig
from asr.stream_state import Job, Stream, StreamOptions, StreamResult
from asr.transcribe import (
    Alternative,
    decode_encoded,
    encode_views,
    encode_waveforms,
    silence_found,
    split_long_audio,
)

if TYPE_CHECKING:
    from asr.model import ASRModel

__all__ = ["EndpointConfig", "Recognizer", "RecognizerConfig", "Stream", "StreamOptions", "StreamResult"]


class FinalPiece(Protocol):
    """What a final is decoded from: a closed segment (:class:`Job`) or utterance (:mod:`asr.online`)."""

    audio: np.ndarray
    start: int  # stream sample of audio[0]
    utterance: int
    closes_stream: bool
    closed_at: int  # stream samples accepted when it closed


@dataclass(frozen=True)
class RecognizerConfig:
    max_batch_size: int = 16  # segments per encoder call; more are split into several calls
    default_options: StreamOptions = field(default_factory=StreamOptions)
    # Audio the interims of one decode_streams call may re-encode, in seconds. Interims past it wait for a
    # later call (the streams that waited longest go first), which keeps each call short, so a final that
    # arrives meanwhile waits little. At least one due interim is always decoded.
    max_interim_seconds: float = 12.0
    # Chunk-streaming models (asr.online): the final of an utterance that a blank endpoint cut from its
    # sentence is decoded after the sentence's earlier utterances, up to this many seconds of them, and keeps
    # its own words; 0 decodes each utterance alone. 4 s scored as 10 s did (bench/stream_wer.py:
    # speechocean762 validation 85.3 against 84.4 % WER, commonvoice-sample 87.7 % both; 98.0 and 90.8 %
    # alone) at two thirds of the decoding time.
    final_context_seconds: float = 4.0
    # Chunk-streaming models: search each final's transcript while its utterance is heard, chunk by chunk
    # (asr.growing_search), so that at the endpoint only its last tokens are left to search; False searches
    # each final whole at its endpoint.
    growing_finals: bool = True
    # ... unless its search falls this far behind the utterance's audio (ms; 0: never): the final of an
    # utterance whose search lags more is searched whole, batched with the other finals of its call, and
    # the search is dropped. A server under load sets it, so that the growing searches (one utterance at a
    # time) never hold up the batched work; with 0 a final depends on its audio only.
    growing_lag_ms: int = 0
    # Chunk-streaming models with growing finals: partials show the growing search's best hypothesis so far
    # in place of the greedy CTC tokens it has read (a token or so behind them), then greedy CTC's after
    # it; a partial may then revise its words. False: greedy CTC alone, only ever extended.
    searched_partials: bool = True
    # Two-pass finals (asr.online, a final model): a final whose second pass would end more than this many
    # ms after its endpoint (its wait so far, plus its batch's audio times the second pass's measured
    # seconds per second of audio) is the streaming model's own instead, so that finals keep up under load;
    # 0: every final is a second pass's.
    second_pass_budget_ms: int = 0
    # Chunk-streaming models: while the energy VAD has heard no speech since the open utterance began, its
    # audio waits unencoded, and what lies more than the stream's pre_speech_ms before the newest audio is
    # dropped; so silence between utterances costs the VAD and the features, not the encoder, and each
    # utterance starts pre_speech_ms before the speech the VAD heard. False: every chunk is encoded, silence
    # too, and an utterance that heard nothing for pre_speech_ms starts again. (Session 46: silence cost
    # 130-150 ms of CPU per second against 205 for speech; the streamed finals' word errors on the three
    # validation sets 2,563 with the gate and without; docs/BENCHMARKS.md.)
    silence_gate: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0.0 <= self.final_context_seconds <= 60.0:
            raise ValueError(f"final_context_seconds must be in [0, 60], got {self.final_context_seconds}")
        if self.growing_lag_ms < 0:
            raise ValueError(f"growing_lag_ms must be >= 0 (0: never), got {self.growing_lag_ms}")
        if self.second_pass_budget_ms < 0:
            raise ValueError(f"second_pass_budget_ms must be >= 0, got {self.second_pass_budget_ms}")
        if self.max_interim_seconds <= 0:
            raise ValueError(f"max_interim_seconds must be positive, got {self.max_interim_seconds}")


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
                s._pending.append(Job(s, audio[a:b], a, i, True, closed_at=b))
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

    def has_growth(self) -> bool:
        """Whether :meth:`grow_pending` has work (searches of finals that grow while their utterance is
        heard: chunk-streaming models, :mod:`asr.online`)."""
        return False

    def grow_pending(self, budget_s: float, stop: Callable[[], bool] | None = None) -> int:
        """Do up to about ``budget_s`` seconds of :meth:`has_growth`'s work, and none after ``stop()`` says
        so (asked between streams: a final is waiting); the number of streams served."""
        return 0

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
    def decode_streams(
        self, streams: list[Stream], *, interims: bool = True, finals: bool = True, beam_cap: int = 0
    ) -> None:
        """Decode the due finals and interims of ``streams``, ``max_batch_size`` segments per model call.

        ``interims=False`` decodes only the finals and leaves due interims for a later call: a server under
        load uses it to put finals (what users wait for) ahead of interims (which are best effort).
        ``finals=False`` leaves the finals for a later call (a server's thread for finals, :meth:`has_final`).
        ``beam_cap``: a server's finals that are behind; only the stream finals of a chunk-streaming model
        (:class:`asr.online.OnlineRecognizer`) search with it, so segments and whole recordings ignore it.
        """
        jobs: list[Job] = []
        for s in streams if finals else ():
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

    def _take_interims(self, streams: list[Stream]) -> list[Job]:
        """Due interims within ``max_interim_seconds`` of audio, the longest-waiting streams first."""
        self._turn += 1
        budget = int(self.config.max_interim_seconds * SAMPLE_RATE)
        jobs: list[Job] = []
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

    def _decode(self, jobs: list[Job]) -> list[StreamResult]:
        enc, enc_lengths, short = encode_waveforms(self.model, [j.audio for j in jobs])
        out: list[StreamResult | None] = [None] * len(jobs)
        interim = [i for i, j in enumerate(jobs) if not j.final]
        if interim:
            results = self._decode_interims(jobs, interim, enc, enc_lengths, short)
            for i, r in zip(interim, results, strict=True):
                out[i] = r
        # finals: one beam search per distinct decoding options
        groups: dict[DecodingOptions, list[int]] = {}
        for i, j in enumerate(jobs):
            if j.final:
                groups.setdefault(j.stream.options.decoding, []).append(i)
        for opts, idx in groups.items():
            results = self._decode_finals(jobs, idx, opts, enc, enc_lengths, short)
            for i, r in zip(idx, results, strict=True):
                out[i] = r
        assert all(r is not None for r in out)
        return [r for r in out if r is not None]

    def _decode_interims(
        self, jobs: list[Job], idx: list[int], enc: Tensor, enc_lengths: Tensor, short: list[bool]
    ) -> list[StreamResult]:
        """Interims of ``jobs[i] for i in idx``: greedy CTC, one alternative."""
        lp = self.model.ctc_log_probs(enc[idx])
        best = lp.argmax(-1).cpu()
        tok = self.model.tokenizer
        out = []
        for row, i in enumerate(idx):
            path = torch.unique_consecutive(best[row, : int(enc_lengths[i])]).tolist()
            text = "" if short[i] else tok.decode([t for t in path if t != tok.blank_id])
            out.append(self._interim_result(jobs[i], text))
        return out

    def _decode_finals(
        self,
        jobs: list[Job],
        idx: list[int],
        opts: DecodingOptions,
        enc: Tensor,
        enc_lengths: Tensor,
        short: list[bool],
    ) -> list[StreamResult]:
        """Finals of ``jobs[i] for i in idx``, which share the decoding options ``opts``: one beam search."""
        lengths = enc_lengths[idx]
        chosen = [jobs[i] for i in idx]
        word_times = [j.stream.options.word_times for j in chosen]
        return self._final_results(
            chosen, word_times, opts, enc[idx, : int(lengths.max())], lengths, short=[short[i] for i in idx]
        )

    def _final_results(
        self,
        pieces: Sequence[FinalPiece],
        word_times: list[bool],
        opts: DecodingOptions,
        enc: Tensor,
        lengths: Tensor,
        short: list[bool] | None = None,
        prefixes: Sequence[Sequence[int]] | None = None,
        found: Sequence[list[Hypothesis] | None] | None = None,
        model: ASRModel | None = None,
        lm: LanguageModel | None = None,
    ) -> list[StreamResult]:
        """The finals of closed pieces of streams (encoder outputs ``enc`` with ``lengths``) that share the
        decoding options ``opts``: one beam search, words timed from the stream start where ``word_times``;
        a ``short`` piece gets an empty final. ``prefixes``: tokens each transcript must start with;
        ``found``: n-best lists already searched (:mod:`asr.growing_search`), None for pieces to search.
        ``model``: the model whose encoder gave ``enc`` (default: the recognizer's); ``lm``: the LM to fuse
        (default: the recognizer's)."""
        model = model or self.model
        audio = [p.audio for p in pieces]
        timed = any(word_times)
        views = encode_views(model, audio, opts.tta_speeds) if opts.tta_speeds else ()
        transcripts = decode_encoded(
            model,
            enc,
            lengths,
            opts,
            offsets=[p.start / SAMPLE_RATE for p in pieces],
            durations=[len(a) / SAMPLE_RATE for a in audio],
            word_times=timed,
            voiced=[voiced_span(a) for a in audio] if timed else None,
            lm=self.lm if lm is None else lm,
            views=views,
            prefixes=prefixes,
            found=silence_found(audio, opts, found, prefixes),
        )
        short = short or [False] * len(pieces)
        return [
            StreamResult(
                text="" if empty else t.text,
                alternatives=() if empty else t.alternatives,
                words=() if empty or not times else t.words,
                is_final=True,
                stability=1.0,
                start=p.start / SAMPLE_RATE,
                end=(p.start + len(p.audio)) / SAMPLE_RATE,
                utterance=p.utterance,
                end_of_single_utterance=p.closes_stream,
                closed_at=p.closed_at / SAMPLE_RATE,
            )
            for p, t, times, empty in zip(pieces, transcripts, word_times, short, strict=True)
        ]

    @staticmethod
    def _interim_result(job: Job, text: str) -> StreamResult:
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
