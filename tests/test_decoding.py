"""CTC prefix scoring against brute force, greedy CTC, and joint CTC/attention beam search."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.decoder import AttentionDecoder, DecoderConfig
from asr.decoding import CTCPrefixScorer, DecodingOptions, Hypothesis, beam_search, ctc_greedy
from asr.tokenizer import CharTokenizer

BLANK, EOS = 0, 3  # a 4-symbol vocabulary: blank, two labels, and <sos/eos>
V, T = 4, 5


def collapse(path: tuple[int, ...], blank: int = 0) -> tuple[int, ...]:
    out: list[int] = []
    prev = None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def brute_force(log_probs: Tensor) -> dict[tuple[int, ...], float]:
    """Probability of every label sequence: sum over all ``V**T`` frame paths. ``log_probs (T, V)``."""
    p = log_probs.double().exp()
    seqs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(p.size(1)), repeat=p.size(0)):
        prob = math.prod(float(p[t, s]) for t, s in enumerate(path))
        key = collapse(path)
        seqs[key] = seqs.get(key, 0.0) + prob
    return seqs


def prefix_prob(seqs: dict[tuple[int, ...], float], prefix: tuple[int, ...]) -> float:
    return sum(p for s, p in seqs.items() if s[: len(prefix)] == prefix)


def scorer_psi(scorer: CTCPrefixScorer, utt: int, g: tuple[int, ...], cands: list[int]) -> Tensor:
    """Walk the scorer along ``g`` one label at a time, then score ``cands``: ``(K,)`` log-probs."""
    u = torch.tensor([utt])
    r = scorer.initial_state(u)
    last = torch.tensor([EOS])  # <sos> shares the id of <eos>
    for i, label in enumerate(g):
        r = scorer.extend(u, r, last, torch.tensor([i == 0]), torch.tensor([label]))
        last = torch.tensor([label])
    return scorer.score(u, r, last, torch.tensor([len(g) == 0]), torch.tensor([cands]))[0]


PREFIXES = [(), (1,), (2,), (1, 1), (1, 2), (2, 2, 1), (1, 2, 1), (1, 1, 1)]


@pytest.mark.parametrize("g", PREFIXES)
def test_prefix_scorer_matches_brute_force(g: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    lp = torch.randn(1, T, V, dtype=torch.float64).log_softmax(-1)
    seqs = brute_force(lp[0])
    scorer = CTCPrefixScorer(lp, torch.tensor([T]), BLANK, EOS)
    psi = scorer_psi(scorer, 0, g, [1, 2, EOS])
    for k, c in enumerate([1, 2]):
        expected = prefix_prob(seqs, (*g, c))
        assert math.exp(float(psi[k])) == pytest.approx(expected, rel=1e-9, abs=1e-300), (g, c)
    # <eos> scores the whole sequence g; torch's CTC loss agrees
    full = seqs.get(g, 0.0)
    assert math.exp(float(psi[2])) == pytest.approx(full, rel=1e-9, abs=1e-300)
    if g:
        nll = F.ctc_loss(
            lp[0].double(),
            torch.tensor([g]),
            torch.tensor([T]),
            torch.tensor([len(g)]),
            blank=BLANK,
            reduction="sum",
        )
        assert float(-nll) == pytest.approx(float(psi[2]), abs=1e-9)


def test_prefix_scorer_impossible_prefix_is_minus_infinity() -> None:
    """Three frames hold (1, 1) only as 1-blank-1: any longer prefix has probability exactly zero."""
    torch.manual_seed(4)
    lp = torch.randn(1, 3, V, dtype=torch.float64).log_softmax(-1)
    scorer = CTCPrefixScorer(lp, torch.tensor([3]), BLANK, EOS)
    psi = scorer_psi(scorer, 0, (1, 1), [1, 2, EOS])
    assert psi[:2].tolist() == [-math.inf, -math.inf]
    expected = float(lp[0, 0, 1] + lp[0, 1, BLANK] + lp[0, 2, 1])
    assert float(psi[2]) == pytest.approx(expected, abs=1e-9)


def test_prefix_scorer_batched_with_padding() -> None:
    torch.manual_seed(2)
    lengths = [5, 3, 4]
    lp = torch.randn(3, T, V, dtype=torch.float64).log_softmax(-1)
    lp_padded = lp.clone()
    for b, n in enumerate(lengths):
        lp_padded[b, n:] = torch.randn(
            T - n, V, dtype=torch.float64
        )  # garbage on padded frames must not matter
    scorer = CTCPrefixScorer(lp_padded, torch.tensor(lengths), BLANK, EOS)
    for b, n in enumerate(lengths):
        seqs = brute_force(lp[b, :n])
        for g in [(), (1,), (2, 1), (1, 1)]:
            psi = scorer_psi(scorer, b, g, [1, 2, EOS])
            for k, c in enumerate([1, 2]):
                assert math.exp(float(psi[k])) == pytest.approx(
                    prefix_prob(seqs, (*g, c)), rel=1e-9, abs=1e-300
                )
            assert math.exp(float(psi[2])) == pytest.approx(seqs.get(g, 0.0), rel=1e-9, abs=1e-300)


def peaky_posteriors(labels: list[int], t: int, seed: int) -> Tensor:
    """CTC-like log posteriors ``(t, V)``: mostly blank, each label spiking on two frames of its own."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, V, generator=g, dtype=torch.float64)
    logits[:, BLANK] += 16.0
    at = torch.linspace(10, t - 10, len(labels)).long()
    for frame, label in zip(at.tolist(), labels, strict=True):
        logits[frame : frame + 2, label] += 32.0
    return logits.log_softmax(-1)


def test_prefix_scorer_window_gives_the_full_sums() -> None:
    """On a long utterance each row's prefix scores are summed over a window of frames where its prefix
    ends (much shorter than the utterance), and equal the sums over every frame."""
    labels = [1, 2, 2, 1, 1, 2, 1, 2]
    lp = torch.stack([peaky_posteriors(labels, 160, 5), peaky_posteriors(labels[::-1], 160, 6)])
    lengths = torch.tensor([160, 130])  # the second utterance padded
    lp[1, 130:] = peaky_posteriors(labels, 30, 7)  # garbage on its padded frames
    windowed = CTCPrefixScorer(lp, lengths, BLANK, EOS)
    whole = CTCPrefixScorer(lp, lengths, BLANK, EOS)
    whole.window_margin = None
    utt = torch.tensor([0, 1])
    r = windowed.initial_state(utt)
    last = torch.full((2,), EOS)
    cands = torch.tensor([[1, 2, EOS]] * 2)
    for i in range(5):
        is_empty = torch.full((2,), i == 0)
        frames = windowed._window(utt, windowed._new_token_phi(r, is_empty)[2])
        assert frames is not None  # the window path is taken: at most half the frames
        got = windowed.score(utt, r, last, is_empty, cands)
        want = whole.score(utt, r, last, is_empty, cands)
        # what the window leaves out is at most T * exp(-margin) of the row's best phi: a likely candidate
        # (psi near that best) is off by about T * exp(-30) = 1e-11, an unlikely one (psi 12 nats below
        # it) by about T * exp(-18) = 2e-6
        assert torch.allclose(got, want, rtol=0, atol=1e-5), (i, got, want)
        assert torch.allclose(got.max(1).values, want.max(1).values, rtol=0, atol=1e-9)
        nxt = torch.tensor([labels[i], labels[::-1][i]])
        r = windowed.extend(utt, r, last, is_empty, nxt)
        last = nxt


def test_prefix_scorer_many_hypotheses_at_once() -> None:
    """Scoring N hypotheses of different utterances in one call equals scoring each alone."""
    torch.manual_seed(3)
    lp = torch.randn(2, T, V, dtype=torch.float64).log_softmax(-1)
    scorer = CTCPrefixScorer(lp, torch.tensor([5, 4]), BLANK, EOS)
    utt = torch.tensor([0, 1, 1])
    r = scorer.initial_state(utt)
    cands = torch.tensor([[1, 2, EOS], [2, 1, EOS], [1, EOS, 2]])
    psi = scorer.score(utt, r, torch.full((3,), EOS), torch.ones(3, dtype=torch.bool), cands)
    r_new = scorer.extend(utt, r, torch.full((3,), EOS), torch.ones(3, dtype=torch.bool), cands[:, 0])
    assert psi.shape == (3, 3) and r.shape == r_new.shape == (3, 2, T)
    for i in range(3):
        alone = scorer_psi(scorer, int(utt[i]), (), cands[i].tolist())
        torch.testing.assert_close(psi[i], alone)


def test_ctc_greedy_merges_repeats_and_drops_blanks() -> None:
    path = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0], [2, 0, 0, 2, 1, 1, 1, 1]])
    lp = F.one_hot(path, V).float().log()
    assert ctc_greedy(lp, torch.tensor([8, 4])) == [[1, 1, 2], [2, 2]]


# ---------------------------------------------------------------- beam search


class CTCModel(nn.Module):
    """A stand-in for ASRModel whose "encoder output" holds the CTC logits directly."""

    def __init__(self, vocab: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tokenizer = CharTokenizer(list("ABCDEF")[: vocab - 3])
        assert self.tokenizer.vocab_size == vocab
        config = DecoderConfig(
            embed_dim=8, hidden_size=16, attention_dim=8, location_channels=2, location_kernel=3, dropout=0.0
        )
        self.decoder = AttentionDecoder(vocab, vocab, config, self.tokenizer.sos_id, self.tokenizer.eos_id)
        self.eval()

    def ctc_log_probs(self, enc: Tensor) -> Tensor:
        return enc.float().log_softmax(-1)


def peaky(paths: list[list[int]], vocab: int = 8, sharp: float = 8.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """CTC logits whose best path is ``paths`` (padded with blanks), with random runner-ups."""
    g = torch.Generator().manual_seed(seed)
    t = max(map(len, paths))
    logits = torch.randn(len(paths), t, vocab, generator=g)
    for b, p in enumerate(paths):
        logits[b, torch.arange(len(p)), torch.tensor(p)] += sharp
    logits[:, :, vocab - 1] -= 20.0  # <eos> is never a CTC output
    return logits, torch.tensor([len(p) for p in paths])


PATHS = [[0, 1, 1, 0, 2, 0, 2, 3, 3, 0, 4, 0], [5, 0, 1, 2, 2, 0, 0, 1], [0, 3, 0, 0, 3, 4, 5, 5, 0, 1]]


@torch.inference_mode()
def test_beam_one_ctc_only_equals_greedy() -> None:
    model = CTCModel()
    enc, lengths = peaky(PATHS)
    greedy = ctc_greedy(model.ctc_log_probs(enc), lengths)
    assert greedy[0] == [1, 2, 2, 3, 4]  # the test data are what they claim
    opts = DecodingOptions(beam_size=1, ctc_weight=1.0, nbest=1)
    hyps = beam_search(model, enc, lengths, opts)
    assert [list(h[0].tokens) for h in hyps] == greedy
    wide = beam_search(model, enc, lengths, dataclasses.replace(opts, beam_size=5))
    assert [list(h[0].tokens) for h in wide] == greedy


def teacher_forced_score(model: CTCModel, enc: Tensor, length: int, tokens: tuple[int, ...]) -> float:
    tok = model.tokenizer
    ys_in = torch.tensor([[tok.sos_id, *tokens]])
    logits = model.decoder(enc[None, :length], torch.tensor([length]), ys_in)
    lp = logits.double().log_softmax(-1)[0]
    out = [*tokens, tok.eos_id]
    return float(sum(lp[i, y] for i, y in enumerate(out)))


def ctc_score(model: CTCModel, enc: Tensor, length: int, tokens: tuple[int, ...]) -> float:
    lp = model.ctc_log_probs(enc[:length]).double()
    return float(
        -F.ctc_loss(
            lp,
            torch.tensor([tokens]),
            torch.tensor([length]),
            torch.tensor([len(tokens)]),
            blank=0,
            reduction="sum",
        )
    )


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
@torch.inference_mode()
def test_beam_search_scores_are_the_model_scores(ctc_weight: float) -> None:
    """Each hypothesis' parts equal teacher-forced attention and full CTC scores; the total is their mix."""
    model = CTCModel(seed=1)
    enc, lengths = peaky(PATHS, sharp=3.0, seed=1)
    opts = DecodingOptions(beam_size=4, nbest=3, ctc_weight=ctc_weight)
    for b, hyps in enumerate(beam_search(model, enc, lengths, opts)):
        n = int(lengths[b])
        assert 1 <= len(hyps) <= 3
        for h in hyps:
            assert all(0 < t < model.tokenizer.eos_id for t in h.tokens)  # no blank, no <eos> inside
            assert len(h.tokens) <= n
            expected = 0.0
            if ctc_weight < 1:
                assert h.att_score == pytest.approx(
                    teacher_forced_score(model, enc[b], n, h.tokens), abs=1e-4
                )
                expected += (1 - ctc_weight) * h.att_score
            if ctc_weight > 0:
                assert h.ctc_score == pytest.approx(ctc_score(model, enc[b], n, h.tokens), abs=1e-4)
                expected += ctc_weight * h.ctc_score
            assert h.score == pytest.approx(expected, abs=1e-4)
    if ctc_weight == 1.0:  # the prefix search finds a label sequence at least as likely as the best path's
        greedy = ctc_greedy(model.ctc_log_probs(enc), lengths)
        wide = dataclasses.replace(opts, beam_size=16)  # narrower beams make search errors on this input
        for b, hyps in enumerate(beam_search(model, enc, lengths, wide)):
            n = int(lengths[b])
            assert hyps[0].ctc_score >= ctc_score(model, enc[b], n, tuple(greedy[b])) - 1e-9


@torch.inference_mode()
def test_nbest_sorted_and_distinct() -> None:
    model = CTCModel(seed=2)
    enc, lengths = peaky(PATHS, sharp=1.0, seed=2)  # flat posteriors: many competing hypotheses
    for normalize in (False, True):
        opts = DecodingOptions(beam_size=6, nbest=5, ctc_weight=0.5, normalize_length=normalize)
        for hyps in beam_search(model, enc, lengths, opts):
            assert len(hyps) == 5
            scores = [h.score for h in hyps]
            assert scores == sorted(scores, reverse=True)
            assert all(math.isfinite(s) for s in scores)
            assert len({h.tokens for h in hyps}) == 5


@pytest.mark.parametrize("ctc_weight", [0.0, 0.4, 1.0])
@torch.inference_mode()
def test_batched_beam_search_equals_one_at_a_time(ctc_weight: float) -> None:
    model = CTCModel(seed=3)
    enc, lengths = peaky(PATHS, sharp=2.0, seed=3)
    opts = DecodingOptions(beam_size=3, nbest=2, ctc_weight=ctc_weight)
    batched = beam_search(model, enc, lengths, opts)
    for b in range(enc.size(0)):
        n = int(lengths[b])
        alone = beam_search(model, enc[b : b + 1, :n], lengths[b : b + 1], opts)[0]
        assert [h.tokens for h in batched[b]] == [h.tokens for h in alone]
        assert [h.score for h in batched[b]] == pytest.approx([h.score for h in alone], abs=1e-6)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
@torch.inference_mode()
def test_forced_prefixes_start_every_hypothesis_and_are_scored_as_the_model_scores(ctc_weight: float) -> None:
    """Prefixes of different lengths in one batch (one empty): every hypothesis starts with its own, its
    scores are the model's scores of the whole sequence, and forcing a search's best hypothesis whole gives
    it back with the same score. Batched equals one at a time."""
    model = CTCModel(seed=1)
    enc, lengths = peaky(PATHS, sharp=3.0, seed=1)
    opts = DecodingOptions(beam_size=4, nbest=2, ctc_weight=ctc_weight)
    free = beam_search(model, enc, lengths, opts)
    whole = [h[0].tokens for h in free]
    again = beam_search(model, enc, lengths, opts, prefixes=whole)
    for b in range(enc.size(0)):
        assert again[b][0].tokens == whole[b]
        assert again[b][0].score == pytest.approx(free[b][0].score, abs=1e-6)
    prefixes = [whole[0][:2], (), whole[2][:1]]
    forced = beam_search(model, enc, lengths, opts, prefixes=prefixes)
    for b, hyps in enumerate(forced):
        n = int(lengths[b])
        alone = beam_search(model, enc[b : b + 1, :n], lengths[b : b + 1], opts, prefixes=[prefixes[b]])[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-6)
        for h in hyps:
            assert h.tokens[: len(prefixes[b])] == prefixes[b]
            expected = 0.0
            if ctc_weight < 1:
                expected += (1 - ctc_weight) * teacher_forced_score(model, enc[b], n, h.tokens)
            if ctc_weight > 0:
                expected += ctc_weight * ctc_score(model, enc[b], n, h.tokens)
            assert h.score == pytest.approx(expected, abs=1e-4)
    assert [h[0].tokens for h in forced][1] == whole[1]  # no prefix: the free search


@torch.inference_mode()
def test_forced_prefixes_with_a_fused_scorer_are_searched_by_prefix_length() -> None:
    """Phrase hints (a fused scorer, whose states are selected but not merged) with prefixes of different
    lengths: the same hypotheses as one utterance at a time."""
    model = CTCModel(seed=3)
    enc, lengths = peaky(PATHS, sharp=2.0, seed=3)
    opts = DecodingOptions(beam_size=3, nbest=2, ctc_weight=0.4, phrases=("ab",), phrase_boost=2.0)
    prefixes = [(1,), (), (3, 4)]
    batched = beam_search(model, enc, lengths, opts, prefixes=prefixes)
    for b in range(enc.size(0)):
        n = int(lengths[b])
        alone = beam_search(model, enc[b : b + 1, :n], lengths[b : b + 1], opts, prefixes=[prefixes[b]])[0]
        assert [h.tokens for h in batched[b]] == [h.tokens for h in alone]
        assert all(h.tokens[: len(prefixes[b])] == prefixes[b] for h in batched[b])
    with pytest.raises(ValueError, match="2 prefixes for a batch of 3"):
        beam_search(model, enc, lengths, opts, prefixes=prefixes[:2])


@pytest.mark.parametrize("ctc_weight", [0.0, 0.4, 1.0])
@torch.inference_mode()
def test_early_stop_keeps_the_nbest(ctc_weight: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping once no live hypothesis can enter the n-best gives exactly the n-best of a full search."""
    import asr.decoding as decoding

    model = CTCModel(seed=2)
    enc, lengths = peaky(PATHS, sharp=1.0, seed=2)  # flat posteriors: hypotheses end at many lengths
    opts = DecodingOptions(beam_size=6, nbest=2, ctc_weight=ctc_weight)
    early = beam_search(model, enc, lengths, opts)
    calls = []
    monkeypatch.setattr(decoding, "_cannot_improve", lambda *a: calls.append(a) and False)
    monkeypatch.setattr(decoding, "_end_detected", lambda *a: False)
    full = beam_search(model, enc, lengths, opts)
    assert calls, "the early-stop test never ran"
    for a, b in zip(early, full, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-9)


@torch.inference_mode()
def test_beam_search_with_beam_wider_than_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    """More beam slots than live extensions: the empty slots must stay dead, never win through NaNs."""
    topk = torch.Tensor.topk
    nan_inputs = []

    def checked_topk(self: Tensor, *args: object, **kwargs: object) -> object:
        nan_inputs.append(bool(self.isnan().any()))
        return topk(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.Tensor, "topk", checked_topk)
    model = CTCModel(vocab=4, seed=4)
    enc, lengths = peaky([[1, 0, 2], [2, 2, 0, 1, 1]], vocab=4, sharp=6.0, seed=4)
    for lam in (0.0, 0.5, 1.0):
        opts = DecodingOptions(beam_size=12, nbest=3, ctc_weight=lam)
        for b, hyps in enumerate(beam_search(model, enc, lengths, opts)):
            assert hyps and all(math.isfinite(h.score) for h in hyps)
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
            assert len({h.tokens for h in hyps}) == len(hyps)
            if lam == 1.0:
                assert list(hyps[0].tokens) == ctc_greedy(model.ctc_log_probs(enc), lengths)[b]
    assert nan_inputs and not any(nan_inputs)  # topk ranks NaN above everything


@torch.inference_mode()
def test_max_length_and_length_bonus() -> None:
    model = CTCModel(seed=5)
    enc, lengths = peaky(PATHS, sharp=0.5, seed=5)
    short = beam_search(
        model, enc, lengths, DecodingOptions(beam_size=3, ctc_weight=0.0, max_length_ratio=0.2)
    )
    for b, hyps in enumerate(short):
        assert len(hyps[0].tokens) <= max(1, int(0.2 * int(lengths[b])))
    plain = beam_search(model, enc, lengths, DecodingOptions(beam_size=3, ctc_weight=0.0))
    long = beam_search(model, enc, lengths, DecodingOptions(beam_size=3, ctc_weight=0.0, length_bonus=5.0))
    assert sum(len(h[0].tokens) for h in long) >= sum(len(h[0].tokens) for h in plain)
    assert any(len(h[0].tokens) > 0 for h in long)


def test_lm_weight_without_lm_is_an_error() -> None:
    model = CTCModel()
    enc, lengths = peaky(PATHS)
    with pytest.raises(ValueError, match="language model"):
        beam_search(model, enc, lengths, DecodingOptions(lm_weight=0.5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "viterbi"}, "greedy"),
        ({"beam_size": 0}, "beam_size"),
        ({"ctc_weight": 1.5}, "ctc_weight"),
        ({"ctc_weight": -0.1}, "ctc_weight"),
        ({"lm_weight": -1.0}, "lm_weight"),
        ({"nbest": 0}, "nbest"),
        ({"nbest": 11, "beam_size": 10}, "nbest"),
        ({"max_length_ratio": 0.0}, "max_length_ratio"),
        ({"eos_threshold": 0.5}, "eos_threshold"),
    ],
)
def test_bad_decoding_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecodingOptions(**kwargs)  # type: ignore[arg-type]


def test_hypothesis_is_immutable() -> None:
    h = Hypothesis((1, 2), -1.0)
    with pytest.raises(AttributeError):
        h.score = 0.0  # type: ignore[misc]


def test_cannot_improve_compares_with_the_nth_best_finished() -> None:
    from asr.decoding import _cannot_improve

    hyps = [Hypothesis((1,), -2.0), Hypothesis((2,), -5.0)]
    assert not _cannot_improve(hyps[:1], -9.0, 2)  # fewer finished than asked for: keep searching
    assert _cannot_improve(hyps, -5.5, 2) and not _cannot_improve(hyps, -4.0, 2)
    assert _cannot_improve(hyps, -2.5, 1) and not _cannot_improve(hyps, -1.0, 1)
