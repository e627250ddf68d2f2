"""Training: ``asr train CONFIG.yaml|toml [--out DIR] [--resume]``, one process or under ``torchrun`` (DDP).

The config file maps onto :class:`TrainConfig` (frozen dataclasses; unknown keys are errors). The output
folder gets

    last.pt         model + training state (optimizer, scheduler, epoch, step, RNG), for ``--resume``
    best.pt         the model with the best validation ``best_by`` metric (model only)
    epoch-N.pt      per-epoch models, the ``keep_checkpoints`` best kept, for averaging
    averaged.pt     the average of the best ``average`` epoch models
    final.pt        the better of best.pt and averaged.pt (fp16 when ``export_half``), ready to bundle
    metrics.jsonl   one JSON object per log interval ("train") and per epoch ("valid")
    config.yaml     the resolved configuration

Every checkpoint is written atomically and loads with :func:`asr.load_model`. Waveforms are batched on the
CPU by data workers; features, SpecAugment and the model run on the training device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import tomllib
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.checkpoint import (
    atomic_save,
    checkpoint_dict,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from asr.ctc import silence_penalty
from asr.data.augment import SpecAugmentConfig, VtlpConfig, spec_augment, vtlp
from asr.data.dataset import SpeechDataset, WaveAugmentConfig, collate
from asr.data.manifest import Utterance, read_manifests
from asr.data.sampler import BucketBatchSampler
from asr.decoding import ctc_greedy
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer, normalize_text, tokenizer_from_dict

log = logging.getLogger("asr.train")


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()  # JSONL manifests
    valid: tuple[str, ...] = ()
    max_batch_seconds: float = 600.0  # padded audio seconds per batch (per GPU)
    max_batch_size: int = 0  # utterances per batch; 0: no limit
    min_duration: float = 0.3
    max_duration: float = 20.0
    num_workers: int = 4
    speed_perturb: tuple[float, ...] = ()  # e.g. [0.9, 1.0, 1.1]
    noise_prob: float = 0.0
    noise_manifest: str = ""
    snr_db: tuple[float, float] = (10.0, 30.0)
    # background padding before and after the speech (asr.data.augment.pad_silence); batches are planned
    # on the unpadded durations, so they can run up to 2 x pad_seconds per utterance over max_batch_seconds
    pad_prob: float = 0.0
    pad_seconds: float = 1.0
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    vtlp: VtlpConfig = field(default_factory=VtlpConfig)  # frequency warping, before SpecAugment
    cmvn_utts: int = 500  # utterances sampled for the global mean/variance
    max_valid_utts: int = 0  # 0: all


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "char"  # "char" or "bpe"
    vocab_size: int = 256  # bpe only

    def __post_init__(self) -> None:
        if self.kind not in ("char", "bpe"):
            raise ValueError(f"tokenizer.kind must be 'char' or 'bpe', got {self.kind!r}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate, reached after warm-up
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr), "noam" (inverse square root) or "constant"
    min_lr_ratio: float = 0.05

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "noam", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine', 'noam' or 'constant', got {self.schedule!r}")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 50
    max_steps: int = 0  # stop early after this many optimizer steps (0: no limit)
    max_minutes: float = 0.0  # pause cleanly (last.pt, no final export) after this long; resume with --resume
    grad_clip: float = 5.0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # bf16 autocast on the CPU as well: 1.7x the training throughput on 2 AMD EPYC cores with AVX512-BF16
    # (bench/train_speed.py --amp); refused on CPUs without native bf16, where it would be emulated and slow
    cpu_amp: bool = False
    seed: int = 0
    out_dir: str = "exp/train"
    device: str = ""  # "" picks CUDA when available
    log_every: int = 50
    save_every_steps: int = 0  # also write last.pt inside an epoch (0: at epoch ends only)
    best_by: str = "loss"  # validation "loss" or "cer"
    keep_checkpoints: int = 5
    average: int = 5  # average the best N epoch models at the end (<= 1: off)
    export_half: bool = True  # final.pt in fp16
    init_from: str = ""  # fine-tune: start from this checkpoint's weights, config, tokenizer and CMVN
    # nats per encoder frame against CTC paths that emit tokens in the silence before and after each
    # utterance's voiced part (asr.ctc.silence_penalty): ties the first and last words to their sound
    ctc_silence_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.best_by not in ("loss", "cer"):
            raise ValueError(f"best_by must be 'loss' or 'cer', got {self.best_by!r}")
        if not self.data.train:
            raise ValueError("data.train must list at least one training manifest")
        if self.ctc_silence_penalty < 0:
            raise ValueError(
                f"ctc_silence_penalty must be >= 0 (nats per frame), got {self.ctc_silence_penalty}"
            )
        model = ModelConfig.from_dict(self.model)  # fail early on a bad model section
        if self.best_by == "cer" and model.ctc_weight == 0.0 and not self.init_from:
            raise ValueError(
                "best_by: cer needs the CTC head (validation CER is greedy CTC), but model.ctc_weight is 0; "
                "use best_by: loss or a ctc_weight above 0"
            )

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _build(cls, d, "")


# Fields of the model config that only shape training (regularisation and the loss), not the weights: a
# fine-tuning run (``init_from``) may change these in its ``model:`` section, and nothing else.
FINETUNE_FIELDS: dict[str, frozenset[str]] = {
    "encoder": frozenset({"dropout"}),
    "decoder": frozenset({"dropout", "label_smoothing", "sampling_prob"}),
    "": frozenset({"ctc_weight"}),
}


def finetune_model_config(base: dict[str, Any], overrides: dict[str, Any]) -> ModelConfig:
    """The checkpoint's model config ``base`` with a fine-tuning run's ``model:`` section laid over it.

    Only :data:`FINETUNE_FIELDS` may differ from the checkpoint; a changed architecture field is a
    ``ValueError`` (its weights would not fit), and keys that repeat the checkpoint's value are accepted."""
    merged = ModelConfig.from_dict(base).to_dict()
    ModelConfig.from_dict(overrides)  # unknown keys and bad values fail here, naming the choices
    refused = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if merged[key][sub] != v and sub not in FINETUNE_FIELDS.get(key, frozenset()):
                    refused.append(f"model.{key}.{sub}")
                merged[key][sub] = v
        else:
            if merged[key] != value and key not in FINETUNE_FIELDS[""]:
                refused.append(f"model.{key}")
            merged[key] = value
    if refused:
        allowed = sorted(f"model.{s + '.' if s else ''}{f}" for s, fs in FINETUNE_FIELDS.items() for f in fs)
        raise ValueError(
            f"init_from fine-tuning keeps the checkpoint's architecture, but the config changes {refused}; "
            f"a fine-tuning run may only change {allowed} (train a new model to change the rest)"
        )
    return ModelConfig.from_dict(merged)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _build(cls: Any, d: Any, where: str) -> Any:
    """Dict -> (nested) frozen dataclass; unknown keys raise ``ValueError`` naming the choices."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {where or '<root>'!r} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(where + k for k in unknown)}; expected some of {sorted(known)}"
        )
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _typed(hint, value, where + name)
    return cls(**kwargs)


def _typed(hint: Any, value: Any, key: str) -> Any:
    """``value`` as the field's type (ints and numeric strings may stand for floats: YAML reads ``1e-3`` as
    a string); anything else is a ``ValueError`` naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        items = list(value) if isinstance(value, list | tuple) else [value] if variadic else None
        if items is None or (not variadic and len(items) != len(args)):
            want = "a list" if variadic else f"a list of {len(args)} values"
            raise ValueError(f"config key {key!r} must be {want}, got {value!r}")
        types = [args[0]] * len(items) if variadic else list(args)
        return tuple(_typed(t, v, key) for t, v in zip(types, items, strict=True))
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"config key {key!r} must be a number, got {value!r}")
    if hint is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"config key {key!r} must be true or false, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ValueError(f"config key {key!r} must be a string, got {value!r}")
    return value


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML or TOML config; ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        raw: dict[str, Any] = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        raw = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config must be .yaml, .yml or .toml, got {path.name}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return TrainConfig.from_dict(raw)


# ----------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def lr_lambda(config: OptimConfig, total_steps: int) -> Any:
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


def build_tokenizer(config: TokenizerConfig, texts: Sequence[str]) -> CharTokenizer | SentencePieceTokenizer:
    if config.kind == "char":
        return CharTokenizer.train(texts)
    return SentencePieceTokenizer.train(texts, vocab_size=config.vocab_size)


@torch.no_grad()
def compute_cmvn(
    model: ASRModel, utts: Sequence[Utterance], num_utts: int, seed: int, num_workers: int
) -> int:
    """Set the model's global CMVN from the features of up to ``num_utts`` random training utterances."""
    rng = random.Random(seed)
    sample = rng.sample(list(utts), min(num_utts, len(utts)))
    ds = SpeechDataset(sample, model.tokenizer)
    loader = DataLoader(
        ds,
        batch_size=16,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),  # not the global RNG: resumed runs must match
    )
    n_mels = model.config.features.n_mels
    total = torch.zeros(n_mels, dtype=torch.float64)
    total_sq = torch.zeros(n_mels, dtype=torch.float64)
    count = 0
    for batch in loader:
        feats, lengths = model.features(batch.audio.to(model.device), batch.audio_lengths.to(model.device))
        mask = (torch.arange(feats.size(1), device=feats.device)[None] < lengths[:, None]).unsqueeze(-1)
        f = (feats * mask).double()
        total += f.sum(dim=(0, 1)).cpu()
        total_sq += (f * f).sum(dim=(0, 1)).cpu()
        count += int(lengths.sum())
    model.cmvn.set_stats(total.float(), total_sq.float(), count)
    return count


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> ASRModel:
    """Average the weights of several checkpoints of the same model (floats; other tensors from the last)."""
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
    avg: dict[str, torch.Tensor] = {}
    for k, v in ckpts[-1]["state_dict"].items():
        if v.is_floating_point():
            avg[k] = sum(
                (c["state_dict"][k].double() for c in ckpts), torch.zeros_like(v, dtype=torch.float64)
            )
            avg[k] = (avg[k] / len(ckpts)).float()
        else:
            avg[k] = v
    return model_from_checkpoint({**ckpts[-1], "state_dict": avg})


def _shapes(ckpt: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}


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


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


@contextmanager
def _timer() -> Iterator[list[float]]:
    box = [0.0]
    t = time.perf_counter()
    yield box
    box[0] = time.perf_counter() - t


# ----------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidResult:
    loss: float
    cer: float
    wer: float
    utts: int
    seconds: float

    def score(self, by: str) -> float:
        return self.cer if by == "cer" else self.loss


@torch.no_grad()
def validate(model: ASRModel, loader: DataLoader, texts: Sequence[str], bf16: bool) -> ValidResult:
    """Validation loss, and CER/WER of greedy CTC decoding (fast, and a good proxy for the joint decoder).

    ``bf16``: under bf16 autocast on the model's device.
    """
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    total_loss, n = 0.0, 0
    refs: list[str] = []
    hyps: list[str] = []
    use_ctc = model.config.ctc_weight > 0
    for batch in loader:
        batch = batch.to(model.device)
        feats, lengths = model.features(batch.audio, batch.audio_lengths)
        with _autocast(model.device, bf16):
            loss, _ = model(feats, lengths, batch.targets, batch.target_lengths)
            if use_ctc:
                enc, enc_lengths = model.encode(feats, lengths)
                tokens = ctc_greedy(model.ctc_log_probs(enc), enc_lengths, model.tokenizer.blank_id)
                hyps += [normalize_text(model.tokenizer.decode(t)) for t in tokens]
                refs += [normalize_text(texts[i]) for i in batch.indices]
        total_loss += float(loss) * len(batch.indices)
        n += len(batch.indices)
    model.train(was_training)
    cer = wer = math.nan
    if refs:
        cer = float(jiwer.cer(refs, hyps))
        wer = float(jiwer.wer(refs, hyps))
    return ValidResult(total_loss / max(1, n), cer, wer, n, time.perf_counter() - t0)


def _autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on ``device`` when ``enabled`` (see :func:`_use_bf16`), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX) rather than emulating it."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _use_bf16(config: TrainConfig, device: torch.device) -> bool:
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


# ----------------------------------------------------------------------------------------------- training


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


def _filter_utts(utts: list[Utterance], config: DataConfig) -> list[Utterance]:
    kept = [
        u
        for u in utts
        if normalize_text(u.text)
        and (u.duration is None or config.min_duration <= u.duration <= config.max_duration)
    ]
    if len(kept) < len(utts):
        log.info(
            "skipping %d of %d utterances outside [%.1f, %.1f] s or without text",
            len(utts) - len(kept),
            len(utts),
            config.min_duration,
            config.max_duration,
        )
    return kept


def train(
    config: TrainConfig, out_dir: str | os.PathLike | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train as ``config`` says; returns a summary (steps, epochs, best validation, timings)."""
    out = Path(out_dir or config.out_dir)
    device_name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dinfo = init_distributed(device_name)
    if device_name == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_name)
        if "OMP_NUM_THREADS" not in os.environ:
            # Share the cores between the ranks on this machine: oversubscribed OpenMP threads spin against
            # each other and made CPU steps tens of times slower in tests. Data workers mostly wait on a full
            # prefetch queue (under 5 % of a core each on speechocean762), so they get one core per two;
            # leaving a whole core to one worker made 2-core fine-tuning 1.3x slower.
            ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            cores = (os.cpu_count() or 1) // ranks_here
            threads = max(1, cores - config.data.num_workers // 2)
            torch.set_num_threads(min(torch.get_num_threads(), threads))
    try:
        return _train(config, out, resume, device, dinfo)
    finally:
        if dinfo.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    config: TrainConfig, out: Path, resume: bool, device: torch.device, dinfo: DistInfo
) -> dict[str, Any]:
    dc = config.data
    bf16 = _use_bf16(config, device)
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else math.inf
    last_path = out / "last.pt"
    if last_path.exists() and not resume:
        raise FileExistsError(f"{last_path} exists: pass --resume to continue it, or choose another --out")
    if dinfo.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    train_utts = _filter_utts(read_manifests(dc.train), dc)
    valid_utts = _filter_utts(read_manifests(dc.valid), dc) if dc.valid else []
    if dc.max_valid_utts and len(valid_utts) > dc.max_valid_utts:
        valid_utts = random.Random(config.seed).sample(valid_utts, dc.max_valid_utts)
    if any(u.duration is None for u in train_utts):
        raise ValueError(
            "training manifests need durations for batching; import them with `asr data prepare`"
        )

    state: dict[str, Any] = {}
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        model = model_from_checkpoint(ckpt).to(device)
        state = ckpt["extra"]["train"]
        trained_on = int(state.get("world_size", dinfo.world_size))
        if trained_on != dinfo.world_size:
            raise ValueError(
                f"{last_path} was trained by {trained_on} process(es) and this run has {dinfo.world_size}: "
                "the batch order and LR schedule depend on it. Resume with the same number (torchrun "
                f"--nproc-per-node {trained_on}), or start a new run with init_from: {last_path}"
            )
        log.info("resuming %s at epoch %d, step %d", last_path, state["epoch"], state["step"])
    elif config.init_from:
        ckpt = load_checkpoint(config.init_from)
        if config.model:
            ckpt = {**ckpt, "config": finetune_model_config(ckpt["config"], config.model).to_dict()}
        model = model_from_checkpoint(ckpt).to(device)
        log.info("fine-tuning %s (its config, tokenizer and CMVN)", config.init_from)
    else:
        tok_dict = [
            build_tokenizer(config.tokenizer, [u.text for u in train_utts]).to_dict()
            if dinfo.is_main
            else None
        ]
        if dinfo.world_size > 1:
            dist.broadcast_object_list(tok_dict, src=0)  # BPE training need not agree across ranks
        assert tok_dict[0] is not None
        model = ASRModel(config.model_config, tokenizer_from_dict(tok_dict[0])).to(device)
        if dinfo.is_main:
            frames = compute_cmvn(model, train_utts, dc.cmvn_utts, config.seed, dc.num_workers)
            log.info(
                "CMVN from %d frames; model has %.2fM parameters, %d tokens",
                frames,
                model.num_parameters() / 1e6,
                model.tokenizer.vocab_size,
            )
    tokenizer = model.tokenizer

    wave_aug = WaveAugmentConfig(
        dc.speed_perturb, dc.noise_prob, dc.snr_db, dc.noise_manifest, dc.pad_prob, dc.pad_seconds
    )
    train_ds = SpeechDataset(train_utts, tokenizer, wave_aug)
    sampler = BucketBatchSampler(
        train_ds.durations,
        dc.max_batch_seconds,
        max_batch_size=dc.max_batch_size,
        seed=config.seed,
        rank=dinfo.rank,
        world_size=dinfo.world_size,
    )
    workers = dc.num_workers
    loader = DataLoader(
        train_ds,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG (dropout) resumable
    )
    valid_loader = None
    if valid_utts and dinfo.is_main:
        valid_ds = SpeechDataset(valid_utts, tokenizer)
        valid_sampler = BucketBatchSampler(
            [u.duration or 1.0 for u in valid_utts],
            dc.max_batch_seconds,
            max_batch_size=dc.max_batch_size,
            shuffle=False,
        )
        valid_loader = DataLoader(
            valid_ds,
            batch_sampler=valid_sampler,
            collate_fn=collate,
            num_workers=min(workers, 2),
            persistent_workers=workers > 0,
            # its own seed: drawn from the global RNG, the first validation would shift dropout masks, and
            # only a resumed run would draw it again (from the restored state)
            generator=torch.Generator().manual_seed(config.seed + 1),
        )

    steps_per_epoch = len(sampler.all_batches(0)) // dinfo.world_size
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    oc = config.optim
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "bias" in name or "norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": oc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=oc.lr,
        betas=oc.betas,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(oc, total_steps))
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], device)

    lam = model.config.ctc_weight
    ddp_model: nn.Module = model
    if dinfo.world_size > 1:
        ddp_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=lam in (0.0, 1.0),
        )
    epoch = int(state.get("epoch", 0))
    batch_in_epoch = int(state.get("batch_in_epoch", 0))
    step = int(state.get("step", 0))
    history: list[dict[str, Any]] = list(state.get("history", []))
    best_score = min((h["score"] for h in history), default=math.inf)
    metrics = MetricsLog(out, dinfo.is_main)
    if state:
        metrics.drop_after(step)  # what was logged after last.pt was written is done again
    valid_texts = [u.text for u in valid_utts]
    texts_note = f"{len(train_utts)} train / {len(valid_utts)} valid utterances"
    if dinfo.is_main:
        log.info(
            "%s, %d steps per epoch x %d epochs on %s (world size %d)",
            texts_note,
            steps_per_epoch,
            config.epochs,
            device,
            dinfo.world_size,
        )

    def save_last(next_epoch: int, next_batch: int) -> None:
        if not dinfo.is_main:
            return
        train_state = {
            "epoch": next_epoch,
            "batch_in_epoch": next_batch,
            "step": step,
            "world_size": dinfo.world_size,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(device),
            "history": history,
            "config": config.to_dict(),
        }
        atomic_save(checkpoint_dict(model, {"train": train_state}), last_path)

    run_t0 = time.perf_counter()
    total_wait = total_time = 0.0
    steps_run = 0
    stop = bool(config.max_steps and step >= config.max_steps)
    paused = False
    while epoch < config.epochs and not stop:
        sampler.set_epoch(epoch, skip=batch_in_epoch)
        model.train()
        bar = tqdm(
            total=steps_per_epoch,
            initial=batch_in_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not dinfo.is_main or not sys.stderr.isatty(),
            dynamic_ncols=True,
            leave=False,
        )
        agg: dict[str, float] = {}
        n_agg = 0
        win_wait = win_time = 0.0
        epoch_wait = epoch_time = 0.0
        epoch_steps = 0
        skipped = 0
        audio_seconds = 0.0
        t_ready = time.perf_counter()
        epoch_batches = len(sampler) + batch_in_epoch
        it = iter(loader)
        epoch_done = False
        while True:
            try:
                batch = next(it)
            except StopIteration:
                epoch_done = True  # batch counts vary a little between epochs (duration jitter)
                break
            t_got = time.perf_counter()
            host = batch  # the silence penalty reads the waveforms here, not back from the GPU
            batch = batch.to(device)
            feats, feat_lengths = model.features(batch.audio, batch.audio_lengths)
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            feats = vtlp(feats, model.config.features, dc.vtlp, gen)
            feats = spec_augment(feats, feat_lengths, dc.specaugment, gen)
            penalty = None
            if config.ctc_silence_penalty > 0:
                frames = int(model.config.encoder.output_lengths(torch.tensor([feats.size(1)])))
                penalty = silence_penalty(
                    host.audio,
                    host.audio_lengths,
                    frames,
                    model.config.encoder_frame_shift,
                    config.ctc_silence_penalty,
                    model.config.features.sample_rate,
                )
            with _autocast(device, bf16):
                loss, stats = ddp_model(feats, feat_lengths, batch.targets, batch.target_lengths, penalty)
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            if math.isfinite(grad_norm):
                optimizer.step()
            else:
                skipped += 1  # every rank sees the same all-reduced gradients, so all skip together
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            steps_run += 1
            epoch_steps += 1
            t_done = time.perf_counter()
            wait, took = t_got - t_ready, t_done - t_ready
            win_wait += wait
            win_time += took
            epoch_wait += wait
            epoch_time += took
            t_ready = t_done
            audio_seconds += float(batch.audio_lengths.sum()) / model.config.features.sample_rate
            stats["grad_norm"] = grad_norm
            for k, v in stats.items():
                agg[k] = agg.get(k, 0.0) + v
            n_agg += 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.2f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % config.log_every == 0 or step == 1:
                record = {k: round(v / n_agg, 4) for k, v in agg.items()}
                record.update(
                    epoch=epoch + 1,
                    lr=float(scheduler.get_last_lr()[0]),
                    steps_per_sec=round(n_agg / max(win_time, 1e-9), 3),
                    data_wait=round(win_wait / max(win_time, 1e-9), 4),
                )
                metrics.write("train", step, record)
                if dinfo.is_main and bar.disable:
                    log.info(
                        "step %d epoch %d loss %.3f lr %.2e | %.2f steps/s, data wait %.1f%%",
                        step,
                        epoch + 1,
                        record["loss"],
                        record["lr"],
                        record["steps_per_sec"],
                        100 * record["data_wait"],
                    )
                agg, n_agg, win_wait, win_time = {}, 0, 0.0, 0.0
            if config.save_every_steps and step % config.save_every_steps == 0:
                save_last(epoch, batch_in_epoch)
            if config.max_steps and step >= config.max_steps:
                stop = True
                break
            if deadline < math.inf and _agree(time.monotonic() > deadline, dinfo):
                paused = stop = True
                break
        bar.close()
        del it
        total_wait += epoch_wait
        total_time += epoch_time
        epoch_done = epoch_done or batch_in_epoch >= epoch_batches
        if paused and not epoch_done:  # out of time inside an epoch: keep the place, validate later
            save_last(epoch, batch_in_epoch)
            break
        summary = {
            "epoch": epoch + 1,
            "steps": epoch_steps,
            "seconds": round(epoch_time, 2),
            "steps_per_sec": round(epoch_steps / max(epoch_time, 1e-9), 3),
            "audio_sec_per_sec": round(audio_seconds * dinfo.world_size / max(epoch_time, 1e-9), 1),
            "data_wait": round(epoch_wait / max(epoch_time, 1e-9), 4),
            "skipped_steps": skipped,
        }
        if dinfo.is_main:
            epoch_record: dict[str, Any] = dict(summary)
            score = math.inf
            if valid_loader is not None:
                v = validate(model, valid_loader, valid_texts, bf16)
                score = v.score(config.best_by)
                epoch_record.update(
                    valid_loss=round(v.loss, 4),
                    valid_cer=round(v.cer, 4),
                    valid_wer=round(v.wer, 4),
                    valid_seconds=round(v.seconds, 2),
                )
            metrics.write("valid", step, epoch_record)
            log.info(
                "epoch %d: %d steps in %.1f s (%.2f steps/s, %.0f s audio/s), data wait %.1f%%%s",
                epoch + 1,
                epoch_steps,
                epoch_time,
                summary["steps_per_sec"],
                summary["audio_sec_per_sec"],
                100 * summary["data_wait"],
                f" | valid loss {epoch_record['valid_loss']:.3f} CER {epoch_record['valid_cer']:.3f} "
                f"WER {epoch_record['valid_wer']:.3f}"
                if "valid_loss" in epoch_record
                else "",
            )
            extra = {"epoch": epoch + 1, "step": step, "score": score, "best_by": config.best_by}
            extra.update(epoch_record)
            ep_path = out / f"epoch-{epoch + 1}.pt"
            save_checkpoint(model, ep_path, extra=extra)
            # an epoch cut short by max_steps was validated already; resumed and finished, it is replaced
            history = [h for h in history if h["epoch"] != epoch + 1]
            history.append({"epoch": epoch + 1, "score": score, "path": ep_path.name})
            if score <= best_score or not math.isfinite(best_score):
                best_score = score
                save_checkpoint(model, out / "best.pt", extra=extra)
            _prune(out, history, config.keep_checkpoints)
        if epoch_done:
            epoch, batch_in_epoch = epoch + 1, 0
        save_last(epoch, batch_in_epoch)
        if dinfo.world_size > 1:
            dist.barrier()

    summary_all: dict[str, Any] = {
        "steps": step,
        "steps_run": steps_run,
        "epochs": epoch,
        "best_score": best_score,
        "seconds": round(time.perf_counter() - run_t0, 2),
        "steps_per_sec": round(steps_run / max(total_time, 1e-9), 3),
        "data_wait": round(total_wait / max(total_time, 1e-9), 4),
        "finished": not paused,
    }
    if paused:
        if dinfo.is_main:
            log.info(
                "paused after %d steps (max_minutes=%g): continue with --resume", step, config.max_minutes
            )
            metrics.write("paused", step, summary_all)
    elif dinfo.is_main:
        final_source = out / "best.pt"
        if config.average > 1 and len(history) > 1:
            paths = select_checkpoints(out, config.average, "best" if math.isfinite(best_score) else "last")
            averaged = average_checkpoints(paths).to(device)
            extra = {"averaged": [p.name for p in paths], "step": step, "epoch": history[-1]["epoch"]}
            if valid_loader is not None:
                v = validate(averaged, valid_loader, valid_texts, bf16)
                extra.update(
                    valid_loss=v.loss, valid_cer=v.cer, valid_wer=v.wer, score=v.score(config.best_by)
                )
                log.info(
                    "averaged %d checkpoints: valid loss %.3f CER %.3f WER %.3f",
                    len(paths),
                    v.loss,
                    v.cer,
                    v.wer,
                )
                metrics.write("averaged", step, extra)
            save_checkpoint(averaged, out / "averaged.pt", extra=extra)
            avg_score = float(v.score(config.best_by)) if valid_loader is not None else math.inf
            if avg_score <= best_score or not math.isfinite(best_score):
                final_source = out / "averaged.pt"
        if final_source.exists():
            source = load_checkpoint(final_source)
            save_checkpoint(
                model_from_checkpoint(source),
                out / "final.pt",  # keeps its source's description (epoch, step, validation metrics)
                extra={**source.get("extra", {}), "source": final_source.name, "train_summary": summary_all},
                half=config.export_half,
            )
            summary_all["final"] = str(out / "final.pt")
        log.info(
            "done: %d steps, %.2f steps/s, data wait %.1f%% of step time; final model %s",
            step,
            summary_all["steps_per_sec"],
            100 * summary_all["data_wait"],
            summary_all.get("final"),
        )
        metrics.write("summary", step, summary_all)
    metrics.close()
    return summary_all


def _agree(flag: bool, dinfo: DistInfo) -> bool:
    """True on every rank when any rank says so (ranks must stop on the same step)."""
    if dinfo.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _prune(out: Path, history: list[dict[str, Any]], keep: int) -> None:
    """Keep the ``keep`` best epoch checkpoints (ties: the later one)."""
    ranked = sorted(history, key=lambda h: (h["score"], -h["epoch"]))
    keep_names = {h["path"] for h in ranked[: max(1, keep)]}
    for h in history:
        if h["path"] not in keep_names and (out / h["path"]).exists():
            (out / h["path"]).unlink()


# ----------------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML/TOML config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  asr train configs/default.yaml --out exp/default\n"
        "  torchrun --nproc-per-node 2 -m client.cli train configs/default.yaml\n"
        "  asr train --average 5 --out exp/default     # average the best 5 epoch models\n"
        "  asr train --average-files a.pt b.pt --out exp/ab --half   # average given checkpoints",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config is None:
        if not (args.average or args.average_files) or args.out is None:
            raise ValueError(
                "give a CONFIG to train, or --average N --out DIR (or --average-files CKPT... --out DIR) "
                "to average checkpoints"
            )
        if args.average and args.average_files:
            raise ValueError("give --average N or --average-files CKPT..., not both")
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
        )
        print(f"{args.out / 'averaged.pt'}: average of {', '.join(names)}")
        return 0
    overrides = list(args.set)
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.max_minutes is not None:
        overrides.append(f"max_minutes={args.max_minutes}")
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.device:
        overrides.append(f"device={args.device}")
    config = load_config(args.config, overrides)
    summary = train(config, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0
