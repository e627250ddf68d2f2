"""Log-mel front end and global CMVN."""

from __future__ import annotations

import math

import pytest
import torch

from asr.features import FeatureConfig, GlobalCMVN, LogMel, lengths_to_mask


@pytest.mark.parametrize("samples", [0, 100, 511, 512, 671, 672, 16000, 16001])
def test_num_frames_matches_logmel(samples: int) -> None:
    config = FeatureConfig(n_mels=20)
    logmel = LogMel(config)
    feats, lengths = logmel(torch.randn(1, max(samples, 1)) * 0.1, torch.tensor([samples]))
    expected = max(0, 1 + (samples - config.n_fft) // config.hop_length)
    assert int(lengths) == expected
    if samples >= config.n_fft:
        assert feats.shape == (1, expected, 20)


def test_features_of_a_prefix_do_not_depend_on_what_follows() -> None:
    """Offline, batched and streamed segments see the same frames (no centring, no global normalisation)."""
    logmel = LogMel(FeatureConfig(n_mels=20))
    wave = torch.randn(1, 8000) * 0.1
    full, _ = logmel(wave, torch.tensor([8000]))
    part, n = logmel(wave[:, :4000], torch.tensor([4000]))
    torch.testing.assert_close(part[0, : int(n)], full[0, : int(n)], atol=1e-4, rtol=1e-5)


def test_logmel_is_finite_on_silence_and_sees_a_tone() -> None:
    config = FeatureConfig(n_mels=40)
    logmel = LogMel(config)
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * t)
    feats, _ = logmel(torch.stack([torch.zeros(16000), tone]), torch.tensor([16000, 16000]))
    assert torch.isfinite(feats).all()
    assert feats[0].max() <= math.log(1e-6) + 1e-3  # silence sits at the floor
    peak = int(feats[1].mean(0).argmax())
    assert 10 < peak < 25  # 1 kHz lands in a low-middle mel band of 40 (8 kHz Nyquist)


def test_logmel_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        LogMel(FeatureConfig())(torch.randn(16000), torch.tensor([16000]))


def test_cmvn_normalises_to_zero_mean_unit_variance() -> None:
    x = torch.randn(500, 6) * torch.tensor([1.0, 2, 3, 4, 5, 0.5]) + torch.arange(6.0)
    cmvn = GlobalCMVN(6)
    cmvn.set_stats(x.sum(0), (x**2).sum(0), x.size(0))
    y = cmvn(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)
    assert set(dict(cmvn.named_buffers())) == {"mean", "istd"}  # they travel in the state dict
    with pytest.raises(ValueError, match="at least one frame"):
        cmvn.set_stats(x.sum(0), (x**2).sum(0), 0)


def test_lengths_to_mask() -> None:
    mask = lengths_to_mask(torch.tensor([3, 1, 0]), 4)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False], [False] * 4]
    assert lengths_to_mask(torch.tensor([2, 3])).shape == (2, 3)


def test_frame_shift() -> None:
    assert FeatureConfig().frame_shift == pytest.approx(0.01)
