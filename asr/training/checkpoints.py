"""The files a run leaves: the resume state (``last.pt``), epoch models and their pruning, averaging, and
the final export. Every file is written atomically (see :mod:`asr.checkpoint`).

``last.pt`` is a model checkpoint whose ``extra["train"]`` holds everything a resumed run needs: the next
epoch and batch, the step, the world size, optimizer and scheduler states, the RNG states, the epoch
history (for ``best.pt`` and pruning) and the resolved config.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from asr.checkpoint import (
    atomic_save,
    checkpoint_dict,
    float_state_dict,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from asr.model import ASRModel

# ----------------------------------------------------------------------------------------------- resume


def save_resume_state(model: ASRModel, train_state: dict[str, Any], path: Path) -> None:
    """``last.pt``: the model with ``train_state`` under ``extra["train"]``."""
    atomic_save(checkpoint_dict(model, {"train": train_state}), path)


def load_resume_state(path: Path, world_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, train state)`` of ``last.pt``; refused when another number of processes wrote it."""
    ckpt = load_checkpoint(path)
    state = ckpt["extra"]["train"]
    trained_on = int(state.get("world_size", world_size))
    if trained_on != world_size:
        raise ValueError(
            f"{path} was trained by {trained_on} process(es) and this run has {world_size}: "
            "the batch order and LR schedule depend on it. Resume with the same number (torchrun "
            f"--nproc-per-node {trained_on}), or start a new run with init_from: {path}"
        )
    return ckpt, state


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


# ----------------------------------------------------------------------------------------------- epochs


def prune(out: Path, history: list[dict[str, Any]], keep: int) -> None:
    """Keep the ``keep`` best epoch checkpoints (ties: the later one)."""
    ranked = sorted(history, key=lambda h: (h["score"], -h["epoch"]))
    keep_names = {h["path"] for h in ranked[: max(1, keep)]}
    for h in history:
        if h["path"] not in keep_names and (out / h["path"]).exists():
            (out / h["path"]).unlink()


def prune_steps(out: Path, keep: int) -> None:
    """Keep the ``keep`` newest ``step-N.pt`` snapshots in ``out``."""
    snaps = sorted(out.glob("step-*.pt"), key=lambda p: int(p.stem.split("-", 1)[1]))
    for p in snaps[: max(0, len(snaps) - keep)]:
        p.unlink()


def select_checkpoints(out_dir: Path, n: int, by: str = "best") -> list[Path]:
    """The ``n`` best (by the recorded validation metric) or latest epoch checkpoints in ``out_dir``."""
    entries = []
    for p in sorted(out_dir.glob("epoch-*.pt")):
        extra = load_checkpoint(p).get("extra", {})
        entries.append((int(extra.get("epoch", 0)), float(extra.get("score", math.inf)), p))
    if not entries:
        raise FileNotFoundError(f"no epoch-*.pt checkpoints in {out_dir}")
    if by == "best":
        entries.sort(key=lambda e: e[1])
    else:
        entries.sort(key=lambda e: -e[0])
    return sorted((e[2] for e in entries[:n]), key=lambda p: p.name)


# ----------------------------------------------------------------------------------------------- averaging


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> ASRModel:
    """Average the weights of several checkpoints of the same model (floats, exported ones' 8-bit weights
    with their scales; other tensors from the last)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    ckpts = [load_checkpoint(p) for p in paths]
    for p, c in zip(paths, ckpts, strict=True):
        for key in ("tokenizer", "state_dict"):
            if key not in c:
                raise ValueError(f"{p} lacks its {key}; it is not a model checkpoint")
        if c["tokenizer"] != ckpts[-1]["tokenizer"] or _shapes(c) != _shapes(ckpts[-1]):
            raise ValueError(
                f"cannot average {p} with {paths[-1]}: their tokenizers or architectures differ; "
                "average only checkpoints of one model (one run, or fine-tuning runs of it)"
            )
    # exported checkpoints (the bundled models) store some weights in 8 bits with a scale: average the weights
    states = [float_state_dict(c) for c in ckpts]
    avg: dict[str, torch.Tensor] = {}
    for k, v in states[-1].items():
        if v.is_floating_point():
            avg[k] = sum((s[k].double() for s in states), torch.zeros_like(v, dtype=torch.float64))
            avg[k] = (avg[k] / len(ckpts)).float()
        else:
            avg[k] = v
    last = {k: v for k, v in ckpts[-1].items() if k != "int8_scales"}
    return model_from_checkpoint({**last, "state_dict": avg})


def _shapes(ckpt: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}


# ----------------------------------------------------------------------------------------------- export


def export_final(
    source: Path, out: Path, summary: dict[str, Any], half: bool, int8: Sequence[str] = ()
) -> None:
    """``out`` (final.pt): ``source``'s model, keeping its description (epoch, step, validation metrics);
    ``half`` and ``int8`` as :func:`asr.checkpoint.checkpoint_dict` takes them."""
    ckpt = load_checkpoint(source)
    save_checkpoint(
        model_from_checkpoint(ckpt),
        out,
        extra={**ckpt.get("extra", {}), "source": source.name, "train_summary": summary},
        half=half,
        int8=int8,
    )
