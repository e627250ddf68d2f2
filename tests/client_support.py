"""Helpers for the client and CLI tests: a tiny random-weight checkpoint and SRT/VTT parsers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from asr import ASRModel, ModelConfig, save_checkpoint
from asr.decoder import DecoderConfig
from asr.encoder import EncoderConfig
from asr.features import FeatureConfig
from asr.tokenizer import CharTokenizer


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight model small enough to decode in milliseconds; its text is gibberish but has words."""
    torch.manual_seed(seed)
    config = ModelConfig(
        features=FeatureConfig(n_mels=16),
        encoder=EncoderConfig(input_dim=16, conv_channels=2, hidden_size=8, num_layers=2, dropout=0.0),
        decoder=DecoderConfig(
            embed_dim=8, hidden_size=8, attention_dim=8, location_channels=2, location_kernel=3
        ),
    )
    model = ASRModel(config, CharTokenizer.default())
    save_checkpoint(model, path)
    return path


_TIME = r"(\d{2}):(\d{2}):(\d{2})[,.](\d{3})"
_CUE_TIMES = re.compile(rf"^{_TIME} --> {_TIME}$")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_cues(text: str, kind: str) -> list[tuple[float, float, str]]:
    """Parse SRT or WebVTT strictly enough to catch format mistakes; returns (start, end, text) per cue."""
    blocks = [b for b in text.strip("\n").split("\n\n") if b]
    if kind == "vtt":
        assert blocks and blocks[0].splitlines()[0] == "WEBVTT", "WebVTT must start with the WEBVTT line"
        blocks = blocks[1:]
    cues = []
    for i, block in enumerate(blocks, 1):
        lines = block.split("\n")
        if kind == "srt":
            assert lines[0] == str(i), f"SRT cue {i} has index line {lines[0]!r}"
            lines = lines[1:]
        m = _CUE_TIMES.match(lines[0])
        assert m, f"bad timing line {lines[0]!r}"
        sep = "," if kind == "srt" else "."
        assert lines[0].count(sep) == 2, f"{kind} times use {sep!r} before milliseconds: {lines[0]!r}"
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        assert end > start, f"cue {i} ends before it starts: {lines[0]}"
        body = lines[1:]
        assert 1 <= len(body) <= 2 and all(body), f"cue {i} needs one or two text lines: {body}"
        cues.append((start, end, " ".join(lines[1:])))
    for (_, e0, _), (s1, _, _) in itertools.pairwise(cues):
        assert s1 >= e0, "cues overlap"
    return cues


class ServerThread:
    """The real gRPC server (``server.app.create_server``) on loopback, run by an event loop in a thread.

    >>> with ServerThread(model) as srv:
    ...     Client(srv.target).recognize(...)
    """

    def __init__(self, model: ASRModel, **config: Any) -> None:
        from server.config import ServerConfig

        defaults: dict[str, Any] = dict(
            host="127.0.0.1", port=0, metrics_port=-1, device="cpu", warmup=False, log_format="text"
        )
        self.config = ServerConfig(**{**defaults, **config})
        self.model = model
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        from server.app import create_server

        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(create_server(self.config, model=self.model), self._loop)
        self._server, self.port = fut.result(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextlib.contextmanager
def tiny_server(directory: Path, **config: Any) -> Iterator[ServerThread]:
    """A :class:`ServerThread` on a fresh random-weight tiny model saved in ``directory``."""
    from asr.checkpoint import load_model

    with ServerThread(load_model(tiny_checkpoint(directory / "tiny.pt"), device="cpu"), **config) as srv:
        yield srv
