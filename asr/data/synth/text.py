"""Sentences for synthetic speech: permissively licensed English text that installs offline, normalised the
way the tokenizer expects (numbers read out as words, punctuation dropped).

Sources, each a function returning sentences in a fixed order:

- WordNet (Debian ``wordnet-base``, the WordNet licence): the quoted example sentences of its glosses and the
  definitions themselves (``"a member of the genus Canis"``), about 150,000 in all;
- CMU ARCTIC prompts (``cmuarctic.data``, public domain text from Project Gutenberg);
- Kaldi ``text`` files (e.g. speechocean762 ``train/``; never its ``test/`` split, which is refused);
- plain text files, one sentence a line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from asr.tokenizer import normalize_text

WORDNET = Path("/usr/share/wordnet")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?)(st|nd|rd|th|s)?(?![\w])")
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "=": " equals ", "@": " at "}


def _number_words(match: re.Match[str]) -> str:
    from num2words import num2words

    written, suffix = match.group(1), match.group(2) or ""
    digits = written.replace(",", "")
    if suffix in ("st", "nd", "rd", "th"):
        return str(num2words(int(float(digits)), to="ordinal"))
    if "." in digits:
        words = str(num2words(float(digits)))
    elif len(written) == 4 and 1100 <= int(digits) <= 2099:  # a year: 1990, 1990s
        words = str(num2words(int(digits), to="year"))
    else:
        words = str(num2words(int(digits)))
    return words + ("s" if suffix == "s" else "")


def spoken_form(text: str) -> str | None:
    """The sentence as it is read aloud, normalised (``normalize_text``), or None when it holds something that
    could be read out in more than one way (a currency sign, a stray digit in a word).

    >>> spoken_form("In 1990 the cat had 2 kittens & 15% more.")
    'IN NINETEEN NINETY THE CAT HAD TWO KITTENS AND FIFTEEN PERCENT MORE'
    """
    if any(c in text for c in "$£€#/\\<>[]{}|_~^*"):
        return None
    for sym, word in _SYMBOLS.items():
        text = text.replace(sym, word)
    text = _NUMBER.sub(_number_words, text)
    if re.search(r"\d", text):
        return None
    norm = normalize_text(text)
    return norm or None


def _keep(sentences: Iterable[str], min_words: int, max_words: int) -> list[str]:
    seen: dict[str, None] = {}
    for raw in sentences:
        norm = spoken_form(raw)
        if norm and min_words <= len(norm.split()) <= max_words:
            seen.setdefault(norm, None)
    return list(seen)


def wordnet_sentences(
    root: Path = WORDNET, min_words: int = 3, max_words: int = 20, glosses: bool = True
) -> list[str]:
    """WordNet's example sentences (the quoted parts of its glosses) and, with ``glosses``, the
    definitions."""
    raw: list[str] = []
    for part in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{part}"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            gloss = line.split("|", 1)[1]
            raw.extend(re.findall(r'"([^"]+)"', gloss))
            if glosses:
                definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
                raw.extend(d for d in definition.split(";") if d.strip())
    return _keep(raw, min_words, max_words)


def arctic_prompts(path: Path, min_words: int = 1, max_words: int = 40) -> list[str]:
    """The prompts of a CMU ARCTIC ``cmuarctic.data`` file: ``( arctic_a0001 "Author of ..." )``."""
    return _keep(re.findall(r'^\(\s*\S+\s+"(.*)"\s*\)\s*$', path.read_text(), re.M), min_words, max_words)


def kaldi_text(path: Path, min_words: int = 1, max_words: int = 40) -> list[str]:
    """The transcripts of a Kaldi ``text`` file (or of the ``text`` in a Kaldi data folder)."""
    path = path / "text" if path.is_dir() else path
    if "test" in {p.lower() for p in path.parent.parts[-1:]}:
        raise ValueError(
            f"{path} is a test split's text: evaluation sentences must never be read into training data"
        )
    rows = (line.split(maxsplit=1) for line in path.read_text().splitlines())
    return _keep((r[1] for r in rows if len(r) == 2), min_words, max_words)


def plain_text(path: Path, min_words: int = 1, max_words: int = 40) -> list[str]:
    """One sentence a line."""
    return _keep(path.read_text(encoding="utf-8", errors="replace").splitlines(), min_words, max_words)


def read_source(spec: str, min_words: int, max_words: int) -> list[str]:
    """Sentences of ``wordnet[:DIR]``, ``wordnet-examples[:DIR]``, ``arctic:FILE``, ``kaldi:DIR_OR_FILE`` or
    ``text:FILE``."""
    kind, _, arg = spec.partition(":")
    if kind in ("wordnet", "wordnet-examples"):
        root = Path(arg) if arg else WORDNET
        if not (root / "data.noun").is_file():
            raise FileNotFoundError(
                f"WordNet's data files are not in {root}: apt-get install wordnet-base, or name the folder "
                "as wordnet:DIR"
            )
        return wordnet_sentences(root, min_words, max_words, glosses=kind == "wordnet")
    readers = {"arctic": arctic_prompts, "kaldi": kaldi_text, "text": plain_text}
    if kind not in readers or not arg:
        raise ValueError(
            f"unknown text source {spec!r}: use wordnet[:DIR], wordnet-examples[:DIR], arctic:FILE, "
            "kaldi:DIR, text:FILE"
        )
    if not Path(arg).exists():
        raise FileNotFoundError(f"text source {spec!r}: {arg} does not exist")
    return readers[kind](Path(arg), min_words, max_words)
