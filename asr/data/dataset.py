"""Utterances -> padded waveform batches; features come later, on the training device (``model.features``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from asr.audio import SAMPLE_RATE, AudioError, load_audio, resample
from asr.data.augment import ChannelAugmentConfig, add_noise, channel, pad_silence, speed_perturb
from asr.data.manifest import Utterance
from asr.tokenizer import Tokenizer


def load_utterance(utt: Utterance, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The utterance's audio (only its segment when it has an offset), float32 mono at ``sample_rate``."""
    if not utt.offset:
        audio = load_audio(utt.audio, sample_rate)
        n = None if utt.duration is None else round(utt.duration * sample_rate)
        if n is not None and len(audio) > n + sample_rate // 100:
            audio = audio[:n]  # a segment at the start of a longer recording
        return audio
    try:
        info = sf.info(utt.audio)
        start = round(utt.offset * info.samplerate)
        stop = None if utt.duration is None else start + round(utt.duration * info.samplerate)
        data, sr = sf.read(utt.audio, start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"could not read {utt.audio} [{utt.offset}s +{utt.duration}s]: {exc}") from exc
    if data.size == 0:
        raise AudioError(f"{utt.audio} has no samples at offset {utt.offset}s")
    return resample(np.ascontiguousarray(data.mean(axis=1)), int(sr), sample_rate)


@dataclass(frozen=True)
class WaveAugmentConfig:
    speed_factors: tuple[float, ...] = ()  # e.g. (0.9, 1.0, 1.1); empty: off
    noise_prob: float = 0.0  # chance of mixing in noise
    snr_db: tuple[float, float] = (10.0, 30.0)
    noise_manifest: str = ""  # JSONL of noise recordings (field ``audio``); empty: white noise
    pad_prob: float = 0.0  # chance of padding with background (augment.pad_silence)
    pad_seconds: float = 1.0  # at most this much before the speech, and as much after it (uniform)
    channel: ChannelAugmentConfig = field(default_factory=ChannelAugmentConfig)  # room, band, codec, gain

    @property
    def enabled(self) -> bool:
        return bool(self.speed_factors) or self.noise_prob > 0 or self.pad_prob > 0 or self.channel.enabled


class Example(NamedTuple):
    audio: Tensor  # (S,)
    tokens: Tensor  # (U,)
    utt_index: int


class Batch(NamedTuple):
    audio: Tensor  # (B, S) zero-padded
    audio_lengths: Tensor  # (B,)
    targets: Tensor  # (B, U) padded with -1
    target_lengths: Tensor  # (B,)
    indices: list[int]

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        return Batch(
            self.audio.to(device, non_blocking=nb),
            self.audio_lengths.to(device, non_blocking=nb),
            self.targets.to(device, non_blocking=nb),
            self.target_lengths.to(device, non_blocking=nb),
            self.indices,
        )


class SpeechDataset(Dataset[Example]):
    """Index with an ``int``, or with ``(index, seed)`` as :class:`~asr.data.sampler.BucketBatchSampler`
    yields them: the seed fixes the random augmentation of that example, whatever worker loads it."""

    def __init__(
        self, utts: Sequence[Utterance], tokenizer: Tokenizer, augment: WaveAugmentConfig | None = None
    ) -> None:
        self.utts = list(utts)
        self.tokenizer = tokenizer
        self.augment = augment or WaveAugmentConfig()
        self._noise_paths: list[Utterance] = []
        self._rirs: list[np.ndarray] | None = None  # simulated on first use, in each data worker
        if self.augment.noise_manifest:
            from asr.data.manifest import read_manifest

            self._noise_paths = read_manifest(self.augment.noise_manifest)

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def durations(self) -> list[float]:
        return [u.duration if u.duration is not None else 0.0 for u in self.utts]

    def __getitem__(self, key: int | tuple[int, int]) -> Example:
        index, seed = key if isinstance(key, tuple) else (key, None)
        utt = self.utts[index]
        audio = load_utterance(utt)
        aug = self.augment
        if seed is not None and aug.enabled:
            rng = np.random.default_rng(seed)
            if aug.speed_factors:
                audio = speed_perturb(audio, float(rng.choice(aug.speed_factors)))
            if aug.channel.enabled:
                if self._rirs is None:
                    self._rirs = aug.channel.impulse_responses()
                audio = channel(audio, aug.channel, rng, self._rirs)
            if aug.noise_prob > 0 and rng.random() < aug.noise_prob:
                snr = float(rng.uniform(*aug.snr_db))
                if self._noise_paths:
                    noise = load_utterance(self._noise_paths[int(rng.integers(len(self._noise_paths)))])
                else:
                    noise = rng.standard_normal(len(audio)).astype(np.float32)
                audio = add_noise(audio, noise, snr, rng)
            if aug.pad_prob > 0 and rng.random() < aug.pad_prob:
                lead, trail = rng.uniform(0.0, aug.pad_seconds, size=2)
                audio = pad_silence(audio, float(lead), float(trail), rng)
        tokens = torch.tensor(self.tokenizer.encode(utt.text), dtype=torch.long)
        return Example(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), tokens, index)


def collate(examples: Sequence[Example]) -> Batch:
    audio_lengths = torch.tensor([len(e.audio) for e in examples], dtype=torch.long)
    target_lengths = torch.tensor([len(e.tokens) for e in examples], dtype=torch.long)
    audio = torch.zeros(len(examples), int(audio_lengths.max()))
    targets = torch.full((len(examples), max(1, int(target_lengths.max()))), -1, dtype=torch.long)
    for i, e in enumerate(examples):
        audio[i, : len(e.audio)] = e.audio
        targets[i, : len(e.tokens)] = e.tokens
    return Batch(audio, audio_lengths, targets, target_lengths, [e.utt_index for e in examples])
