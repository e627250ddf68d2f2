"""``asr transcribe PATH...``: batch transcription of files and folders, locally or on a server.

The command wires four parts together: the inputs (:mod:`client.batch_inputs`), where the results go
(:mod:`client.batch_outputs`: atomic files, resumable JSONL or stdout), and the engine that decodes them
(:mod:`client.batch_engines`: a server, or the model in this process), with the options they share with the
other commands in :mod:`client.cli_args`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from client.audio import AUDIO_EXTENSIONS
from client.batch_engines import Outcome, local_outcomes, remote_outcomes
from client.batch_inputs import Item, collect, extension_list
from client.batch_outputs import Sink, write_atomic
from client.cli import CLIError
from client.cli_args import add_connection_args, add_phrase_args, make_client, phrases_from_args, speed_list
from client.formats import FORMATS
from client.types import RecognitionConfig

# The helpers other modules used to import from here, before they got modules of their own.
__all__ = [
    "add_connection_args",
    "add_phrase_args",
    "collect",
    "make_client",
    "phrases_from_args",
    "register",
    "run",
    "run_local",
    "run_remote",
    "speed_list",
    "write_atomic",
]

DESCRIPTION = """\
Transcribe audio files and folders, locally or on a server.

Outputs are written atomically (a temporary file, then a rename), so a killed batch never leaves half a file,
and running the same command again resumes where it stopped: inputs whose output exists are skipped (unless
--overwrite); a single JSONL file, or stdout appended to a file, skips the ids it already holds. A file that
fails is reported and the others go on; the exit code is 1 when any input failed.
"""

EXAMPLES = """\
examples:
  asr transcribe speech.wav                          text of one file, bundled model
  asr transcribe audio/ --format srt -o subs/        a folder, recursively, one .srt per file
  asr transcribe audio/ --format jsonl -o all.jsonl  one JSON line per file; rerun to resume
  asr transcribe audio/ --format jsonl >> all.jsonl  the same through stdout
  asr transcribe audio/ --server localhost:50051 --jobs 8 --format vtt -o subs/
  asr transcribe a.flac --model exp/run1/best.pt --method greedy --format json
  asr transcribe call.wav --phrase Kubernetes --phrase "New York"    hints: names to favour
"""

def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe files and folders, locally or on a server",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files and folders (searched recursively)")
    out = p.add_argument_group("output")
    out.add_argument("-f", "--format", choices=FORMATS, default="txt", help="output format (default: txt)")
    out.add_argument(
        "-o", "--output", metavar="DIR|FILE.jsonl",
        help="folder for one output per input, mirroring relative paths; with --format jsonl a .jsonl path "
        "collects all records in one file. Default: stdout",
    )
    out.add_argument("--overwrite", action="store_true", help="redo inputs whose output already exists")
    out.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    out.add_argument(
        "--extensions", default=",".join(AUDIO_EXTENSIONS),
        help="file extensions picked up in folders (default: %(default)s)",
    )
    where = p.add_argument_group("local mode (default)")
    where.add_argument(
        "-m", "--model", help="model name (models/NAME.pt) or checkpoint; remote: a name the server lists"
    )
    where.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    where.add_argument("--batch-size", type=int, default=16, help="recordings decoded together (default: 16)")
    remote = p.add_argument_group("remote mode")
    remote.add_argument("-s", "--server", metavar="HOST:PORT", help="transcribe on this server instead")
    remote.add_argument("-j", "--jobs", type=int, default=4, help="concurrent requests (default: 4)")
    add_connection_args(remote)
    dec = p.add_argument_group("decoding")
    dec.add_argument("--method", choices=("greedy", "beam"), help="decoding method (default: beam)")
    dec.add_argument("--beam", type=int, help="beam size")
    dec.add_argument("--ctc-weight", type=float, help="CTC weight in joint decoding, in [0, 1]")
    dec.add_argument("--alternatives", type=int, default=1, help="n-best per segment (json, jsonl)")
    dec.add_argument(
        "--tta-speeds", type=speed_list, default=(), metavar="S1,S2",
        help="test-time augmentation: also decode the audio played at these speeds and let the views vote "
        "(e.g. 0.9,1.1: about 5x the decoding time; beam only)",
    )
    dec.add_argument("--lm", metavar="PATH", help="local mode: language model from 'asr lm train'")
    dec.add_argument(
        "--lm-weight", type=float,
        help="language model weight in beam search (default with --lm: 0.3); remote: of the server's LM",
    )
    add_phrase_args(dec)
    p.set_defaults(func=run)


def recognition_config(args: argparse.Namespace) -> RecognitionConfig:
    return RecognitionConfig(
        model=args.model if args.server and args.model else "",
        max_alternatives=args.alternatives,
        method=args.method,
        beam_size=args.beam,
        ctc_weight=args.ctc_weight,
        lm_weight=args.lm_weight,
        phrases=phrases_from_args(args),
        phrase_boost=args.phrase_boost,
        tta_speeds=args.tta_speeds,
    )


def run_remote(args: argparse.Namespace, items: list[Item]) -> Generator[Outcome, None, None]:
    """The remote engine on the server and connection the arguments name."""
    if args.jobs < 1:
        raise CLIError(f"--jobs must be at least 1, got {args.jobs}")
    if args.lm:
        raise CLIError("--lm is for local mode; a server decodes with its own LM (asr serve --lm)")
    config = recognition_config(args)
    with make_client(args) as client:
        yield from remote_outcomes(client, items, config, args.jobs)


def run_local(args: argparse.Namespace, items: list[Item]) -> Generator[Outcome, None, None]:
    """The local engine with the model, decoding options and language model the arguments name."""
    import asr
    from asr.biasing import check_phrases
    from asr.lm_cli import beam_from_args, ctc_weight_from_args, lm_from_args

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.method == "greedy" and args.alternatives > 1:  # as a server answers it
        raise CLIError(
            f"--alternatives must be 1 with --method greedy (one best path), got {args.alternatives}"
        )
    model = asr.load_model(args.model, device=args.device)
    name = Path(args.model).stem if args.model else "default"  # as `asr models` and a server name it
    lm, lm_weight = lm_from_args(args, model)
    phrases = phrases_from_args(args)
    check_phrases(model.tokenizer, phrases)  # a hint the model cannot spell stops the batch before it starts
    options = asr.DecodingOptions(
        method=args.method or "beam",
        beam_size=beam_from_args(args, asr.DecodingOptions.beam_size),
        ctc_weight=ctc_weight_from_args(args, asr.DecodingOptions.ctc_weight),
        nbest=args.alternatives,
        lm_weight=lm_weight,
        phrases=phrases,
        phrase_boost=asr.DecodingOptions.phrase_boost if args.phrase_boost is None else args.phrase_boost,
        tta_speeds=args.tta_speeds,
    )
    yield from local_outcomes(model, items, options, batch_size=args.batch_size, lm=lm, name=name)


# ------------------------------------------------------------------------------------------------------------


def _progress_bar(args: argparse.Namespace, total: int) -> Any:
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)


def run(args: argparse.Namespace) -> int:
    extensions = extension_list(args.extensions)
    items, missing = collect(args.paths, extensions)
    for arg in missing:
        print(f"asr transcribe: {arg}: error: no such file or folder", file=sys.stderr)
    if not items and not missing:
        raise CLIError(f"no audio files ({', '.join(extensions)}) under {' '.join(args.paths)}", code=1)
    sink = Sink(args.format, args.output, overwrite=args.overwrite, n_inputs=len(items))
    sink.check_distinct(items)
    todo = [it for it in items if not sink.is_done(it)]
    skipped = len(items) - len(todo)
    if skipped:
        print(f"asr transcribe: skipping {skipped} file(s) done before (--overwrite redoes)", file=sys.stderr)
    failed = len(missing)
    audio_seconds = 0.0
    start = time.monotonic()
    bar = _progress_bar(args, len(todo))
    def log(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)  # above the bar, which stays at the bottom
        else:
            print(message, file=sys.stderr)

    try:
        engine = run_remote if args.server else run_local
        for outcome in engine(args, todo) if todo else ():
            audio_seconds += outcome.seconds
            if outcome.transcript is not None:
                sink.write(outcome.item, outcome.transcript)
            else:
                failed += 1
                log(f"asr transcribe: {outcome.item.path}: error: {outcome.error}")
            if bar is not None:
                elapsed = time.monotonic() - start
                rtf = elapsed / audio_seconds if audio_seconds else 0.0
                bar.set_postfix_str(f"audio {audio_seconds / 3600:.3f} h, RTF {rtf:.3f}", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        sink.close()
    if failed:
        print(f"asr transcribe: {failed} of {len(items) + len(missing)} input(s) failed", file=sys.stderr)
        return 1
    return 0
