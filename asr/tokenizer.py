"""Text normalisation and tokenizers (characters or SentencePiece BPE).

Id layout shared by both kinds: ``0`` is the CTC blank, ``1`` the unknown token, then the units, and the
last id is the sentence boundary used as both ``<sos>`` and ``<eos>`` by the attention decoder.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

BLANK = "<blank>"
UNK = "<unk>"
SOS_EOS = "<sos/eos>"
UNK_ID = 1  # both kinds

_KEEP = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r"\s+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Typographic apostrophes (right/left single quote, modifier letter apostrophe, acute accent, backtick) are
# the same apostrophe as ``'``; mapped before NFKD, which would split the acute accent into space + mark.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u00b4`", "'"))
# Upper-case Latin letters that NFKD does not decompose, spelled out so that the word stays one word
# (``str.upper`` already turns ``ß`` into ``SS`` and ``ı`` into ``I``).
_LATIN = str.maketrans({"Æ": "AE", "Œ": "OE", "Ø": "O", "Ł": "L", "Đ": "D", "Ð": "D", "Þ": "TH"})


def _fold_ascii(text: str) -> str:
    """Accents dropped (``é`` -> ``e``); other non-ASCII characters become spaces, so words never merge."""
    text = unicodedata.normalize("NFKD", text.upper().translate(_APOSTROPHES).translate(_LATIN))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _NON_ASCII.sub(" ", text)


def normalize_text(text: str) -> str:
    """Upper case, ASCII letters, apostrophe and single spaces; used for training and for scoring.

    >>> normalize_text("Author of the danger-trail, Philip Steels, etc.")
    'AUTHOR OF THE DANGER TRAIL PHILIP STEELS ETC'
    >>> normalize_text("Don\u2019t stop: twenty\u2014two na\u00efve caf\u00e9s")
    "DON'T STOP TWENTY TWO NAIVE CAFES"
    """
    text = _fold_ascii(text).upper().replace("-", " ")
    text = _KEEP.sub(" ", text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", r"\1 \2", text)  # quotes, not apostrophes
    return _SPACES.sub(" ", text).strip()


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...
    @property
    def blank_id(self) -> int: ...
    @property
    def sos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def space_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def id_to_piece(self, idx: int) -> str: ...
    def word_starts(self, ids: Sequence[int]) -> list[bool]: ...
    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character; the space is a token so that CTC alignments give word boundaries."""

    kind = "char"

    def __init__(self, units: Sequence[str]) -> None:
        if len(set(units)) != len(units):
            raise ValueError("character units must be unique")
        self.units = list(units)
        self.pieces = [BLANK, UNK, *self.units, SOS_EOS]
        self._index = {p: i for i, p in enumerate(self.pieces)}

    @classmethod
    def default(cls) -> CharTokenizer:
        return cls([" ", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"])

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars = sorted({c for t in texts for c in normalize_text(t)})
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def sos_id(self) -> int:
        return len(self.pieces) - 1

    @property
    def eos_id(self) -> int:
        return len(self.pieces) - 1

    @property
    def space_id(self) -> int | None:
        return self._index.get(" ")

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, 1) for c in normalize_text(text)]

    def decode(self, ids: Sequence[int]) -> str:
        special = {0, 1, self.eos_id}
        return "".join(self.pieces[i] for i in ids if i not in special).strip()

    def id_to_piece(self, idx: int) -> str:
        return self.pieces[idx]

    def word_starts(self, ids: Sequence[int]) -> list[bool]:
        """For each token, whether it begins a new word (spaces themselves are never word starts)."""
        out, prev_space = [], True
        for i in ids:
            is_space = i == self.space_id
            out.append(prev_space and not is_space)
            prev_space = is_space
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "units": self.units}


class SentencePieceTokenizer:
    """SentencePiece BPE/unigram; the serialized model travels inside the checkpoint."""

    kind = "bpe"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        n = self.sp.get_piece_size()
        # sentencepiece ids 0..n-1 are shifted by one so that 0 is the CTC blank; its <unk> (id 0) maps to 1.
        self._n = n

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 256, model_type: str = "bpe"
    ) -> SentencePieceTokenizer:
        import io

        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=(normalize_text(t) for t in texts),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            minloglevel=2,
        )
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._n + 2  # blank + pieces (unk first) + sos/eos

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def sos_id(self) -> int:
        return self._n + 1

    @property
    def eos_id(self) -> int:
        return self._n + 1

    @property
    def space_id(self) -> int | None:
        return None

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(normalize_text(text))]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.sp.decode([i - 1 for i in ids if 1 <= i <= self._n]))

    def id_to_piece(self, idx: int) -> str:
        if idx == 0:
            return BLANK
        if idx == self.eos_id:
            return SOS_EOS
        return str(self.sp.id_to_piece(idx - 1))

    def word_starts(self, ids: Sequence[int]) -> list[bool]:
        return [self.id_to_piece(i).startswith("\u2581") for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_proto}


def tokenizer_from_dict(d: dict[str, Any]) -> CharTokenizer | SentencePieceTokenizer:
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["units"])
    if kind == "bpe":
        return SentencePieceTokenizer(bytes(d["model"]))
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char' or 'bpe'")


def tokenizer_fingerprint(tokenizer: CharTokenizer | SentencePieceTokenizer) -> str:
    """A short digest of the id mapping: equal fingerprints mean the same text gives the same ids."""
    h = hashlib.sha256(tokenizer.kind.encode())
    if isinstance(tokenizer, CharTokenizer):
        h.update("\x00".join(tokenizer.units).encode())
    else:
        h.update(tokenizer.model_proto)
    return h.hexdigest()[:16]
