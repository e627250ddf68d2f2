"""bench/growing_finals.py on generated speech with the bundled streaming model: both searches, their error
rates and the paired difference; a model whose encoder is not chunked is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from client_support import tiny_checkpoint

from asr import load_model
from bench.growing_finals import main, token_frames


def test_both_searches_are_scored_and_compared(
    speech_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.json"
    assert main([str(speech_manifest), "--model", "streaming", "--beam", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rates = dict(re.findall(r"^(whole|grown) +WER +([\d.]+) %", text, re.M))
    assert set(rates) == {"whole", "grown"}, text
    assert text.count("95% interval") == 2  # WER and CER, grown against whole
    rows = json.loads(out.read_text())
    n = len(speech_manifest.read_text().splitlines())
    assert [len(rows[k]) for k in ("whole", "grown")] == [n, n]
    assert [r["id"] for r in rows["whole"]] == [r["id"] for r in rows["grown"]]
    assert all(r["hyp"] for r in rows["grown"])  # the streaming model hears the espeak-ng words
    words = sum(r["words"] for r in rows["grown"])
    assert float(rates["grown"]) == pytest.approx(
        100 * sum(r["word_errors"] for r in rows["grown"]) / words, abs=0.01
    )
    with pytest.raises(SystemExit, match="not chunked"):
        main([str(speech_manifest), "--model", str(tiny_checkpoint(tmp_path / "tiny.pt"))])


def test_token_frames_are_where_greedy_ctc_emits() -> None:
    model = load_model("streaming", device="cpu")
    blank, v = model.tokenizer.blank_id, model.tokenizer.vocab_size
    path = [blank, 5, 5, blank, 7, blank, blank, 7, 9]
    weights = torch.zeros(v, model.ctc.in_features)
    weights[torch.arange(v), torch.arange(v) % model.ctc.in_features] = 50.0
    enc = torch.zeros(len(path), model.ctc.in_features)
    enc[torch.arange(len(path)), torch.tensor(path) % model.ctc.in_features] = 1.0
    with torch.no_grad():
        saved = model.ctc.weight.clone(), model.ctc.bias.clone()
        model.ctc.weight.copy_(weights)
        model.ctc.bias.zero_()
        try:
            assert token_frames(model, enc) == [1, 4, 7, 8]
        finally:
            model.ctc.weight.copy_(saved[0])
            model.ctc.bias.copy_(saved[1])
