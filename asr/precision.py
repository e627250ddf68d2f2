"""The number format of the recurrent matrix products at inference: float32, bfloat16 where the CPU
multiplies bfloat16 natively, and 8-bit integer weights for the attention decoder's steps; and of Whisper's
front end, whose products follow the encoder's LSTMs (:func:`transformer_autocast`).

Decoding spends most of its time in a few matrix products of small batches: the streaming encoder's LSTMs
over each chunk (:mod:`asr.lc_blstm`) and the attention decoder's LSTM at each step
(:mod:`asr.decoder`). On a CPU with AMX tiles, bfloat16 weights make them 2-5x faster than float32 at the
batch sizes of a loaded server (``python bench/decoder_step.py``). The models are trained under bfloat16
autocast (``cpu_amp``), so their products were bfloat16 in training too; everything else (features, CTC,
attention weights, scores) stays float32.

The decoder's steps are a few rows at a time (a beam of 10; a batch of finals), where a product's time is
that of reading its weights from memory: with 8-bit weights (per output channel) and the step's inputs
quantized on the fly (PyTorch's dynamic quantization, the fbgemm/x86 kernels) a 10-row step of the
1.3k x 2k layer takes 0.21 ms against 0.93 in float32 and 1.05 in bfloat16 on a Xeon core, whose bfloat16
kernels pay a set-up per call that int8's do not (bench/decoder_step.py).

The mode is one of :data:`MODES`: :func:`set_mode`, or the ``ASR_PRECISION`` environment variable at import.

* ``"float32"``: every product in float32;
* ``"bfloat16"``: the encoder's LSTMs, and decoder steps of ``LOW_PRECISION_ROWS`` rows or more, in
  bfloat16;
* ``"int8"``: the decoder's LSTM steps on 8-bit weights, the encoder's LSTMs as ``"auto"`` has them;
* ``"auto"``: bfloat16 for the encoder on a CPU that multiplies it natively (AMX or AVX-512 BF16; float32
  elsewhere), and int8 decoder steps on a CPU whose PyTorch has a quantized engine (float32 on GPUs).

Weights are cast once and cached (:func:`cast_weights`), recast when the weights change.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MODES",
    "cast_weights",
    "int8_steps",
    "mode",
    "quantize_linear",
    "recurrent_dtype",
    "set_mode",
    "transformer_autocast",
    "weights_key",
]

MODES = ("auto", "float32", "bfloat16", "int8")


def _check(value: str) -> str:
    if value not in MODES:
        raise ValueError(f"precision must be one of {', '.join(MODES)}, got {value!r}")
    return value


_mode = _check(os.environ.get("ASR_PRECISION", "auto"))


def set_mode(value: str) -> None:
    """Choose the precision of inference's recurrent products (one of :data:`MODES`)."""
    global _mode
    _mode = _check(value)


def mode() -> str:
    return _mode


@functools.cache
def _native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively: AMX tiles (Intel Sapphire Rapids and later) or AVX-512
    BF16 (AMD Zen 4, Intel Cooper Lake). Asked once: every chunk step and decoder step reads it. On a 2-vCPU
    AMD EPYC with AVX-512 BF16 and no AMX, the streaming model's CPU per second of audio fell from 193 to
    149 ms at one stream (bench/online_cpu.py, session 38)."""
    names = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    probes = [getattr(torch.cpu, name, None) for name in names]
    return any(bool(probe()) for probe in probes if probe is not None)


@functools.cache
def _quantized_engine() -> str:
    """The quantized engine for int8 products on this CPU ("" when PyTorch has none)."""
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            return engine
    return ""


def recurrent_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the encoder's recurrent products (and the decoder's large steps) on ``device``."""
    if _mode == "bfloat16" or (_mode in ("auto", "int8") and device.type == "cpu" and _native_bf16()):
        return torch.bfloat16
    return torch.float32


def transformer_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The number format of Whisper's front end at inference (:mod:`asr.whisper_encoder`,
    :mod:`asr.whisper_stream`): its products under bfloat16 autocast where :func:`recurrent_dtype` says
    bfloat16, as in training (``cpu_amp``); on a Xeon core its 384-wide products of a 32-stream chunk step
    (256 rows) take 0.3-0.6 ms instead of 1.9-2.1 in float32. Nothing changes under autograd (training has
    its own autocast)."""
    if torch.is_grad_enabled() or recurrent_dtype(device) != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def int8_steps(device: torch.device) -> bool:
    """Whether the decoder's LSTM steps run on 8-bit weights on ``device`` in the current mode."""
    if device.type != "cpu" or _mode not in ("auto", "int8"):
        return False
    if not _quantized_engine():
        if _mode == "int8":
            raise RuntimeError("precision 'int8' needs a PyTorch with a quantized CPU engine (fbgemm, x86)")
        return False
    return True


@torch.no_grad()
def quantize_linear(weight: Tensor, bias: Tensor) -> object:
    """``weight (out, in)`` and ``bias (out,)`` packed for :func:`int8_linear`: 8-bit per output channel
    (symmetric), the bias kept in float32."""
    if torch.backends.quantized.engine != _quantized_engine():
        torch.backends.quantized.engine = _quantized_engine()
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8)
    zero = torch.zeros(w.size(0), dtype=torch.long)
    q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(q, bias.detach().float())


@functools.cache
def _vnni() -> bool:
    """Whether the CPU multiplies 8-bit integers into 32-bit sums (VNNI)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(probe()) if probe is not None else False


def int8_linear(x: Tensor, packed: object) -> Tensor:
    """``x (N, in) @ weight.T + bias`` on weights packed by :func:`quantize_linear`; ``x`` is quantized per
    call, to 8 bits on CPUs with VNNI and to 7 elsewhere (where fbgemm's 16-bit sums could overflow)."""
    return torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, not _vnni())


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
