"""Attention decoder: teacher forcing equals stepping, padding independence, loss and model forward."""

from __future__ import annotations

import pytest
import torch

from asr.decoder import AttentionDecoder, DecoderConfig
from asr.encoder import EncoderConfig
from asr.features import FeatureConfig
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer

V, D = 9, 6
CONFIG = DecoderConfig(
    embed_dim=5,
    hidden_size=7,
    num_layers=2,
    attention_dim=4,
    location_channels=3,
    location_kernel=5,
    dropout=0.0,
    label_smoothing=0.0,
)


def make_decoder(seed: int = 0) -> AttentionDecoder:
    torch.manual_seed(seed)
    return AttentionDecoder(V, D, CONFIG, sos_id=V - 1, eos_id=V - 1).eval()


def test_teacher_forcing_equals_step_by_step() -> None:
    dec = make_decoder()
    enc, lengths = torch.randn(2, 11, D), torch.tensor([11, 6])
    ys_in = torch.tensor([[V - 1, 2, 3, 4], [V - 1, 5, 5, 1]])
    with torch.no_grad():
        logits = dec(enc, lengths, ys_in)
        assert logits.shape == (2, 4, V)
        memory, state = dec.prepare(enc, lengths)
        for u in range(4):
            step_logits, state = dec.step(ys_in[:, u], state, memory)
            torch.testing.assert_close(step_logits, logits[:, u])
            torch.testing.assert_close(state.attention.sum(1), torch.ones(2))
            assert bool((state.attention[1, 6:] == 0).all())  # no attention on padded frames


def steps(dec: AttentionDecoder, enc: torch.Tensor, lengths: torch.Tensor, tokens: list[list[int]]) -> list:
    memory, state = dec.prepare(enc, lengths)
    out = []
    for column in zip(*tokens, strict=True):
        logits, state = dec.step(torch.tensor(column), state, memory)
        out.append((logits, *state))
    return out


def test_repacked_steps_equal_the_modules_and_follow_weight_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside autograd a step runs on repacked weights (two LSTM layers here): the same logits and states
    as ``nn.LSTMCell`` and ``nn.Conv1d``, with padding; the repacking is redone when a weight changes."""
    dec = make_decoder(3)
    enc, lengths = torch.randn(3, 13, D), torch.tensor([13, 9, 4])
    tokens = [[V - 1, 2, 3, 4, 0], [V - 1, 5, 5, 1, 2], [V - 1, 7, 6, 6, 6]]

    def compare() -> None:
        with torch.inference_mode():
            fast = steps(dec, enc, lengths, tokens)
            monkeypatch.setattr(AttentionDecoder, "packed_steps", False)
            slow = steps(dec, enc, lengths, tokens)
            monkeypatch.setattr(AttentionDecoder, "packed_steps", True)
        for a, b in zip(fast, slow, strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)

    compare()
    packed = dec._packed
    with torch.no_grad():
        dec.cells[1].weight_hh.mul_(1.5)
        dec.attention.loc_conv.weight.add_(0.3)
    compare()
    assert dec._packed is not packed  # rebuilt for the new weights
    with torch.inference_mode():
        steps(dec, enc, lengths, tokens)
    assert dec._packed.source == type(packed).key(dec)


@pytest.mark.parametrize("packed", [True, False])
def test_a_beam_shares_its_utterances_memory(monkeypatch: pytest.MonkeyPatch, packed: bool) -> None:
    """Rows in blocks of ``g`` hypotheses per utterance over a memory of one row per utterance: the same
    steps as over the memory copied to every row; a row count that is no multiple is refused."""
    monkeypatch.setattr(AttentionDecoder, "packed_steps", packed)
    dec = make_decoder(4)
    enc, lengths, g = torch.randn(2, 9, D), torch.tensor([9, 5]), 3
    tokens = torch.randint(0, V - 1, (4, 2 * g))
    with torch.inference_mode():
        memory, state = dec.prepare(enc, lengths)
        copied, state = dec.prepare(enc.repeat_interleave(g, 0), lengths.repeat_interleave(g))
        shared_state = state
        for column in tokens:
            a, state = dec.step(column, state, copied)
            b, shared_state = dec.step(column, shared_state, memory)
            torch.testing.assert_close(b, a)
            torch.testing.assert_close(shared_state.attention, state.attention)
        with pytest.raises(ValueError, match="5 decoder rows do not split into blocks for 2 utterances"):
            dec.step(tokens[0, :5], state.index_select(torch.arange(5)), memory)


def test_padding_does_not_change_decoder_output() -> None:
    dec = make_decoder(1)
    enc, lengths = torch.randn(3, 13, D), torch.tensor([13, 4, 9])
    ys_in = torch.randint(1, V - 1, (3, 5))
    with torch.no_grad():
        batched = dec(enc, lengths, ys_in)
        for i, n in enumerate(lengths.tolist()):
            single = dec(enc[i : i + 1, :n], lengths[i : i + 1], ys_in[i : i + 1])
            torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-5)


def test_state_index_select_reorders_hypotheses() -> None:
    dec = make_decoder(2)
    memory, state = dec.prepare(torch.randn(2, 5, D), torch.tensor([5, 3]))
    index = torch.tensor([1, 1, 0])
    m, s = memory.index_select(index), state.index_select(index)
    assert m.enc.shape == (3, 5, D) and s.h.shape == (2, 3, CONFIG.hidden_size)
    torch.testing.assert_close(s.attention[0], state.attention[1])
    assert m.mask[:2, 3:].sum() == 0


def test_loss_ignores_padding_and_reports_accuracy() -> None:
    dec = make_decoder()
    ys_out = torch.tensor([[1, 2, -1], [3, -1, -1]])
    logits = torch.full((2, 3, V), -10.0)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[1, 0, 4] = 10.0  # the last valid token is wrong
    logits[:, 2] = torch.randn(2, V) * 100  # padding: must not count
    loss, acc = dec.loss(logits, ys_out)
    assert acc.item() == pytest.approx(2 / 3)
    assert loss.item() == pytest.approx(
        20.0 / 2, rel=1e-4
    )  # one wrong token costs ~20 nats, over 2 utterances


@pytest.mark.parametrize("kwargs", [{"location_kernel": 4}, {"sampling_prob": 1.0}, {"sampling_prob": -0.1}])
def test_bad_decoder_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DecoderConfig(**kwargs)  # type: ignore[arg-type]


def tiny_model(ctc_weight: float = 0.3) -> ASRModel:
    torch.manual_seed(0)
    config = ModelConfig(
        features=FeatureConfig(n_mels=10),
        encoder=EncoderConfig(input_dim=10, conv_channels=2, hidden_size=6, num_layers=2, dropout=0.0),
        decoder=DecoderConfig(
            embed_dim=4, hidden_size=6, attention_dim=4, location_channels=2, location_kernel=3
        ),
        ctc_weight=ctc_weight,
    )
    return ASRModel(config, CharTokenizer.default())


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
def test_model_forward_loss_and_stats(ctc_weight: float) -> None:
    model = tiny_model(ctc_weight)
    feats, feat_lengths = torch.randn(2, 40, 10), torch.tensor([40, 25])
    tok = model.tokenizer
    ids = [tok.encode("HI"), tok.encode("YOU")]
    targets = torch.tensor([[*ids[0], -1], ids[1]])
    loss, stats = model(feats, feat_lengths, targets, torch.tensor([2, 3]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert stats["loss"] == pytest.approx(loss.item())
    assert ("ctc" in stats) == (ctc_weight > 0) and ("att" in stats) == (ctc_weight < 1)
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_decoder_io_places_eos_after_each_target() -> None:
    model = tiny_model()
    eos = model.tokenizer.eos_id
    ys_in, ys_out = model._decoder_io(torch.tensor([[5, 6, -1], [7, 8, 9]]), torch.tensor([2, 3]))
    assert ys_in.tolist() == [[eos, 5, 6, 0], [eos, 7, 8, 9]]
    assert ys_out.tolist() == [[5, 6, eos, -1], [7, 8, 9, eos]]


def test_model_config_round_trip_and_errors() -> None:
    config = tiny_model().config
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="ctc_weight"):
        ModelConfig(ctc_weight=1.5)
    with pytest.raises(ValueError, match="n_mels"):
        ModelConfig(features=FeatureConfig(n_mels=40))
