"""``asr stream PATH|-``: stream audio to a server and print results as they arrive.

On a terminal the open utterance's partial result is redrawn in place on one line and each final result is
printed on its own line. When stdout is not a terminal only final results are printed, one per line
(``--interim`` adds partials as lines marked ``(partial)``; ``--json`` prints every result as a JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from client.audio import DEFAULT_CHUNK_MS, read_raw
from client.cli import CLIError
from client.formats import word_record
from client.transcribe_cli import (
    add_connection_args,
    add_phrase_args,
    make_client,
    phrases_from_args,
    speed_list,
)
from client.types import RecognitionConfig, StreamingConfig, StreamingResult

DESCRIPTION = """\
Stream a file or stdin to a server and print results as they arrive.

On a terminal the open utterance's partial result is redrawn in place and each final result gets its own line.
When stdout is not a terminal only final results are printed, one per line (--interim adds partials as lines
marked "(partial)"; --json prints every result as a JSON object).
"""

EXAMPLES = """\
examples:
  asr stream speech.wav                                  live partials, real-time pace, localhost:50051
  asr stream speech.flac --server asr.example.com:443 --tls --no-realtime
  sox speech.mp3 -t raw -r 16000 -b 16 -e signed -c 1 - | asr stream - --raw --rate 16000
  arecord -f S16_LE -r 16000 -c 1 -t raw | asr stream - --raw      (microphone, Linux)
  asr stream talk.wav --json --interim > results.jsonl
"""

CLEAR_LINE = "\r\033[K"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stream",
        help="stream a file or stdin to a server and print live results",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH|-", help="audio file, or - for stdin (encoded, or raw with --raw)")
    p.add_argument(
        "-s", "--server", default=os.environ.get("ASR_SERVER", "localhost:50051"),
        help="HOST:PORT of the server (default: $ASR_SERVER or localhost:50051)",
    )
    add_connection_args(
        p, timeout=None,
        timeout_help="deadline of the whole stream in seconds, real-time pacing included (default: none)",
    )
    src = p.add_argument_group("audio")
    src.add_argument("--raw", action="store_true", help="stdin is raw little-endian 16-bit PCM (mono)")
    src.add_argument("--rate", type=int, default=16000, help="sample rate of --raw input (default: 16000)")
    src.add_argument("--no-realtime", dest="realtime", action="store_false",
                     help="send as fast as possible instead of at real-time pace")
    src.add_argument("--chunk-ms", type=int, default=DEFAULT_CHUNK_MS, help="audio per message; default: 100")
    out = p.add_argument_group("output")
    out.add_argument("--interim", action="store_true", help="print partials as lines when not on a tty")
    out.add_argument("--json", action="store_true", help="one JSON object per result")
    out.add_argument("--timestamps", action="store_true", help="prefix finals with [start --> end]")
    dec = p.add_argument_group("recognition")
    dec.add_argument("-m", "--model", default="", help="model name on the server (default: its default)")
    dec.add_argument("--method", choices=("greedy", "beam"), help="decoding of finals (default: beam)")
    dec.add_argument("--beam", type=int, help="beam size")
    dec.add_argument("--ctc-weight", type=float, help="CTC weight in joint decoding, in [0, 1]")
    dec.add_argument("--lm-weight", type=float, help="weight of the server's language model; 0 turns it off")
    dec.add_argument(
        "--tta-speeds", type=speed_list, default=(), metavar="S1,S2",
        help="finals also decoded at these speeds, the views voting (e.g. 0.9,1.1: ~5x their decoding time)",
    )
    dec.add_argument("--silence-ms", type=int, help="silence that ends an utterance (server default: 800)")
    dec.add_argument(
        "--blank-ms", type=int,
        help="streaming models: a run of CTC blanks this long after speech ends an utterance; 0 turns it off "
        "(server default: 0; 240 suits fluent speakers)",
    )
    dec.add_argument(
        "--growing-finals", action=argparse.BooleanOptionalAction, default=None,
        help="streaming models: search each final while its utterance is heard, so it comes sooner; "
        "--no-growing-finals searches it whole at the end, a little more accurate (server default: on)",
    )
    dec.add_argument("--single-utterance", action="store_true", help="stop after the first utterance")
    add_phrase_args(dec)
    p.set_defaults(func=run)


class Printer:
    """Partials redrawn in place on a terminal; finals (and, if asked, partials) as lines elsewhere."""

    def __init__(self, out: TextIO, *, tty: bool, interim: bool, as_json: bool, timestamps: bool) -> None:
        self.out, self.tty, self.interim = out, tty, interim
        self.as_json, self.timestamps = as_json, timestamps
        self._partial_shown = False

    def __call__(self, r: StreamingResult) -> None:
        if self.as_json:
            if r.is_final or self.interim:
                self._line(json.dumps(_as_dict(r), ensure_ascii=False))
            return
        if r.is_final:
            text = f"[{_clock(r.start)} --> {_clock(r.end)}] {r.text}" if self.timestamps else r.text
            if self.tty:
                self.out.write(CLEAR_LINE)
                self._partial_shown = False
            if r.text:
                self._line(text)
            self.out.flush()
        elif self.tty:
            width = shutil.get_terminal_size().columns - 1
            # keep the partial on one line: \r cannot go back up over a wrapped line
            text = r.text if len(r.text) <= width else "…" + r.text[-(width - 1) :]
            self.out.write(CLEAR_LINE + text)
            self.out.flush()
            self._partial_shown = True
        elif self.interim and r.text:
            self._line(f"(partial) {r.text}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self._partial_shown:  # leave the last partial visible and the prompt on a fresh line
            self.out.write("\n")
            self.out.flush()
            self._partial_shown = False


def _as_dict(r: StreamingResult) -> dict[str, Any]:
    return {
        "text": r.text,
        "is_final": r.is_final,
        "stability": round(r.stability, 3),
        "start": round(r.start, 3),
        "end": round(r.end, 3),
        "utterance": r.utterance_index,
        "confidence": round(r.confidence, 4),
        "words": [word_record(w) for w in r.words],
    }


def _clock(t: float) -> str:
    m, s = divmod(max(t, 0.0), 60)
    return f"{int(m):02d}:{s:06.3f}"


def results(args: argparse.Namespace, config: StreamingConfig) -> Iterator[StreamingResult]:
    client = make_client(args)
    with client:
        if args.path == "-":
            if args.raw:
                chunk_bytes = max(2, args.rate * args.chunk_ms // 1000 * 2)
                source: Any = read_raw(sys.stdin.buffer, chunk_bytes)
                yield from client.stream(
                    source, config, sample_rate=args.rate, realtime=args.realtime, chunk_ms=args.chunk_ms,
                    timeout=args.timeout,
                )
                return
            source = sys.stdin.buffer.read()  # an encoded file needs its whole header before decoding
        else:
            source = args.path
        yield from client.stream(
            source, config, realtime=args.realtime, chunk_ms=args.chunk_ms, timeout=args.timeout
        )


def check_args(args: argparse.Namespace) -> None:
    """Reject option values that make no sense, before reading any audio."""
    if args.rate <= 0:
        raise CLIError(f"--rate must be a positive sample rate in Hz (e.g. 16000), got {args.rate}")
    if args.timeout is not None and args.timeout <= 0:
        raise CLIError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    tty = sys.stdout.isatty()
    config = StreamingConfig(
        recognition=RecognitionConfig(
            model=args.model, method=args.method, beam_size=args.beam, ctc_weight=args.ctc_weight,
            lm_weight=args.lm_weight, phrases=phrases_from_args(args), phrase_boost=args.phrase_boost,
            word_time_offsets=args.json, word_confidence=args.json, tta_speeds=args.tta_speeds,
        ),
        interim_results=tty or args.interim,
        single_utterance=args.single_utterance,
        silence_ms=args.silence_ms,
        blank_ms=args.blank_ms,
        growing_finals=args.growing_finals,
    )
    printer = Printer(
        sys.stdout, tty=tty, interim=args.interim, as_json=args.json, timestamps=args.timestamps
    )
    try:
        for r in results(args, config):
            printer(r)
    finally:
        printer.finish()
    return 0
