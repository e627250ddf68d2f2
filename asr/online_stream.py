"""The state of one stream of a chunk-streaming model (:mod:`asr.online`): its open utterance as encoder
state, the audio not yet turned into features, the utterances closed and waiting for their finals.

An :class:`OnlineStream` is a :class:`asr.stream_state.Stream` (same lock, clock, energy VAD, results and
bookkeeping, so the server drives both alike) whose open utterance is not a segment of audio but an
:class:`Utterance`: the :class:`asr.lc_blstm.EncoderStream` that has encoded it so far, its encoder frames and
its greedy CTC tokens. Audio comes in through ``_accept`` (any thread, under the lock): it goes past the VAD
and into ``samples``, the audio from the next feature frame on. The recognizer, on its model thread, turns
``samples`` into features, encodes chunks, and closes utterances (``_cut``).

The underscored methods and the fields below are the recognizer's side of the stream; callers hold
``stream.lock``, except that the open utterance's ``EncoderStream`` belongs to the model thread.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from asr.growing_search import UtteranceSearch
from asr.lc_blstm import EncoderStream
from asr.stream_state import Stream, StreamOptions

__all__ = ["ClosedUtterance", "FinalText", "OnlineStream", "Utterance"]


@dataclass
class Utterance:
    """The open utterance: encoder state, what it has encoded, and what greedy CTC heard in it."""

    encoder: EncoderStream
    start: int  # stream sample of its first feature frame (an utterance starts on a feature frame)
    frames: list[Tensor] = field(default_factory=list)  # encoder frames, (n, D) per chunk
    num_frames: int = 0
    tokens: list[int] = field(default_factory=list)  # the greedy CTC path, collapsed, blanks removed
    token_frames: list[int] = field(default_factory=list)  # the frame of each token (where it starts)
    last_id: int = -1  # the path's last frame label (blank or token), for collapsing repeats
    blank_run: int = 0  # blank frames since the last token frame
    shown: list[int] = field(default_factory=list)  # greedy CTC's tokens and the look-ahead's, last read
    ahead: int = 0  # the look-ahead frames last read
    # the growing search's best hypothesis so far: partials show it in place of the first len(searched)
    # greedy tokens (it reads them with the attention decoder and the CTC prefix scores)
    searched: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # the tokens of the last partial sent
    # its final's beam search, grown chunk by chunk while the utterance is heard (asr.growing_search); None
    # until the recognizer starts it
    search: UtteranceSearch | None = None
    whole: bool = False  # its search fell too far behind and was dropped: its final is searched whole


@dataclass
class FinalText:
    """What an utterance's final said, once it is decoded; the copies of a :class:`ClosedUtterance` share
    it, so the next final of the sentence reads it from its context."""

    text: str | None = None


@dataclass
class ClosedUtterance:
    """An utterance whose final is to be decoded: its encoder frames and its audio."""

    enc: Tensor  # (T', D)
    audio: np.ndarray  # the samples its frames cover, for voiced spans and TTA
    start: int  # stream sample of its first sample
    utterance: int
    closes_stream: bool
    closed_at: int  # stream samples accepted when it was closed
    # The utterances a blank endpoint cut from the same sentence before this one (oldest first, whole
    # encoder frames and audio of each): its final is decoded over them and itself, their finals' words
    # forced as the start of the transcript, and says only the words after those.
    context: tuple[ClosedUtterance, ...] = ()
    final: FinalText = field(default_factory=FinalText)
    # the encoder chunks its frames came in, their greedy CTC tokens' frames, and its growing search so far
    # (asr.growing_search; None if none was started)
    chunks: list[Tensor] = field(default_factory=list)
    token_frames: list[int] = field(default_factory=list)
    search: UtteranceSearch | None = None
    whole: bool = False  # its search fell too far behind and was dropped: its final is searched whole
    closed_time: float = field(default_factory=time.monotonic)  # when it was closed (time.monotonic)

    def joined(self) -> ClosedUtterance:
        """This utterance with its context before it, as one (frames and audio end to end)."""
        if not self.context:
            return self
        parts = (*self.context, self)
        enc = torch.cat([c.enc for c in parts])
        audio = np.concatenate([c.audio for c in parts])
        return ClosedUtterance(
            enc,
            audio,
            parts[0].start,
            self.utterance,
            self.closes_stream,
            self.closed_at,
            closed_time=self.closed_time,
        )


class OnlineStream(Stream):
    """All the state of one stream of a chunk-streaming model; created by
    :meth:`asr.online.OnlineRecognizer.create_stream`."""

    def __init__(self, options: StreamOptions, first: Utterance, short: int, n_fft: int, hop: int) -> None:
        super().__init__(options)
        self.n_fft, self.hop = n_fft, hop  # the front end's frame geometry, in samples
        self.open = first
        self.samples = np.zeros(0, dtype=np.float32)  # audio from the next feature frame on
        self.audio: list[np.ndarray] = []  # audio from the open utterance's start on
        self.audio_start = 0
        self.short = short  # feature frames the encoder needs before its next chunk (model thread sets it)
        # Where the energy VAD's endpoints fall (stream samples: the end of the speech plus the segment tail),
        # in order. The VAD looks at audio as it is accepted, which may be far ahead of the encoder (a client
        # sending faster than real time): the recognizer cuts when its encoder passes each of them.
        self.energy_ends: deque[int] = deque()
        self.vad_samples = 0  # samples the VAD has looked at
        self.speech_spans: deque[list[int]] = deque()  # [start, end) of the VAD's speech frames, in samples
        self.encoded_to = 0  # the stream sample the open utterance is encoded up to (model thread sets it)
        self.flushed = False  # input done, and its last chunk encoded and closed
        self.closed: deque[ClosedUtterance] = deque()
        self.context: list[ClosedUtterance] = []  # the sentence's utterances so far, cut by blank endpoints
        self.idle_restarts = 0  # utterances dropped with no token heard
        self.skipped_samples = 0  # silence dropped unencoded (RecognizerConfig.silence_gate)

    # -- audio in (callers hold the lock) --------------------------------------------------------------------

    def _accept(self, samples: np.ndarray) -> None:
        if self.ended or self.input_done:
            return
        self.samples = np.concatenate([self.samples, samples])
        self.audio.append(samples)
        super()._accept(samples)  # the energy VAD, 20 ms frame by frame (self._frame)

    def _frame(self, frame: np.ndarray) -> None:
        vad = self.endpointer
        _, speech = vad.push(frame)
        start, self.vad_samples = self.vad_samples, self.vad_samples + len(frame)
        if speech:
            if self.speech_spans and self.speech_spans[-1][1] == start:
                self.speech_spans[-1][1] = self.vad_samples
            else:
                self.speech_spans.append([start, self.vad_samples])
        if speech and not self.in_speech and vad.onset:
            self.in_speech = True
        if self.in_speech and vad.endpoint:
            speech_end = self.vad_samples - vad.silence_run * len(frame)
            self.energy_ends.append(speech_end + self.options.endpoint.tail_frames * len(frame))
            self.in_speech = False
            vad.utterance_ended()

    def _finish(self) -> None:
        self.input_done = True  # the residual under one VAD frame is in self.samples already

    def frames_in_samples(self) -> int:
        """Whole feature frames in ``samples``."""
        return 0 if len(self.samples) < self.n_fft else 1 + (len(self.samples) - self.n_fft) // self.hop

    def take_samples(self) -> np.ndarray | None:
        """The samples of every whole feature frame in ``samples`` (None if there is none); those frames'
        hops are dropped, so ``samples`` starts at the next frame."""
        n = self.frames_in_samples()
        if not n:
            return None
        out = self.samples[: self.n_fft + (n - 1) * self.hop]
        self.samples = self.samples[n * self.hop :]
        return out

    # -- utterances (callers hold the lock) ------------------------------------------------------------------

    def _cut(
        self,
        cut: int,
        nxt: Utterance,
        final: bool,
        final_end: int | None = None,
        keep_frames: int | None = None,
        *,
        sentence_end: bool = True,
        context_samples: int = 0,
    ) -> None:
        """End the open utterance at stream sample ``cut`` (where ``nxt`` starts). With ``final`` and a token
        heard, it is queued for its final (its audio up to ``final_end`` when given), with the sentence's
        earlier utterances as its context; otherwise dropped. ``keep_frames``: the encoder frames it keeps
        (all when None). Unless ``sentence_end`` (a blank endpoint, or
        a restart on silence), the next final reads it as context too, while the context stays within
        ``context_samples`` (0: no context). Energy endpoints up to ``cut`` are spent."""
        joined = np.concatenate(self.audio) if self.audio else np.zeros(0, dtype=np.float32)
        k = cut - self.audio_start
        assert 0 <= k <= len(joined), "an utterance cut beyond the audio accepted"
        end = k if final_end is None else min(final_end - self.audio_start, k)  # the final's last sample
        head, self.audio, self.audio_start = joined[:end], [joined[k:]], cut
        old, self.open = self.open, nxt
        if final and old.tokens:
            closes = self.options.single_utterance
            enc = torch.cat(old.frames, 0)[:keep_frames]  # a token was heard, so a chunk was encoded
            closed = ClosedUtterance(enc, head, old.start, self.utterance, closes, self.num_samples)
            self.closed.append(
                dataclasses.replace(
                    closed,
                    context=tuple(self.context),
                    chunks=old.frames,
                    token_frames=old.token_frames,
                    search=old.search,
                    whole=old.whole,
                )
            )
            self.utterance += 1
            self._last_interim_text = ""
            self.ended = self.ended or closes
            if not sentence_end and context_samples > 0:
                self.context.append(closed)
                while sum(len(c.audio) for c in self.context) > context_samples:
                    self.context.pop(0)
        elif not final:
            self.idle_restarts += 1
        if sentence_end:
            self.context.clear()
        while self.energy_ends and self.energy_ends[0] <= cut:  # endpoints of the audio just closed
            self.energy_ends.popleft()
        while self.speech_spans and self.speech_spans[0][1] <= cut:
            self.speech_spans.popleft()

    def _heard_speech(self, start: int, end: int) -> bool:
        """Whether the energy VAD heard speech in stream samples ``[start, end)``."""
        return any(a < end and b > start for a, b in self.speech_spans)

    # -- scheduling ------------------------------------------------------------------------------------------

    def _has_open_utterance(self) -> bool:
        return bool(self.open.tokens) and not self.ended

    def _ready(self) -> bool:
        if self.ended:
            return bool(self.closed)
        return self._final_due() or self.short <= self.frames_in_samples()

    def _final_due(self) -> bool:
        """Whether the next decode closes an utterance whatever the model hears (blank endpoints cannot be
        known before the chunk is encoded). An energy endpoint in an utterance where nothing was heard (the
        silence after a blank endpoint) closes no final: the chunk steps settle it."""
        energy_end = (
            bool(self.energy_ends) and self.encoded_to >= self.energy_ends[0] and bool(self.open.tokens)
        )
        return bool(self.closed) or energy_end or (self.input_done and not self.flushed)

    @property
    def is_done(self) -> bool:
        """No audio will come and every final has been decoded."""
        with self.lock:
            return (self.flushed or self.ended) and not self.closed
