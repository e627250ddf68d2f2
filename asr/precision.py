"""The number format of the recurrent matrix products at inference: float32, or bfloat16 where the CPU
multiplies bfloat16 natively.

Decoding spends most of its time in a few matrix products of small batches: the streaming encoder's LSTMs
over each chunk (:mod:`asr.lc_blstm`) and the attention decoder's LSTM at each step
(:mod:`asr.decoder`). On a CPU with AMX tiles, bfloat16 weights make them 2-5x faster than float32 at the
batch sizes of a loaded server (``python bench/decoder_step.py``). The models are trained under bfloat16
autocast (``cpu_amp``), so their products were bfloat16 in training too; everything else (features, CTC,
attention weights, scores) stays float32.

The mode is ``"auto"`` (bfloat16 on a CPU with AMX, float32 elsewhere), ``"float32"`` or ``"bfloat16"``:
:func:`set_mode`, or the ``ASR_PRECISION`` environment variable at import. Weights are cast once and
cached (:func:`cast_weights`), recast when the weights change.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MODES", "cast_weights", "mode", "recurrent_dtype", "set_mode", "weights_key"]

MODES = ("auto", "float32", "bfloat16")


def _check(value: str) -> str:
    if value not in MODES:
        raise ValueError(f"precision must be one of {', '.join(MODES)}, got {value!r}")
    return value


_mode = _check(os.environ.get("ASR_PRECISION", "auto"))


def set_mode(value: str) -> None:
    """Choose the precision of inference's recurrent products: ``auto``, ``float32`` or ``bfloat16``."""
    global _mode
    _mode = _check(value)


def mode() -> str:
    return _mode


@functools.cache
def _amx() -> bool:
    """Whether the CPU has AMX tiles (asked once: every chunk step and decoder step reads it)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def recurrent_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the recurrent products on ``device`` in the current mode."""
    if _mode == "bfloat16" or (_mode == "auto" and device.type == "cpu" and _amx()):
        return torch.bfloat16
    return torch.float32


def weights_key(tensors: Sequence[Tensor]) -> tuple[tuple[int, int], ...]:
    """What identifies the values of ``tensors``: their storage and in-place version each (weights made in
    inference mode have no version counter; they cannot change outside it)."""
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


@torch.no_grad()
def cast_weights(
    owner: nn.Module, name: str, tensors: Sequence[Tensor], dtype: torch.dtype
) -> tuple[Tensor, ...]:
    """``tensors`` (weights of ``owner``, known there as ``name``) in ``dtype``: cast once and kept on
    ``owner`` until the weights change; the tensors themselves if they are in ``dtype`` already."""
    if all(t.dtype == dtype for t in tensors):
        return tuple(tensors)
    key = (dtype, weights_key(tensors))
    cache: dict[str, tuple[object, tuple[Tensor, ...]]] = owner.__dict__.setdefault("_precision_cache", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, tuple(t.detach().to(dtype) for t in tensors))
    return hit[1]
