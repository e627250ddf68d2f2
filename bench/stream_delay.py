"""Streaming latency by design: the same clips and measures as bench/stream_latency.py, in stream time.

    python bench/stream_delay.py                                          # the configurations below
    python bench/stream_delay.py --configs default streaming:blank=240 streaming:blank=240,lookahead=0

Each configuration is ``MODEL[:key=value,...]`` with keys ``blank`` (``EndpointConfig.blank_ms``),
``silence`` (``silence_ms``), ``lookahead`` (``StreamOptions.lookahead_results``, 0 or 1) and ``context``
(``RecognizerConfig.final_context_seconds``). Each clip is fed to the model's recognizer in process, in 100 ms
chunks, decoding whenever the stream is ready; a result counts as arriving when the chunk that produced it
was sent, as if the model took no time. So the numbers are the latency the design adds (endpointing, chunks,
look-ahead, where the model emits), apart from compute and from other streams: bench/stream_latency.py
measures the same things through the server on a real clock. Final: the stream's last final after the end of
speech; word partial: a reference word's end to its first appearance in a result (finals so far, then the
result's text); words seen: the share of reference words that ever appear.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE  # noqa: E402
from bench.load import CHUNK_S  # noqa: E402
from bench.stream_latency import DEFAULT_DATA, Clip, StreamLog, compose, load_pieces, summarise  # noqa: E402

DEFAULT_CONFIGS = (
    "default",
    "streaming",
    "streaming:blank=240,lookahead=0,context=0",
    "streaming:blank=240,context=0",
    "streaming:blank=240",
)
KEYS = ("blank", "silence", "lookahead", "context")


def parse_config(spec: str) -> tuple[str, dict[str, float]]:
    """``MODEL[:key=value,...]`` -> (model, settings); ``ValueError`` for an unknown key or a bad value."""
    model, _, rest = spec.partition(":")
    settings: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise ValueError(f"{spec!r}: unknown key {key!r} (known: {', '.join(KEYS)})")
        settings[key] = float(value)
    return model, settings


def play_in_stream_time(rec: Any, options: Any, clip: Clip) -> StreamLog:
    """Feed ``clip`` in 100 ms chunks, chunk k sent at ``k * CHUNK_S`` (as bench.load.paced_chunks sends
    them); a result arrives when the chunk after which it came was sent, as if decoding took no time."""
    chunk = round(CHUNK_S * SAMPLE_RATE)
    log = StreamLog()
    s = rec.create_stream(options)
    for k, i in enumerate(range(0, len(clip.audio), chunk)):
        log.sent.append(k * CHUNK_S)
        rec.accept_audio(s, clip.audio[i : i + chunk])
        if i + chunk >= len(clip.audio):
            rec.input_finished(s)
        while rec.is_ready(s):
            rec.decode_streams([s])
        log.results += [(log.sent[-1], r.is_final, r.text, r.end) for r in rec.pop_results(s)]
    return log


def run_config(spec: str, clips: list[Clip], models: dict[str, Any]) -> dict[str, Any]:
    from asr.checkpoint import load_model
    from asr.endpointing import EndpointConfig
    from asr.online import make_recognizer
    from asr.streaming import RecognizerConfig, StreamOptions

    name, settings = parse_config(spec)
    model = models.setdefault(name, load_model(name, device="cpu"))
    context = settings.get("context", RecognizerConfig.final_context_seconds)
    rec = make_recognizer(model, RecognizerConfig(final_context_seconds=context))
    endpoint = EndpointConfig(
        blank_ms=int(settings.get("blank", 0)), silence_ms=int(settings.get("silence", 800))
    )
    options = dataclasses.replace(
        StreamOptions(), endpoint=endpoint, lookahead_results=bool(settings.get("lookahead", 1))
    )
    logs = [play_in_stream_time(rec, options, c) for c in clips]
    return summarise(clips, logs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="MODEL[:key=value,...]")
    p.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_DATA), help="speech sources")
    p.add_argument("--utterances", type=int, default=12, help="recordings")
    p.add_argument("--align-model", default="default", help="offline model of the reference word times")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, help="write every number to this file")
    args = p.parse_args(argv)
    try:
        for spec in args.configs:
            parse_config(spec)
    except ValueError as exc:
        p.error(str(exc))

    import torch

    torch.set_num_threads(args.threads)
    pieces = load_pieces(args.data, args.utterances, args.align_model)
    if not pieces:
        raise SystemExit(f"skipped: no usable recordings in {args.data}")
    clips = [compose([piece], 0.0) for piece in pieces]
    print(f"{len(clips)} clips, {sum(c.seconds for c in clips):.1f} s; latencies in stream time (no compute)")
    print(f"{'configuration':<45} | final p50 | final p95 | word p50 | word p95 | words seen")
    models: dict[str, Any] = {}
    out = {}
    for spec in args.configs:
        r = out[spec] = run_config(spec, clips, models)
        f, w = r["final"], r["word_partial"]
        print(
            f"{spec:<45} | {f['p50_ms']:>9} | {f['p95_ms']:>9} | {w['p50_ms']:>8} | {w['p95_ms']:>8} | "
            f"{r['words_seen_pct']:>9.0f}%",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
