"""AdamW (no weight decay on biases, norms and other 1-d parameters) and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from asr.training.config import OptimConfig


def lr_lambda(config: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier after ``step`` steps: linear warm-up, then cosine, inverse square root or flat."""
    warm = max(1, config.warmup_steps)

    def f(step: int) -> float:
        s = step + 1
        if config.schedule == "noam":
            return min(s / warm, math.sqrt(warm / s))
        if s <= warm:
            return s / warm
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warm) / max(1, total_steps - warm))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_optimizer(
    model: nn.Module, config: OptimConfig, total_steps: int, fused: bool
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """``(optimizer, scheduler)``; ``fused`` AdamW kernels on CUDA."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # a frozen part (TrainConfig.trainable)
            continue
        (no_decay if p.dim() < 2 or "bias" in name or "norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=config.betas,
        fused=fused,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    return optimizer, scheduler
