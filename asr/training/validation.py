"""Validation: the loss, and CER/WER of greedy CTC decoding (fast, and a good proxy for the joint decoder)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import torch
from torch.utils.data import DataLoader

from asr.decoding import ctc_greedy
from asr.model import ASRModel
from asr.tokenizer import normalize_text
from asr.training.precision import autocast


@dataclass(frozen=True)
class ValidResult:
    loss: float
    cer: float
    wer: float
    utts: int
    seconds: float
    # chunk-streaming models: greedy CTC's CER over the frames as partials first read them, from the
    # look-ahead (asr.lc_blstm.LCBLSTMEncoder.forward_provisional); NaN for others
    cer_ahead: float = math.nan

    def score(self, by: str) -> float:
        return self.cer if by == "cer" else self.loss


@torch.no_grad()
def validate(model: ASRModel, loader: DataLoader, texts: Sequence[str], bf16: bool) -> ValidResult:
    """Validation loss, and CER/WER of greedy CTC decoding (fast, and a good proxy for the joint decoder).

    ``bf16``: under bf16 autocast on the model's device.
    """
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    total_loss, n = 0.0, 0
    refs: list[str] = []
    hyps: list[str] = []
    early_hyps: list[str] = []
    use_ctc = model.config.ctc_weight > 0
    streaming = model.config.encoder.streaming
    for batch in loader:
        batch = batch.to(model.device)
        feats, lengths = model.features(batch.audio, batch.audio_lengths)
        with autocast(model.device, bf16):
            loss, _ = model(feats, lengths, batch.targets, batch.target_lengths)
            if use_ctc:
                if streaming:
                    enc, early, enc_lengths = model.encode_provisional(feats, lengths)
                    early_hyps += _greedy(model, early, enc_lengths)
                else:
                    enc, enc_lengths = model.encode(feats, lengths)
                hyps += _greedy(model, enc, enc_lengths)
                refs += [normalize_text(texts[i]) for i in batch.indices]
        total_loss += float(loss) * len(batch.indices)
        n += len(batch.indices)
    model.train(was_training)
    cer = wer = cer_ahead = math.nan
    if refs:
        cer = float(jiwer.cer(refs, hyps))
        wer = float(jiwer.wer(refs, hyps))
    if refs and early_hyps:
        cer_ahead = float(jiwer.cer(refs, early_hyps))
    return ValidResult(total_loss / max(1, n), cer, wer, n, time.perf_counter() - t0, cer_ahead)


def _greedy(model: ASRModel, enc: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    tokens = ctc_greedy(model.ctc_log_probs(enc), lengths, model.tokenizer.blank_id)
    return [normalize_text(model.tokenizer.decode(t)) for t in tokens]
