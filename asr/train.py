"""The trainer's old address, kept so that ``from asr.train import ...`` and ``asr.train.register`` work.

The code lives in :mod:`asr.training` (config, distributed, data, loop, checkpoints, metrics, cli). Setting a
name here, as tests do with ``monkeypatch.setattr(asr.train, "silence_penalty", spy)``, also sets it in every
:mod:`asr.training` module that bound the same function, so the patch reaches the trainer.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from asr.ctc import silence_penalty
from asr.training.checkpoints import average_checkpoints, select_checkpoints
from asr.training.cli import register, run
from asr.training.config import (
    FINETUNE_FIELDS,
    DataConfig,
    OptimConfig,
    TokenizerConfig,
    TrainConfig,
    finetune_model_config,
    load_config,
)
from asr.training.data import build_tokenizer, compute_cmvn
from asr.training.distributed import DistInfo, init_distributed
from asr.training.loop import Trainer, train
from asr.training.metrics import MetricsLog
from asr.training.optim import lr_lambda
from asr.training.precision import autocast as _autocast
from asr.training.precision import cpu_has_native_bf16
from asr.training.validation import ValidResult, validate

__all__ = [
    "FINETUNE_FIELDS",
    "DataConfig",
    "DistInfo",
    "MetricsLog",
    "OptimConfig",
    "TokenizerConfig",
    "TrainConfig",
    "Trainer",
    "ValidResult",
    "_autocast",
    "average_checkpoints",
    "build_tokenizer",
    "compute_cmvn",
    "cpu_has_native_bf16",
    "finetune_model_config",
    "init_distributed",
    "load_config",
    "lr_lambda",
    "register",
    "run",
    "select_checkpoints",
    "silence_penalty",
    "train",
    "validate",
]


class _Forwarding(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        old = self.__dict__.get(name)
        super().__setattr__(name, value)
        if not callable(old):
            return
        for mod_name, mod in list(sys.modules.items()):
            if mod_name == "asr.training" or mod_name.startswith("asr.training."):
                for attr, bound in list(vars(mod).items()):
                    if bound is old:
                        setattr(mod, attr, value)


sys.modules[__name__].__class__ = _Forwarding
