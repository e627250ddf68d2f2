"""Output formats of ``asr transcribe``: txt, json, jsonl, srt and vtt.

Subtitle cues are grouped from word timings: a cue ends at a segment boundary, at a pause longer than
``max_gap``, or when it would pass ``max_chars`` characters or ``max_duration`` seconds; its text is wrapped
into at most two lines. Without word timings there is one cue per segment (utterance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from client.types import Transcript, WordInfo

__all__ = ["EXTENSIONS", "FORMATS", "Cue", "cues", "record", "render"]

FORMATS = ("txt", "json", "jsonl", "srt", "vtt")
EXTENSIONS = {f: f".{f}" for f in FORMATS}

MAX_CHARS = 84  # two lines of 42, the usual subtitle limit
MAX_LINE = 42
MAX_DURATION = 7.0
MAX_GAP = 1.0
MIN_CUE = 0.2  # seconds; a cue must have a positive duration


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def record(transcript: Transcript, id: str | None = None) -> dict[str, Any]:
    """The JSON object of a transcript (json and jsonl), with ``id`` first when given."""
    out: dict[str, Any] = {"id": id} if id is not None else {}
    out.update(
        text=transcript.text,
        duration=round(transcript.duration, 3),
        confidence=round(transcript.confidence, 4),
        model=transcript.model,
        words=[word_record(w) for w in transcript.words],
        segments=[
            {
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "alternatives": [
                    {"text": a.text, "confidence": round(a.confidence, 4)} for a in s.alternatives
                ],
            }
            for s in transcript.segments
        ],
    )
    return out


def word_record(w: WordInfo) -> dict[str, Any]:
    return {
        "word": w.word,
        "start": round(w.start, 3),
        "end": round(w.end, 3),
        "confidence": round(w.confidence, 4),
    }


def cues(
    transcript: Transcript,
    max_chars: int = MAX_CHARS,
    max_duration: float = MAX_DURATION,
    max_gap: float = MAX_GAP,
) -> list[Cue]:
    out: list[Cue] = []
    for seg in transcript.segments:
        if seg.words:
            out.extend(_word_cues(seg.words, max_chars, max_duration, max_gap))
        elif seg.text:
            out.append(Cue(seg.start, max(seg.end, seg.start + MIN_CUE), seg.text))
    if not out and transcript.text:  # no segments at all: one cue for the whole recording
        out.append(Cue(0.0, max(transcript.duration, MIN_CUE), transcript.text))
    # Times must increase: clip a cue's start to the previous cue's end, keep every cue at least MIN_CUE long.
    fixed: list[Cue] = []
    for c in out:
        start = max(c.start, fixed[-1].end if fixed else 0.0)
        fixed.append(Cue(start, max(c.end, start + MIN_CUE), c.text))
    return fixed


def _word_cues(words: tuple[WordInfo, ...], max_chars: int, max_duration: float, max_gap: float) -> list[Cue]:
    out: list[Cue] = []
    group: list[WordInfo] = []
    for w in words:
        if group:
            texts = [g.word for g in group] + [w.word]
            too_long = len(" ".join(texts)) > max_chars or not _two_lines(texts, min(MAX_LINE, max_chars))
            pause, span = w.start - group[-1].end, w.end - group[0].start
            if pause > max_gap or too_long or span > max_duration:
                out.append(Cue(group[0].start, group[-1].end, " ".join(g.word for g in group)))
                group = []
        group.append(w)
    if group:
        out.append(Cue(group[0].start, group[-1].end, " ".join(g.word for g in group)))
    return out


def _two_lines(words: list[str], width: int) -> bool:
    """Whether the words fit on two lines of ``width`` characters (a single longer word may have one)."""
    return len(words) == 1 or _best_cut(" ".join(words), width) is not None


def _best_cut(text: str, width: int) -> int | None:
    """The space that splits ``text`` into the most even two lines of at most ``width`` characters."""
    fits = [i for i, ch in enumerate(text) if ch == " " and i <= width and len(text) - i - 1 <= width]
    return min(fits, key=lambda i: max(i, len(text) - i - 1)) if fits else None


def _wrap(text: str, width: int = MAX_LINE) -> str:
    """Split a long cue into two even lines of at most ``width`` characters where it can be done."""
    if len(text) <= width or " " not in text:
        return text
    cut = _best_cut(text, width)
    if cut is None:  # a cue that cannot fit (one very long word): nearest the middle
        mid = len(text) // 2
        cut = min((i for i, ch in enumerate(text) if ch == " "), key=lambda i: abs(i - mid))
    return text[:cut] + "\n" + text[cut + 1 :]


def _timestamp(t: float, sep: str) -> str:
    ms = round(max(t, 0.0) * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(transcript: Transcript) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{_wrap(c.text)}\n"
        for i, c in enumerate(cues(transcript), 1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{_wrap(c.text)}\n"
        for c in cues(transcript)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def render(fmt: str, transcript: Transcript, id: str | None = None) -> str:
    """The whole output of one transcript in ``fmt``, ending with a newline (jsonl: one line)."""
    if fmt == "txt":
        return transcript.text + "\n"
    if fmt == "json":
        return json.dumps(record(transcript, id), ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return json.dumps(record(transcript, id), ensure_ascii=False) + "\n"
    if fmt == "srt":
        return to_srt(transcript)
    if fmt == "vtt":
        return to_vtt(transcript)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
