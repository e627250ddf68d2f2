"""High-level recognition: audio in, :class:`Transcript` out (text, n-best, words with times).

The recognition API sits on top of the network (:mod:`asr.model`) and the search (:mod:`asr.decoding`,
:mod:`asr.tta`), and neither of those knows about it: :func:`transcribe` and :func:`transcribe_batch` take
any :class:`~asr.model.ASRModel`, and :class:`Transcriber` is the network with them as methods, which
:func:`asr.load_model` returns.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asr.alignment import Word, align_words, clamp_to_voiced, voiced_span
from asr.audio import SAMPLE_RATE, AudioInput, load_audio
from asr.decoding import DecodingOptions, Hypothesis, LanguageModel, beam_search, ctc_greedy
from asr.model import ASRModel
from asr.tta import search_views
from asr.tta import views as tta_views

__all__ = [
    "Alternative",
    "AudioInput",
    "Transcriber",
    "Transcript",
    "Word",
    "decode_waveforms",
    "transcribe",
    "transcribe_batch",
]

MAX_SEGMENT_SECONDS = 30.0  # the longest piece of audio decoded at once (a stream's max_segment_seconds)
# Longer recordings are cut at pauses into pieces of at most this, and decoded piece by piece: the models
# learnt from utterances of 1-20 s (90 % of them under 7 s), and their attention loses its place on longer
# input. Recordings made of a set's utterances joined, pieces of at most 30 s against 10 s: librispeech-other
# 45.4 against 40.6 % WER, commonvoice-sample 47.5 against 42.5 %, at 2.3x the CPU (docs/BENCHMARKS.md,
# "Long recordings").
PIECE_SECONDS = 10.0
SPLIT_HOP_S = 0.05  # the energy frames in which split_long_audio looks for a pause
QUIET_DB = 10.0  # frames within this of the window's quietest are part of a pause
# a recording whose peak is below this (-80 dBFS, three steps of 16-bit audio) is digital silence: no speech,
# and nothing to search. The models read Whisper's log-mel, which maps it to one constant frame, and the
# default of session 37 heard "AN IN THE INDIAN" in 2-5 s of it (its CTC gate let it through).
DIGITAL_SILENCE = 1e-4


@dataclass(frozen=True)
class Alternative:
    text: str
    score: float  # decoder score (log domain)
    confidence: float  # geometric-mean token probability in [0, 1] (greedy: of the frames that emit tokens)


@dataclass(frozen=True)
class Transcript:
    text: str
    alternatives: tuple[Alternative, ...] = ()
    words: tuple[Word, ...] = ()
    duration: float = 0.0  # seconds of audio

    @property
    def confidence(self) -> float:
        if self.words:
            return float(sum(w.confidence for w in self.words) / len(self.words))
        return self.alternatives[0].confidence if self.alternatives else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["confidence"] = self.confidence
        return d


def _hyp_confidence(h: Hypothesis) -> float:
    if not math.isfinite(h.score):
        return 0.0
    per_token = (h.att_score if h.att_score else h.ctc_score) / (len(h.tokens) + 1)
    return float(min(1.0, max(0.0, math.exp(per_token))))


@torch.inference_mode()
def decode_encoded(
    model: ASRModel,
    enc: Tensor,
    enc_lengths: Tensor,
    options: DecodingOptions,
    *,
    offsets: list[float] | None = None,
    durations: list[float] | None = None,
    lm: LanguageModel | None = None,
    word_times: bool = True,
    voiced: Sequence[tuple[float, float] | None] | None = None,
    views: Sequence[tuple[Tensor, Tensor]] = (),
    prefixes: Sequence[Sequence[int]] | None = None,
    found: Sequence[list[Hypothesis] | None] | None = None,
) -> list[Transcript]:
    """Decode a batch of encoder outputs ``(B, T', D)`` into transcripts. ``voiced``: each segment's
    :func:`asr.alignment.voiced_span`, which its word times are kept within. ``views``: with
    ``options.tta_speeds``, the encoder outputs of the same batch at those speeds (:func:`encode_views`).
    ``prefixes``: tokens each transcript must start with (beam search only; see
    :func:`asr.decoding.beam_search`). ``found``: n-best lists already searched (a streaming final's
    :class:`asr.growing_search.GrowingSearch`), None for those to search; all are aligned alike."""
    tok = model.tokenizer
    b = enc.size(0)
    offsets = offsets or [0.0] * b
    durations = durations or [0.0] * b
    ctc_lp = model.ctc_log_probs(enc)
    if options.method == "greedy":
        if prefixes is not None and any(prefixes):
            raise ValueError("prefixes need the beam search (method 'beam'); greedy CTC cannot force them")
        hyps_per_utt, confidences = _greedy(ctc_lp, enc_lengths, tok.blank_id)
    else:
        hyps_per_utt, confidences = _search(
            model, enc, enc_lengths, ctc_lp, options, lm, views, prefixes, found
        )
    shift = model.config.encoder_frame_shift
    out = []
    for i, hyps in enumerate(hyps_per_utt):
        alts = tuple(
            Alternative(tok.decode(h.tokens), h.score, c) for h, c in zip(hyps, confidences[i], strict=True)
        )
        words: list[Word] = []
        if word_times and hyps and hyps[0].tokens:
            words = align_words(ctc_lp[i, : int(enc_lengths[i])], hyps[0].tokens, tok, shift, offsets[i])
            if voiced is not None:
                words = clamp_to_voiced(words, voiced[i], offsets[i])
        out.append(Transcript(alts[0].text if alts else "", alts, tuple(words), durations[i]))
    return out


def _greedy(
    ctc_lp: Tensor, enc_lengths: Tensor, blank: int
) -> tuple[list[list[Hypothesis]], list[list[float]]]:
    """CTC best paths, each with the geometric-mean probability of the frames that emit tokens (of every
    frame if none does) as its confidence."""
    best = ctc_lp.max(-1)
    hyps_per_utt, confidences = [], []
    for i, t in enumerate(ctc_greedy(ctc_lp, enc_lengths, blank)):
        n = int(enc_lengths[i])
        lp, spoken = best.values[i, :n], best.indices[i, :n] != blank
        hyps_per_utt.append([Hypothesis(tuple(t), float(lp.sum()))])
        frames = lp[spoken] if bool(spoken.any()) else lp
        confidences.append([math.exp(float(frames.mean())) if n else 0.0])
    return hyps_per_utt, confidences


def _search(
    model: ASRModel,
    enc: Tensor,
    enc_lengths: Tensor,
    ctc_lp: Tensor,
    options: DecodingOptions,
    lm: LanguageModel | None,
    views: Sequence[tuple[Tensor, Tensor]],
    prefixes: Sequence[Sequence[int]] | None = None,
    found: Sequence[list[Hypothesis] | None] | None = None,
) -> tuple[list[list[Hypothesis]], list[list[float]]]:
    """Joint CTC/attention beam search (over the TTA views when asked) of the segments in which greedy CTC
    hears speech (``options.ctc_gate``); the others keep greedy CTC's empty hypothesis and its confidence.
    A segment with a prefix is always searched, one with a ``found`` n-best list never."""
    b = enc.size(0)
    out, confidences = _greedy(ctc_lp, enc_lengths, model.tokenizer.blank_id)
    forced = list(prefixes) if prefixes is not None else [()] * b
    known = list(found) if found is not None else [None] * b
    for i, hyps in enumerate(known):
        if hyps is not None:
            out[i], confidences[i] = hyps, [_hyp_confidence(h) for h in hyps]
    heard = [
        i for i in range(b) if known[i] is None and (out[i][0].tokens or forced[i] or not options.ctc_gate)
    ]
    if not heard:
        return out, confidences
    rows_prefixes = [forced[i] for i in heard] if any(forced) else None
    if len(heard) < b:
        rows = torch.tensor(heard, device=enc.device)
        enc, enc_lengths = enc[rows], enc_lengths[rows]
        views = [(v[rows], v_lengths[rows]) for v, v_lengths in views]
    if options.tta_speeds:
        if len(views) != len(options.tta_speeds):
            raise ValueError(
                f"options.tta_speeds has {len(options.tta_speeds)} speeds but {len(views)} encoded views "
                "were given: encode them with asr.transcribe.encode_views"
            )
        found = search_views(model, [(enc, enc_lengths), *views], options, lm=lm, prefixes=rows_prefixes)
    elif rows_prefixes is not None:
        found = beam_search(model, enc, enc_lengths, options, lm=lm, prefixes=rows_prefixes)
    else:
        found = beam_search(model, enc, enc_lengths, options, lm=lm)
    for i, hyps in zip(heard, found, strict=True):
        out[i] = hyps
        confidences[i] = [_hyp_confidence(h) for h in hyps]
    return out, confidences


@torch.inference_mode()
def encode_waveforms(model: ASRModel, waves: list[np.ndarray]) -> tuple[Tensor, Tensor, list[bool]]:
    """Pad 16 kHz mono waveforms into a batch and encode it: ``enc (B, T', D)``, ``lengths (B,)`` and, for
    each waveform, whether it was too short to encode (it is then padded with silence-level features so the
    batch still runs, and its result should be discarded)."""
    device = model.device
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    feats, feat_lengths = model.features(batch.to(device), lengths.to(device))
    min_frames = model.config.encoder.subsampling
    short = (feat_lengths < min_frames).tolist()
    if any(short):
        feat_lengths = feat_lengths.clamp_min(min_frames)
        if feats.size(1) < min_frames:
            pad = (0, 0, 0, min_frames - feats.size(1))
            feats = torch.nn.functional.pad(feats, pad, value=math.log(1e-6))
    enc, enc_lengths = model.encode(feats, feat_lengths)
    return enc, enc_lengths, short


@torch.inference_mode()
def encode_views(
    model: ASRModel, waves: list[np.ndarray], speeds: Sequence[float]
) -> list[tuple[Tensor, Tensor]]:
    """Encoder outputs ``(enc, enc_lengths)`` of the batch played at each of ``speeds`` (:mod:`asr.tta`)."""
    out = []
    for copies in tta_views(waves, speeds):
        enc, enc_lengths, _ = encode_waveforms(model, copies)
        out.append((enc, enc_lengths))
    return out


@torch.inference_mode()
def decode_waveforms(
    model: ASRModel,
    waves: list[np.ndarray],
    options: DecodingOptions,
    *,
    offsets: list[float] | None = None,
    lm: LanguageModel | None = None,
    word_times: bool = True,
) -> list[Transcript]:
    """Batch-decode 16 kHz mono waveforms (each at most a segment long)."""
    if not waves:
        return []
    enc, enc_lengths, short = encode_waveforms(model, waves)
    durations = [len(w) / SAMPLE_RATE for w in waves]
    voiced = [voiced_span(w) for w in waves] if word_times else None
    views = encode_views(model, waves, options.tta_speeds) if options.tta_speeds else ()
    results = decode_encoded(
        model,
        enc,
        enc_lengths,
        options,
        offsets=offsets,
        durations=durations,
        lm=lm,
        word_times=word_times,
        voiced=voiced,
        views=views,
        found=silence_found(waves, options),
    )
    return [Transcript("", (), (), durations[i]) if short[i] else r for i, r in enumerate(results)]


def silence_found(
    waves: Sequence[np.ndarray],
    options: DecodingOptions,
    found: Sequence[list[Hypothesis] | None] | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> Sequence[list[Hypothesis] | None] | None:
    """``found`` (n-best lists already searched, None for those to search) with an empty hypothesis for each
    waveform of digital silence (:data:`DIGITAL_SILENCE`) that has no forced prefix, under
    ``options.ctc_gate``: such audio is never searched, offline or in a stream's finals."""
    silent = [
        options.ctc_gate
        and not (prefixes and prefixes[i])
        and (w.size == 0 or float(np.abs(w).max()) < DIGITAL_SILENCE)
        for i, w in enumerate(waves)
    ]
    if not any(silent):
        return found
    known = list(found) if found is not None else [None] * len(waves)
    return [[Hypothesis((), 0.0)] if s else f for s, f in zip(silent, known, strict=True)]


def split_long_audio(audio: np.ndarray, max_seconds: float = PIECE_SECONDS) -> list[tuple[int, int]]:
    """Cut audio longer than ``max_seconds`` into pieces of ``max_seconds / 3`` to ``max_seconds``: each cut
    in the middle of the longest pause in that span of the piece (the latest of equal ones), a pause being a
    run of 50 ms frames within ``QUIET_DB`` of the span's quietest."""
    max_len = int(max_seconds * SAMPLE_RATE)
    if len(audio) <= max_len:
        return [(0, len(audio))]
    hop = int(SPLIT_HOP_S * SAMPLE_RATE)
    bounds, start = [], 0
    while len(audio) - start > max_len:
        lo, hi = start + max_len // 3, start + max_len
        frames = audio[lo:hi][: ((hi - lo) // hop) * hop].reshape(-1, hop).astype(np.float64)
        level = 10.0 * np.log10((frames**2).mean(axis=1) + 1e-12)
        first, end = _longest_run(level <= level.min() + QUIET_DB)
        cut = lo + ((first + end) * hop) // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(audio)))
    return bounds


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """``(first, end)`` of the longest run of True in ``mask`` (the latest of equal ones; it has one)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    i = len(starts) - 1 - int(np.argmax((ends - starts)[::-1]))
    return int(starts[i]), int(ends[i])


def transcribe_batch(
    model: ASRModel,
    audios: Sequence[AudioInput],
    options: DecodingOptions | None = None,
    *,
    lm: LanguageModel | None = None,
    batch_size: int = 16,
) -> list[Transcript]:
    """Recognise several recordings; long ones are split into pieces and stitched back together."""
    options = options or DecodingOptions()
    model.eval()
    waves = [load_audio(a) for a in audios]
    pieces: list[tuple[int, float, np.ndarray]] = []
    for i, w in enumerate(waves):
        for s, e in split_long_audio(w):
            pieces.append((i, s / SAMPLE_RATE, w[s:e]))
    order = sorted(range(len(pieces)), key=lambda j: len(pieces[j][2]))  # similar lengths batch well
    decoded: dict[int, Transcript] = {}
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        res = decode_waveforms(
            model, [pieces[j][2] for j in idx], options, offsets=[pieces[j][1] for j in idx], lm=lm
        )
        decoded.update(zip(idx, res, strict=True))
    per_audio: list[list[Transcript]] = [[] for _ in waves]
    for j, (i, _, _) in enumerate(pieces):
        per_audio[i].append(decoded[j])
    return [_join(parts, len(w) / SAMPLE_RATE) for parts, w in zip(per_audio, waves, strict=True)]


def _join(parts: list[Transcript], duration: float) -> Transcript:
    """Stitch the pieces of a long recording back together; its n-best list holds the best combinations of
    the pieces' alternatives (scores add up, confidences average over the pieces)."""
    if len(parts) == 1:
        p = parts[0]
        return Transcript(p.text, p.alternatives, p.words, duration)
    words = tuple(w for p in parts for w in p.words)
    nbest = max(len(p.alternatives) for p in parts)
    combos: list[tuple[float, tuple[Alternative, ...]]] = [(0.0, ())]
    for p in parts:
        if not p.alternatives:
            continue
        grown = [(score + a.score, (*chosen, a)) for score, chosen in combos for a in p.alternatives]
        combos = heapq.nlargest(nbest, grown, key=lambda c: c[0])
    alts: dict[str, Alternative] = {}
    for score, chosen in combos:
        text = " ".join(a.text for a in chosen if a.text)
        conf = float(np.mean([a.confidence for a in chosen])) if chosen else 0.0
        alts.setdefault(text, Alternative(text, score, conf))  # best first: a repeated text keeps its best
    alternatives = tuple(alts.values())
    return Transcript(alternatives[0].text, alternatives, words, duration)


def transcribe(
    model: ASRModel,
    audio: AudioInput,
    options: DecodingOptions | None = None,
    *,
    lm: LanguageModel | None = None,
) -> Transcript:
    """Recognise one recording: a path, encoded bytes, or a float32 16 kHz mono waveform."""
    return transcribe_batch(model, [audio], options, lm=lm)[0]


class Transcriber(ASRModel):
    """An :class:`~asr.model.ASRModel` that recognises audio: the same network, weights and state dict, with
    :func:`transcribe` and :func:`transcribe_batch` as methods. :func:`asr.load_model` returns one; build one
    like the network, ``Transcriber(config, tokenizer)``.

    >>> model = asr.load_model()
    >>> model.transcribe("speech.wav", DecodingOptions(beam_size=10)).text
    """

    def transcribe(
        self, audio: AudioInput, options: DecodingOptions | None = None, *, lm: LanguageModel | None = None
    ) -> Transcript:
        """Recognise one recording (path, encoded bytes or 16 kHz float waveform); ``lm`` (with
        ``options.lm_weight`` above 0) is fused into the beam search."""
        return transcribe(self, audio, options, lm=lm)

    def transcribe_batch(
        self,
        audios: Sequence[AudioInput],
        options: DecodingOptions | None = None,
        *,
        lm: LanguageModel | None = None,
    ) -> list[Transcript]:
        """Recognise several recordings, batched; one :class:`Transcript` each, in order."""
        return transcribe_batch(self, audios, options, lm=lm)
