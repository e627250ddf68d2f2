"""Algorithmic latency of a chunk-streaming model, in audio time (issue 30): no server, no clock.

    python bench/audio_latency.py --models streaming               # 48 recordings, blank endpoint 160 ms
    python bench/audio_latency.py --models streaming,streaming/chunk160,exp/run/final.pt --blank-ms 0

The same recordings, reference word ends and end of speech as ``bench/stream_latency.py`` (cathy and
commonvoice-sample, trimmed, 0.5 s of silence before and 1.5 s after; words force-aligned by the offline
default model). Each recording is one stream of :class:`asr.online.OnlineRecognizer`, fed 100 ms at a time,
decoded after each message until nothing is ready, so every result is stamped with the audio fed when it came
out: what the model, its chunk and look-ahead and the endpointing make a listener wait, before any compute or
network time (which ``bench/stream_latency.py`` adds, on a real server). Per model:

* *final*: the stream's last final - the end of speech;
* *word*: each reference word's first appearance (as ``bench/stream_latency.py`` counts it) - its end, for
  all words seen, and separately for those first seen in a partial and those first seen in a final;
* *tail*: the final - its own last word's end (what the endpoint waits after the last word).

Times are quantised to the 100 ms messages (a result counts from the end of the message that let it out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stream_latency import DEFAULT_DATA, Clip, compose, first_seen, hypotheses, load_pieces  # noqa: E402

MESSAGE = 1600  # 100 ms at 16 kHz, as the SDK sends


def run_clip(rec: Any, clip: Clip, options: Any) -> list[tuple[float, Any]]:
    """Every result of one stream with the audio time (s) fed when it came out."""
    stream, out, n = rec.create_stream(options), [], len(clip.audio)
    for i in range(0, n + MESSAGE, MESSAGE):
        if i < n:
            rec.accept_audio(stream, clip.audio[i : i + MESSAGE])
        elif not stream.input_done:
            rec.input_finished(stream)
        while rec.is_ready(stream):
            rec.decode_streams([stream])
        out += [(min(i + MESSAGE, n) / 16000, r) for r in rec.pop_results(stream)]
    while not stream.is_done:
        rec.decode_streams([stream])
        out += [(n / 16000, r) for r in rec.pop_results(stream)]
    return out


def measure(model_name: str, clips: Sequence[Clip], blank_ms: int) -> dict[str, Any]:
    from asr.checkpoint import load_model, with_chunk_ms
    from asr.decoding import DecodingOptions
    from asr.endpointing import EndpointConfig
    from asr.online import OnlineRecognizer, RecognizerConfig
    from asr.stream_state import StreamOptions

    name, _, chunk = model_name.partition("/chunk")  # NAME/chunkMS: run with MS-millisecond chunks
    model = load_model(name, device="cpu")
    if not model.config.encoder.streaming:
        raise SystemExit(f"{name}: not a chunk-streaming model (encoder.chunk_frames is 0)")
    if chunk:
        model = with_chunk_ms(model, int(chunk))
    rec = OnlineRecognizer(model, RecognizerConfig())
    options = StreamOptions(decoding=DecodingOptions(beam_size=8), endpoint=EndpointConfig(blank_ms=blank_ms))
    finals: list[float] = []
    tails: list[float] = []
    partial_seen: list[float] = []
    final_seen: list[float] = []
    for clip in clips:
        results = run_clip(rec, clip, options)
        final_times = [t for t, r in results if r.is_final]
        if not final_times:
            continue
        finals.append(final_times[-1] - clip.speech_end)
        last = [r for _, r in results if r.is_final][-1]
        if last.words:
            tails.append(final_times[-1] - last.words[-1].end)
        hyps = hypotheses([(t, r.is_final, r.text, r.end) for t, r in results])
        for seen, (_, end) in zip(first_seen([w for w, _ in clip.words], hyps), clip.words, strict=True):
            if seen is not None:
                (final_seen if seen in final_times else partial_seen).append(seen - end)
    words = partial_seen + final_seen
    total = sum(len(c.words) for c in clips)
    return {
        "final": percentiles(finals),
        "word": percentiles(words),
        "word_in_partial": percentiles(partial_seen),
        "word_in_final": percentiles(final_seen),
        "tail": percentiles(tails),
        "words_seen_pct": 100 * len(words) / total if total else None,
        "words_first_in_partial_pct": 100 * len(partial_seen) / len(words) if words else None,
    }


def percentiles(xs: Sequence[float]) -> dict[str, int | None]:
    s = sorted(xs)
    pick = lambda q: round(1000 * s[min(len(s) - 1, int(q * len(s)))]) if s else None  # noqa: E731
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "count": len(s)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        default="streaming,streaming/chunk160",
        help="comma-separated names or checkpoint paths; NAME/chunkMS runs NAME with MS-millisecond chunks",
    )
    p.add_argument("--utterances", type=int, default=48)
    p.add_argument("--blank-ms", type=int, default=160, help="the blank endpoint (0: energy rule only)")
    p.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_DATA))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    pieces = load_pieces(args.data, args.utterances, "default")
    clips = [compose([piece], 0.0) for piece in pieces[: args.utterances]]
    names = args.models.split(",")
    results = {name: measure(name, clips, args.blank_ms) for name in names}
    print(f"{len(clips)} recordings, blank endpoint {args.blank_ms} ms; audio-time latency, p50 / p95 ms")
    rows = [
        ("final", "final"),
        ("word", "word, all seen"),
        ("word_in_partial", "word first seen in a partial"),
    ]
    rows += [("word_in_final", "word first seen in a final"), ("tail", "final after its last word")]
    print(f"{'measure':32} | " + " | ".join(f"{n:>22}" for n in names))
    for key, label in rows:
        cells = [f"{r[key]['p50_ms']} / {r[key]['p95_ms']} ({r[key]['count']})" for r in results.values()]
        print(f"{label:32} | " + " | ".join(f"{c:>22}" for c in cells))
    seen = [
        f"{r['words_seen_pct']:.0f} % ({r['words_first_in_partial_pct']:.0f} % in a partial)"
        for r in results.values()
    ]
    print(f"{'words seen':32} | " + " | ".join(f"{c:>22}" for c in seen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
