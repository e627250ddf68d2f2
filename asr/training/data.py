"""Training data: manifests filtered by duration, the tokenizer and CMVN learnt from them, and the loaders.

Waveforms are batched on the CPU by data workers (bucketed by duration, sharded across ranks); features and
augmentation of the features run on the training device (see :mod:`asr.training.loop`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from asr.data.dataset import SpeechDataset, WaveAugmentConfig, collate
from asr.data.manifest import Utterance, read_manifests
from asr.data.sampler import BucketBatchSampler
from asr.model import ASRModel
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, normalize_text
from asr.training.config import DataConfig, TokenizerConfig
from asr.training.distributed import DistInfo

log = logging.getLogger("asr.train")  # the name the training logs have always had


def read_utterances(config: DataConfig, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """``(train, valid)`` utterances; validation sampled down to ``max_valid_utts`` with ``seed``."""
    train_utts = filter_utts(read_manifests(config.train), config)
    valid_utts = filter_utts(read_manifests(config.valid), config) if config.valid else []
    if config.max_valid_utts and len(valid_utts) > config.max_valid_utts:
        valid_utts = random.Random(seed).sample(valid_utts, config.max_valid_utts)
    if any(u.duration is None for u in train_utts):
        raise ValueError(
            "training manifests need durations for batching; import them with `asr data prepare`"
        )
    return train_utts, valid_utts


def filter_utts(utts: list[Utterance], config: DataConfig) -> list[Utterance]:
    kept = [
        u
        for u in utts
        if (config.keep_empty_text or normalize_text(u.text))
        and (u.duration is None or config.min_duration <= u.duration <= config.max_duration)
    ]
    if len(kept) < len(utts):
        log.info(
            "skipping %d of %d utterances outside [%.1f, %.1f] s or without text",
            len(utts) - len(kept),
            len(utts),
            config.min_duration,
            config.max_duration,
        )
    return kept


def build_tokenizer(config: TokenizerConfig, texts: Sequence[str]) -> CharTokenizer | SentencePieceTokenizer:
    if config.kind == "char":
        return CharTokenizer.train(texts)
    return SentencePieceTokenizer.train(texts, vocab_size=config.vocab_size)


@torch.no_grad()
def compute_cmvn(
    model: ASRModel, utts: Sequence[Utterance], num_utts: int, seed: int, num_workers: int
) -> int:
    """Set the model's global CMVN from the features of up to ``num_utts`` random training utterances."""
    rng = random.Random(seed)
    sample = rng.sample(list(utts), min(num_utts, len(utts)))
    ds = SpeechDataset(sample, model.tokenizer)
    loader = DataLoader(
        ds,
        batch_size=16,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),  # not the global RNG: resumed runs must match
    )
    n_mels = model.config.features.n_mels
    total = torch.zeros(n_mels, dtype=torch.float64)
    total_sq = torch.zeros(n_mels, dtype=torch.float64)
    count = 0
    for batch in loader:
        feats, lengths = model.features(batch.audio.to(model.device), batch.audio_lengths.to(model.device))
        mask = (torch.arange(feats.size(1), device=feats.device)[None] < lengths[:, None]).unsqueeze(-1)
        f = (feats * mask).double()
        total += f.sum(dim=(0, 1)).cpu()
        total_sq += (f * f).sum(dim=(0, 1)).cpu()
        count += int(lengths.sum())
    model.cmvn.set_stats(total.float(), total_sq.float(), count)
    return count


def train_loader(
    utts: list[Utterance],
    tokenizer: Tokenizer,
    config: DataConfig,
    seed: int,
    dinfo: DistInfo,
    pin_memory: bool,
) -> tuple[DataLoader, BucketBatchSampler]:
    """The training loader (waveform augmentation in the workers) and its sampler, this rank's shard."""
    wave_aug = WaveAugmentConfig(
        config.speed_perturb,
        config.noise_prob,
        config.snr_db,
        config.noise_manifest,
        config.pad_prob,
        config.pad_seconds,
        config.channel,
    )
    dataset = SpeechDataset(utts, tokenizer, wave_aug)
    sampler = BucketBatchSampler(
        dataset.durations,
        config.max_batch_seconds,
        max_batch_size=config.max_batch_size,
        seed=seed,
        rank=dinfo.rank,
        world_size=dinfo.world_size,
    )
    workers = config.num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG (dropout) resumable
    )
    return loader, sampler


def valid_loader(utts: list[Utterance], tokenizer: Tokenizer, config: DataConfig, seed: int) -> DataLoader:
    """The validation loader: unaugmented, in a fixed order."""
    sampler = BucketBatchSampler(
        [u.duration or 1.0 for u in utts],
        config.max_batch_seconds,
        max_batch_size=config.max_batch_size,
        shuffle=False,
    )
    workers = config.num_workers
    return DataLoader(
        SpeechDataset(utts, tokenizer),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=min(workers, 2),
        persistent_workers=workers > 0,
        # its own seed: drawn from the global RNG, the first validation would shift dropout masks, and
        # only a resumed run would draw it again (from the restored state)
        generator=torch.Generator().manual_seed(seed + 1),
    )
