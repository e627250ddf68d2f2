"""The trainer, one per rank: :meth:`Trainer.setup` (output folder, seeds, data, model, optimizer, resume
state), then :meth:`Trainer.train` (epochs of :meth:`~Trainer.train_step`, each epoch ended by
:meth:`~Trainer.validate` and the checkpoints, the run by averaging and ``final.pt``).

Resuming is exact: ``last.pt`` holds the optimizer, scheduler and RNG states and the place in the epoch;
data loaders and feature augmentation draw from their own seeded generators, so the global RNG (dropout)
continues where it stopped. Under ``torchrun`` every rank steps in lock-step and rank 0 alone validates and
writes files.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from asr.ctc import delay_penalty, silence_penalty
from asr.data.augment import spec_augment, vtlp
from asr.data.dataset import Batch
from asr.data.manifest import Utterance
from asr.model import ASRModel
from asr.tokenizer import tokenizer_from_dict
from asr.training.checkpoints import (
    average_checkpoints,
    export_final,
    load_resume_state,
    prune,
    prune_steps,
    rng_state,
    save_resume_state,
    select_checkpoints,
    set_rng_state,
)
from asr.training.config import MODEL_PARTS, TrainConfig, finetune_model_config
from asr.training.ctc_teacher import CTCTeacher, PosteriorLoss
from asr.training.data import build_tokenizer, compute_cmvn, read_utterances, train_loader, valid_loader
from asr.training.distill import DistillHead, Distilling, TeacherLoss, WhisperTeacher
from asr.training.distributed import (
    DistInfo,
    agree,
    barrier,
    broadcast_from_main,
    close_distributed,
    init_distributed,
    setup_device,
)
from asr.training.metrics import EpochMeter, LogWindow, MetricsLog
from asr.training.optim import build_optimizer
from asr.training.precision import autocast, use_bf16
from asr.training.triggered import MemoryLimits, chunk_frames_of
from asr.training.validation import validate as validate_model
from asr.training.whisper_init import load_whisper_front, warm_start

log = logging.getLogger("asr.train")  # the name the training logs have always had


def train(
    config: TrainConfig, out_dir: str | os.PathLike | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train as ``config`` says; returns a summary (steps, epochs, best validation, timings)."""
    out = Path(out_dir or config.out_dir)
    device_name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dinfo = init_distributed(device_name)
    device = setup_device(device_name, dinfo, config.data.num_workers)
    try:
        trainer = Trainer(config, out, device, dinfo)
        trainer.setup(resume)
        return trainer.train()
    finally:
        close_distributed(dinfo)


class Trainer:
    """One rank's training run. Its position (``epoch``, ``batch_in_epoch``, ``step``) always names the next
    batch to train on; ``history`` lists the epoch checkpoints with their validation scores."""

    model: ASRModel
    trained: nn.Module  # the model, or the model and its distillation head (asr.training.distill)
    ddp_model: nn.Module  # ``trained``, wrapped in DDP under torchrun
    teacher: WhisperTeacher | CTCTeacher | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: DataLoader
    valid_loader: DataLoader | None  # rank 0 only
    metrics: MetricsLog

    def __init__(self, config: TrainConfig, out: Path, device: torch.device, dinfo: DistInfo) -> None:
        self.config, self.out, self.device, self.dinfo = config, out, device, dinfo
        self.last_path = out / "last.pt"
        self.bf16 = use_bf16(config, device)
        self.deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else math.inf
        self.epoch = self.batch_in_epoch = self.step = self.steps_run = 0
        self.history: list[dict[str, Any]] = []
        self.best_score = math.inf
        self.stop = self.paused = False
        self.frozen: list[str] = []  # model parts left out of TrainConfig.trainable
        self.total_wait = self.total_time = 0.0

    # ------------------------------------------------------------------------------------------- setup

    def setup(self, resume: bool) -> None:
        """Everything before the first step; ``resume`` continues from ``last.pt`` when it exists."""
        self._setup_output(resume)
        torch.manual_seed(self.config.seed)
        random.seed(self.config.seed)
        train_utts, valid_utts = read_utterances(self.config.data, self.config.seed)
        state = self._setup_model(resume, train_utts)
        self._setup_parts()
        self._setup_data(train_utts, valid_utts)
        self._setup_optimizer(state)
        self._setup_progress(state, f"{len(train_utts)} train / {len(valid_utts)} valid utterances")

    def _setup_output(self, resume: bool) -> None:
        if self.last_path.exists() and not resume:
            raise FileExistsError(
                f"{self.last_path} exists: pass --resume to continue it, or choose another --out"
            )
        if self.dinfo.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))

    def _setup_model(self, resume: bool, train_utts: list[Utterance]) -> dict[str, Any]:
        """Sets ``self.model``: resumed, fine-tuned (``init_from``) or new; returns the resume state."""
        if resume and self.last_path.exists():
            ckpt, state = load_resume_state(self.last_path, self.dinfo.world_size)
            self.model = model_from_checkpoint(ckpt).to(self.device)
            log.info("resuming %s at epoch %d, step %d", self.last_path, state["epoch"], state["step"])
            return state
        self.model = self._finetuned_model() if self.config.init_from else self._new_model(train_utts)
        return {}

    def _setup_parts(self) -> None:
        """Freezes the parts ``trainable`` leaves out, and checks the triggered attention's chunk."""
        frozen = [p for p in MODEL_PARTS if self.config.trainable and p not in self.config.trainable]
        for part in frozen:
            getattr(self.model, part).requires_grad_(False)
        if frozen:
            log.info("training %s; frozen: %s", ", ".join(self.config.trainable), ", ".join(frozen))
        self.frozen = frozen
        for prefix in self.config.frozen:
            params = [
                p for n, p in self.model.named_parameters() if n == prefix or n.startswith(prefix + ".")
            ]
            if not params:
                raise ValueError(
                    f"frozen: {prefix!r} names no parameters of the model (e.g. 'encoder.front')"
                )
            for p in params:
                p.requires_grad_(False)
        if self.config.frozen:
            log.info("frozen weights: %s", ", ".join(self.config.frozen))
        if self.config.triggered_attention.prob > 0:
            self._memory_limits(0)  # a model without a chunk fails here, before the first step

    def _memory_limits(self, step: int) -> MemoryLimits | None:
        """The step's triggered-attention limits (seeded by the step, as a resumed run draws them), or
        ``None`` when off."""
        tc = self.config.triggered_attention
        if tc.prob <= 0:
            return None
        chunk = chunk_frames_of(tc, self.model.config.encoder.chunk_frames)
        seed = self.config.seed * 1_000_003 + step + 1
        return MemoryLimits(tc, chunk, self.model.tokenizer.blank_id, seed)

    def _finetuned_model(self) -> ASRModel:
        ckpt = load_checkpoint(self.config.init_from)
        if self.config.model:
            ckpt = {**ckpt, "config": finetune_model_config(ckpt["config"], self.config.model).to_dict()}
        model = model_from_checkpoint(ckpt).to(self.device)
        log.info("fine-tuning %s (its config, tokenizer and CMVN)", self.config.init_from)
        return model

    def _new_model(self, train_utts: list[Utterance]) -> ASRModel:
        """A fresh model: the tokenizer learnt from the training texts (or warm_start's), CMVN from their
        (log-mel) features, a Whisper front end from whisper_init, parts from warm_start."""
        config, dc, main = self.config, self.config.data, self.dinfo.is_main
        texts = [u.text for u in train_utts]
        donor = load_checkpoint(config.warm_start) if config.warm_start else None
        if donor is not None:  # its parts are only meaningful with its tokenizer
            tok: dict[str, Any] | None = donor["tokenizer"]
        else:
            tok = build_tokenizer(config.tokenizer, texts).to_dict() if main else None
        tok = broadcast_from_main(tok, self.dinfo)  # BPE training need not agree across ranks
        assert tok is not None
        model = ASRModel(config.model_config, tokenizer_from_dict(tok)).to(self.device)
        if model.config.encoder.whisper is not None:
            load_whisper_front(model, config.whisper_init)
        if donor is not None:
            warm_start(model, donor, config.warm_start, config.warm_start_parts)
        if main and model.config.features.kind == "logmel":
            frames = compute_cmvn(model, train_utts, dc.cmvn_utts, config.seed, dc.num_workers)
            log.info("CMVN from %d frames", frames)
        log.info(
            "model has %.2fM parameters, %d tokens", model.num_parameters() / 1e6, model.tokenizer.vocab_size
        )
        return model

    def _setup_data(self, train_utts: list[Utterance], valid_utts: list[Utterance]) -> None:
        dc, tokenizer, seed = self.config.data, self.model.tokenizer, self.config.seed
        pin = self.device.type == "cuda"
        self.loader, self.sampler = train_loader(train_utts, tokenizer, dc, seed, self.dinfo, pin)
        self.valid_loader = None
        if valid_utts and self.dinfo.is_main:
            self.valid_loader = valid_loader(valid_utts, tokenizer, dc, seed)
        self.valid_texts = [u.text for u in valid_utts]
        self.steps_per_epoch = len(self.sampler.all_batches(0)) // self.dinfo.world_size

    def _setup_optimizer(self, state: dict[str, Any]) -> None:
        """Optimizer and LR schedule (restored with the RNG state on resume), and the DDP wrapper."""
        config, cuda = self.config, self.device.type == "cuda"
        total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)
        self._setup_distill(state)
        prefix = "" if self.trained is self.model else "model."  # Distilling holds the model as .model
        self.optimizer, self.scheduler = build_optimizer(
            self.trained, config.optim, total_steps, fused=cuda, prefix=prefix
        )
        if state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], self.device)
        self.ddp_model = self.trained
        if self.dinfo.world_size > 1:
            self.ddp_model = DistributedDataParallel(
                self.trained,
                device_ids=[self.device.index] if cuda else None,
                find_unused_parameters=self.model.config.ctc_weight in (0.0, 1.0),
            )

    def _setup_distill(self, state: dict[str, Any]) -> None:
        """The teacher and what learns from it (a head, restored on resume), when distillation is on."""
        dc = self.config.distill
        self.trained, self.teacher = self.model, None
        if dc.weight <= 0:
            return
        head: TeacherLoss
        if dc.kind == "ctc":
            self.teacher = CTCTeacher(dc.teacher, self.model, self.device)
            head, what = PosteriorLoss(self.model.ctc_log_probs), f"{self.teacher.name}'s CTC posteriors"
        else:
            self.teacher = WhisperTeacher(dc.teacher, dc.threads)
            probe, _ = self.teacher.targets(torch.zeros(1, 16000), torch.tensor([16000]))
            head = DistillHead(self.model.config.encoder.output_dim, probe.size(-1)).to(self.device)
            what = "Whisper's encoder states"
        if "distill_head" in state:
            head.load_state_dict(state["distill_head"])
        self.trained = Distilling(self.model, head, dc.weight)
        log.info("distilling %s (weight %g)", what, dc.weight)

    def _setup_progress(self, state: dict[str, Any], data_note: str) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.step = int(state.get("step", 0))
        self.history = list(state.get("history", []))
        self.best_score = min((h["score"] for h in self.history), default=math.inf)
        self.metrics = MetricsLog(self.out, self.dinfo.is_main)
        if state:
            self.metrics.drop_after(self.step)  # what was logged after last.pt was written is done again
        if self.dinfo.is_main:
            log.info(
                "%s, %d steps per epoch x %d epochs on %s (world size %d)",
                data_note,
                self.steps_per_epoch,
                self.config.epochs,
                self.device,
                self.dinfo.world_size,
            )

    # ------------------------------------------------------------------------------------------- train

    def train(self) -> dict[str, Any]:
        """Epochs until ``epochs``, ``max_steps`` or ``max_minutes`` (a pause); then, unless paused, the
        averaged and final models. Returns the run's summary."""
        t0 = time.perf_counter()
        self.stop = bool(self.config.max_steps and self.step >= self.config.max_steps)
        while self.epoch < self.config.epochs and not self.stop:
            if not self._run_epoch():
                break
        summary = self._summary(t0)
        if self.paused:
            if self.dinfo.is_main:
                log.info(
                    "paused after %d steps (max_minutes=%g): continue with --resume",
                    self.step,
                    self.config.max_minutes,
                )
                self.metrics.write("paused", self.step, summary)
        elif self.dinfo.is_main:
            self.finish(summary)
        self.metrics.close()
        return summary

    def _run_epoch(self) -> bool:
        """The rest of the current epoch and its end; False when paused inside it."""
        meter, epoch_done = self.train_epoch()
        self.total_wait += meter.wait
        self.total_time += meter.time
        if self.paused and not epoch_done:  # out of time inside an epoch: keep the place, validate later
            self.save_last()
            return False
        if self.dinfo.is_main:
            record, score = self.validate(meter)
            self.save_epoch(record, score)
        if epoch_done:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.save_last()
        barrier(self.dinfo)
        return True

    def train_epoch(self) -> tuple[EpochMeter, bool]:
        """Steps from the current place to the epoch's end or a stop; returns the epoch's meter and whether
        the epoch is done."""
        self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch)
        self.model.train()
        for part in self.frozen:  # no dropout where nothing learns: the frozen parts compute as in use
            getattr(self.model, part).eval()
        bar = self._progress_bar()
        meter, window = EpochMeter(), LogWindow()
        epoch_batches = len(self.sampler) + self.batch_in_epoch
        ended = False  # batch counts vary a little between epochs (duration jitter)
        t_ready = time.perf_counter()
        it = iter(self.loader)
        for batch in it:
            t_got = time.perf_counter()
            stats, skipped = self.train_step(batch)
            t_done = time.perf_counter()
            wait, took = t_got - t_ready, t_done - t_ready
            t_ready = t_done
            meter.add(wait, took, self._audio_seconds(batch), skipped)
            window.add(stats, wait, took)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.2f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            window = self._log_train(window, bar.disable)
            if self.config.save_every_steps and self.step % self.config.save_every_steps == 0:
                self.save_last()
                self.save_step()
            if self._should_stop():
                break
        else:
            ended = True
        bar.close()
        del it
        return meter, ended or self.batch_in_epoch >= epoch_batches

    def train_step(self, batch: Batch) -> tuple[dict[str, float], bool]:
        """One optimizer step on ``batch`` (on the CPU): features and their augmentation on the device, the
        loss, backward and clipping. Returns the step's statistics and whether the step was skipped (a
        non-finite gradient norm)."""
        host = batch  # the silence penalty reads the waveforms here, not back from the GPU
        batch = batch.to(self.device)
        feats, feat_lengths = self._features(batch)
        penalty = self._token_penalty(host, feats.size(1), feat_lengths)
        extra: dict[str, Any] = {}
        if self.config.provisional_ctc > 0:
            extra["provisional_ctc"] = self.config.provisional_ctc
        if self.teacher is not None:  # the teacher's view of the same augmented audio (TrainConfig.distill)
            with autocast(self.device, self.bf16):
                extra["teacher"] = self.teacher.targets(host.audio, host.audio_lengths)
        with autocast(self.device, self.bf16):
            loss, stats = self.ddp_model(
                feats,
                feat_lengths,
                batch.targets,
                batch.target_lengths,
                penalty,
                self._memory_limits(self.step),
                **extra,
            )
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(self.trained.parameters(), self.config.grad_clip))
        finite = math.isfinite(grad_norm)
        if finite:  # every rank sees the same all-reduced gradients, so all skip together
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1
        self.steps_run += 1
        stats["grad_norm"] = grad_norm
        return stats, not finite

    def _features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features with VTLP and SpecAugment, drawn from a generator seeded by the step (a resumed
        run draws the same)."""
        feats, lengths = self.model.features(batch.audio, batch.audio_lengths)
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        feats = vtlp(feats, self.model.config.features, self.config.data.vtlp, gen)
        feats = spec_augment(feats, lengths, self.config.data.specaugment, gen)
        return feats, lengths

    def _token_penalty(self, host: Batch, num_feats: int, feat_lengths: torch.Tensor) -> torch.Tensor | None:
        """The CTC paths' penalties (asr.ctc): on tokens in the silence around the speech, and on delay."""
        cfg, mc = self.config, self.model.config
        if cfg.ctc_silence_penalty <= 0 and cfg.ctc_delay_penalty <= 0:
            return None
        frames = int(mc.encoder.output_lengths(torch.tensor([num_feats])))
        penalty = torch.zeros(host.audio.size(0), frames, device=feat_lengths.device)
        if cfg.ctc_silence_penalty > 0:
            penalty += silence_penalty(
                host.audio,
                host.audio_lengths,
                frames,
                mc.encoder_frame_shift,
                cfg.ctc_silence_penalty,
                mc.features.sample_rate,
            ).to(penalty.device)
        if cfg.ctc_delay_penalty > 0:
            lengths = mc.encoder.output_lengths(feat_lengths)
            penalty += delay_penalty(lengths, frames, cfg.ctc_delay_penalty)
        return penalty

    def _audio_seconds(self, batch: Batch) -> float:
        return float(batch.audio_lengths.sum()) / self.model.config.features.sample_rate

    def _should_stop(self) -> bool:
        """After a step: stop at ``max_steps``, or pause past the deadline (all ranks agree on it)."""
        if self.config.max_steps and self.step >= self.config.max_steps:
            self.stop = True
        elif self.deadline < math.inf and agree(time.monotonic() > self.deadline, self.dinfo):
            self.paused = self.stop = True
        return self.stop

    def _progress_bar(self) -> tqdm:
        return tqdm(
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.dinfo.is_main or not sys.stderr.isatty(),
            dynamic_ncols=True,
            leave=False,
        )

    def _log_train(self, window: LogWindow, bar_hidden: bool) -> LogWindow:
        """Write a ``train`` record every ``log_every`` steps (and after the first); returns the window to
        go on with (a new one after a record)."""
        if not (self.step % self.config.log_every == 0 or self.step == 1):
            return window
        record = window.record(self.epoch + 1, float(self.scheduler.get_last_lr()[0]))
        self.metrics.write("train", self.step, record)
        if self.dinfo.is_main and bar_hidden:
            log.info(
                "step %d epoch %d loss %.3f lr %.2e | %.2f steps/s, data wait %.1f%%",
                self.step,
                self.epoch + 1,
                record["loss"],
                record["lr"],
                record["steps_per_sec"],
                100 * record["data_wait"],
            )
        return LogWindow()

    # ------------------------------------------------------------------------------------------- validate

    def validate(self, meter: EpochMeter) -> tuple[dict[str, Any], float]:
        """Rank 0 at an epoch's end: ``(the epoch's record, its score)``; the record (the epoch's speed and
        validation metrics) goes to the metrics log. The score is ``inf`` without a validation set."""
        record = meter.summary(self.epoch + 1, self.dinfo.world_size)
        score = math.inf
        if self.valid_loader is not None:
            v = validate_model(self.model, self.valid_loader, self.valid_texts, self.bf16)
            score = v.score(self.config.best_by)
            record.update(
                valid_loss=round(v.loss, 4),
                valid_cer=round(v.cer, 4),
                valid_wer=round(v.wer, 4),
                valid_seconds=round(v.seconds, 2),
            )
            if not math.isnan(v.cer_ahead):
                record["valid_cer_ahead"] = round(v.cer_ahead, 4)
        self.metrics.write("valid", self.step, record)
        log.info(
            "epoch %d: %d steps in %.1f s (%.2f steps/s, %.0f s audio/s), data wait %.1f%%%s",
            record["epoch"],
            meter.steps,
            meter.time,
            record["steps_per_sec"],
            record["audio_sec_per_sec"],
            100 * record["data_wait"],
            f" | valid loss {record['valid_loss']:.3f} CER {record['valid_cer']:.3f} "
            f"WER {record['valid_wer']:.3f}"
            + (
                f", CER over the look-ahead {record['valid_cer_ahead']:.3f}"
                if "valid_cer_ahead" in record
                else ""
            )
            if "valid_loss" in record
            else "",
        )
        return record, score

    # ------------------------------------------------------------------------------------------- save

    def save_last(self) -> None:
        """``last.pt`` (rank 0): the model and everything a resumed run needs, at the current place."""
        if not self.dinfo.is_main:
            return
        train_state = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "world_size": self.dinfo.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.device),
            "history": self.history,
            "config": self.config.to_dict(),
        }
        if isinstance(self.trained, Distilling):
            train_state["distill_head"] = self.trained.head.state_dict()
        save_resume_state(self.model, train_state, self.last_path)

    def save_step(self) -> None:
        """Rank 0, with ``keep_step_checkpoints``: ``step-N.pt`` (the model alone), the newest kept."""
        if not self.dinfo.is_main or not self.config.keep_step_checkpoints:
            return
        extra = {"step": self.step, "epoch": self.epoch}
        save_checkpoint(self.model, self.out / f"step-{self.step}.pt", extra=extra)
        prune_steps(self.out, self.config.keep_step_checkpoints)

    def save_epoch(self, record: dict[str, Any], score: float) -> None:
        """Rank 0 at an epoch's end: ``epoch-N.pt``, ``best.pt`` when it is the best yet, and pruning."""
        epoch = self.epoch + 1
        extra = {"epoch": epoch, "step": self.step, "score": score, "best_by": self.config.best_by}
        extra.update(record)
        path = self.out / f"epoch-{epoch}.pt"
        save_checkpoint(self.model, path, extra=extra)
        # an epoch cut short by max_steps was validated already; resumed and finished, it is replaced
        self.history = [h for h in self.history if h["epoch"] != epoch]
        self.history.append({"epoch": epoch, "score": score, "path": path.name})
        if score <= self.best_score or not math.isfinite(self.best_score):
            self.best_score = score
            save_checkpoint(self.model, self.out / "best.pt", extra=extra)
        prune(self.out, self.history, self.config.keep_checkpoints)

    def finish(self, summary: dict[str, Any]) -> None:
        """Rank 0 after the last epoch: average the epoch models, export the better of the average and
        ``best.pt`` as ``final.pt`` (adding ``summary["final"]``), and log the summary."""
        final_source = self.out / "best.pt"
        if self.config.average > 1 and len(self.history) > 1 and self._save_average():
            final_source = self.out / "averaged.pt"
        if final_source.exists():
            final = self.out / "final.pt"
            export_final(final_source, final, summary, self.config.export_half, self.config.export_int8)
            summary["final"] = str(final)
        log.info(
            "done: %d steps, %.2f steps/s, data wait %.1f%% of step time; final model %s",
            self.step,
            summary["steps_per_sec"],
            100 * summary["data_wait"],
            summary.get("final"),
        )
        self.metrics.write("summary", self.step, summary)

    def _save_average(self) -> bool:
        """``averaged.pt`` from the best (or, without validation, the latest) ``average`` epoch models;
        True when it scores at least as well as ``best.pt``."""
        by = "best" if math.isfinite(self.best_score) else "last"
        paths = select_checkpoints(self.out, self.config.average, by)
        averaged = average_checkpoints(paths).to(self.device)
        extra = {"averaged": [p.name for p in paths], "step": self.step, "epoch": self.history[-1]["epoch"]}
        score = math.inf
        if self.valid_loader is not None:
            v = validate_model(averaged, self.valid_loader, self.valid_texts, self.bf16)
            score = float(v.score(self.config.best_by))
            extra.update(
                valid_loss=v.loss, valid_cer=v.cer, valid_wer=v.wer, score=v.score(self.config.best_by)
            )
            log.info(
                "averaged %d checkpoints: valid loss %.3f CER %.3f WER %.3f", len(paths), v.loss, v.cer, v.wer
            )
            self.metrics.write("averaged", self.step, extra)
        save_checkpoint(averaged, self.out / "averaged.pt", extra=extra)
        return score <= self.best_score or not math.isfinite(self.best_score)

    def _summary(self, t0: float) -> dict[str, Any]:
        return {
            "steps": self.step,
            "steps_run": self.steps_run,
            "epochs": self.epoch,
            "best_score": self.best_score,
            "seconds": round(time.perf_counter() - t0, 2),
            "steps_per_sec": round(self.steps_run / max(self.total_time, 1e-9), 3),
            "data_wait": round(self.total_wait / max(self.total_time, 1e-9), 4),
            "finished": not self.paused,
        }
