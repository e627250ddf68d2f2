"""Training end to end on a few espeak-ng utterances with a tiny model: the loss falls, checkpoints load,
resuming continues the step count (and, mid-epoch, gives the same weights as an uninterrupted run), and a
2-process DDP run with torchrun/gloo works."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import tiny_model

import asr.train as train_module
from asr.checkpoint import load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
from asr.ctc import delay_penalty
from asr.data.importers import import_corpus
from asr.data.manifest import write_manifest
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer
from asr.train import (
    TrainConfig,
    average_checkpoints,
    cpu_has_native_bf16,
    finetune_model_config,
    load_config,
    train,
)
from asr.training.config import OptimConfig
from asr.training.data import read_utterances
from asr.training.optim import build_optimizer, lr_scale
from asr.training.triggered import MemoryLimits
from client.cli import main

ROOT = Path(__file__).resolve().parent.parent

TINY_MODEL = {
    "features": {"n_mels": 40},
    "encoder": {
        "input_dim": 40,
        "conv_channels": 8,
        "hidden_size": 48,
        "num_layers": 2,
        "pyramid_layers": 1,
        "dropout": 0.1,
    },
    "decoder": {
        "embed_dim": 16,
        "hidden_size": 48,
        "attention_dim": 32,
        "location_channels": 4,
        "location_kernel": 5,
    },
    "ctc_weight": 0.3,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: extra threads only contend with other processes. Restored for the other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def manifest(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "speech.jsonl"
    write_manifest(import_corpus("folder", speech_dir), path)
    return path


def tiny_config(manifest: Path, out: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {
            "train": [str(manifest)],
            "valid": [str(manifest)],
            "max_batch_seconds": 100.0,
            "num_workers": 0,
            "cmvn_utts": 4,
            "specaugment": {"enabled": False},
        },
        "model": copy.deepcopy(TINY_MODEL),
        "optim": {"lr": 5e-3, "warmup_steps": 3, "schedule": "constant"},
        "epochs": 40,
        "amp": False,
        "seed": 0,
        "out_dir": str(out),
        "log_every": 1,
        "average": 3,
        "device": "cpu",
    }
    for key, value in changes.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return raw


def records(out: Path, kind: str) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_training_lowers_the_loss_and_writes_loadable_checkpoints(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(TrainConfig.from_dict(tiny_config(manifest, out)))
    assert summary["steps"] == 40 and summary["epochs"] == 40
    valid = records(out, "valid")
    assert len(valid) == 40
    assert valid[-1]["valid_loss"] < 0.6 * valid[0]["valid_loss"]
    assert 0.0 <= valid[-1]["data_wait"] <= 1.0 and valid[-1]["steps_per_sec"] > 0
    for name in ("last.pt", "best.pt", "averaged.pt", "final.pt", "config.yaml"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("epoch-*.pt"))) == 5  # keep_checkpoints
    final = load_checkpoint(out / "final.pt")
    assert final["state_dict"]["ctc.weight"].dtype == torch.float16  # export_half
    assert final["extra"]["source"] in ("best.pt", "averaged.pt") and final["extra"]["step"] == 40
    assert {"valid_loss", "valid_cer", "valid_wer", "epoch"} <= set(final["extra"])  # `asr models` shows them
    model = load_model(out / "final.pt", device="cpu")
    assert model.cmvn.mean.abs().sum() > 0  # CMVN was set from the training features
    assert model.config.encoder.hidden_size == 48
    text = model.transcribe(_first_audio(manifest)).text
    assert isinstance(text, str)
    avg = average_checkpoints(sorted(out.glob("epoch-*.pt"))[:2])
    assert avg.config == model.config


def _first_audio(manifest: Path) -> str:
    return json.loads(manifest.read_text().splitlines()[0])["audio"]


def test_resume_mid_epoch_matches_an_uninterrupted_run(manifest: Path, tmp_path: Path) -> None:
    # ~2 s per utterance and 4.5 padded seconds per batch: two batches an epoch, so step 3 is mid-epoch 2
    # with the random feature augmentations on: they are seeded by the step, so a resumed run redraws them
    common = {
        "data__max_batch_seconds": 4.5,
        "data__valid": [],
        "data__specaugment": {"time_masks": 1, "freq_masks": 1},
        "data__vtlp": {"max_warp": 0.1},
        "epochs": 3,
        "average": 0,
    }
    full = train(TrainConfig.from_dict(tiny_config(manifest, tmp_path / "full", **common)))
    assert full["steps"] == 6, full

    part = tmp_path / "part"
    first = train(
        TrainConfig.from_dict(tiny_config(manifest, part, max_steps=3, save_every_steps=1, **common))
    )
    assert first["steps"] == 3
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig.from_dict(tiny_config(manifest, part, **common)))
    second = train(TrainConfig.from_dict(tiny_config(manifest, part, **common)), resume=True)
    assert second["steps"] == 6 and second["steps_run"] == 3
    steps = [r["step"] for r in records(part, "train")]
    assert steps == [1, 2, 3, 4, 5, 6]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    b = load_checkpoint(part / "last.pt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_resume_with_workers_validation_and_a_max_steps_stop(manifest: Path, tmp_path: Path) -> None:
    """Data workers and a validation set: the validation loader used to draw its seed from the global RNG
    (the resumed run drew it again, so dropout masks differed), and an epoch cut by max_steps was validated
    and recorded twice once resumed."""
    common = {"data__max_batch_seconds": 4.5, "data__num_workers": 1, "epochs": 3, "average": 0}
    train(TrainConfig.from_dict(tiny_config(manifest, tmp_path / "full", **common)))
    part = tmp_path / "part"
    train(TrainConfig.from_dict(tiny_config(manifest, part, max_steps=3, **common)))  # stops inside epoch 2
    second = train(TrainConfig.from_dict(tiny_config(manifest, part, **common)), resume=True)
    assert second["steps"] == 6 and second["steps_run"] == 3
    a = load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    last = load_checkpoint(part / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], last["state_dict"][k], msg=k)
    assert [h["epoch"] for h in last["extra"]["train"]["history"]] == [1, 2, 3]
    assert [r["step"] for r in records(part, "train")] == [1, 2, 3, 4, 5, 6]


def test_step_snapshots_keep_the_newest(manifest: Path, tmp_path: Path) -> None:
    """keep_step_checkpoints: the model at each save_every_steps save, the newest N kept, averageable."""
    from asr.training import average_checkpoints

    common = {"data__max_batch_seconds": 4.5, "data__valid": [], "epochs": 2, "average": 0}
    out = tmp_path / "run"
    cfg = tiny_config(manifest, out, max_steps=3, save_every_steps=1, keep_step_checkpoints=2, **common)
    train(TrainConfig.from_dict(cfg))
    assert sorted(p.name for p in out.glob("step-*.pt")) == ["step-2.pt", "step-3.pt"]
    last, step3 = load_checkpoint(out / "last.pt"), load_checkpoint(out / "step-3.pt")
    assert step3["extra"]["step"] == 3 and "train" not in step3["extra"]
    for k, v in last["state_dict"].items():
        torch.testing.assert_close(v, step3["state_dict"][k], msg=k)
    assert average_checkpoints(sorted(out.glob("step-*.pt"))) is not None
    with pytest.raises(ValueError, match="save_every_steps > 0"):
        TrainConfig.from_dict(tiny_config(manifest, out, keep_step_checkpoints=2, **common))


def test_resume_refuses_another_world_size(manifest: Path, tmp_path: Path) -> None:
    from asr.checkpoint import atomic_save

    common = {"data__max_batch_seconds": 4.5, "data__valid": [], "epochs": 2, "average": 0}
    out = tmp_path / "run"
    train(TrainConfig.from_dict(tiny_config(manifest, out, max_steps=1, save_every_steps=1, **common)))
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["extra"]["train"]["world_size"] == 1
    ckpt["extra"]["train"]["world_size"] = 2  # as if torchrun had run it on two processes
    atomic_save(ckpt, out / "last.pt")
    with pytest.raises(ValueError, match="nproc-per-node 2"):
        train(TrainConfig.from_dict(tiny_config(manifest, out, **common)), resume=True)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"epochs": "1"}, "'epochs' must be an integer"),
        ({"amp": "yes"}, "'amp' must be true or false"),
        ({"data__snr_db": 20}, "'data.snr_db' must be a list of 2 values"),
        ({"optim__lr": "fast"}, "'optim.lr' must be a number"),
        ({"best_by": "cer", "model__ctc_weight": 0.0}, "needs the CTC head"),
        ({"ctc_silence_penalty": -1.0}, "ctc_silence_penalty must be >= 0"),
        ({"ctc_delay_penalty": -0.1}, "ctc_delay_penalty must be >= 0"),
        ({"provisional_ctc": -0.5}, "provisional_ctc must be >= 0"),
        ({"data__vtlp": {"max_warp": 0.7}}, r"vtlp.max_warp must be in \[0, 0.5\)"),
        ({"data__vtlp": {"warp": 0.1}}, "warp"),
        ({"optim__lr_scales": {"encoder": 0.0}}, "positive multipliers"),
        ({"optim__lr_scales": [0.1]}, "'optim.lr_scales' must be a mapping"),
        ({"optim__lr_scales": {"encoder": "slow"}}, r"'optim.lr_scales.encoder' must be a number"),
    ],
)
def test_config_values_are_checked(
    manifest: Path, tmp_path: Path, changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(tiny_config(manifest, tmp_path, **changes))


def test_lr_scales_make_parameter_groups_by_longest_prefix() -> None:
    model = ASRModel(ModelConfig.from_dict(TINY_MODEL), CharTokenizer.default())
    model.ctc.requires_grad_(False)
    scales = {"encoder": 0.1, "encoder.layers.0": 0.5}
    assert lr_scale("encoder.layers.0.weight_ih_l0", scales) == 0.5
    assert lr_scale("encoder.layers.1.bias_ih_l0", scales) == 0.1
    assert lr_scale("decoder.embed.weight", scales) == 1.0 and lr_scale("encoderx.w", scales) == 1.0
    config = OptimConfig(lr=1e-3, weight_decay=0.01, lr_scales=scales)
    optimizer, scheduler = build_optimizer(model, config, total_steps=10, fused=False)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in by_param, name
            continue
        group = by_param[id(p)]
        assert group["lr"] == pytest.approx(1e-3 * lr_scale(name, scales) / config.warmup_steps), name
        assert group["weight_decay"] == (0.0 if p.dim() < 2 or "bias" in name else 0.01), name
    assert scheduler.get_last_lr()[0] == pytest.approx(
        1e-3 / config.warmup_steps
    )  # the first group: unscaled
    with pytest.raises(ValueError, match=r"\['ctc'\] name no trained parameters"):
        build_optimizer(model, OptimConfig(lr_scales={"ctc": 0.1}), total_steps=10, fused=False)


def test_config_files_and_cli(manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config(manifest, tmp_path / "cli", epochs=2, average=0)
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    assert load_config(cfg_path, ["optim.lr=0.01", "data.num_workers=1"]).optim.lr == 0.01
    with pytest.raises(ValueError, match="lrr"):
        load_config(cfg_path, ["optim.lrr=0.01"])
    with pytest.raises(ValueError, match="kind"):
        load_config(cfg_path, ["tokenizer.kind=words"])
    toml = tmp_path / "tiny.toml"
    toml.write_text(f'epochs = 3\n[data]\ntrain = ["{manifest}"]\n')
    assert load_config(toml).epochs == 3 and load_config(toml).data.train == (str(manifest),)

    assert main(["train", str(cfg_path), "--max-steps", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    assert main(["train", str(cfg_path), "--resume"]) == 0
    assert main(["train", "--average", "2", "--average-by", "last", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "averaged.pt").is_file()
    assert main(["train", str(cfg_path)]) == 1  # last.pt exists and no --resume: one-line error
    assert "--resume" in capsys.readouterr().err


def test_bpe_tokenizer_and_default_config_parse(manifest: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(
        tiny_config(
            manifest, tmp_path / "bpe", epochs=1, average=0, tokenizer={"kind": "bpe", "vocab_size": 30}
        )
    )
    train(cfg)
    assert load_model(tmp_path / "bpe" / "final.pt", device="cpu").tokenizer.kind == "bpe"
    default = load_config(ROOT / "configs" / "default.yaml")
    assert default.model_config.ctc_weight == 0.3 and default.tokenizer.kind == "char"
    for path in sorted((ROOT / "configs").glob("*.yaml")):  # every shipped recipe parses (unknown keys fail)
        assert load_config(path).epochs > 0, path
    stage2 = load_config(ROOT / "configs" / "finetune-so762.yaml")
    assert stage2.init_from == default.out_dir + "/final.pt"  # stage 2 continues stage 1's output


def test_ddp_two_cpu_processes(manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(manifest, tmp_path / "ddp", epochs=2, average=0)
    raw["data"]["max_batch_size"] = 1  # one utterance a batch: two steps per rank per epoch
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "client.cli",
            "train",
            str(cfg),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4  # 4 utterances / 2 ranks, 2 epochs
    assert (tmp_path / "ddp" / "final.pt").is_file()
    assert "world size 2" in proc.stderr


def test_max_minutes_pauses_and_resume_finishes(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "paused"
    raw = tiny_config(manifest, out, epochs=2, average=0, max_minutes=1e-6)
    raw["data"]["max_batch_size"] = 1
    paused = train(TrainConfig.from_dict(raw))
    assert paused["steps"] == 1 and paused["finished"] is False
    assert (out / "last.pt").is_file() and not (out / "final.pt").exists()
    done = train(TrainConfig.from_dict({**raw, "max_minutes": 0.0}), resume=True)
    assert done["steps"] == 8 and done["finished"] is True
    assert (out / "final.pt").is_file()


def test_init_from_fine_tunes_a_trained_checkpoint(manifest: Path, tmp_path: Path) -> None:
    common = {"data__valid": [str(manifest)], "epochs": 12, "average": 0}
    base = tmp_path / "base"
    train(TrainConfig.from_dict(tiny_config(manifest, base, **common)))
    fresh = records(base, "valid")[0]["valid_loss"]
    trained = records(base, "valid")[-1]["valid_loss"]
    tuned_out = tmp_path / "tuned"
    cfg = tiny_config(manifest, tuned_out, epochs=1, average=0, init_from=str(base / "final.pt"))
    # the checkpoint brings its own architecture, tokenizer and CMVN; a fine-tuning run may raise dropout
    cfg["model"] = {"encoder": {"dropout": 0.3}, "decoder": {"hidden_size": 48}}
    train(TrainConfig.from_dict(cfg))
    first = records(tuned_out, "valid")[0]["valid_loss"]
    assert first < fresh and abs(first - trained) < 0.5 * (fresh - trained)
    tuned = load_model(tuned_out / "final.pt", device="cpu").config
    original = load_model(base / "final.pt", device="cpu").config
    assert tuned.encoder.dropout == 0.3 and original.encoder.dropout == 0.1
    assert dataclasses.replace(tuned, encoder=original.encoder) == original


def test_fine_tuning_may_change_regularisation_but_not_the_architecture() -> None:
    base = ModelConfig.from_dict(TINY_MODEL).to_dict()
    tuned = finetune_model_config(
        base, {"encoder": {"dropout": 0.3}, "decoder": {"sampling_prob": 0.2}, "ctc_weight": 0.5}
    )
    assert (tuned.encoder.dropout, tuned.decoder.sampling_prob, tuned.ctc_weight) == (0.3, 0.2, 0.5)
    assert tuned.encoder.hidden_size == 48 and tuned.decoder.dropout == 0.1  # the rest is the checkpoint's
    assert finetune_model_config(base, {"encoder": {"hidden_size": 48}}) == ModelConfig.from_dict(base)
    with pytest.raises(ValueError, match=r"changes \['model.encoder.hidden_size'\].*model.encoder.dropout"):
        finetune_model_config(base, {"encoder": {"hidden_size": 64, "dropout": 0.2}})
    with pytest.raises(ValueError, match=r"unknown model config keys \['encoder.dropuot'\]"):
        finetune_model_config(base, {"encoder": {"dropuot": 0.2}})
    # how a streaming Whisper model reads its look-ahead shapes no weight either
    streaming = {**base, "features": {**base["features"], "kind": "whisper-causal"}}
    chunked = {"frontend": "whisper", "chunk_frames": 4, "lookahead_frames": 2}
    streaming["encoder"] = {**base["encoder"], **chunked}
    early = finetune_model_config(streaming, {"encoder": {"early_lookahead": True}})
    assert early.encoder.early_lookahead


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_cpu_amp_trains_in_bf16(manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = train_module._autocast

    def spy(device: torch.device, enabled: bool) -> Any:
        seen.append(enabled)
        return real(device, enabled)

    monkeypatch.setattr(train_module, "_autocast", spy)
    out = tmp_path / "bf16"
    train(TrainConfig.from_dict(tiny_config(manifest, out, epochs=20, average=0, cpu_amp=True)))
    assert seen and all(seen)  # bf16 autocast on every training and validation step
    valid = records(out, "valid")
    assert valid[-1]["valid_loss"] < 0.7 * valid[0]["valid_loss"]
    assert load_checkpoint(out / "last.pt")["state_dict"]["ctc.weight"].dtype == torch.float32  # fp32 master


def test_cpu_amp_is_refused_without_native_bf16(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"cpu_amp: this CPU has no native bf16.*set cpu_amp: false"):
        train(TrainConfig.from_dict(tiny_config(manifest, tmp_path / "x", epochs=1, cpu_amp=True)))


def test_ctc_silence_penalty_weights_the_training_loss(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The penalty reaches the CTC loss at the encoder's frame rate, on the silence around the speech, and
    the model still learns."""
    seen: list[torch.Tensor] = []
    real = train_module.silence_penalty

    def spy(audio: torch.Tensor, lengths: torch.Tensor, frames: int, *args: Any) -> torch.Tensor:
        pen = real(audio, lengths, frames, *args)
        seen.append(pen)
        return pen

    monkeypatch.setattr(train_module, "silence_penalty", spy)
    out = tmp_path / "silence"
    cfg = tiny_config(manifest, out, epochs=20, average=0, ctc_silence_penalty=8.0)
    train(TrainConfig.from_dict(cfg))
    assert len(seen) == 20  # one batch per step
    assert all(set(p.unique().tolist()) <= {0.0, 8.0} for p in seen)
    assert any(bool((p == 8.0).any()) for p in seen)  # espeak-ng leaves some silence before and after
    valid = records(out, "valid")
    assert valid[-1]["valid_loss"] < 0.7 * valid[0]["valid_loss"]


def test_ctc_delay_penalty_adds_to_the_silence_penalty(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both penalties reach the model's loss, summed, per utterance at the encoder's frame rate."""
    seen: list[torch.Tensor] = []
    real = ASRModel.forward

    def spy(self: Any, feats: torch.Tensor, feat_lengths: torch.Tensor, *args: Any, **kw: Any) -> Any:
        if len(args) < 3 or args[2] is None:  # validation: no penalties
            return real(self, feats, feat_lengths, *args, **kw)
        seen.append(args[2].cpu())
        frames = self.config.encoder.output_lengths(feat_lengths).cpu()
        assert args[2].shape == (feats.size(0), int(frames.max()))
        delay = delay_penalty(frames, args[2].size(1), 0.25)
        rest = args[2].cpu() - delay
        assert set(rest.unique().tolist()) <= {0.0, 8.0}  # what is left is the silence penalty
        return real(self, feats, feat_lengths, *args, **kw)

    monkeypatch.setattr(ASRModel, "forward", spy)
    cfg = tiny_config(
        manifest, tmp_path / "d", epochs=2, average=0, ctc_silence_penalty=8.0, ctc_delay_penalty=0.25
    )
    train(TrainConfig.from_dict(cfg))
    assert len(seen) == 2
    assert all(bool((p % 8.0 > 0).any()) for p in seen)  # the delay penalty is there


def test_provisional_ctc_trains_the_look_ahead_reading(manifest: Path, tmp_path: Path) -> None:
    """``provisional_ctc`` adds a CTC loss on the frames partials read from the look-ahead; it falls as the
    model learns, and an offline model, which has no look-ahead, is refused at the first step."""
    streaming = {**copy.deepcopy(TINY_MODEL)}
    streaming["encoder"] = {**streaming["encoder"], "chunk_frames": 2, "lookahead_frames": 2}
    out = tmp_path / "ahead"
    train(
        TrainConfig.from_dict(
            tiny_config(manifest, out, epochs=12, average=0, model=streaming, provisional_ctc=1.0)
        )
    )
    steps = [r for r in records(out, "train") if "ctc_ahead" in r]
    assert steps and steps[-1]["ctc_ahead"] < 0.7 * steps[0]["ctc_ahead"]
    valid = records(out, "valid")
    assert len(valid) == 12 and all(0 <= r["valid_cer_ahead"] <= 1.5 for r in valid)
    offline = tiny_config(manifest, tmp_path / "offline", epochs=1, provisional_ctc=1.0)
    with pytest.raises(ValueError, match="chunk-streaming encoder"):
        train(TrainConfig.from_dict(offline))


def test_average_files_averages_given_checkpoints_and_refuses_other_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    save_checkpoint(a, tmp_path / "a.pt")
    save_checkpoint(b, tmp_path / "b.pt", extra={"epoch": 7, "step": 70})
    out = tmp_path / "ab"
    files = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    assert main(["train", "--average-files", *files, "--out", str(out), "--half"]) == 0
    ckpt = load_checkpoint(out / "averaged.pt")
    assert ckpt["extra"]["averaged"] == files
    assert (ckpt["extra"]["epoch"], ckpt["extra"]["step"]) == (7, 70)  # the newest run's position
    w = ckpt["state_dict"]["ctc.weight"]
    assert w.dtype == torch.float16
    expected = (a.state_dict()["ctc.weight"] + b.state_dict()["ctc.weight"]) / 2
    torch.testing.assert_close(w.float(), expected, atol=1e-3, rtol=1e-3)

    other = ASRModel(
        dataclasses.replace(a.config, encoder=dataclasses.replace(a.config.encoder, hidden_size=16)),
        a.tokenizer,
    )
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="architectures differ"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "other.pt"])
    capsys.readouterr()
    assert main(["train", "--average", "2", "--average-files", *files, "--out", str(out)]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["train", "--average-files", *files, "--out", str(out), "--int8", "encoder"]) == 1
    assert "add --half" in capsys.readouterr().err


def test_average_files_can_store_a_prefix_in_8_bits_as_the_bundled_models_are(tmp_path: Path) -> None:
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    save_checkpoint(a, tmp_path / "a.pt")
    save_checkpoint(b, tmp_path / "b.pt")
    files, out = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")], tmp_path / "ab"
    assert main(["train", "--average-files", *files, "--out", str(out), "--half", "--int8", "encoder"]) == 0
    ckpt = load_checkpoint(out / "averaged.pt")
    rounded = set(ckpt["int8_scales"])
    matrices = {k for k, v in a.state_dict().items() if k.startswith("encoder.") and v.dim() >= 2}
    assert matrices and rounded == matrices
    assert all(ckpt["state_dict"][k].dtype == torch.int8 for k in rounded)
    assert ckpt["state_dict"]["ctc.weight"].dtype == torch.float16  # outside the prefix: fp16
    restored = model_from_checkpoint(ckpt).state_dict()
    for k in matrices:  # the codes stand for the average, to 8 bits
        mean = (a.state_dict()[k] + b.state_dict()[k]) / 2
        assert (restored[k] - mean).abs().max() <= mean.abs().max() / 127 + 1e-6


def test_an_exported_checkpoint_averages_by_its_weights_not_its_8_bit_codes(tmp_path: Path) -> None:
    """The bundled models are exported (fp16, some matrices in 8 bits with a scale per row): averaging one
    with a training checkpoint averages the weights those codes stand for (it once averaged the raw codes
    with the other's weights, and the mean decoded nothing but noise: 100 % WER)."""
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    save_checkpoint(a, tmp_path / "a.pt", half=True, int8=["ctc"])
    assert load_checkpoint(tmp_path / "a.pt")["state_dict"]["ctc.weight"].dtype == torch.int8
    save_checkpoint(b, tmp_path / "b.pt")
    for paths in ([tmp_path / "a.pt", tmp_path / "b.pt"], [tmp_path / "b.pt", tmp_path / "a.pt"]):
        avg = average_checkpoints(paths)
        expected = (a.state_dict()["ctc.weight"] + b.state_dict()["ctc.weight"]) / 2
        torch.testing.assert_close(avg.state_dict()["ctc.weight"], expected, atol=0.02, rtol=0.02)


def test_empty_transcripts_and_the_channel_train_when_asked(manifest: Path, tmp_path: Path) -> None:
    """Silence with an empty transcript is a training example (the model learns to say nothing) only with
    data.keep_empty_text; the channel augmentation section parses and runs in the loader."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000, np.float32), 16000)
    mixed = tmp_path / "mixed.jsonl"
    extra = {"id": "quiet", "audio": str(silence), "text": "", "duration": 1.0}
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [*rows, extra]))
    channel = {"reverb_prob": 1.0, "codec_prob": 0.5, "gain_db": [-6.0, 0.0], "rir_bank": 2}
    for keep in (False, True):
        out = tmp_path / f"keep-{keep}"
        raw = tiny_config(mixed, out, epochs=1, data__keep_empty_text=keep, data__channel=channel)
        config = TrainConfig.from_dict(raw)
        assert config.data.channel.rt60 == (0.15, 0.7) and config.data.channel.reverb_prob == 1.0
        train_utts, _ = read_utterances(config.data, 0)
        assert ("quiet" in {u.id for u in train_utts}) is keep
        summary = train(config)
        assert summary["finished"] and np.isfinite(records(out, "valid")[-1]["valid_loss"])


def test_decoder_only_fine_tuning_with_triggered_attention(manifest: Path, tmp_path: Path) -> None:
    """``trainable: [decoder]`` leaves every other weight (and so greedy CTC) as it was; the triggered
    attention's limits reach the decoder; a model without a chunk size is refused before the first step."""
    base = tmp_path / "base"
    streaming = {**copy.deepcopy(TINY_MODEL)}
    streaming["encoder"] = {**streaming["encoder"], "chunk_frames": 4, "lookahead_frames": 2}
    raw = tiny_config(manifest, base, epochs=1, average=0, model=streaming)
    train(TrainConfig.from_dict(raw))
    before = load_checkpoint(base / "final.pt")["state_dict"]
    seen: list[torch.Tensor] = []
    original = MemoryLimits.__call__

    def spy(self: Any, *args: Any) -> torch.Tensor:
        seen.append(original(self, *args))
        return seen[-1]

    out = tmp_path / "tuned"
    tuned_raw = tiny_config(manifest, out, epochs=2, average=0, init_from=str(base / "final.pt"))
    tuned_raw.update(trainable=["decoder"], triggered_attention={"prob": 1.0})
    del tuned_raw["model"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MemoryLimits, "__call__", spy)
        train(TrainConfig.from_dict(tuned_raw))
    after = load_checkpoint(out / "final.pt")["state_dict"]
    for name, weight in before.items():
        same = torch.equal(weight.float(), after[name].float())
        assert same != name.startswith("decoder."), name
    assert len(seen) == 2
    frames = seen[0].max(dim=1).values
    assert bool((seen[0] < frames[:, None]).any())  # some steps saw fewer frames than the utterance has
    offline = tiny_config(manifest, tmp_path / "offline", epochs=1, triggered_attention={"prob": 0.5})
    with pytest.raises(ValueError, match="chunk size"):
        train(TrainConfig.from_dict(offline))
    with pytest.raises(ValueError, match=r"trainable names unknown model parts \['encoderr'\]"):
        TrainConfig.from_dict(tiny_config(manifest, out, trainable=["encoderr"]))
    with pytest.raises(ValueError, match=r"triggered_attention.prob must be in \[0, 1\]"):
        TrainConfig.from_dict(tiny_config(manifest, out, triggered_attention={"prob": 2.0}))
