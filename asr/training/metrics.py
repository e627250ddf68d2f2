"""What a run records: ``metrics.jsonl`` (and TensorBoard), and the step timings behind its numbers.

Step time runs from the end of one step to the end of the next, so it includes the wait for the batch;
``data_wait`` is that wait's share of it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class MetricsLog:
    """metrics.jsonl, plus TensorBoard when it is installed (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                pass

    def drop_after(self, step: int) -> None:
        """Forget the records after ``step`` (a resumed run logs those steps again)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _ratio(a: float, b: float) -> float:
    return a / max(b, 1e-9)


@dataclass
class LogWindow:
    """The steps since the last ``train`` record: summed step statistics and timings."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    wait: float = 0.0
    time: float = 0.0

    def add(self, stats: dict[str, float], wait: float, took: float) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.wait += wait
        self.time += took

    def record(self, epoch: int, lr: float) -> dict[str, Any]:
        """The window's mean statistics, with the epoch (1-based), learning rate and speed."""
        record: dict[str, Any] = {k: round(v / self.steps, 4) for k, v in self.sums.items()}
        record.update(
            epoch=epoch,
            lr=lr,
            steps_per_sec=round(_ratio(self.steps, self.time), 3),
            data_wait=round(_ratio(self.wait, self.time), 4),
        )
        return record


@dataclass
class EpochMeter:
    """One epoch's (or one resumed part of an epoch's) steps, timings, skipped steps and audio."""

    steps: int = 0
    wait: float = 0.0
    time: float = 0.0
    skipped: int = 0
    audio_seconds: float = 0.0

    def add(self, wait: float, took: float, audio_seconds: float, skipped: bool) -> None:
        self.steps += 1
        self.wait += wait
        self.time += took
        self.audio_seconds += audio_seconds
        self.skipped += int(skipped)

    def summary(self, epoch: int, world_size: int) -> dict[str, Any]:
        """The ``valid`` record's speed fields; audio seconds per second count all ranks."""
        return {
            "epoch": epoch,
            "steps": self.steps,
            "seconds": round(self.time, 2),
            "steps_per_sec": round(_ratio(self.steps, self.time), 3),
            "audio_sec_per_sec": round(_ratio(self.audio_seconds * world_size, self.time), 1),
            "data_wait": round(_ratio(self.wait, self.time), 4),
            "skipped_steps": self.skipped,
        }
