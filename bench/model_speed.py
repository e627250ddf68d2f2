"""CPU cost of the model core per second of audio: front end + encoder, greedy CTC, joint beam search.

    python bench/model_speed.py                       # default-size model, 20 utterances of 3-6 s, 2 threads
    python bench/model_speed.py --model models/default.pt --beam 10 --batch-sizes 1 8

Uses ``models/default.pt`` when it exists, else a default-size model with random weights (the decoding cost of
random weights is not that of a trained model: the hypothesis lengths differ, so the table prints them).
Speech comes from espeak-ng when it is installed, else noise. Times are process CPU seconds (all threads)
and wall seconds, each divided by the seconds of audio processed; with ``--repeats N`` the fastest of N runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from asr.audio import SAMPLE_RATE, load_audio
from asr.checkpoint import load_model, resolve_model_path
from asr.decoding import DecodingOptions, beam_search, ctc_greedy
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer

T = TypeVar("T")

SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the river bank",
    "please call stella and ask her to bring these things with her from the store",
    "six spoons of fresh snow peas five thick slabs of blue cheese",
    "we also need a small plastic snake and a big toy frog for the kids",
    "she can scoop these things into three red bags",
    "and we will go meet her wednesday at the train station",
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
]


def make_audio(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` utterances of 3-6 s: espeak-ng speech cut or padded to a random length, or noise."""
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(3.0, 6.0, n)
    if shutil.which("espeak-ng") is None:
        return [(rng.standard_normal(int(s * SAMPLE_RATE)) * 0.05).astype(np.float32) for s in lengths]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, seconds in enumerate(lengths):
            path = Path(tmp) / f"{i}.wav"
            text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(2))
            subprocess.run(["espeak-ng", "-s", str(150 + 10 * (i % 4)), "-w", str(path), text], check=True)
            wave = load_audio(path)
            want = int(seconds * SAMPLE_RATE)
            out.append(np.pad(wave, (0, max(0, want - len(wave))))[:want])
    return out


def get_model(path: str | None) -> tuple[ASRModel, str]:
    try:
        return load_model(resolve_model_path(path), device="cpu"), str(resolve_model_path(path))
    except FileNotFoundError:
        if path is not None:
            raise
        torch.manual_seed(0)
        return ASRModel(ModelConfig(), CharTokenizer.default()).eval(), "random weights, ModelConfig()"


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, tuple[float, float]]:
    """``fn(*args)`` and the (CPU, wall) seconds it took."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, (time.process_time() - cpu, time.perf_counter() - wall)


@torch.inference_mode()
def run(
    model: ASRModel, waves: list[np.ndarray], batch_size: int, beam: int, ctc_weight: float
) -> dict[str, float]:
    totals = {"encode": [0.0, 0.0], "greedy": [0.0, 0.0], "beam": [0.0, 0.0]}
    tokens = {"greedy": 0, "beam": 0}
    opts = DecodingOptions(beam_size=beam, ctc_weight=ctc_weight)
    for k in range(0, len(waves), batch_size):
        chunk = waves[k : k + batch_size]
        lengths = torch.tensor([len(w) for w in chunk])
        batch = torch.zeros(len(chunk), int(lengths.max()))
        for i, w in enumerate(chunk):
            batch[i, : len(w)] = torch.from_numpy(w)
        (enc, enc_lengths), cost = timed(model.encode, *model.features(batch, lengths))
        greedy, cost_g = timed(lambda e, n: ctc_greedy(model.ctc_log_probs(e), n), enc, enc_lengths)
        nbest, cost_b = timed(beam_search, model, enc, enc_lengths, opts)
        for name, c in (("encode", cost), ("greedy", cost_g), ("beam", cost_b)):
            totals[name][0] += c[0]
            totals[name][1] += c[1]
        tokens["greedy"] += sum(len(t) for t in greedy)
        tokens["beam"] += sum(len(h[0].tokens) for h in nbest)
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    out = {f"{name}_cpu": c / seconds for name, (c, _) in totals.items()}
    out.update({f"{name}_wall": w / seconds for name, (_, w) in totals.items()})
    out.update({f"{name}_tokens": n / len(waves) for name, n in tokens.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path or name (default: models/default.pt)")
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--ctc-weight", type=float, default=0.3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1, help="report the fastest of this many runs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, source = get_model(args.model)
    waves = make_audio(args.utterances)
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    print(f"model: {source}, {model.num_parameters() / 1e6:.1f} M parameters; torch threads: {args.threads}")
    print(
        f"audio: {len(waves)} utterances, {seconds:.1f} s in all; "
        f"beam {args.beam}, ctc_weight {args.ctc_weight}"
    )
    run(model, waves[:2], 2, args.beam, args.ctc_weight)  # warm-up
    print()
    print("CPU seconds (wall seconds) per second of audio")
    print(f"{'batch':>5} | {'features+encoder':>18} | {'greedy CTC':>18} | {'beam search':>18} | tokens/utt")
    for bs in args.batch_sizes:
        runs = [run(model, waves, bs, args.beam, args.ctc_weight) for _ in range(args.repeats)]
        r = {key: min(x[key] for x in runs) for key in runs[0]}  # other load on the machine only adds time
        cells = [f"{r[f'{n}_cpu']:.4f} ({r[f'{n}_wall']:.4f})" for n in ("encode", "greedy", "beam")]
        print(
            f"{bs:>5} | {cells[0]:>18} | {cells[1]:>18} | {cells[2]:>18} | "
            f"{r['greedy_tokens']:.0f} greedy, {r['beam_tokens']:.0f} beam"
        )


if __name__ == "__main__":
    main()
