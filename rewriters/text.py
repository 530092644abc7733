"""Word, number and stem helpers shared by the rewrite and correction safeguards and the BPO data filter.

Words are whitespace-separated tokens (BPO's unit for its length ratios); stems are crude content keys
(lowercased alphanumeric tokens of 3+ characters, not stopwords, cut to five letters).
"""

from __future__ import annotations

import re

__all__ = ["words", "stems", "first_word", "numbers", "normalized", "norm_words"]

_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"[^\W_]+")
_NUMBER = re.compile(r"(?<![\w.])[-+−]?(\d+(?:,\d{3})*(?:\.\d+)?)")
_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just let me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own please same she should
    so some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your yours
    yourself yourselves tell give write make want need know get like also use using one two""".split()
)


def words(text: str) -> list[str]:
    """The whitespace-separated tokens of ``text``."""
    return _WORD.findall(text)


def stems(text: str) -> set[str]:
    """Crude content stems: lowercased alphanumeric tokens of 3+ characters, not stopwords, cut to 5 letters."""
    return {t[:5] for t in (w.lower() for w in _TOKEN.findall(text)) if len(t) >= 3 and t not in _STOPWORDS}


def first_word(text: str) -> str:
    """The first alphanumeric token of ``text``, lowercased (empty when there is none)."""
    m = _TOKEN.search(text)
    return m.group(0).lower() if m else ""


def numbers(text: str) -> set[str]:
    """The numbers written in ``text``, thousands separators removed."""
    return {m.replace(",", "") for m in _NUMBER.findall(text)}


def normalized(text: str) -> str:
    """``text`` lowercased, its alphanumeric tokens joined by single spaces (punctuation and spacing ignored)."""
    return " ".join(_TOKEN.findall(text.lower()))


def norm_words(text: str) -> list[str]:
    """The words of ``text`` lowercased, with surrounding punctuation and markdown emphasis stripped."""
    return [w.lower().strip(".,;:!?\"'()[]*_") for w in words(text)]
