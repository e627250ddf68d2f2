"""The n-gram language model and shallow fusion in beam search."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from asr.decoder import AttentionDecoder, DecoderConfig
from asr.decoding import DecodingOptions, beam_search
from asr.lm import NGramLM
from asr.tokenizer import CharTokenizer

TOK = CharTokenizer.default()
TEXTS = ["THE CAT SAT", "A CAT RAN", "MY CAT", "THE CAT IS BLACK", "CATS AND DOGS", "THE DOG SAT"]


def test_distributions_are_normalised_and_favour_the_training_text() -> None:
    lm = NGramLM.train(TEXTS, TOK, order=4)
    for history in [(), (TOK.sos_id,) * 3, tuple(TOK.encode("THE C")), tuple(TOK.encode("QQQ"))]:
        logp = lm.distribution(history)
        assert logp.shape == (TOK.vocab_size,)
        assert logp[TOK.blank_id] == -math.inf
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    assert lm.log_prob(TOK.encode("THE CAT")) > lm.log_prob(TOK.encode("THE CUT"))
    after = lm.distribution(tuple(TOK.encode("THE C")))
    assert int(after.argmax()) == TOK.encode("A")[0]
    assert lm.perplexity(TEXTS, TOK) < lm.perplexity(["XQZ JVW"], TOK)


@pytest.mark.parametrize("order", [1, 2, 6])
def test_any_order_is_normalised(order: int) -> None:
    lm = NGramLM.train(TEXTS, TOK, order=order)
    for history in [(), tuple(TOK.encode("THE CAT IS BL")), (TOK.sos_id,) * 8]:
        assert float(lm.distribution(history).exp().sum()) == pytest.approx(1.0, abs=1e-9)
    assert math.isfinite(lm.log_prob(TOK.encode("A DOG RAN")))


def test_protocol_state_follows_the_tokens() -> None:
    lm = NGramLM.train(TEXTS, TOK, order=3)
    state = lm.init_state(2, torch.device("cpu"))
    sos = torch.tensor([TOK.sos_id, TOK.sos_id])
    logp, state = lm.score(sos, state)
    assert logp.shape == (2, TOK.vocab_size)
    torch.testing.assert_close(logp[0].double(), lm.distribution((TOK.sos_id,) * 2), check_dtype=False)
    c, t = TOK.encode("CT")
    logp, state = lm.score(torch.tensor([c, t]), state)
    state = lm.select(state, torch.tensor([1, 1, 0]))
    assert state == [(TOK.sos_id, t), (TOK.sos_id, t), (TOK.sos_id, c)]
    assert len(lm.init_state(3, torch.device("cpu"))) == 3


def test_save_load_round_trip(tmp_path: Path) -> None:
    lm = NGramLM.train(TEXTS, TOK, order=4)
    path = tmp_path / "lm.pt"
    lm.save(path)
    again = NGramLM.load(path)  # torch.load(weights_only=True) inside
    assert again.order == 4 and again.counts == lm.counts
    ids = TOK.encode("THE CAT SAT ON THE MAT")
    assert again.log_prob(ids) == pytest.approx(lm.log_prob(ids))
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an n-gram LM"):
        NGramLM.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        NGramLM.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="order"):
        NGramLM.train(TEXTS, TOK, order=0)
    with pytest.raises(ValueError, match="does not match"):
        lm.check_tokenizer(CharTokenizer(list("AB")))


class CTCModel(nn.Module):
    """Stand-in ASR model: the "encoder output" holds CTC logits over the default characters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokenizer = TOK
        v = TOK.vocab_size
        config = DecoderConfig(
            embed_dim=4, hidden_size=8, attention_dim=4, location_channels=2, location_kernel=3
        )
        self.decoder = AttentionDecoder(v, v, config, TOK.sos_id, TOK.eos_id).eval()

    def ctc_log_probs(self, enc: Tensor) -> Tensor:
        return enc.float().log_softmax(-1)


def ambiguous_cat() -> tuple[Tensor, Tensor]:
    """Frames that read "C ? T" where ? is U slightly more often than A."""
    frames: list[dict[str, float]] = [
        {"": 5},
        {"C": 5},
        {"": 5},
        {"U": 3.2, "A": 3.0},
        {"": 5},
        {"T": 5},
        {"": 5},
    ]
    logits = torch.zeros(1, len(frames), TOK.vocab_size)
    for t, peaks in enumerate(frames):
        for ch, val in peaks.items():
            logits[0, t, TOK.encode(ch)[0] if ch else TOK.blank_id] = val
    return logits, torch.tensor([len(frames)])


@torch.inference_mode()
def test_shallow_fusion_moves_towards_the_lm() -> None:
    model = CTCModel()
    enc, lengths = ambiguous_cat()
    lm = NGramLM.train(TEXTS, TOK, order=4)
    opts = DecodingOptions(beam_size=4, ctc_weight=1.0)
    plain = beam_search(model, enc, lengths, opts)[0][0]
    assert TOK.decode(plain.tokens) == "CUT"
    fused = beam_search(
        model, enc, lengths, DecodingOptions(beam_size=4, ctc_weight=1.0, lm_weight=0.5), lm=lm
    )[0][0]
    assert TOK.decode(fused.tokens) == "CAT"
    assert fused.lm_score == pytest.approx(lm.log_prob(list(fused.tokens)), abs=1e-5)
    unused = beam_search(model, enc, lengths, opts, lm=lm)[0]  # lm_weight 0: the LM must not matter
    assert [h.tokens for h in unused] == [plain.tokens]
    assert unused[0].score == pytest.approx(plain.score)


@torch.inference_mode()
def test_lm_with_a_different_vocabulary_is_refused() -> None:
    model = CTCModel()
    enc, lengths = ambiguous_cat()
    small = CharTokenizer(list("CAT"))
    lm = NGramLM.train(["CAT"], small, order=2)
    with pytest.raises(ValueError, match="log-probs per step"):
        beam_search(model, enc, lengths, DecodingOptions(beam_size=2, ctc_weight=1.0, lm_weight=0.5), lm=lm)
