"""Resampling to 16 kHz: the project's resampler against torchaudio's sinc resampler alone, side by side.

    python bench/resample.py                 # 10 s of audio per rate; each case in its own process
    python bench/resample.py --seconds 60 --rates 44100 8001

For each input rate it prints wall time and the process's peak RSS for ``asr.audio.resample`` (torchaudio
where its polyphase kernel is small, libsoxr otherwise) and for ``torchaudio.functional.resample`` alone, and
their ratios. torchaudio's kernel has ``rate/gcd x 16000/gcd`` phases, so rates sharing no big factor with
16 kHz cost gigabytes; those baselines are skipped above ``--max-baseline-kernel`` entries (47999 Hz took
40 s and 13 GB on the development VM).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RATES = (8000, 11025, 22050, 44100, 48000, 8001, 12001, 47999)

CASE = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
rate, seconds, mode = {rate}, {seconds}, {mode!r}
x = (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
if mode == "ours":
    from asr.audio import resample
    run = lambda: resample(x, rate)
else:
    import torch, torchaudio.functional as AF
    run = lambda: AF.resample(torch.from_numpy(x), rate, 16000).numpy()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
y = run()
took = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {{"seconds": took, "peak_mib": peak / 1024, "growth_mib": (peak - base) / 1024, "n": len(y)}}
print(json.dumps(out))
"""


def run_case(rate: int, seconds: float, mode: str) -> dict[str, Any]:
    code = CASE.format(root=str(ROOT), rate=rate, seconds=seconds, mode=mode)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""}
    )
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=int, nargs="+", default=list(RATES))
    p.add_argument("--seconds", type=float, default=10.0, help="audio per case (default 10)")
    p.add_argument("--max-baseline-kernel", type=float, default=2e8, help="skip torchaudio above this")
    p.add_argument("--json", action="store_true", help="one JSON object per rate instead of a table")
    args = p.parse_args()
    if not args.json:
        print(f"{args.seconds:g} s of audio -> 16 kHz, one thread, each case in a fresh process")
        print(f"{'rate':>6} {'ours s':>8} {'torchaudio s':>13} {'speed-up':>9} {'ours MiB':>9} {'ta MiB':>8}")
    for rate in args.rates:
        g = math.gcd(rate, 16000)
        kernel = (rate // g) * (16000 // g)
        ours = run_case(rate, args.seconds, "ours")
        base = run_case(rate, args.seconds, "torchaudio") if kernel <= args.max_baseline_kernel else None
        if args.json:
            print(json.dumps({"rate": rate, "kernel": kernel, "ours": ours, "torchaudio": base}))
            continue
        if "error" in ours:
            print(f"{rate:>6} ours failed: {ours['error']}")
            continue
        if base is None or "error" in base:
            why = "skipped" if base is None else "failed"
            print(f"{rate:>6} {ours['seconds']:>8.3f} {why:>13} {'':>9} {ours['growth_mib']:>9.0f} {'':>8}")
            continue
        ratio = base["seconds"] / max(ours["seconds"], 1e-9)
        print(
            f"{rate:>6} {ours['seconds']:>8.3f} {base['seconds']:>13.3f} {ratio:>8.1f}x "
            f"{ours['growth_mib']:>9.0f} {base['growth_mib']:>8.0f}"
        )
    if not args.json:
        print("MiB: peak RSS growth over the process's size before resampling (imports excluded)")


if __name__ == "__main__":
    main()
