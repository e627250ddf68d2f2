"""Cost of the attention decoder's step, and of the beam search built on it: the step on repacked weights
(:class:`asr.decoder._StepWeights`, what decoding uses) against the same step through ``nn.LSTMCell`` and
``nn.Conv1d`` (``AttentionDecoder.packed_steps = False``), side by side in one run.

    python bench/decoder_step.py                        # models/default.pt, 1 thread
    python bench/decoder_step.py --model streaming --rows 1 10 40 160 --frames 100

One step of ``--rows`` hypotheses over ``--frames`` encoder frames (the shapes of a beam of 10 and of
batched finals), then the joint beam search (beam 10) of ``--utterances`` espeak-ng utterances of 3-6 s
(:func:`bench.model_speed.make_audio`), one at a time. Times are wall milliseconds, the fastest of
``--repeats`` runs; the texts of the two paths are compared.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.checkpoint import load_model  # noqa: E402
from asr.decoder import AttentionDecoder  # noqa: E402
from asr.decoding import DecodingOptions, beam_search  # noqa: E402
from asr.transcribe import encode_waveforms  # noqa: E402
from bench.model_speed import make_audio  # noqa: E402


def fastest(fn: Callable[[], object], repeats: int, inner: int = 1) -> float:
    """Fastest of ``repeats`` timings of ``inner`` calls, in ms per call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best * 1000.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="bundled model name or checkpoint path")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 10, 40, 160], help="hypotheses per step")
    p.add_argument("--frames", type=int, default=100, help="encoder frames the attention reads")
    p.add_argument("--utterances", type=int, default=6, help="utterances for the beam search (0: none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    model.eval()
    dec = model.decoder
    print(f"model {args.model}: decoder {dec.config}, {args.threads} thread(s)")

    def with_modules(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            AttentionDecoder.packed_steps = False
            try:
                return fn()
            finally:
                AttentionDecoder.packed_steps = True

        return run

    print(f"\none decoder step over {args.frames} frames (ms)")
    print(f"{'rows':>6} | {'modules':>8} | {'repacked':>8} | speed-up")
    gen = torch.Generator().manual_seed(0)
    enc_dim = dec.attention.enc_proj.in_features
    with torch.inference_mode():
        for n in args.rows:
            enc = torch.randn(n, args.frames, enc_dim, generator=gen)
            memory, state = dec.prepare(enc, torch.full((n,), args.frames))
            tokens = torch.randint(1, dec.vocab_size - 1, (n,), generator=gen)

            step = functools.partial(dec.step, tokens, state, memory)

            ref = fastest(with_modules(step), args.repeats, inner=20)
            new = fastest(step, args.repeats, inner=20)
            print(f"{n:>6} | {ref:>8.3f} | {new:>8.3f} | {ref / new:.2f}x")

    if args.utterances:
        waves = make_audio(args.utterances)
        seconds = sum(len(w) for w in waves) / 16000
        opts = DecodingOptions(beam_size=10)
        encoded = [encode_waveforms(model, [w])[:2] for w in waves]

        def search() -> list[tuple[int, ...]]:
            return [beam_search(model, enc, lengths, opts)[0][0].tokens for enc, lengths in encoded]

        with torch.inference_mode():
            ref = fastest(with_modules(search), max(1, args.repeats // 2))
            new = fastest(search, max(1, args.repeats // 2))
            same = with_modules(search)() == search()
        print(
            f"\nbeam search (beam 10), {args.utterances} utterances, {seconds:.1f} s of audio, one at a time"
        )
        print(
            f"modules {ref:.0f} ms, repacked {new:.0f} ms: {ref / new:.2f}x; ms per s of audio "
            f"{ref / seconds:.1f} -> {new / seconds:.1f}; same best hypotheses: {same}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
