"""The growing search (asr.growing_search): the joint beam search of an utterance given its encoder frames
chunk by chunk, against the offline search and exact CTC prefix states."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_decoding import PATHS, CTCModel, peaky

from asr.decoding import CTCPrefixScorer, DecodingOptions, beam_search, ctc_greedy
from asr.growing_search import GrowingSearch, UtteranceSearch, _carry, token_limit

OPTS = DecodingOptions(beam_size=4, nbest=3)


def chunks(enc: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(enc.split(size))


def test_token_limit_counts_tokens_heard_well_before_the_frontier() -> None:
    frames = [1, 3, 4, 9, 12]
    assert token_limit(frames, 14, guard=4, margin=1) == 3  # 1, 3, 4 and 9 are before frame 10
    assert token_limit(frames, 14, guard=0, margin=0) == 5
    assert token_limit(frames, 4, guard=4, margin=1) == 0  # never negative
    assert token_limit([], 100, guard=4, margin=1) == 0


def test_a_grown_scorer_equals_one_over_all_frames() -> None:
    enc, _ = peaky(PATHS[:1])
    lp = CTCModel().ctc_log_probs(enc)
    whole = CTCPrefixScorer(lp, torch.tensor([enc.size(1)]), blank=0, eos=7)
    grown = CTCPrefixScorer(lp[:, :5], torch.tensor([5]), blank=0, eos=7)
    grown.grow(lp[:, 5:9].double().transpose(1, 2))
    grown.grow(lp[:, 9:].double().transpose(1, 2))
    for name in ("x", "blank_cum", "blank_prev"):
        assert torch.allclose(getattr(grown, name), getattr(whole, name)), name


def test_a_carried_prefix_state_is_exact_when_its_last_token_does_not_start_again() -> None:
    """Carrying a prefix's CTC state over new frames leaves out only paths in which its last token starts
    anew there: where that token cannot occur, the carried state is the exact one."""
    enc, _ = peaky([[0, 1, 1, 0, 2, 0, 0, 0, 0, 0]])
    enc[0, 6:, 2] = -1e4  # token 2 (the prefix's last) never occurs after frame 5
    lp = CTCModel().ctc_log_probs(enc)
    utt = torch.tensor([0])

    def state(scorer: CTCPrefixScorer, prefix: tuple[int, ...]) -> torch.Tensor:
        r, last = scorer.initial_state(utt), torch.tensor([-1])
        for i, tok in enumerate(prefix):
            r = scorer.extend(utt, r, last, torch.tensor([i == 0]), torch.tensor([tok]))
            last = torch.tensor([tok])
        return r

    whole = state(CTCPrefixScorer(lp, torch.tensor([10]), 0, 7), (1, 2))
    early = state(CTCPrefixScorer(lp[:, :6], torch.tensor([6]), 0, 7), (1, 2))
    carried = _carry(early, lp[0, 6:].double().T, torch.tensor([2]), blank=0, t_old=6)
    assert torch.allclose(carried[:, 1], whole[:, 1], atol=1e-9)  # ends in a blank
    assert bool((carried[:, 0, 6:] < -1e3).all() and (whole[:, 0, 6:] < -1e3).all())


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
@torch.inference_mode()
def test_a_search_that_takes_no_step_before_the_end_is_the_offline_search(ctc_weight: float) -> None:
    model = CTCModel(seed=2)
    enc, lengths = peaky(PATHS[:1])
    opts = dataclasses.replace(OPTS, ctc_weight=ctc_weight)
    want = beam_search(model, enc, lengths, opts)[0]
    search = GrowingSearch(model, opts)
    for c in chunks(enc[0], 3):
        search.grow(c, 0)
    got = search.finish()
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-6)


@torch.inference_mode()
def test_steps_stop_at_the_limit_and_hold_back_the_end() -> None:
    model = CTCModel(seed=2)  # one whose offline search finds the path (a random decoder may not)
    enc, _ = peaky(PATHS[:1])
    search = GrowingSearch(model, OPTS)
    search.grow(enc[0, :8], 3)
    assert search.steps == 3 and search._beam is not None
    assert search._beam.yseq.size(1) == 4  # <sos> and three tokens, none of them <eos>
    assert not any(search._search.finished[0])  # type: ignore[union-attr]
    search.grow(enc[0, 8:], 3)  # a limit already reached: no step
    assert search.steps == 3
    hyps = search.finish()
    assert hyps[0].tokens and search.done
    with pytest.raises(RuntimeError, match="finished"):
        search.grow(enc[0, :2], 5)


@torch.inference_mode()
def test_a_ctc_only_growing_search_finds_the_best_path() -> None:
    """With CTC alone and peaky posteriors the search must find greedy CTC's path, limits or not: the
    carried prefix states lose nothing it needs."""
    model = CTCModel()
    enc, lengths = peaky(PATHS)
    greedy = ctc_greedy(model.ctc_log_probs(enc), lengths)
    opts = DecodingOptions(beam_size=3, ctc_weight=1.0)
    for b, n in enumerate(lengths.tolist()):
        labels = model.ctc_log_probs(enc[b, :n]).argmax(-1).tolist()
        frames = [t for t, x in enumerate(labels) if x != 0 and (t == 0 or x != labels[t - 1])]
        search = UtteranceSearch(model, opts, None, (), None)
        assert list(search.finish(chunks(enc[b, :n], 2), frames, n)[0].tokens) == greedy[b]


@torch.inference_mode()
def test_an_utterance_search_depends_on_its_chunks_not_on_when_they_came() -> None:
    model = CTCModel(seed=4)
    enc, _ = peaky(PATHS[:1])
    parts = chunks(enc[0], 2)
    frames = [1, 2, 4, 6, 7, 10]
    one_by_one = UtteranceSearch(model, OPTS, None, (), None)
    for k in range(1, len(parts) + 1):
        one_by_one.catch_up(parts[:k], frames)
    assert one_by_one.started
    at_the_end = UtteranceSearch(model, OPTS, None, (), None)
    a = one_by_one.finish(parts, frames, 12)
    b = at_the_end.finish(parts, frames, 12)
    assert [(h.tokens, round(h.score, 6)) for h in a] == [(h.tokens, round(h.score, 6)) for h in b]
    # a search that went past the frames its final keeps (an energy endpoint heard late) starts again
    went_on = UtteranceSearch(model, OPTS, None, (), None)
    went_on.catch_up(parts, frames)
    kept = UtteranceSearch(model, OPTS, None, (), None)
    a, b = went_on.finish(parts, frames, 7), kept.finish(parts, frames, 7)
    assert [(h.tokens, round(h.score, 6)) for h in a] == [(h.tokens, round(h.score, 6)) for h in b]
    again = went_on.finish(parts, frames, 7)  # decoded again (a retry): the same
    assert [h.tokens for h in again] == [h.tokens for h in a]


@torch.inference_mode()
def test_a_search_that_took_silence_past_the_kept_frames_rewinds_to_them() -> None:
    """An energy endpoint keeps the utterance to the chunk after its speech's tail, heard chunks later: a
    search that took those later chunks in without a step is rewound to the kept frames, exactly, rather
    than searched again."""
    model = CTCModel(seed=6)
    enc, _ = peaky(PATHS[:1])
    parts = chunks(enc[0], 2)  # 6 chunks of 2 frames
    frames = [1, 3]  # the tokens the limits release; none after frame 3
    grown = UtteranceSearch(model, OPTS, None, (), None)
    grown.catch_up(parts, frames)
    kept = grown.search
    assert kept.steps > 0 and kept.stepped_at <= 8 < kept.frames
    a = grown.finish(parts, frames, 8)
    assert grown.search is kept  # rewound, not started again
    b = UtteranceSearch(model, OPTS, None, (), None).finish(parts, frames, 8)
    assert [(h.tokens, round(h.score, 9)) for h in a] == [(h.tokens, round(h.score, 9)) for h in b]
    stepped = GrowingSearch(model, OPTS)
    stepped.grow(enc[0, :8], 2)
    with pytest.raises(ValueError, match="cannot rewind"):
        stepped.rewind(4)


@torch.inference_mode()
def test_a_context_and_its_prefix_come_before_the_utterance() -> None:
    model = CTCModel(seed=5)
    enc, _ = peaky(PATHS[:1])
    context, own = enc[0, :6], enc[0, 6:]
    prefix = (1, 2)
    search = UtteranceSearch(model, OPTS, None, prefix, context, 1)
    hyps = search.finish(chunks(own, 2), [0, 2, 4], own.size(0))
    assert all(h.tokens[:2] == prefix for h in hyps)
    offline = beam_search(model, enc, torch.tensor([enc.size(1)]), OPTS, prefixes=[prefix])[0]
    assert hyps[0].tokens[:2] == offline[0].tokens[:2]


def test_a_growing_search_refuses_tta_and_greedy() -> None:
    model = CTCModel()
    with pytest.raises(ValueError, match="beam search"):
        GrowingSearch(model, DecodingOptions(method="greedy"))
    with pytest.raises(ValueError, match="beam search"):
        GrowingSearch(model, DecodingOptions(tta_speeds=(0.9,)))
    with pytest.raises(ValueError, match="no encoder frames"):
        GrowingSearch(model, OPTS).finish()
