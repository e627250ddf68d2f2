"""Training: ``asr train CONFIG.yaml|toml [--out DIR] [--resume]``, one process or under ``torchrun`` (DDP).

The config file maps onto :class:`TrainConfig` (frozen dataclasses; unknown keys are errors). The output
folder gets

    last.pt         model + training state (optimizer, scheduler, epoch, step, RNG), for ``--resume``
    best.pt         the model with the best validation ``best_by`` metric (model only)
    epoch-N.pt      per-epoch models, the ``keep_checkpoints`` best kept, for averaging
    step-N.pt       with ``keep_step_checkpoints``: the model at the newest ``save_every_steps`` saves
    averaged.pt     the average of the best ``average`` epoch models
    final.pt        the better of best.pt and averaged.pt (fp16 when ``export_half``), ready to bundle
    metrics.jsonl   one JSON object per log interval ("train") and per epoch ("valid")
    config.yaml     the resolved configuration

Every checkpoint is written atomically and loads with :func:`asr.load_model`. Waveforms are batched on the
CPU by data workers; features, SpecAugment and the model run on the training device.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.training.checkpoints import average_checkpoints, select_checkpoints
from asr.training.config import load_config
from asr.training.loop import train


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML/TOML config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  asr train configs/default.yaml --out exp/default\n"
        "  torchrun --nproc-per-node 2 -m client.cli train configs/default.yaml\n"
        "  asr train --average 5 --out exp/default     # average the best 5 epoch models\n"
        "  asr train --average-files a.pt b.pt --out exp/ab --half   # average given checkpoints\n"
        "  asr train --average-files a.pt b.pt --out exp/ab --half --int8 encoder.front   # as bundled",
    )
    p.add_argument("config", nargs="?", type=Path, help="YAML or TOML training config")
    p.add_argument("--out", type=Path, help="output folder (default: out_dir from the config)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument(
        "--max-minutes", type=float, help="pause cleanly after this long (then run again with --resume)"
    )
    p.add_argument("--device", help="cpu, cuda (default: CUDA when available)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.max_batch_seconds=300 (repeatable)",
    )
    p.add_argument(
        "--average",
        type=int,
        metavar="N",
        help="without CONFIG: average N epoch checkpoints of --out into OUT/averaged.pt",
    )
    p.add_argument(
        "--average-by",
        choices=("best", "last"),
        default="best",
        help="which epoch checkpoints to average (default: best by validation)",
    )
    p.add_argument(
        "--average-files",
        nargs="+",
        type=Path,
        metavar="CKPT",
        help="without CONFIG: average these checkpoints of one model (e.g. two fine-tuning stages) "
        "into OUT/averaged.pt",
    )
    p.add_argument(
        "--half", action="store_true", help="with --average or --average-files: store the average in fp16"
    )
    p.add_argument(
        "--int8",
        nargs="+",
        default=[],
        metavar="PREFIX",
        help="with --half: also store the weight matrices under each PREFIX in 8 bits, as a config's "
        "export_int8 does (the bundled models: --half --int8 encoder.front)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config is None:
        return _average(args)
    config = load_config(args.config, _overrides(args))
    summary = train(config, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values, then the options that stand for config keys."""
    overrides = list(args.set)
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.max_minutes is not None:
        overrides.append(f"max_minutes={args.max_minutes}")
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.device:
        overrides.append(f"device={args.device}")
    return overrides


def _average(args: argparse.Namespace) -> int:
    """Without a config: average ``--average N`` epoch checkpoints of ``--out``, or ``--average-files``."""
    if not (args.average or args.average_files) or args.out is None:
        raise ValueError(
            "give a CONFIG to train, or --average N --out DIR (or --average-files CKPT... --out DIR) "
            "to average checkpoints"
        )
    if args.average and args.average_files:
        raise ValueError("give --average N or --average-files CKPT..., not both")
    if args.int8 and not args.half:
        raise ValueError("--int8 rounds weights of an fp16 export: add --half")
    if args.average_files:
        paths = list(args.average_files)
        names = [str(p) for p in paths]
        last = load_checkpoint(paths[-1]).get("extra", {})
        extra = {k: last[k] for k in ("epoch", "step") if k in last}  # the newest run's position
    else:
        paths = select_checkpoints(args.out, args.average, args.average_by)
        names = [p.name for p in paths]
        extra = {}
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        average_checkpoints(paths),
        args.out / "averaged.pt",
        extra={"averaged": names, **extra},
        half=args.half,
        int8=args.int8,
    )
    print(f"{args.out / 'averaged.pt'}: average of {', '.join(names)}")
    return 0
