"""asr.data.augment's channel augmentation: rooms, bands, codecs and gain, as the loader applies them."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asr.data.augment import (
    ChannelAugmentConfig,
    band_limit,
    channel,
    codec,
    reverberate,
    room_impulse_response,
)
from asr.data.dataset import SpeechDataset, WaveAugmentConfig
from asr.data.manifest import Utterance
from asr.tokenizer import CharTokenizer


def tone(seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_room_impulse_response_decays_with_its_rt60() -> None:
    short = room_impulse_response(0.15, np.random.default_rng(0))
    long = room_impulse_response(0.7, np.random.default_rng(0))

    def tail_energy(rir: np.ndarray) -> float:
        peak = int(np.abs(rir).argmax())
        return float(np.sum(rir[peak + 800 :] ** 2) / np.sum(rir**2))  # after 50 ms

    assert np.abs(short).max() == pytest.approx(1.0)
    assert tail_energy(long) > 2 * tail_energy(short)


def test_reverberation_keeps_length_and_level() -> None:
    audio = tone()
    wet = reverberate(audio, room_impulse_response(0.5, np.random.default_rng(1)))
    assert wet.shape == audio.shape and wet.dtype == np.float32
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(audio**2)), rel=1e-3)
    assert not np.allclose(wet, audio)


def test_band_limiting_removes_high_frequencies() -> None:
    high = tone(hz=7500.0)
    for seed in range(4):  # the telephone band and the low-passes (3-7 kHz) all take most of 7.5 kHz away
        out = band_limit(high, np.random.default_rng(seed))
        assert out.shape == high.shape
        assert np.sqrt(np.mean(out**2)) < 0.75 * np.sqrt(np.mean(high**2))


def test_codecs_keep_length_and_roughly_the_signal() -> None:
    audio = tone()
    for seed in range(3):
        out = codec(audio, np.random.default_rng(seed))
        assert out.shape == audio.shape and np.isfinite(out).all()
        assert np.corrcoef(out[2000:-2000], audio[2000:-2000])[0, 1] > 0.8


def test_channel_is_seeded_and_clipped() -> None:
    config = ChannelAugmentConfig(
        reverb_prob=1.0, bandlimit_prob=1.0, codec_prob=1.0, gain_db=(6.0, 12.0), rir_bank=2
    )
    rirs = config.impulse_responses()
    a = channel(tone(), config, np.random.default_rng(5), rirs)
    b = channel(tone(), config, np.random.default_rng(5), rirs)
    assert np.array_equal(a, b) and np.abs(a).max() <= 1.0
    assert ChannelAugmentConfig().enabled is False and config.enabled
    with pytest.raises(ValueError, match=r"channel\.codec_prob"):
        ChannelAugmentConfig(codec_prob=1.5)


def test_dataset_applies_the_channel_per_seed(tmp_path) -> None:
    path = tmp_path / "a.flac"
    sf.write(path, tone(), 16000)
    utts = [Utterance("a", str(path), "A TONE", duration=1.0), Utterance("b", str(path), "", duration=1.0)]
    aug = WaveAugmentConfig(channel=ChannelAugmentConfig(reverb_prob=1.0, rir_bank=2))
    ds = SpeechDataset(utts, CharTokenizer(list("AEINOT")), aug)
    dry = ds[0].audio
    wet = ds[(0, 7)].audio
    assert wet.shape == dry.shape and not np.allclose(wet.numpy(), dry.numpy())
    assert np.array_equal(ds[(0, 7)].audio.numpy(), wet.numpy())
    assert ds[(1, 3)].tokens.numel() == 0  # an empty transcript is an empty target
