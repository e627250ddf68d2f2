"""The ``asr`` command line. Each subcommand lives beside the code it drives and registers itself here.

    asr serve        gRPC server                      (server/app.py)
    asr transcribe   batch transcription              (client/transcribe_cli.py)
    asr stream       live partial results             (client/stream_cli.py)
    asr train        train a model from a config file (asr/training/)
    asr eval         WER/CER/RTF of a manifest        (asr/evaluate.py)
    asr compare      paired bootstrap of two systems  (asr/significance.py)
    asr data         corpus importers                 (asr/data/cli.py)
    asr lm           language models for decoding     (asr/lm_cli.py)
    asr models       list models, local or remote     (client/models_cli.py)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from client.errors import ASRError

# (command, module, help); each module defines ``register(subparsers)`` that adds its parser and sets
# ``func=run`` where ``run(args) -> int`` is the exit code.
COMMANDS: list[tuple[str, str, str]] = [
    ("serve", "server.app", "run the gRPC speech service"),
    ("transcribe", "client.transcribe_cli", "transcribe files and folders, locally or on a server"),
    ("stream", "client.stream_cli", "stream a file or stdin to a server and print live results"),
    ("train", "asr.training.cli", "train a model from a YAML/TOML config"),
    ("eval", "asr.evaluate", "word/character error rate and real-time factor on a manifest"),
    ("compare", "asr.significance", "is one system's error rate really lower than another's?"),
    ("data", "asr.data.cli", "import corpora into JSONL manifests"),
    ("lm", "asr.lm_cli", "train a language model for shallow fusion"),
    ("models", "client.models_cli", "list the models here or on a server"),
]


class CLIError(Exception):
    """An error to print as one line and exit with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr",
        description="Speech recognition: train, serve and transcribe with a Listen-Attend-Spell model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  asr serve --port 50051\n  asr transcribe audio/ --format srt -o out/\n"
        "  asr stream speech.wav --server localhost:50051",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, module, _help in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # the command's module is not part of this build
            raise
        mod.register(sub)
    return parser


OFFLINE_DECODING = ("transcribe", "eval")  # commands that may decode recordings of every length here


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that spin while they wait cost 30-60x the CPU when the cores are shared (a server beside
    # other work; bench/online_cpu.py measured it); sleeping ones cost nothing. It must be set before torch
    # is first imported, which build_parser does. An explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in OFFLINE_DECODING:
        # oneDNN keeps a compiled primitive per input shape (up to 1,024), and recordings bring every length:
        # joined recordings of 86 s in 10 s pieces grew RSS from 1.25 to 2.53 GiB over 60 of them with the
        # cache, to 1.73 GiB without it, at the same speed (docs/BENCHMARKS.md, "Long recordings"); `asr
        # serve` sets its own. An explicit setting wins.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("asr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`asr transcribe ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail
        return 1
    except (CLIError, ASRError, ValueError, FileNotFoundError, OSError) as exc:
        if args.verbose:
            raise
        print(f"asr {args.command}: error: {exc}", file=sys.stderr)
        code = getattr(exc, "code", 1)
        return code if isinstance(code, int) else 1  # ASRError.code is the gRPC status name


if __name__ == "__main__":
    sys.exit(main())
