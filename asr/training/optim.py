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


def _under(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` is ``prefix`` or lies under it (``encoder`` holds ``encoder.x``, not
    ``encoderx``)."""
    return name == prefix or name.startswith(prefix + ".")


def lr_scale(name: str, scales: dict[str, float]) -> float:
    """The learning-rate multiplier of parameter ``name``: its longest prefix's in ``scales``, else 1."""
    matches = [p for p in scales if _under(name, p)]
    return scales[max(matches, key=len)] if matches else 1.0


def build_optimizer(
    model: nn.Module, config: OptimConfig, total_steps: int, fused: bool, prefix: str = ""
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """``(optimizer, scheduler)``; ``fused`` AdamW kernels on CUDA. One parameter group per (learning-rate
    multiplier, weight decay or not). ``prefix``: where the model's own parameters lie in ``model``
    (``model.`` in a wrapper that also trains a distillation head); ``lr_scales`` names them without it."""
    named = [(n.removeprefix(prefix), p) for n, p in model.named_parameters() if p.requires_grad]
    unused = [p for p in config.lr_scales if not any(_under(n, p) for n, _ in named)]
    if unused:
        raise ValueError(
            f"optim.lr_scales: {unused} name no trained parameters of the model (e.g. 'encoder.front')"
        )
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in named:
        decays = not (p.dim() < 2 or "bias" in name or "norm" in name)
        groups.setdefault((lr_scale(name, config.lr_scales), decays), []).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": ps, "lr": config.lr * scale, "weight_decay": config.weight_decay if decays else 0.0}
            for (scale, decays), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
        ],
        lr=config.lr,
        betas=config.betas,
        fused=fused,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    return optimizer, scheduler
