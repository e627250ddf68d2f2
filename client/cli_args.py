"""Command-line options shared by the subcommands: the connection to a server, phrase hints, ``--tta-speeds``.

``asr transcribe``, ``asr stream`` and ``asr models`` register these the same way and read them back here, so
a flag means one thing everywhere.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.cli import CLIError

if TYPE_CHECKING:
    from client.sdk import Client

__all__ = ["add_connection_args", "add_phrase_args", "make_client", "phrases_from_args", "speed_list"]


def add_connection_args(
    group: Any,
    *,
    timeout: float | None = 300.0,
    timeout_help: str = "seconds per request (default: 300)",
) -> None:
    """Options shared by every command that talks to a server; ``timeout`` is ``--timeout``'s default."""
    group.add_argument(
        "--token", default=os.environ.get("ASR_TOKEN"), help="bearer token (default: $ASR_TOKEN)"
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca)")
    group.add_argument("--ca", metavar="PEM", help="CA certificate to trust (implies --tls)")
    group.add_argument("--cert", metavar="PEM", help="client certificate for mutual TLS (with --key)")
    group.add_argument("--key", metavar="PEM", help="client private key for mutual TLS")
    group.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    group.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable")


def make_client(args: argparse.Namespace) -> Client:
    """A :class:`~client.sdk.Client` for ``--server`` and the options of :func:`add_connection_args`."""
    from client.sdk import Client  # here, so that local mode never loads gRPC

    if bool(args.cert) != bool(args.key):
        raise CLIError("--cert and --key go together (mutual TLS)")
    return Client(
        args.server, tls=args.tls, root_certificates=args.ca, client_certificate=args.cert,
        client_key=args.key, token=args.token, timeout=args.timeout, retries=args.retries,
    )


def add_phrase_args(group: Any) -> None:
    group.add_argument(
        "--phrase", action="append", default=[], metavar="TEXT",
        help="a phrase hint: a name or term to favour (repeat the flag for several)",
    )
    group.add_argument("--phrases", metavar="FILE", help="phrase hints, one per line")
    group.add_argument(
        "--phrase-boost", type=float, help="score per token of a completed hint (0..10; default 1)"
    )


def phrases_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """``--phrase`` values, then the lines of ``--phrases FILE`` (blank lines left out)."""
    phrases = list(args.phrase)
    if args.phrases:
        try:
            lines = Path(args.phrases).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CLIError(f"cannot read --phrases {args.phrases}: {exc.strerror or exc}", code=1) from exc
        phrases += [line.strip() for line in lines if line.strip()]
    return tuple(phrases)


def speed_list(text: str) -> tuple[float, ...]:
    """``"0.9,1.1"`` -> ``(0.9, 1.1)`` for ``--tta-speeds``; the range is checked where it decodes."""
    try:
        return tuple(float(x) for x in text.split(",")) if text.strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of speeds such as 0.9,1.1") from None
