"""bench/thread_contention.py on generated speech with the bundled streaming model: both loops alone and side
by side, each with a rate; a model whose encoder is not chunked is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from client_support import tiny_checkpoint

from bench.thread_contention import main


def test_both_loops_run_alone_and_together(speech_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", str(speech_manifest), "--utterances", "2", "--streams", "2", "--beam", "2"]
    assert main([*args, "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    names = "chunks alone|searches alone|both, threads|both, processes"
    found = re.findall(rf"^({names}) +\|(.*)\|(.*)\| ([\d.]+)$", out, re.M)
    rows = {m[0]: m[1:] for m in found}
    assert set(rows) == {"chunks alone", "searches alone", "both, threads", "both, processes"}, out
    assert float(rows["chunks alone"][0]) > 0 and not rows["chunks alone"][1].strip()
    assert float(rows["searches alone"][1]) > 0 and not rows["searches alone"][0].strip()
    for both in (rows["both, threads"], rows["both, processes"]):
        assert all(re.fullmatch(r" *[\d.]+ \([+-]\d+%\) *", cell) for cell in both[:2]), both


def test_a_model_without_a_chunked_encoder_is_refused(speech_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no chunked encoder"):
        main(["--data", str(speech_manifest), "--model", str(tiny_checkpoint(tmp_path / "tiny.pt"))])
