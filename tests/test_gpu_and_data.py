"""Checks that need a CUDA device or the shared corpora; deselected by default (``-m gpu`` / ``-m slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import asr
from asr.data.importers import import_corpus
from asr.decoding import DecodingOptions
from asr.evaluate import evaluate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@cuda
def test_cuda_decoding_matches_cpu(speech_dir: Path) -> None:
    files = sorted(speech_dir.glob("*.wav"))
    opts = DecodingOptions(beam_size=4)
    cpu = asr.load_model(device="cpu").transcribe_batch(files, opts)
    gpu = asr.load_model(device="cuda").transcribe_batch(files, opts)
    assert [t.text for t in gpu] == [t.text for t in cpu]


@pytest.mark.gpu
@cuda
def test_cuda_training_step_in_bf16() -> None:
    model = asr.load_model(device="cuda").train()
    x = torch.randn(4, 32000, device="cuda") * 0.1
    feats, lengths = model.features(x, torch.full((4,), 32000, device="cuda"))
    targets = torch.randint(2, 29, (4, 20), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = model(feats, lengths, targets, torch.full((4,), 20, device="cuda"))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.slow
@pytest.mark.data
def test_bundled_model_on_speechocean_test_subset(shared_data: Path) -> None:
    """Regression guard for the bundled model on 100 test-split utterances (evaluation only, never tuning)."""
    utts = import_corpus("kaldi", shared_data / "speechocean762" / "test")[:100]
    result = evaluate(asr.load_model(device="cpu"), utts, DecodingOptions(beam_size=10))
    assert result.utts == 100
    assert result.wer < 0.85, result.wer  # measured 0.707 on the whole split (models/README.md)
