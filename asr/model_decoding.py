"""A model's own decoding settings: ``NAME.decoding.json`` beside its checkpoint ``NAME.pt``.

Some settings belong to a model rather than to a request: the bundled default reads native English best with
a word LM of general English fused into its search at a higher CTC weight (docs/TRAINING_LOG.md, "A word
LM"), while other models have no LM. The applications (``asr transcribe``, ``asr eval``, ``asr serve``) use a
model's settings for whatever their flags and requests leave unset; the library's
:func:`asr.transcribe.transcribe` takes its options and LM explicitly, as before.

    {"lm": "english.wlm", "lm_weight": 0.3, "ctc_weight": 0.5, "beam_size": 20}

``lm`` is a path relative to the file (an LM from ``asr lm train``); every key is optional. ``beam_size`` is
the offline applications' (``asr transcribe``, ``asr eval``); a server's beam is its operator's
(``asr serve --beam-size``), which weighs it against its streams' latency.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from asr.checkpoint import resolve_model_path
from asr.lm import NGramLM, load_lm
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer
from asr.word_lm import WordLM

SUFFIX = ".decoding.json"
KEYS = {"lm", "lm_weight", "ctc_weight", "beam_size", "note"}


@dataclass(frozen=True)
class ModelDecoding:
    """What a model decodes with unless told otherwise; the empty default changes nothing."""

    ctc_weight: float | None = None  # None: the application's own default
    lm: Path | None = None
    lm_weight: float = 0.0
    beam_size: int | None = None  # None: the application's own default

    @classmethod
    def of(cls, model: str | os.PathLike | None) -> ModelDecoding:
        """The settings beside checkpoint ``model`` (a path or a bundled name; None: the default model)."""
        path = resolve_model_path(model)
        return cls.read(path.with_name(path.stem + SUFFIX))

    @classmethod
    def read(cls, path: Path) -> ModelDecoding:
        """The settings in ``path``; none if there is no such file."""
        if not path.is_file():
            return cls()
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a JSON object of decoding settings ({exc})") from None
        if not isinstance(d, dict) or set(d) - KEYS:
            extra = sorted(set(d) - KEYS) if isinstance(d, dict) else d
            raise ValueError(f"{path}: unknown decoding settings {extra}; known: {', '.join(sorted(KEYS))}")
        ctc = d.get("ctc_weight")
        if ctc is not None and not (isinstance(ctc, int | float) and 0.0 <= ctc <= 1.0):
            raise ValueError(f"{path}: ctc_weight must be a number in [0, 1], got {ctc!r}")
        weight = d.get("lm_weight", 0.3 if d.get("lm") else 0.0)
        if not isinstance(weight, int | float) or weight < 0:
            raise ValueError(f"{path}: lm_weight must be a number >= 0, got {weight!r}")
        lm = path.parent / d["lm"] if d.get("lm") else None
        if lm is not None and not lm.is_file():
            raise FileNotFoundError(f"{path}: its language model {lm} is missing")
        beam = d.get("beam_size")
        if beam is not None and (not isinstance(beam, int) or isinstance(beam, bool) or beam < 1):
            raise ValueError(f"{path}: beam_size must be a whole number >= 1, got {beam!r}")
        return cls(None if ctc is None else float(ctc), lm, float(weight) if lm is not None else 0.0, beam)

    def load_lm(self, tokenizer: CharTokenizer | SentencePieceTokenizer) -> NGramLM | WordLM | None:
        """The model's LM, checked against its tokenizer (None without one)."""
        return load_lm(self.lm, tokenizer) if self.lm is not None else None
