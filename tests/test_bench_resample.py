"""bench/resample.py runs and reports both resamplers side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_resample_json() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "resample.py"), "--seconds", "0.5"]
    cmd += ["--rates", "44100", "8001"]
    done = subprocess.run([*cmd, "--max-baseline-kernel", "1e6", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["rate"] for r in rows] == [44100, 8001]
    common, odd = rows
    assert common["ours"]["n"] == common["torchaudio"]["n"] == 8000
    assert odd["torchaudio"] is None and abs(odd["ours"]["n"] - 8000) <= 1  # baseline skipped: kernel 128 M
