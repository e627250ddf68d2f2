"""Training, torchrun-ready: ``asr train`` (:mod:`asr.training.cli`) or :func:`train` from Python.

config.py        TrainConfig and its sections (frozen dataclasses), load_config, finetune_model_config
distributed.py   DistInfo, init_distributed, the device of each rank, agreement between ranks
precision.py     bf16 autocast (CUDA; CPUs with native bf16 when asked)
data.py          manifests, tokenizer, CMVN and the loaders
optim.py         AdamW and the learning-rate schedule (over the trainable parts)
triggered.py     triggered attention: decoder steps over the frames a growing search would have
loop.py          Trainer: setup / train / train_epoch / train_step / validate / save_last / finish
validation.py    validation loss and greedy-CTC CER/WER
checkpoints.py   last.pt (resume state), epoch pruning, select_checkpoints, average_checkpoints, final.pt
metrics.py       metrics.jsonl (and TensorBoard), step timings
cli.py           the ``asr train`` subcommand (register / run)
"""

from asr.training.checkpoints import average_checkpoints, select_checkpoints
from asr.training.config import (
    DataConfig,
    OptimConfig,
    TokenizerConfig,
    TrainConfig,
    finetune_model_config,
    load_config,
)
from asr.training.distributed import DistInfo, init_distributed
from asr.training.loop import Trainer, train
from asr.training.metrics import MetricsLog
from asr.training.validation import ValidResult, validate

__all__ = [
    "DataConfig",
    "DistInfo",
    "MetricsLog",
    "OptimConfig",
    "TokenizerConfig",
    "TrainConfig",
    "Trainer",
    "ValidResult",
    "average_checkpoints",
    "finetune_model_config",
    "init_distributed",
    "load_config",
    "select_checkpoints",
    "train",
    "validate",
]
