"""Pyramidal BiLSTM encoder: shapes, the length rule, and independence from padding."""

from __future__ import annotations

import pytest
import torch

from asr.decoder import DecoderConfig
from asr.encoder import EncoderConfig, PyramidalBLSTMEncoder, pyramid_concat
from asr.features import FeatureConfig
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer

CONFIGS = [
    EncoderConfig(input_dim=12, conv_channels=4, hidden_size=8, num_layers=3, pyramid_layers=2, dropout=0.0),
    EncoderConfig(input_dim=12, conv_channels=0, hidden_size=8, num_layers=2, pyramid_layers=1, dropout=0.0),
    EncoderConfig(input_dim=12, conv_channels=0, hidden_size=8, num_layers=1, pyramid_layers=0, dropout=0.0),
    EncoderConfig(input_dim=12, conv_channels=3, hidden_size=8, num_layers=2, pyramid_layers=0, dropout=0.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"conv{c.conv_channels}-pyr{c.pyramid_layers}")
def test_output_lengths_match_actual_output(config: EncoderConfig) -> None:
    torch.manual_seed(0)
    enc = PyramidalBLSTMEncoder(config).eval()
    for t in range(config.subsampling, 3 * config.subsampling + 4):
        lengths = torch.tensor([t])
        out, out_lengths = enc(torch.randn(1, t, 12), lengths)
        assert out.shape == (1, int(config.output_lengths(lengths)), config.output_dim)
        assert out_lengths.tolist() == config.output_lengths(lengths).tolist()
        assert int(out_lengths) >= 1


def test_subsampling_and_frame_shift() -> None:
    assert CONFIGS[0].subsampling == 8
    assert CONFIGS[1].subsampling == 2
    assert CONFIGS[2].subsampling == 1
    cfg = ModelConfig()
    assert cfg.encoder.subsampling == 4
    assert cfg.encoder_frame_shift == pytest.approx(0.04)


def test_pyramid_concat_pairs_neighbours() -> None:
    x = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    y, lengths = pyramid_concat(x, torch.tensor([5, 4]))
    assert y.shape == (2, 2, 6) and lengths.tolist() == [2, 2]
    torch.testing.assert_close(y[0, 1], torch.cat([x[0, 2], x[0, 3]]))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"conv{c.conv_channels}-pyr{c.pyramid_layers}")
def test_padding_does_not_change_shorter_items(config: EncoderConfig) -> None:
    torch.manual_seed(1)
    enc = PyramidalBLSTMEncoder(config).eval()
    lengths = torch.tensor([37, 20, 29, 9])
    x = torch.randn(4, 37, 12)
    with torch.no_grad():
        batched, b_lengths = enc(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            single, s_lengths = enc(x[i : i + 1, :n], lengths[i : i + 1])
            m = int(s_lengths)
            assert int(b_lengths[i]) == m
            torch.testing.assert_close(batched[i, :m], single[0], atol=1e-5, rtol=1e-5)
            assert bool((batched[i, m:] == 0).all())  # padded frames stay zero


def test_too_short_input_is_a_clear_error() -> None:
    enc = PyramidalBLSTMEncoder(CONFIGS[0])
    with pytest.raises(ValueError, match="too short"):
        enc(torch.randn(2, 10, 12), torch.tensor([10, 3]))


@pytest.mark.parametrize("pyramid_layers", [-1, 3, 5])
def test_bad_pyramid_config(pyramid_layers: int) -> None:
    with pytest.raises(ValueError, match="pyramid_layers"):
        EncoderConfig(num_layers=3, pyramid_layers=pyramid_layers)


def test_model_ctc_outputs_independent_of_padding() -> None:
    """Whole model: features -> CMVN -> encoder -> CTC posteriors, batched equals single."""
    torch.manual_seed(2)
    config = ModelConfig(
        features=FeatureConfig(n_mels=16),
        encoder=EncoderConfig(input_dim=16, conv_channels=4, hidden_size=8, num_layers=2, dropout=0.0),
        decoder=DecoderConfig(
            embed_dim=8, hidden_size=8, attention_dim=8, location_channels=2, location_kernel=3
        ),
    )
    model = ASRModel(config, CharTokenizer.default()).eval()
    sample_lengths = torch.tensor([16000, 7000, 11111])
    waves = torch.randn(3, 16000) * 0.1
    for i, n in enumerate(sample_lengths.tolist()):
        waves[i, n:] = 0.0
    with torch.no_grad():
        feats, feat_lengths = model.features(waves, sample_lengths)
        assert feats.shape == (3, 97, 16)  # 1 + (S - n_fft) // hop
        assert feat_lengths.tolist() == [97, 41, 67]
        enc, enc_lengths = model.encode(feats, feat_lengths)
        lp = model.ctc_log_probs(enc)
        assert lp.shape == (3, int(enc_lengths.max()), model.tokenizer.vocab_size)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]))
        for i, n in enumerate(sample_lengths.tolist()):
            f1, l1 = model.features(waves[i : i + 1, :n], sample_lengths[i : i + 1])
            torch.testing.assert_close(f1[0], feats[i, : int(l1)], atol=1e-4, rtol=1e-5)
            e1, el1 = model.encode(f1, l1)
            m = int(el1)
            assert m == int(enc_lengths[i])
            torch.testing.assert_close(model.ctc_log_probs(e1)[0], lp[i, :m], atol=1e-5, rtol=1e-5)
