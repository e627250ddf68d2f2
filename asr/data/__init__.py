"""Corpora in, batches out: importers write JSONL manifests; the dataset and sampler turn them into batches.

importers.py   corpus layouts (Kaldi, LibriSpeech, ARCTIC, LJSpeech, Common Voice, folders) -> Utterance lists
manifest.py    Utterance, JSONL read/write, speaker-held-out splits
sampler.py     duration-bucketed batches with a cap on padded seconds, deterministic per epoch, DDP shards
dataset.py     audio loading, speed perturbation, noise, padding into batches
augment.py     SpecAugment on features, speed perturbation and noise on waveforms
cli.py         ``asr data prepare CORPUS SRC OUT``
"""

from asr.data.manifest import Utterance, read_manifest, write_manifest

__all__ = ["Utterance", "read_manifest", "write_manifest"]
