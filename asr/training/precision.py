"""bf16 autocast: on CUDA when ``amp``; on the CPU only when asked (``cpu_amp``) and run natively there."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from asr.training.config import TrainConfig


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on ``device`` when ``enabled`` (see :func:`use_bf16`), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX) rather than emulating it."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    if device.type == "cuda":
        return config.amp
    if device.type == "cpu" and config.cpu_amp:
        if not cpu_has_native_bf16():
            raise ValueError(
                "cpu_amp: this CPU has no native bf16 (AVX512-BF16 or AMX), so autocast would be slower "
                "than fp32; set cpu_amp: false"
            )
        return True
    return False
