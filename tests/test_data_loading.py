"""Bucketing sampler, dataset/collate and augmentation."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.augment import (
    SpecAugmentConfig,
    VtlpConfig,
    add_noise,
    pad_silence,
    spec_augment,
    speed_perturb,
    vtlp,
    vtlp_source_bins,
)
from asr.data.dataset import SpeechDataset, WaveAugmentConfig, collate, load_utterance
from asr.data.manifest import Utterance
from asr.data.sampler import BucketBatchSampler
from asr.features import FeatureConfig, mel_centers
from asr.tokenizer import CharTokenizer

DURS = [random.Random(0).uniform(0.5, 12.0) for _ in range(300)]


def test_batches_respect_the_padded_cap_and_cover_everything() -> None:
    s = BucketBatchSampler(DURS, 40.0, seed=3)
    batches = s.all_batches(0)
    for b in batches:
        assert len(b) * max(DURS[i] for i in b) <= 40.0
    assert sorted(i for b in batches for i in b) == list(range(len(DURS)))
    capped = BucketBatchSampler(DURS, 1000.0, max_batch_size=7).all_batches(0)
    assert max(len(b) for b in capped) == 7


def test_batches_are_bucketed_by_duration() -> None:
    batches = BucketBatchSampler(DURS, 40.0, seed=0).all_batches(0)
    spread = np.mean([max(DURS[i] for i in b) - min(DURS[i] for i in b) for b in batches])
    assert spread < 2.0  # random batches of this corpus would spread over ~8 s


def test_deterministic_per_epoch_and_different_across_epochs() -> None:
    a, b = BucketBatchSampler(DURS, 40.0, seed=1), BucketBatchSampler(DURS, 40.0, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert BucketBatchSampler(DURS, 40.0, seed=2).all_batches(2) != a.all_batches(2)


def test_ddp_shards_are_disjoint_and_equal_length() -> None:
    shards = []
    for rank in range(3):
        s = BucketBatchSampler(DURS, 40.0, seed=5, rank=rank, world_size=3)
        s.set_epoch(1)
        shards.append([[i for i, _ in batch] for batch in s])
    assert len({len(sh) for sh in shards}) == 1
    seen = [i for sh in shards for b in sh for i in b]
    assert len(seen) == len(set(seen))
    total = len(BucketBatchSampler(DURS, 40.0, seed=5).all_batches(1))
    assert len(shards[0]) == total // 3


def test_skip_resumes_inside_an_epoch() -> None:
    s = BucketBatchSampler(DURS, 40.0, seed=1)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, skip=5)
    assert list(s) == full[5:] and len(s) == len(full) - 5


def test_sampler_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="max_batch_seconds"):
        BucketBatchSampler(DURS, 0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(DURS, 10, rank=2, world_size=2)


@pytest.fixture
def wavs(tmp_path: Path) -> list[Utterance]:
    utts = []
    for i, secs in enumerate([0.5, 1.0, 0.75]):
        p = tmp_path / f"{i}.wav"
        sf.write(
            str(p),
            (0.1 * np.random.default_rng(i).standard_normal(int(secs * 16000))).astype(np.float32),
            16000,
        )
        utts.append(Utterance(str(i), str(p), ["A B", "HELLO", "OK"][i], duration=secs))
    return utts


def test_collate_pads_audio_with_zeros_and_targets_with_minus_one(wavs: list[Utterance]) -> None:
    ds = SpeechDataset(wavs, CharTokenizer.default())
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch.audio.shape == (3, 16000)
    assert batch.audio_lengths.tolist() == [8000, 16000, 12000]
    assert batch.audio[0, 8000:].abs().sum() == 0
    assert batch.target_lengths.tolist() == [3, 5, 2]
    assert (batch.targets[2, 2:] == -1).all() and (batch.targets[1] >= 0).all()
    assert batch.indices == [0, 1, 2]


def test_segment_loading(wavs: list[Utterance]) -> None:
    whole = load_utterance(wavs[1])
    seg = load_utterance(Utterance("s", wavs[1].audio, "X", offset=0.25, duration=0.5))
    assert len(seg) == 8000
    np.testing.assert_allclose(seg, whole[4000:12000], atol=1e-4)


def test_augmentation_is_seeded(wavs: list[Utterance]) -> None:
    ds = SpeechDataset(wavs, CharTokenizer.default(), WaveAugmentConfig((0.9, 1.1), noise_prob=1.0))
    a, b = ds[(1, 123)], ds[(1, 123)]
    assert torch.equal(a.audio, b.audio)
    assert len(a.audio) in (int(16000 / 0.9) + 1, int(16000 / 0.9), int(16000 / 1.1) + 1, int(16000 / 1.1))
    assert len(ds[1].audio) == 16000  # plain index: no augmentation (validation)


def test_speed_perturb_and_noise() -> None:
    x = np.sin(np.arange(16000) / 10).astype(np.float32)
    assert abs(len(speed_perturb(x, 1.1)) - 16000 / 1.1) <= 1
    assert abs(len(speed_perturb(x, 0.9)) - 16000 / 0.9) <= 1
    noise = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    y = add_noise(x, noise, 10.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
    assert snr == pytest.approx(10.0, abs=0.1)


def test_spec_augment_masks_inside_valid_frames() -> None:
    feats = torch.randn(4, 200, 80) + 5.0
    lengths = torch.tensor([200, 150, 100, 50])
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2, time_width=20, time_width_ratio=0.2)
    out = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(0))
    changed = out != feats
    assert changed.any()
    assert not changed[3, 50:].all(dim=-1).any()  # no time mask past an utterance's end
    assert changed.float().mean() < 0.5
    same = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert spec_augment(feats, lengths, SpecAugmentConfig(enabled=False)) is feats


def test_pad_silence_adds_background_at_the_recordings_floor() -> None:
    rng = np.random.default_rng(0)
    floor = 0.01 * rng.standard_normal(8000).astype(np.float32)  # half a second of room noise
    speech = np.sin(np.arange(16000) / 10).astype(np.float32)
    x = np.concatenate([floor, speech])
    y = pad_silence(x, 0.5, 0.25, np.random.default_rng(1))
    assert len(y) == len(x) + 8000 + 4000
    np.testing.assert_array_equal(y[8000:-4000], x)
    lead_rms = float(np.sqrt(np.mean(y[:8000] ** 2)))
    quietest = min(float(np.sqrt(np.mean(f**2))) for f in floor.reshape(-1, 160))
    assert lead_rms == pytest.approx(quietest, rel=0.05)  # the quietest 10 ms frame of the recording
    assert 0 < float(np.sqrt(np.mean(y[-4000:] ** 2))) < 0.02
    assert pad_silence(x, 0.0, 0.0, rng) is x
    digital = np.zeros(100, np.float32)
    assert float(np.abs(pad_silence(digital, 0.1, 0.0, rng)[:1600]).max()) > 0  # never digital silence


def test_dataset_pads_seeded_examples_only(wavs: list[Utterance]) -> None:
    aug = WaveAugmentConfig(pad_prob=1.0, pad_seconds=0.5)
    ds = SpeechDataset(wavs, CharTokenizer.default(), aug)
    a, b = ds[(1, 7)], ds[(1, 7)]
    assert torch.equal(a.audio, b.audio)
    assert 16000 < len(a.audio) <= 16000 + 16000  # up to 0.5 s before and 0.5 s after
    assert len(ds[1].audio) == 16000


def test_vtlp_source_bins_invert_the_piecewise_warp() -> None:
    fc = FeatureConfig()
    centers = mel_centers(fc)
    ident = vtlp_source_bins(torch.tensor([1.0]), fc, 4800.0)[0]
    assert torch.allclose(ident, torch.arange(fc.n_mels, dtype=torch.float32), atol=1e-3)
    up, down = vtlp_source_bins(torch.tensor([1.1, 0.9]), fc, 4800.0)
    low = centers < 4000  # below the bend, an output bin at f reads the input at f / alpha...
    low[0] = False  # ...except where f / alpha falls below the lowest filter (clamped to it)
    step = 2595.0 * math.log10(1 + 8000 / 700) / (fc.n_mels + 1)  # HTK mels between filter centres
    src_hz = lambda pos: 700.0 * (10.0 ** ((pos + 1) * step / 2595.0) - 1)  # noqa: E731
    assert torch.allclose(src_hz(up)[low], centers[low] / 1.1, rtol=1e-3)
    assert torch.allclose(src_hz(down)[low], centers[low] / 0.9, rtol=1e-3)
    for pos in (up, down):  # monotonic, inside the filterbank, the top bin pinned to Nyquist
        assert (pos.diff() > 0).all() and pos.min() >= 0 and pos[-1] <= fc.n_mels - 1


def test_vtlp_moves_a_formant_by_the_warp_and_is_seeded() -> None:
    fc = FeatureConfig()
    centers = mel_centers(fc)
    peak = int((centers - 1000).abs().argmin())  # one log-mel "formant" at 1 kHz in every frame
    feats = torch.zeros(64, 5, fc.n_mels)
    feats[:, :, peak] = 10.0
    cfg = VtlpConfig(max_warp=0.15)
    out = vtlp(feats, fc, cfg, torch.Generator().manual_seed(3))
    assert out.shape == feats.shape and torch.equal(out[:, 0], out[:, 4])  # one factor per utterance
    moved_hz = centers[out[:, 0].argmax(dim=1)]
    assert moved_hz.min() < 950 and moved_hz.max() > 1050  # both ways: shorter and longer tracts
    assert ((moved_hz - 1000).abs() < 1000 * 0.15 + 60).all()  # never further than the warp (+ a bin)
    assert torch.equal(out, vtlp(feats, fc, cfg, torch.Generator().manual_seed(3)))
    assert vtlp(feats, fc, VtlpConfig()) is feats
    with pytest.raises(ValueError, match="max_warp"):
        VtlpConfig(max_warp=0.6)
