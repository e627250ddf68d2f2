"""Truly streaming recognition, for models whose encoder listens as the audio arrives (:mod:`asr.lc_blstm`,
``encoder.chunk_frames > 0`` in the checkpoint).

:class:`OnlineRecognizer` has :class:`asr.streaming.Recognizer`'s API (the server and the SDK drive both
alike), but nothing is decoded twice:

* **features** are computed as the audio arrives, frame by frame, exactly the frames offline
  :class:`~asr.features.LogMel` gives for the same samples (frames are not centred, so each depends on its
  own 512 samples only), normalised, and pushed into the open utterance's
  :class:`~asr.lc_blstm.EncoderStream`;
* **chunks**: each ``decode_streams`` call encodes the next chunk of every given stream that has one in a
  single :meth:`~asr.lc_blstm.LCBLSTMEncoder.step` (the cross-stream batching, per chunk), one chunk per
  stream per call until its input ends (a stream that is behind stays ready for the next call); each chunk
  is encoded once;
* **partials**: greedy CTC over each new chunk extends the utterance's token sequence; a partial goes out
  whenever its text changes (at most once per chunk);
* **endpoints**: a run of ``blank_ms`` of CTC blanks after the utterance's first token ends it (the model
  hears the speech end) where the energy VAD heard no speech over the run's last ``blank_quiet_ms`` (the
  model's blanks over a long vowel or a word's voiced tail do not cut the word), and so does the energy
  VAD's ``silence_ms`` of silence after speech; an utterance reaching ``max_segment_seconds`` is cut there.
  An utterance in which greedy CTC heard nothing is dropped (silence and noise give no finals), and one that
  has heard nothing for ``pre_speech_ms`` while the VAD hears no speech starts again, so no utterance
  carries a long lead of silence;
* **finals**: the joint CTC/attention beam search over the utterance's encoder frames (what offline
  decoding uses), with the stream's decoding options, n-best and word times from the stream start. With
  ``RecognizerConfig.growing_finals`` (the default) the search grows chunk by chunk while the utterance is
  heard (:mod:`asr.growing_search`): after each call's chunks, or on a server's finals thread when it is idle
  (:meth:`grow_pending`), so that at the endpoint only its last tokens are left to search. Its result
  depends on the utterance's chunks only, however far it had grown; otherwise each final is searched whole
  at its endpoint, batched with the other finals of the call. With a ``final_model`` (two passes, e.g. the
  bundled default, whose Whisper front end reads whole utterances), that model decodes each closed
  utterance's audio (after its context's, as above) for its final instead: the streaming model gives the
  partials and the endpoints, the final model the accuracy, for its encoding time after each endpoint.

An utterance ends on an encoder frame boundary (a whole number of feature frames): the next one starts there
with a fresh encoder state, taking over the features the old one had not encoded yet and the audio not yet
framed, so no audio is lost and none is encoded twice. Each utterance is encoded as the chunked model
encodes the same samples offline (``model.encode``), up to the look-ahead of its last chunk.

The API and the thread safety are :mod:`asr.streaming`'s: ``accept_audio`` may run on one thread while
``decode_streams`` runs on another. Offline streams (:meth:`create_offline_stream`, the server's
``Recognize``) are decoded as :class:`~asr.streaming.Recognizer` decodes them, ``model.encode`` running the
chunked encoder over whole pieces.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from asr.alignment import Word
from asr.audio import SAMPLE_RATE
from asr.decoding import DecodingOptions, Hypothesis, LanguageModel
from asr.growing_search import UtteranceSearch
from asr.lc_blstm import EncoderStream, LCBLSTMEncoder
from asr.online_stream import ClosedUtterance, OnlineStream, Utterance
from asr.stream_state import Stream, StreamOptions, StreamResult
from asr.streaming import Recognizer, RecognizerConfig, _common_prefix
from asr.tokenizer import Tokenizer
from asr.transcribe import Alternative, encode_waveforms

if TYPE_CHECKING:
    from asr.model import ASRModel

__all__ = ["OnlineRecognizer", "OnlineStream", "make_recognizer"]

MIN_FINAL_MS = 200  # shorter utterances get no final
CATCH_UP_CHUNKS = 4  # chunks a stream that is behind may encode in one decode_streams call
WORD_FLOOR_S = 0.04  # the least a final's word lasts (an encoder frame)


@dataclasses.dataclass(frozen=True)
class FinalPass:
    """The second pass of two-pass finals: the model that decodes each closed utterance's audio, with the LM
    and weights it decodes with by its own settings (:mod:`asr.model_decoding`; None: the stream's)."""

    model: ASRModel
    lm: LanguageModel | None = None
    ctc_weight: float | None = None
    lm_weight: float = 0.0

    def options(self, opts: DecodingOptions) -> DecodingOptions:
        """``opts`` with this pass's own weights."""
        ctc = opts.ctc_weight if self.ctc_weight is None else self.ctc_weight
        weight = opts.lm_weight if self.lm is None else self.lm_weight
        return dataclasses.replace(opts, ctc_weight=ctc, lm_weight=weight)


def make_recognizer(
    model: ASRModel,
    config: RecognizerConfig | None = None,
    lm: LanguageModel | None = None,
    final_model: ASRModel | FinalPass | None = None,
) -> Recognizer:
    """The recognizer for ``model``: :class:`OnlineRecognizer` for a chunked encoder (its finals from
    ``final_model`` when given), else the segment :class:`~asr.streaming.Recognizer`."""
    if model.config.encoder.streaming:
        return OnlineRecognizer(model, config, lm, final_model)
    if final_model is not None:
        raise ValueError(
            "a final model is for chunk-streaming models (encoder.chunk_frames > 0); this one decodes "
            "its finals itself, from whole segments"
        )
    return Recognizer(model, config, lm)


class OnlineRecognizer(Recognizer):
    """Decodes many :class:`OnlineStream` objects chunk by chunk with a chunked-encoder model."""

    def __init__(
        self,
        model: ASRModel,
        config: RecognizerConfig | None = None,
        lm: LanguageModel | None = None,
        final_model: ASRModel | FinalPass | None = None,
    ) -> None:
        if not isinstance(model.encoder, LCBLSTMEncoder):
            raise ValueError(
                "OnlineRecognizer needs a model with a chunked encoder (encoder.chunk_frames > 0); "
                "use asr.streaming.Recognizer for this one"
            )
        super().__init__(model, config, lm)
        # Two passes: the streaming model's chunks give the partials and the endpoints, and an offline model
        # (e.g. the bundled default) decodes each closed utterance's audio for its final, once, at its
        # endpoint. Its finals are then that model's, at the cost of encoding each utterance a second time.
        final = FinalPass(final_model) if isinstance(final_model, nn.Module) else final_model
        self.final = final
        self.final_model = final.model.eval() if final is not None else None
        if self.final_model is not None and self.final_model.config.features.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the final model must take {SAMPLE_RATE} Hz audio, as the streaming model does")
        self.encoder: LCBLSTMEncoder = model.encoder
        feats = model.config.features
        self.n_fft, self.hop = feats.frame_samples, feats.hop_length
        self.feats_per_frame = model.config.encoder.subsampling  # feature frames per encoder frame
        self.samples_per_frame = self.hop * self.feats_per_frame
        self.frame_ms = 1000.0 * self.samples_per_frame / SAMPLE_RATE
        chunk_ms = self.frame_ms * model.config.encoder.chunk_frames
        # chunks a growing search may lag behind before it is dropped (0: never)
        self.max_lag = -(-self.config.growing_lag_ms // int(chunk_ms)) if self.config.growing_lag_ms else 0
        self.chunk_steps = 0  # encoder.step calls
        self.frames_encoded = 0  # encoder frames they produced, all streams
        self.frames_skipped = 0  # encoder frames of silence dropped unencoded (RecognizerConfig.silence_gate)
        # streams whose open utterance has chunks its growing search has not had (grow_pending)
        self._growth_lock = threading.Lock()
        self._to_grow: weakref.WeakValueDictionary[int, OnlineStream] = weakref.WeakValueDictionary()
        self.finals_grown = 0  # finals that finished a growing search
        self.finals_whole = 0  # finals searched whole at their endpoint
        self.finals_second_pass = 0  # finals the final model decoded from their audio
        self.finals_over_budget = 0  # finals left to the streaming model by second_pass_budget_ms
        self.second_pass_rate = 0.0  # the second pass's seconds per second of audio (moving average; 0: none)

    # -- streams -------------------------------------------------------------------------------------------

    def create_stream(self, options: StreamOptions | None = None) -> OnlineStream:
        first = self._new_utterance(0)
        short = self._frames_short(first.encoder)
        return OnlineStream(options or self.config.default_options, first, short, self.n_fft, self.hop)

    def _new_utterance(self, start: int) -> Utterance:
        es = self.encoder.new_stream()
        es.frames = es.frames.to(self.model.device)
        return Utterance(es, start)

    def _frames_short(self, es: EncoderStream) -> int:
        """Feature frames ``es`` needs beyond those it holds before its next chunk (0: ready now)."""
        return self.encoder.frames_short(es)

    def has_final(self, stream: Stream) -> bool:
        if not isinstance(stream, OnlineStream):
            return super().has_final(stream)
        with stream.lock:
            return stream._final_due()

    # -- decoding ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_streams(
        self, streams: list[Stream], *, interims: bool = True, finals: bool = True, beam_cap: int = 0
    ) -> None:
        """Encode the ready chunks of the online ``streams`` (one batched encoder call per round), emit their
        partials, close the utterances that ended and decode their finals; offline streams are decoded as
        :class:`~asr.streaming.Recognizer` does.

        A server with a thread for finals splits the work: ``finals=False`` (chunk steps only) leaves the
        finals of the utterances closed for a later call, when the stream :meth:`has_final`, and
        ``interims=False`` (finals first) decodes the finals due and encodes chunks only of streams whose
        input has ended and that have no closed utterance waiting (their last final needs those chunks):
        the other streams' chunks wait for a call with interims, so that a finals thread never runs the
        small chunk steps that cost the most per stream. Partials cost nothing beyond the chunk steps that
        endpointing needs anyway."""
        offline = [s for s in streams if not isinstance(s, OnlineStream)]
        if offline:
            super().decode_streams(offline, interims=interims, finals=finals)  # whole recordings: no cap
        online = [s for s in dict.fromkeys(streams) if isinstance(s, OnlineStream)]
        if not online:
            return
        # finals first: chunks only where the input has ended (its last final needs them), and not before
        # the finals already closed are decoded
        self._encode_ready(online if interims else [s for s in online if s.input_done and not s.closed])
        for s in online:
            with s.lock:
                self._settle(s)
        if finals:
            self._decode_closed(online, beam_cap)
        if interims and finals:  # one thread does everything: the searches grow with the chunks
            for s in online:
                self._grow(s)

    # -- growing searches (asr.growing_search) ---------------------------------------------------------------

    def has_growth(self) -> bool:
        """Whether some stream's open utterance has chunks its growing search has not had."""
        with self._growth_lock:
            return len(self._to_grow) > 0

    @torch.inference_mode()
    def grow_pending(self, budget_s: float, stop: Callable[[], bool] | None = None) -> int:
        """Grow the searches of the streams that have new chunks, oldest first, for about ``budget_s``
        seconds; returns how many streams were grown. A server runs this on its finals thread when it has
        nothing else to do: the finals' beam search then runs while the audio is still coming, so that at an
        endpoint only its last tokens are left. May run beside :meth:`decode_streams` on another thread.
        ``stop``: asked before each stream; once it is true (a final is waiting), the rest waits."""
        deadline = time.perf_counter() + budget_s
        grown = 0
        while time.perf_counter() < deadline and not (stop is not None and stop()):
            with self._growth_lock:
                if not self._to_grow:
                    break
                s = self._to_grow.pop(next(iter(self._to_grow)))
            self._grow(s)
            grown += 1
        return grown

    def _growing(self, options: StreamOptions) -> bool:
        """Whether finals of a stream with ``options`` are searched as their utterance grows."""
        opts = options.decoding
        # With a final model the streaming model's search gives no final, unless a second pass over its
        # budget leaves one to it: then the grown search is what makes that final cheap.
        return (
            (self.final_model is None or self.config.second_pass_budget_ms > 0)
            and self.config.growing_finals
            and options.growing_finals
            and opts.method == "beam"
            and not opts.tta_speeds
        )

    def _grows(self, s: OnlineStream) -> bool:
        """Whether the open utterance's final is to be searched as it grows (and has anything to search)."""
        return self._growing(s.options) and bool(s.open.tokens) and not s.open.whole

    def _grow(self, s: OnlineStream) -> None:
        """Give the open utterance's growing search its new chunks (starting it once the finals of the
        sentence's earlier utterances, its prefix, are known)."""
        with s.lock:
            with self._growth_lock:
                self._to_grow.pop(id(s), None)
            if s.ended or not self._grows(s):
                return
            utt, fresh = s.open, s.open.search is None
            if fresh:
                if any(c.final.text is None for c in s.context):
                    return  # the next call, once their finals are decoded
                utt.search = self._new_search(s.options.decoding, s.context)
            search, chunks, token_frames = utt.search, list(utt.frames), list(utt.token_frames)
            assert search is not None
            if not fresh and self._lags(search, len(chunks)):  # it cannot keep up: searched whole at the end
                utt.search, utt.whole, utt.searched = None, True, []
                return
        with search.lock:
            search.catch_up(chunks, token_frames)
            best = list(search.best())
        if self.config.searched_partials:  # shown by the next chunk's partial: no more messages than before
            with s.lock:
                if s.open is utt and utt.search is search:
                    utt.searched = best

    def _encode_ready(self, streams: list[OnlineStream]) -> None:
        """The next chunk of every stream that has one, in one ``encoder.step``; further rounds for the
        streams whose input has ended, so that their last final comes in this call, and for those that have
        fallen behind, up to ``CATCH_UP_CHUNKS`` chunks in all: a stream that is behind catches up a few
        chunks per call (each call is a round trip through the server's batcher), and the other streams'
        partials wait for at most that many batched steps. A stream still behind stays ready for the next
        call."""
        rounds = 0
        while True:
            ready = self._feed(streams)
            if not ready:
                return
            rounds += 1
            encoders = [s.open.encoder for s in ready]
            if any(s.options.lookahead_results for s in ready):
                outs, aheads = self.encoder.step_ahead(encoders)
            else:
                outs = self.encoder.step(encoders)
                aheads = [o[:0] for o in outs]
            self.chunk_steps += 1
            sizes = [o.size(0) for o in outs]
            self.frames_encoded += sum(sizes)
            labels = self.model.ctc(torch.cat(outs + aheads)).argmax(-1).cpu()  # greedy CTC
            ids = labels.split(sizes + [a.size(0) for a in aheads])
            chunk_labels, ahead_labels = ids[: len(outs)], ids[len(outs) :]
            for s, out, chunk_ids, la_ids in zip(ready, outs, chunk_labels, ahead_labels, strict=True):
                ahead = la_ids.tolist() if s.options.lookahead_results else []
                with s.lock:
                    self._heard(s, out, chunk_ids.tolist(), ahead)
            streams = [s for s in ready if s.input_done or rounds < CATCH_UP_CHUNKS]

    def _feed(self, streams: list[OnlineStream]) -> list[OnlineStream]:
        """Turn the streams' whole feature frames into normalised features for their encoders (and end them
        at the end of input); the streams with a chunk ready.

        An encoder ends only where its input had ended when its samples were taken: the end of input (and
        the last samples before it) may arrive from another thread while these features are computed, and
        those samples are the next call's."""
        taken = []
        for s in streams:
            with s.lock:
                if not s.ended:
                    taken.append((s, s.take_samples(), s.input_done))
        fed = [(s, x) for s, x, _ in taken if x is not None]
        for (s, _), feats in zip(fed, self._features([x for _, x in fed]), strict=True):
            s.open.encoder.push(feats)
        ready = []
        for s, _, input_done in taken:
            with s.lock:
                if self.config.silence_gate and s.open.num_frames == 0 and not s.ended:
                    self._skip_silence(s, input_done)
                    if self._gated(s, input_done):
                        continue  # silence so far: waits unencoded
                es = s.open.encoder
                if input_done and not es.finished:
                    es.finish()
                if self.encoder.ready(es):
                    ready.append(s)
        return ready

    def _onset(self, s: OnlineStream) -> int | None:
        """The first stream sample from the open utterance's start on where the energy VAD heard speech
        (None: none in the audio it has heard)."""
        start = s.open.start
        return next((max(a, start) for a, b in s.speech_spans if b > start), None)

    def _gated(self, s: OnlineStream, input_done: bool) -> bool:
        """Whether the open utterance waits unencoded (``RecognizerConfig.silence_gate``): nothing encoded
        yet, no speech heard since it began, and more audio to come (not ``input_done``)."""
        return (
            self.config.silence_gate and s.open.num_frames == 0 and not input_done and self._onset(s) is None
        )

    def _skip_silence(self, s: OnlineStream, input_done: bool) -> None:
        """Start the open utterance, not yet encoded, ``pre_speech_ms`` before the speech the energy VAD
        heard first in it (before the audio it has heard, if none yet), on an encoder frame boundary: the
        whole frames of silence before that are dropped unencoded. Where it starts depends on the audio,
        not on how fast it came: a client sending faster than real time gets the same utterances. At the
        end of input with no speech heard, no speech is to come: all of it is dropped."""
        utt = s.open
        onset = self._onset(s)
        lead = 0 if onset is None and input_done else s.options.endpoint.pre_speech_ms * SAMPLE_RATE // 1000
        until = (s.vad_samples if onset is None else onset) - lead
        held = utt.encoder.features_from(0).size(0) // self.feats_per_frame  # whole frames of features
        frames = min(held, (until - utt.start) // self.samples_per_frame)
        if frames <= 0:
            return
        cut = utt.start + frames * self.samples_per_frame
        nxt = self._new_utterance(cut)
        nxt.encoder.push(utt.encoder.features_from(frames * self.feats_per_frame))
        # an energy endpoint in the silence dropped ends the sentence, as it would have once encoded
        sentence_end = bool(s.energy_ends) and s.energy_ends[0] <= cut
        s._cut(cut, nxt, final=False, sentence_end=sentence_end)
        s.encoded_to = cut
        s.skipped_samples += cut - utt.start
        self.frames_skipped += frames

    def _features(self, samples: list[np.ndarray]) -> list[Tensor]:
        """Normalised log-mel frames ``(T_i, n_mels)`` of each of ``samples`` (whole frames), in one call:
        zero-padded to the longest, each keeps its own frames (a frame reads its own samples only)."""
        if not samples:
            return []
        lengths = torch.tensor([len(x) for x in samples], device=self.model.device)
        wave = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(x) for x in samples], batch_first=True)
        feats, n = self.model.features(wave.to(self.model.device), lengths)
        feats = self.model.cmvn(feats)
        return [feats[i, :k] for i, k in enumerate(n.tolist())]

    def _heard(self, s: OnlineStream, out: Tensor, labels: list[int], ahead: list[int]) -> None:
        """A chunk's encoder frames ``(n, D)``, their greedy labels and those of the provisional look-ahead
        frames after them (empty when not read): extend the utterance, send a partial if its text changed,
        and end it at a blank endpoint or its length limit."""
        utt, blank = s.open, self.model.tokenizer.blank_id
        utt.frames.append(out)
        for i, label in enumerate(labels):
            if label != blank and label != utt.last_id:
                utt.tokens.append(label)
                utt.token_frames.append(utt.num_frames + i)
            utt.blank_run = utt.blank_run + 1 if label == blank else 0
            utt.last_id = label
        utt.num_frames += out.size(0)
        if self._grows(s):
            with self._growth_lock:
                self._to_grow[id(s)] = s
        tentative, last = [], utt.last_id  # what greedy CTC reads in the look-ahead, after the tokens
        for label in ahead:
            if label != blank and label != last:
                tentative.append(label)
            last = label
        utt.shown, utt.ahead = utt.tokens + tentative, len(ahead)
        self._send_partial(s)
        # a run of blanks that goes on through the look-ahead counts its frames too
        run = utt.blank_run + (len(ahead) if all(label == blank for label in ahead) else 0)
        ep = s.options.endpoint
        pos = s.encoded_to = utt.start + utt.num_frames * self.samples_per_frame  # the sample encoded up to
        blank_end = bool(utt.tokens) and ep.blank_ms > 0 and run * self.frame_ms >= ep.blank_ms
        if blank_end and ep.blank_quiet_ms:  # and the energy VAD heard no speech over the run's last ms
            reach = pos + (len(ahead) if run > utt.blank_run else 0) * self.samples_per_frame
            blank_end = not s._heard_speech(reach - ep.blank_quiet_ms * SAMPLE_RATE // 1000, reach)
        energy_end = bool(s.energy_ends) and pos >= s.energy_ends[0]
        if blank_end or energy_end or utt.num_frames * self.frame_ms >= ep.max_segment_seconds * 1000:
            # an energy endpoint keeps the utterance up to the first chunk boundary after it, wherever the
            # encoder had got to when the VAD heard it (see _cut)
            at = s.energy_ends[0] if energy_end and not blank_end else None
            self._cut(s, final=True, at=at, sentence_end=not blank_end or energy_end)
            return
        reach = self.encoder.window0 * self.encoder.front_scale * self.hop  # the audio the last window read
        idle = not utt.tokens and not s._heard_speech(utt.start, pos + reach)
        if idle and utt.num_frames * self.frame_ms >= max(ep.pre_speech_ms, self.frame_ms):
            self._cut(s, final=False, sentence_end=False)  # nothing heard: again, without the silence

    def _send_partial(self, s: OnlineStream) -> None:
        """A partial for the open utterance (``s.lock`` held) when what it would say has changed: the growing
        search's words so far, then greedy CTC's after them (:func:`_spliced`). The search lags greedy CTC
        by a few frames and a token, and reads them better."""
        utt = s.open
        tokens = _spliced(self.model.tokenizer, utt.searched, utt.shown)
        if tokens == utt.sent or not tokens or not s.options.interim_results:
            return
        utt.sent = tokens
        partial = self._partial(s, tokens)
        if partial.text != s._last_interim_text:  # new tokens may read the same (a word's trailing space)
            s._add_result(partial)

    def _partial(self, s: OnlineStream, tokens: list[int]) -> StreamResult:
        """The open utterance's partial saying ``tokens``, covering its frames and the look-ahead's."""
        utt, ahead = s.open, s.open.ahead
        text = self.model.tokenizer.decode(tokens)
        common = len(_common_prefix(s._last_interim_text, text))
        return StreamResult(
            text=text,
            alternatives=(Alternative(text, 0.0, 0.0),),
            words=(),
            is_final=False,
            stability=min(0.9, common / len(text)) if text else 0.0,
            start=utt.start / SAMPLE_RATE,
            end=(utt.start + (utt.num_frames + ahead) * self.samples_per_frame) / SAMPLE_RATE,
            utterance=s.utterance,
        )

    def _cut(self, s: OnlineStream, final: bool, at: int | None = None, sentence_end: bool = True) -> None:
        """End the open utterance where its encoder is; the next one takes over the features not encoded.
        ``at``: a stream sample the encoder has passed (an energy endpoint heard late); the final keeps the
        utterance up to the first chunk boundary at or after it, as if the cut had come there, so that
        where an utterance ends does not depend on when the model thread got to it. Without
        ``sentence_end`` (a blank endpoint, a restart on silence) the utterance is context for the next
        final (``RecognizerConfig.final_context_seconds``)."""
        old = s.open
        es = old.encoder
        cut = old.start + old.num_frames * self.samples_per_frame
        nxt = self._new_utterance(cut)
        rest = es.features_from(old.num_frames * self.feats_per_frame)
        if rest.size(0):  # also when the input has ended: a blank endpoint may come before the last chunk
            nxt.encoder.push(rest)
        keep = old.num_frames
        if at is not None:
            chunk = self.encoder.config.chunk_frames
            keep = min(keep, -(-max(at - old.start, 0) // (self.samples_per_frame * chunk)) * chunk)
        # A fragment (the end of input a few frames after a blank endpoint) gets no final: the attention
        # decoder invents words for a few frames of audio.
        final_end = old.start + keep * self.samples_per_frame
        context = int(self.config.final_context_seconds * SAMPLE_RATE)
        final = final and keep * self.frame_ms >= MIN_FINAL_MS
        s._cut(cut, nxt, final, final_end, keep, sentence_end=sentence_end, context_samples=context)

    def _settle(self, s: OnlineStream) -> None:
        """After the chunks: the energy endpoint and the end of input close the open utterance; then note what
        the encoder needs before its next chunk (for :meth:`is_ready`)."""
        if s.ended:
            return
        es = s.open.encoder
        # ended by _feed once every sample is in it: a stream whose input has ended but whose last samples
        # are not yet encoded (a finals-only call, or the end arrived during this one) waits for them
        if es.finished and not s.flushed and not self.encoder.ready(es):
            self._cut(s, final=True)
            s.flushed = True
        elif s.energy_ends and s.encoded_to >= s.energy_ends[0]:  # the VAD heard the end after the encoder
            self._cut(s, final=True, at=s.energy_ends[0])
        s.short = self._frames_short(s.open.encoder)
        if self._gated(s, s.input_done):  # waits for a chunk's more audio (or speech, or the end of input)
            s.short = max(s.short, self.encoder.config.chunk_frames * self.feats_per_frame)

    def _decode_closed(self, streams: list[OnlineStream], beam_cap: int = 0) -> None:
        """The finals of the closed utterances: one beam search per distinct decoding options (their beam at
        most ``beam_cap`` where searched whole), and per round: an utterance whose context holds another
        utterance of this call waits for that one's final (its words are the next one's prefix)."""
        taken: list[tuple[OnlineStream, ClosedUtterance]] = []
        for s in streams:
            with s.lock:
                taken += [(s, c) for c in s.closed]
                s.closed.clear()
        results: dict[int, StreamResult] = {}
        pending = list(taken)
        try:
            while pending:
                waiting = {id(c.final) for _, c in pending}
                ready = [(s, c) for s, c in pending if not any(id(x.final) in waiting for x in c.context)]
                chosen = {id(c) for _, c in ready}
                pending = [(s, c) for s, c in pending if id(c) not in chosen]
                groups: dict[DecodingOptions, list[tuple[OnlineStream, ClosedUtterance]]] = {}
                for item in ready:
                    groups.setdefault(item[0].options.decoding, []).append(item)
                for opts, items in groups.items():
                    size = self.config.max_batch_size
                    for k in range(0, len(items), size):
                        batch = items[k : k + size]
                        for (_, c), r in zip(batch, self._finals(batch, opts.capped(beam_cap)), strict=True):
                            results[id(c)] = r
                            c.final.text = r.text
        except BaseException:
            for s, c in reversed(taken):  # back to their streams, in order, for a retry
                if id(c) not in results:
                    with s.lock:
                        s.closed.appendleft(c)
            raise
        for s, c in taken:
            with s.lock:
                s._add_result(results[id(c)])

    def _finals(
        self, items: list[tuple[OnlineStream, ClosedUtterance]], opts: DecodingOptions
    ) -> list[StreamResult]:
        """Finals of closed utterances that share the decoding options ``opts``: one beam search, each
        utterance decoded after its context (the sentence's earlier utterances), whose finals' words are
        forced as the transcript's start, and keeping the words after them. With a final model, those whose
        second pass would end past ``second_pass_budget_ms`` after their endpoint are the streaming
        model's."""
        closed = [_decoded_context(c) for _, c in items]
        second = self._within_budget(closed) if self.final_model is not None else []
        taken = set(second)
        own = [i for i in range(len(items)) if i not in taken]
        self.finals_over_budget += len(own) if self.final_model is not None else 0
        results: list[StreamResult | None] = [None] * len(items)
        for rows, second_pass in ((second, True), (own, False)):
            if rows:
                chosen = [items[i] for i in rows]
                part = self._finals_by(chosen, [closed[i] for i in rows], opts, second_pass)
                for i, r in zip(rows, part, strict=True):
                    results[i] = r
        return [r for r in results if r is not None]

    def _within_budget(self, closed: list[ClosedUtterance]) -> list[int]:
        """The rows of ``closed`` that the second pass can decode within ``second_pass_budget_ms`` of their
        endpoints (all of them without a budget, or before a second pass has been timed): the oldest first,
        while the batch's expected time (audio seconds x the second pass's seconds per audio second so far)
        leaves the oldest within its budget."""
        budget = self.config.second_pass_budget_ms / 1000.0
        if not budget or not self.second_pass_rate:
            return list(range(len(closed)))
        now = time.monotonic()
        chosen: list[int] = []
        audio_s = 0.0
        for i in sorted(range(len(closed)), key=lambda i: closed[i].closed_time):
            seconds = sum(len(x.audio) for x in (*closed[i].context, closed[i])) / SAMPLE_RATE
            oldest = closed[chosen[0]].closed_time if chosen else closed[i].closed_time
            if now - oldest + self.second_pass_rate * (audio_s + seconds) > budget:
                break
            chosen.append(i)
            audio_s += seconds
        return sorted(chosen)

    def _finals_by(
        self,
        items: list[tuple[OnlineStream, ClosedUtterance]],
        closed: list[ClosedUtterance],
        opts: DecodingOptions,
        second_pass: bool,
    ) -> list[StreamResult]:
        """:meth:`_finals` of ``items`` (``closed``: their utterances with the context to decode them after)
        by the final model (``second_pass``) or by the streaming model's own search."""
        joined = [c.joined() for c in closed]
        said = [" ".join(x.final.text for x in c.context if x.final.text) for c in closed]
        streams = [s for s, _ in items]
        word_times = [s.options.word_times or bool(c.context) for s, c in zip(streams, closed, strict=True)]
        if second_pass and self.final is not None:  # the second pass: the final model reads the audio
            fm = self.final.model
            lm = self.final.lm if self.final.lm is not None else self.lm
            t0 = time.monotonic()
            prefixes = [_prefix(fm.tokenizer, text) for text in said]
            enc, lengths, short = encode_waveforms(fm, [c.audio for c in joined])
            self.finals_second_pass += len(joined)
            fopts = self.final.options(opts)
            results = self._final_results(
                joined, word_times, fopts, enc, lengths, short=short, prefixes=prefixes, model=fm, lm=lm
            )
            rate = (time.monotonic() - t0) / max(sum(len(c.audio) for c in joined) / SAMPLE_RATE, 0.1)
            old = self.second_pass_rate
            self.second_pass_rate = rate if not old else 0.8 * old + 0.2 * rate
        else:
            prefixes = [_prefix(self.model.tokenizer, text) for text in said]
            lengths = torch.tensor([c.enc.size(0) for c in joined], device=self.model.device)
            enc = torch.nn.utils.rnn.pad_sequence([c.enc for c in joined], batch_first=True)
            found = [self._grown(c, s.options) for s, c in zip(streams, closed, strict=True)]
            results = self._final_results(
                joined, word_times, opts, enc, lengths, prefixes=prefixes, found=found
            )
        return [
            _own_words(r, c, len(text.split()), s.options.word_times) if c.context else r
            for (s, _), c, text, r in zip(items, closed, said, results, strict=True)
        ]

    def _lags(self, search: UtteranceSearch, chunks: int) -> bool:
        """Whether a search that has had ``search.taken`` of an utterance's ``chunks`` chunks lags too far."""
        return bool(self.max_lag) and chunks - search.taken > self.max_lag

    def _new_search(self, opts: DecodingOptions, context: Sequence[ClosedUtterance]) -> UtteranceSearch:
        """A growing search of an utterance after ``context`` (whose finals are known)."""
        said = " ".join(c.final.text for c in context if c.final.text)
        enc = torch.cat([c.enc for c in context]) if context else None
        prefix = _prefix(self.model.tokenizer, said)
        return UtteranceSearch(self.model, opts, self.lm, prefix, enc, len(context))

    def _grown(self, c: ClosedUtterance, options: StreamOptions) -> list[Hypothesis] | None:
        """The n-best list of ``c``'s growing search, finished: the chunks it has not had yet go in first, as
        they would have while the utterance was heard (so a final is the same however far its search had
        grown), and one is started over all of them if none was. None (``c`` is then searched whole, with the
        other finals of the call) without growing finals (the recognizer's or the stream's
        ``growing_finals``), or with ``growing_lag_ms`` when its search never
        started or fell too far behind."""
        if not self._growing(options) or c.whole:
            self.finals_whole += 1
            return None
        if self.max_lag and (c.search is None or self._lags(c.search, len(c.chunks))):
            self.finals_whole += 1  # its search never started or fell behind: batched with the others
            return None
        search = c.search
        if search is None or search.context_utterances != len(c.context):
            search = self._new_search(
                options.decoding, c.context
            )  # (a context whose final failed is left out)
        self.finals_grown += 1
        with search.lock:
            return search.finish(c.chunks, c.token_frames, c.enc.size(0))


def _spliced(tok: Tokenizer, searched: Sequence[int], greedy: Sequence[int]) -> list[int]:
    """A partial's tokens: the growing search's best hypothesis up to its last word start (the words it has
    finished), then greedy CTC's tokens from its word start nearest to as many tokens in (the search takes
    one step per greedy token; the two may split words differently). When greedy CTC has no later word, the
    whole hypothesis and the greedy tokens after as many as it has read, so that partials keep up with the
    audio. Greedy CTC's alone before the search has finished a word."""
    starts = [i for i, w in enumerate(tok.word_starts(searched)) if w]
    if searched and searched[-1] == tok.space_id:  # its last word is finished too
        starts.append(len(searched))
    if len(starts) < 2:
        return list(greedy)
    done = starts[-1]
    later = [i for i, w in enumerate(tok.word_starts(greedy)) if w and i > 0]
    if later:
        at = min(later, key=lambda i: (abs(i - done), -i))
        return list(searched[:done]) + list(greedy[at:])
    return list(searched) + list(greedy[len(searched) :])  # the greedy tokens it has not read yet


def _decoded_context(c: ClosedUtterance) -> ClosedUtterance:
    """``c`` with the part of its context after the last utterance whose final is unknown (one that failed
    to decode): what the context said must be known to be forced."""
    k = len(c.context)
    while k and c.context[k - 1].final.text is not None:
        k -= 1
    return c if k == 0 else dataclasses.replace(c, context=c.context[k:])


def _prefix(tok: Tokenizer, text: str) -> list[int]:
    """The tokens of ``text`` as a decoding prefix: ending on a word boundary where the tokenizer spells
    them out (a space token), so that the search goes on with a new word."""
    if not text:
        return []
    ids = tok.encode(text)
    return [*ids, tok.space_id] if tok.space_id is not None else ids


def _within(w: Word, shift: float, start: float) -> Word:
    """Word ``w`` moved by ``shift`` seconds and kept from ``start`` on; one the alignment placed wholly
    before ``start`` (in the context's audio) keeps a frame's length there."""
    begin = max(w.start + shift, start)
    return dataclasses.replace(w, start=begin, end=max(w.end + shift, begin + WORD_FLOOR_S))


def _own_words(result: StreamResult, c: ClosedUtterance, said: int, word_times: bool) -> StreamResult:
    """The final of ``c`` from the ``result`` of decoding it after its context, whose finals said ``said``
    words (the prefix of every alternative): the words after them, timed from the stream start (the joined
    audio leaves out what fell between the utterances) and kept within ``c``'s own audio."""
    start = c.start / SAMPLE_RATE
    joined_start = (c.context[0].start + sum(len(x.audio) for x in c.context)) / SAMPLE_RATE
    shift = start - joined_start  # stream time - joined time, over c's own audio
    words = tuple(_within(w, shift, start) for w in result.words[said:])
    text = " ".join(w.word for w in words) if result.words else " ".join(result.text.split()[said:])
    confidence = sum(w.confidence for w in words) / len(words) if words else 0.0
    alternatives = tuple(
        Alternative(" ".join(a.text.split()[said:]), a.score, a.confidence) for a in result.alternatives
    )
    if alternatives:
        alternatives = (Alternative(text, alternatives[0].score, confidence), *alternatives[1:])
    return dataclasses.replace(
        result,
        text=text,
        alternatives=alternatives if text else (),
        words=words if word_times else (),
        start=start,
        end=(c.start + len(c.audio)) / SAMPLE_RATE,
    )
