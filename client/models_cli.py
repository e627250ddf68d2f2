"""``asr models``: the models ``asr transcribe`` and ``asr serve`` can use, locally or on a server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from client.transcribe_cli import add_connection_args, make_client

EXAMPLES = """\
examples:
  asr models                                 models/NAME.pt here (load them by NAME), the default first
  asr models --dir exp/default               checkpoints of a training run
  asr models --server localhost:50051        what a server serves
  asr models --json                          one JSON object per model
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the models here or on a server",
        description="List the models that load by name here (models/NAME.pt), or that a server serves.\n"
        "Locally, epoch/step and valid_wer/valid_cer come from the checkpoint: greedy CTC decoding of the\n"
        "training run's validation set at the epoch the checkpoint was taken.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-s", "--server", metavar="HOST:PORT", help="ask this server instead")
    p.add_argument("--dir", help="folder of checkpoints (default: $ASR_MODELS_DIR or the bundled models/)")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    add_connection_args(p)
    p.set_defaults(func=run)


def _local(directory: str | None) -> list[dict[str, Any]]:
    from asr.checkpoint import MODELS_DIR, available_models

    rows = []
    for m in available_models(directory or MODELS_DIR):
        t = m.training
        rows.append({
            "name": m.name, "default": m.is_default, "parameters": m.parameters,
            "vocabulary": f"{m.vocabulary_kind} {m.vocabulary_size}", "size_mb": round(m.size_bytes / 1e6, 1),
            "epoch": t.get("epoch"), "step": t.get("step"),
            "valid_wer": t.get("valid_wer"), "valid_cer": t.get("valid_cer"), "path": str(m.path),
        })
    return rows


def _remote(args: argparse.Namespace) -> list[dict[str, Any]]:
    with make_client(args) as client:
        return [
            {
                "name": m.name, "default": m.is_default, "parameters": m.num_parameters,
                "vocabulary": f"{m.vocabulary_kind} {m.vocabulary_size}", "sample_rate": m.sample_rate,
                "device": m.device, "language_model": m.language_model or None,
            }
            for m in client.list_models()
        ]


def _table(rows: list[dict[str, Any]]) -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "default":
            return "*" if value else ""
        if key == "parameters":
            return f"{value / 1e6:.1f}M"
        if key.startswith("valid_"):
            return f"{100 * value:.1f}%"
        return str(value)

    keys = [k for k in rows[0] if k != "path"]
    table = [keys] + [[cell(k, r[k]) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = _remote(args) if args.server else _local(args.dir)
    if not rows:
        where = args.server or args.dir or os.environ.get("ASR_MODELS_DIR") or "models/"
        print(f"asr: no models in {where} (train one with `asr train`, or give --dir)", file=sys.stderr)
        return 1
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(_table(rows))
    return 0
