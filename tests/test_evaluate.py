"""``asr eval``: scoring against normalised references, the --json contract, per-utterance errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import asr.evaluate as ev
from asr.checkpoint import save_checkpoint
from asr.data.importers import import_corpus
from asr.data.manifest import Utterance, write_manifest
from asr.decoder import DecoderConfig
from asr.encoder import EncoderConfig
from asr.features import FeatureConfig
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer
from asr.transcribe import Transcript
from client.cli import main


@pytest.fixture(scope="module")
def tiny_model() -> ASRModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        features=FeatureConfig(n_mels=40),
        encoder=EncoderConfig(input_dim=40, conv_channels=8, hidden_size=32, num_layers=2, pyramid_layers=1),
        decoder=DecoderConfig(
            embed_dim=16, hidden_size=32, attention_dim=16, location_channels=4, location_kernel=5
        ),
    )
    return ASRModel(cfg, CharTokenizer.default()).eval()


@pytest.fixture(scope="module")
def manifest(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "speech.jsonl"
    write_manifest(import_corpus("folder", speech_dir), path)
    return path


def test_eval_json_last_line(
    tiny_model: ASRModel, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model, ckpt)
    errors = tmp_path / "errors.jsonl"
    argv = ["eval", str(manifest), "--model", str(ckpt), "--device", "cpu", "--json", "--errors", str(errors)]
    assert main([*argv, "--method", "greedy"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"wer", "cer", "rtf", "utts"} <= set(result)
    assert result["utts"] == 4 and result["rtf"] > 0 and result["wer"] >= 0.9  # an untrained model
    for metric in ("wer", "cer"):  # bootstrap intervals around the values
        low, high = result[f"{metric}_ci95"]
        assert low <= result[metric] <= high
    rows = [json.loads(line) for line in errors.read_text().splitlines()]
    assert len(rows) == 4 and {"id", "ref", "hyp", "word_errors", "words", "speaker"} <= set(rows[0])
    assert rows[0]["word_errors"] >= rows[-1]["word_errors"]  # worst first
    assert main([*argv, "--beam", "2", "--limit", "2", "--by-speaker"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["utts"] == 2 and sum(s["utts"] for s in out["speakers"]) == 2
    assert main([*argv, "--beam", "2", "--limit", "1", "--tta-speeds", "0.9,1.1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["utts"] == 1
    with pytest.raises(SystemExit):  # argparse: exit code 2 and the reason on stderr
        main([*argv, "--tta-speeds", "1.0"])
    assert "leave out 1.0" in capsys.readouterr().err
    assert main(["eval", str(manifest), "--model", str(ckpt), "--device", "cpu", "--method", "greedy"]) == 0
    out = capsys.readouterr().out
    assert "WER" in out and "95 % bootstrap intervals" in out


def test_scores_normalised_text(
    tiny_model: ASRModel, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    utts = [
        Utterance("a", "", "Hello, world!"),
        Utterance("b", "", "good morning"),
        Utterance("c", "", "  ...  "),  # normalises to nothing: skipped
    ]
    audio = json.loads(manifest.read_text().splitlines()[0])["audio"]
    utts = [Utterance(u.id, audio, u.text, speaker=f"s{i}") for i, u in enumerate(utts)]
    hyps = {"a": "HELLO WORLD", "b": "GOOD MOURNING"}

    def fake(
        model: ASRModel, waves: list, options: object, batch_size: int = 16, lm: object = None
    ) -> list[Transcript]:
        return [Transcript(h) for h in fake.queue[: len(waves)]]  # type: ignore[attr-defined]

    fake.queue = [hyps["a"], hyps["b"]]  # type: ignore[attr-defined]
    monkeypatch.setattr(ev, "transcribe_batch", fake)
    result = ev.evaluate(tiny_model, utts)
    assert result.utts == 2 and result.skipped == 1
    assert result.wer == pytest.approx(1 / 4)
    assert result.cer == pytest.approx(1 / 23)  # one inserted letter in 11 + 12 characters
    assert sorted(r.word_errors for r in result.per_utterance) == [0, 1]
    assert result.by_speaker() == [  # worst first
        {"speaker": "s1", "utts": 1, "words": 2, "wer": 0.5, "cer": 1 / 12},
        {"speaker": "s0", "utts": 1, "words": 2, "wer": 0.0, "cer": 0.0},
    ]
    ci = result.interval("wer")
    assert ci.by == "speaker" and ci.blocks == 2 and ci.low == 0.0 and ci.high == 0.5  # 1 of 2 words
    with pytest.raises(ValueError, match="nothing to evaluate"):
        ev.evaluate(tiny_model, utts[2:])
