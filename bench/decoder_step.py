"""Cost of the attention decoder's step, and of the beam search built on it: the step on repacked weights
(:class:`asr.decoder._StepWeights`, what decoding uses) in each number format of :mod:`asr.precision`
(float32, bfloat16, int8) against the same step through ``nn.LSTMCell`` and ``nn.Conv1d`` in float32
(``AttentionDecoder.packed_steps = False``), side by side in one run.

    python bench/decoder_step.py                        # models/default.pt, 1 thread
    python bench/decoder_step.py --model streaming --rows 1 10 40 160 --frames 100

One step of ``--rows`` hypotheses over ``--frames`` encoder frames, ``--beam`` of them per utterance (the
shapes of a beam of 10 and of batched finals), then the joint beam search (beam 10) of ``--utterances``
espeak-ng utterances of 3-6 s (:func:`bench.model_speed.make_audio`), one at a time. Times are wall
milliseconds, the fastest of ``--repeats`` runs; each format's best hypotheses are compared with float32's
modules.
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

from asr import precision  # noqa: E402
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
    p.add_argument("--beam", type=int, default=10, help="hypotheses per utterance in a step's rows")
    p.add_argument("--utterances", type=int, default=6, help="utterances for the beam search (0: none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    model.eval()
    dec = model.decoder
    print(f"model {args.model}: decoder {dec.config}, {args.threads} thread(s)")

    formats = [f for f in ("float32", "bfloat16", "int8") if f != "int8" or precision._quantized_engine()]

    def in_format(fn: Callable[[], object], fmt: str, modules: bool = False) -> Callable[[], object]:
        def run() -> object:
            before = precision.mode()
            AttentionDecoder.packed_steps = not modules
            precision.set_mode(fmt)
            try:
                return fn()
            finally:
                AttentionDecoder.packed_steps = True
                precision.set_mode(before)

        return run

    print(
        f"\none decoder step over {args.frames} frames (ms), rows in beams of {args.beam} hypotheses per "
        "utterance; speed-up against float32 modules"
    )
    print(f"{'rows':>6} | {'modules':>8} | " + " | ".join(f"{f:>16}" for f in formats))
    gen = torch.Generator().manual_seed(0)
    enc_dim = dec.attention.enc_proj.in_features
    with torch.inference_mode():
        for n in args.rows:
            utts = max(1, n // args.beam)
            if n % utts:
                raise SystemExit(f"--rows {n} is not a whole number of beams of {args.beam}")
            enc = torch.randn(utts, args.frames, enc_dim, generator=gen)
            memory, state = dec.prepare(enc, torch.full((utts,), args.frames))
            state = state.index_select(torch.arange(utts).repeat_interleave(n // utts))
            tokens = torch.randint(1, dec.vocab_size - 1, (n,), generator=gen)
            step = functools.partial(dec.step, tokens, state, memory)
            ref = fastest(in_format(step, "float32", modules=True), args.repeats, inner=20)
            cells = [fastest(in_format(step, f), args.repeats, inner=20) for f in formats]
            print(f"{n:>6} | {ref:>8.3f} | " + " | ".join(f"{t:>7.3f} ({ref / t:4.2f}x)" for t in cells))

    if args.utterances:
        waves = make_audio(args.utterances)
        seconds = sum(len(w) for w in waves) / 16000
        opts = DecodingOptions(beam_size=10)
        encoded = [encode_waveforms(model, [w])[:2] for w in waves]

        def search() -> list[tuple[int, ...]]:
            return [beam_search(model, enc, lengths, opts)[0][0].tokens for enc, lengths in encoded]

        print(f"\nbeam search (beam 10), {args.utterances} utterances, {seconds:.1f} s of audio, one by one")
        with torch.inference_mode():
            reps = max(1, args.repeats // 2)
            ref = fastest(in_format(search, "float32", modules=True), reps)
            best = in_format(search, "float32", modules=True)()
            print(f"{'modules, float32':>18}: {ref:6.0f} ms, {ref / seconds:5.1f} ms per s of audio")
            for f in formats:
                t = fastest(in_format(search, f), reps)
                same = sum(a == b for a, b in zip(in_format(search, f)(), best, strict=True))
                print(
                    f"{'repacked, ' + f:>18}: {t:6.0f} ms, {t / seconds:5.1f} ms per s of audio, "
                    f"{ref / t:.2f}x; same best hypothesis as float32 modules: {same} of {len(best)}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
