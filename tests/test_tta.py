"""Test-time augmentation (asr.tta): teacher-forced rescoring, pooling the views' searches, and its uses."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_decoding import PATHS, CTCModel, ctc_score, peaky, teacher_forced_score

from asr.audio import load_audio
from asr.decoding import DecodingOptions, beam_search
from asr.lm import NGramLM
from asr.tta import fused_scores, parse_speeds, search_views, sequence_scores


@pytest.mark.parametrize("ctc_weight", [0.3, 0.6])
@torch.inference_mode()
def test_sequence_scores_are_what_the_beam_search_accumulates(ctc_weight: float) -> None:
    model = CTCModel(seed=1)
    enc, lengths = peaky(PATHS, sharp=3.0, seed=1)
    hyps = beam_search(model, enc, lengths, DecodingOptions(beam_size=4, nbest=3, ctc_weight=ctc_weight))
    utt = [u for u, hs in enumerate(hyps) for _ in hs]
    seqs = [list(h.tokens) for hs in hyps for h in hs]
    seqs.append([])  # the empty transcript: <eos> at once, all blanks
    utt.append(1)
    att, ctc = sequence_scores(model, enc, lengths, utt, seqs)
    for i, h in enumerate(h for hs in hyps for h in hs):
        assert float(att[i]) == pytest.approx(h.att_score, abs=1e-6)
        assert float(ctc[i]) == pytest.approx(h.ctc_score, abs=1e-6)
    n = int(lengths[1])
    assert float(att[-1]) == pytest.approx(teacher_forced_score(model, enc[1], n, ()), abs=1e-6)
    all_blank = float(model.ctc_log_probs(enc[1, :n])[:, 0].double().sum())
    assert float(ctc[-1]) == pytest.approx(all_blank, abs=1e-6)


@torch.inference_mode()
def test_one_view_keeps_the_beam_search_ranking() -> None:
    model = CTCModel(seed=2)
    enc, lengths = peaky(PATHS, sharp=2.0, seed=2)
    opts = DecodingOptions(beam_size=5, nbest=3, ctc_weight=0.4)
    alone = beam_search(model, enc, lengths, opts)
    pooled = search_views(model, [(enc, lengths)], opts)
    for a, p in zip(alone, pooled, strict=True):
        assert [h.tokens for h in p] == [h.tokens for h in a]
        assert [h.score for h in p] == pytest.approx([h.score for h in a], abs=1e-6)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
@torch.inference_mode()
def test_pooled_hypotheses_are_scored_by_the_mean_over_views(ctc_weight: float) -> None:
    """Two different "views" of three utterances: every hypothesis is scored under both, best first, and
    the winner beats each view's own best once that is rescored the same way."""
    model = CTCModel(seed=3)
    enc_a, len_a = peaky(PATHS, sharp=2.0, seed=3)
    enc_b, len_b = peaky([p[:-1] for p in PATHS], sharp=2.0, seed=4)  # another length, other runner-ups
    opts = DecodingOptions(beam_size=4, nbest=4, ctc_weight=ctc_weight)
    views = [(enc_a, len_a), (enc_b, len_b)]

    def joint(u: int, tokens: tuple[int, ...]) -> float:
        total = 0.0
        for enc, lengths in views:
            n = int(lengths[u])
            if ctc_weight < 1:
                total += (1 - ctc_weight) * teacher_forced_score(model, enc[u], n, tokens)
            if ctc_weight > 0:
                total += ctc_weight * ctc_score(model, enc[u], n, tokens)
        return total / len(views)

    pooled = search_views(model, views, opts)
    firsts = [beam_search(model, enc, lengths, dataclasses.replace(opts, nbest=1)) for enc, lengths in views]
    for u, hyps in enumerate(pooled):
        assert 1 <= len(hyps) <= 4 and len({h.tokens for h in hyps}) == len(hyps)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        for h in hyps:
            assert h.score == pytest.approx(joint(u, h.tokens), abs=1e-4)
        for first in firsts:
            assert hyps[0].score >= joint(u, first[u][0].tokens) - 1e-6


@torch.inference_mode()
def test_fused_scores_equal_the_lm_sentence_log_prob() -> None:
    model = CTCModel()
    tok = model.tokenizer
    lm = NGramLM.train(["ABC", "ABD", "BAD", "CAB"], tok, order=3)
    seqs = [tok.encode("AB"), tok.encode("DAB"), [], tok.encode("ABCD")]
    got = fused_scores(lm, seqs, tok.sos_id, tok.eos_id)
    assert got.tolist() == pytest.approx([lm.log_prob(s) for s in seqs], abs=1e-5)


@torch.inference_mode()
def test_lm_and_length_bonus_enter_the_rescoring() -> None:
    model = CTCModel(seed=5)
    tok = model.tokenizer
    enc, lengths = peaky(PATHS, sharp=1.0, seed=5)
    lm = NGramLM.train(["AB", "BC", "CD"], tok, order=2)
    base = DecodingOptions(beam_size=4, nbest=4, ctc_weight=0.3)
    plain = search_views(model, [(enc, lengths)], base)
    fused = search_views(model, [(enc, lengths)], dataclasses.replace(base, lm_weight=0.5), lm=lm)
    for hyps in fused:
        for h in hyps:
            assert h.lm_score == pytest.approx(lm.log_prob(list(h.tokens)), abs=1e-5)
            joint = 0.7 * h.att_score + 0.3 * h.ctc_score + 0.5 * h.lm_score
            assert h.score == pytest.approx(joint, abs=1e-5)
    bonus = search_views(model, [(enc, lengths)], dataclasses.replace(base, length_bonus=2.0))
    for p, b in zip(plain, bonus, strict=True):
        assert len(b[0].tokens) >= len(p[0].tokens)


@pytest.mark.parametrize(
    "speeds, match",
    [((1.0,), "leave out 1.0"), ((3.0,), r"\[0.5, 2.0\]"), ((0.9, 0.9), "twice"), ("0.9", "not a string")],
)
def test_bad_tta_speeds(speeds: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecodingOptions(tta_speeds=speeds)  # type: ignore[arg-type]


def test_tta_options() -> None:
    assert DecodingOptions(tta_speeds=[0.9, 1.1]).tta_speeds == (0.9, 1.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beam search"):
        DecodingOptions(method="greedy", tta_speeds=(0.9,))
    assert parse_speeds("0.9,1.1") == (0.9, 1.1)
    assert parse_speeds("none") == () and parse_speeds("") == ()
    for bad in ("fast", "0.9,,1.1", "1.0"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            parse_speeds(bad)


def test_bundled_model_with_views(speech_dir: Path) -> None:
    """The real model on espeak-ng speech: three views give a transcript, n-best and word times within the
    audio; the original view alone is the plain decoding."""
    import asr

    model = asr.load_model()
    audio = load_audio(speech_dir / "utt0.wav")
    opts = DecodingOptions(beam_size=4, nbest=2)
    plain = model.transcribe(audio, opts)
    tta = model.transcribe(audio, dataclasses.replace(opts, tta_speeds=(0.9, 1.1)))
    assert tta.text and len(tta.alternatives) == 2
    assert tta.alternatives[0].score >= tta.alternatives[1].score
    assert all(math.isfinite(a.score) and 0 < a.confidence <= 1 for a in tta.alternatives)
    duration = len(audio) / 16000
    assert tta.words and all(0 <= w.start <= w.end <= duration + 1e-6 for w in tta.words)
    assert [w.word for w in tta.words] == tta.text.split()
    assert plain.text  # the plain decoding is untouched by the option's existence
    with pytest.raises(ValueError, match="encode_views"):
        from asr.transcribe import decode_encoded, encode_waveforms

        enc, lengths, _ = encode_waveforms(model, [audio])
        decode_encoded(model, enc, lengths, dataclasses.replace(opts, tta_speeds=(0.9,)))


def test_silence_and_short_audio_with_views() -> None:
    import asr

    model = asr.load_model()
    opts = DecodingOptions(beam_size=2, tta_speeds=(0.9, 1.1))
    for audio in (np.zeros(16000, dtype=np.float32), np.zeros(40, dtype=np.float32)):
        t = model.transcribe(audio, opts)
        assert isinstance(t.text, str) and t.duration == pytest.approx(len(audio) / 16000)
