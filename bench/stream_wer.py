"""Accuracy through the streaming path against offline decoding, on the same files in the same run.

    python bench/stream_wer.py exp/data/so762/valid.jsonl
    python bench/stream_wer.py exp/data/so762/valid.jsonl --tail-ms 300 800 --silence-ms 800 3000

Offline, each recording is decoded whole (``asr.transcribe``). Streamed, it gets ``--lead`` seconds of
silence before and ``--trail`` after and goes through the model's streaming recognizer as one stream (all
audio at once: the endpointer's decisions do not depend on chunking), whose finals are joined. The endpointer
cuts where a speaker pauses for ``silence_ms``, drops the audio more than ``pre_speech_ms`` before an onset,
and (early finals) keeps ``final_tail_ms`` of silence after the speech: each pair of ``--silence-ms`` and
``--tail-ms`` is one row, with the WER, CER and segments per recording. A streaming model
(:mod:`asr.online`) also ends an utterance after ``blank_ms`` of CTC blanks and has no early finals: its rows
pair ``--silence-ms`` with ``--blank-ms``, and the finals of utterances cut by blanks are decoded after their
sentence so far, up to each of ``--context-s`` seconds of it (0: alone), their beam search grown chunk by
chunk (``--finals grown``, :mod:`asr.growing_search`), searched whole at the endpoint (``whole``), or decoded
again from the utterance's audio by ``--final-model`` (``second``: two passes, :mod:`asr.online`; the bundled
default by default, whose offline row is printed too). Default decoding (beam 10) for all.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE  # noqa: E402
from asr.tokenizer import normalize_text  # noqa: E402
from bench.offline_speed import read_utterances  # noqa: E402


def scores(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    import jiwer

    hyps = [h or "<empty>" for h in hyps]
    return float(jiwer.wer(refs, hyps)), float(jiwer.cer(refs, hyps))


def keep_errors(folder: Path | None, row: str, utts: list, refs: list[str], hyps: list[str]) -> None:
    """A row's per-utterance errors as ``folder/ROW.errors.jsonl`` (``asr eval --errors``'s format)."""
    if folder is None:
        return
    from asr.evaluate import score_utterances, write_errors

    folder.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in row).strip("_")
    results = score_utterances(utts, refs, [normalize_text(h) for h in hyps])
    write_errors(results, folder / f"{slug}.errors.jsonl")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--limit", type=int, default=0, help="first N utterances (0: all)")
    p.add_argument("--silence-ms", type=int, nargs="+", default=[800], help="endpoint silences to try")
    p.add_argument("--tail-ms", type=int, nargs="+", default=[300, 800], help="final tails to try")
    p.add_argument(
        "--blank-ms",
        type=int,
        nargs="+",
        default=[240],
        help="streaming models (asr.online): CTC blank runs ending an utterance (0: energy rule only)",
    )
    p.add_argument(
        "--context-s",
        type=float,
        nargs="+",
        default=[4.0],
        help="streaming models: seconds of the sentence a blank-cut final is decoded after (0: alone)",
    )
    p.add_argument(
        "--finals",
        nargs="+",
        choices=("grown", "whole", "second"),
        default=["grown"],
        help="streaming models: finals searched as their utterance grows, whole at the endpoint, or decoded "
        "again from the utterance's audio by --final-model (a second pass)",
    )
    p.add_argument("--final-model", default="default", help="the second pass's model (--finals second)")
    p.add_argument("--ctc-weight", type=float, help="CTC weight of the joint search, offline and streamed")
    p.add_argument(
        "--max-segment-s",
        type=float,
        nargs="+",
        default=[10.0],
        help="segments (utterances) longer than this are cut at a quiet point (the endpointer's default 10)",
    )
    p.add_argument(
        "--silence-gate",
        nargs="+",
        choices=("on", "off"),
        default=["on"],
        help="streaming models: silence before speech waits unencoded and is dropped (on, the default) or "
        "is encoded (off); RecognizerConfig.silence_gate",
    )
    p.add_argument("--lead", type=float, default=0.5, help="seconds of silence before each recording")
    p.add_argument("--trail", type=float, default=1.0, help="seconds of silence after each recording")
    p.add_argument("--batch", type=int, default=16, help="streams per decode call")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--errors",
        type=Path,
        help="write each row's per-utterance errors to this folder (ROW.errors.jsonl, for asr compare)",
    )
    args = p.parse_args(argv)
    if args.limit < 0 or args.batch < 1 or args.threads < 1:
        p.error("--limit must be >= 0, --batch and --threads >= 1")

    import torch

    from asr.checkpoint import load_model
    from asr.data.dataset import load_utterance
    from asr.model_decoding import ModelDecoding
    from asr.online import FinalPass, make_recognizer
    from asr.streaming import EndpointConfig, RecognizerConfig, StreamOptions
    from asr.transcribe import transcribe_batch

    torch.set_num_threads(args.threads)
    utts = read_utterances(args.data)
    if args.limit:
        utts = utts[: args.limit]
    if not utts:
        raise SystemExit(f"no utterances in {args.data}")
    model = load_model(args.model)
    refs = [normalize_text(u.text) for u in utts]
    waves = [load_utterance(u) for u in utts]
    print(f"{len(utts)} utterances, {sum(len(w) for w in waves) / SAMPLE_RATE / 3600:.2f} h", flush=True)
    print(f"{'decoding':<50} | {'WER':>6} | {'CER':>6} | segments/utt | seconds")
    t0 = time.perf_counter()
    from asr.decoding import DecodingOptions

    dec = DecodingOptions() if args.ctc_weight is None else DecodingOptions(ctc_weight=args.ctc_weight)
    texts = [t.text for t in transcribe_batch(model, waves, dec, batch_size=args.batch)]
    wer, cer = scores(refs, texts)
    row = "{:<50} | {:6.2%} | {:6.2%} | {:12.2f} | {:7.1f}"
    print(row.format("offline (whole recordings)", wer, cer, 1.0, time.perf_counter() - t0), flush=True)
    keep_errors(args.errors, "offline", utts, refs, texts)

    online = model.config.encoder.streaming  # chunk by chunk: the blank rule, no early finals (no tails)
    final_model = load_model(args.final_model) if online and "second" in args.finals else None
    final_pass = None
    if final_model is not None:  # it decodes as its own settings say (NAME.decoding.json), in both rows
        own = ModelDecoding.of(args.final_model)
        final_pass = FinalPass(final_model, own.load_lm(final_model.tokenizer), own.ctc_weight, own.lm_weight)
        t0 = time.perf_counter()
        fdec, flm = final_pass.options(dec), final_pass.lm
        texts = [t.text for t in transcribe_batch(final_model, waves, fdec, lm=flm, batch_size=args.batch)]
        wer, cer = scores(refs, texts)
        name = f"offline, {args.final_model} (the second pass's model)"
        print(row.format(name, wer, cer, 1.0, time.perf_counter() - t0), flush=True)
        keep_errors(args.errors, f"offline {args.final_model}", utts, refs, texts)
    lead = np.zeros(int(args.lead * SAMPLE_RATE), np.float32)
    trail = np.zeros(int(args.trail * SAMPLE_RATE), np.float32)
    rows = itertools.product(
        args.silence_ms,
        args.blank_ms if online else args.tail_ms,
        args.context_s if online else [0.0],
        args.finals if online else ["whole"],
        args.max_segment_s,
        args.silence_gate if online else ["on"],
    )
    for silence, tail, context, finals_kind, max_segment, gate in rows:
        if online and not tail and context != args.context_s[0]:
            continue  # without blank endpoints there is no context: one row
        grown = finals_kind == "grown"
        config = RecognizerConfig(
            final_context_seconds=context,
            growing_finals=grown,
            silence_gate=gate == "on",
        )
        rec = make_recognizer(model, config, final_model=final_pass if finals_kind == "second" else None)
        t0 = time.perf_counter()
        ep = (
            EndpointConfig(silence_ms=silence, blank_ms=tail, max_segment_seconds=max_segment)
            if online
            else EndpointConfig(silence_ms=silence, final_tail_ms=tail, max_segment_seconds=max_segment)
        )
        opts = StreamOptions(decoding=dec, endpoint=ep, interim_results=False)
        streams = []
        for w in waves:
            s = rec.create_stream(opts)
            rec.accept_audio(s, np.concatenate([lead, w, trail]))
            rec.input_finished(s)
            streams.append(s)
        for i in range(0, len(streams), args.batch):
            rec.decode_streams(streams[i : i + args.batch])
        finals = [[r for r in rec.pop_results(s) if r.is_final] for s in streams]
        hyps = [" ".join(r.text for r in f if r.text) for f in finals]
        wer, cer = scores(refs, hyps)
        segs = sum(map(len, finals)) / len(finals)
        name = (
            f"streamed, silence {silence} ms, "
            + (
                f"blank {tail} ms" + (f", context {context:g} s" if tail else "") + f", {finals_kind}"
                if online
                else f"tail {min(tail, silence)} ms"
            )
            + (f", segments <= {max_segment:g} s" if len(args.max_segment_s) > 1 else "")
            + (f", silence gate {gate}" if len(args.silence_gate) > 1 else "")
        )
        print(row.format(name, wer, cer, segs, time.perf_counter() - t0), flush=True)
        keep_errors(args.errors, name, utts, refs, hyps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
