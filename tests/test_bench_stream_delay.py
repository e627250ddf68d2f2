"""bench/stream_delay.py: configuration specs, and results timed in stream time (as if decoding were free)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from asr.audio import SAMPLE_RATE
from bench.stream_delay import parse_config, play_in_stream_time
from bench.stream_latency import Clip, final_latency, word_latencies


def test_parse_config() -> None:
    assert parse_config("streaming") == ("streaming", {})
    want = ("streaming", {"blank": 240.0, "lookahead": 0.0})
    assert parse_config("streaming:blank=240,lookahead=0") == want
    with pytest.raises(ValueError, match="unknown key 'blnk'"):
        parse_config("streaming:blnk=240")
    with pytest.raises(ValueError):
        parse_config("streaming:blank=x")


class EchoRecognizer:
    """Says each word of ``script`` (stream seconds -> text) once it has that much audio; a final at the
    end."""

    def __init__(self, script: dict[float, str]) -> None:
        self.script = script

    def create_stream(self, options: Any) -> Any:
        return SimpleNamespace(samples=0, done=False, out=[], said=set())

    def accept_audio(self, s: Any, audio: np.ndarray) -> None:
        s.samples += len(audio)

    def input_finished(self, s: Any) -> None:
        s.done = True

    def is_ready(self, s: Any) -> bool:
        return False

    def decode_streams(self, streams: list[Any]) -> None:  # never called: nothing is ever ready
        raise AssertionError

    def pop_results(self, s: Any) -> list[Any]:
        heard = [t for t in self.script if t <= s.samples / SAMPLE_RATE and t not in s.said]
        s.said.update(heard)
        text = " ".join(self.script[t] for t in sorted(s.said))
        out = [SimpleNamespace(is_final=False, text=text, end=max(heard))] if heard else []
        if s.done:
            out.append(SimpleNamespace(is_final=True, text=text, end=s.samples / SAMPLE_RATE))
        return out


def test_results_arrive_when_their_chunk_was_sent() -> None:
    clip = Clip(np.zeros(SAMPLE_RATE, np.float32), (("HELLO", 0.32), ("WORLD", 0.6)), speech_end=0.6)
    log = play_in_stream_time(EchoRecognizer({0.35: "HELLO", 0.75: "WORLD"}), None, clip)
    assert log.sent == pytest.approx([0.1 * k for k in range(10)])
    # HELLO (ends at 0.32, in the chunk sent at 0.3) is said once 0.35 s are in: after the chunk sent at 0.3
    # (it holds 0.3-0.4); WORLD (ends at 0.6, the end of the chunk sent at 0.5) once 0.75 s are in, after
    # the chunk sent at 0.7
    latencies, seen = word_latencies(clip, log)
    assert seen == 2 and latencies == pytest.approx([0.0, 0.2])
    assert final_latency(clip, log) == pytest.approx(0.9 - 0.5)  # after the last chunk, sent at 0.9
