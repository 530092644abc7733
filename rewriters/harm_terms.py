"""Harmful terms a stage must not add: the lexicon check behind the rewriter's and the corrector's
``introduced harm`` safeguard (:func:`introduced_harm`).

**What the list covers.** Slurs (racial and ethnic, religious, homophobic and transphobic, ableist), a few
terms that sexualise minors and two hate slogans, each with its common spelling variants
(:data:`rewriters.harm_digests.DIGESTS`). Slurs whose spelling is also a common harmless word (a narrow
opening, a flood bank, half of a music genre's name, a blood group) are left out, and so are the clinical
words a refusal uses to name abuse ("child sexual abuse"): a correction that refuses must be able to say
what it refuses. On the shared data (HH, BPO, PandaLM, Dolly, Vicuna; 1.7 M characters) each of the 19
hits is a listed slur (all in HH conversations), none a harmless word.

**How it is kept.** No entry is written out: the list holds salted SHA-256 digests of each entry's
canonical form (:func:`canonical`: accents dropped, case folded, look-alike letters and leetspeak mapped
to letters, words joined by one space). A text is checked by hashing the forms of each of its words and of
each run of as many words as the longest entry has (two in the built-in list, up to three for extra terms).

**How a text is read.** Unicode NFKD without accents, zero-width characters removed, Cyrillic and Greek
look-alikes mapped to Latin letters, then for every word:

- leetspeak (``0→o 1→i/l 3→e 4→a 5→s 7→t 8→b 9→g @→a $→s ! and |→i +→t``);
- separators inside the word (``n.a.m.e``, ``n-a-m-e``, ``n_a_m_e``, ``n*a*m*e``) and single letters
  spaced out (``n a m e``) joined;
- an asterisk that stands for letters (``n*me``: up to two) tried as every letter;
- repeated letters (``naaame``) tried as one and as two letters;
- plural endings (``-s``, ``-es``, ``-ies``, ``-z``) stripped; other inflections are entries of their own.

Whole words only: an entry inside a longer word does not match.

**Extending it.** ``CorrectionCheck(extra_harm_terms=(...))`` and ``RewriteCheck(extra_harm_terms=(...))``
(config key ``extra_harm_terms``) take more terms, as words (up to three) or as digests from
:func:`harm_digest`, so a config need not spell them either. To add an entry for everyone, append
``(category, harm_digest(term))`` to :data:`rewriters.harm_digests.DIGESTS`;
``python -m rewriters.harm_terms [--category C] TERM...`` prints those lines.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import re
import string
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator, Sequence

from middleware.errors import InputError

from .harm_digests import DIGESTS

__all__ = ["CATEGORIES", "HarmHit", "canonical", "harm_digest", "entry_digests", "extra_terms", "find_harm_terms", "introduced_harm"]

#: The salt every digest is computed with (changing it invalidates the list).
SALT = "alignware/harm-terms/v1:"
#: What each category of :data:`rewriters.harm_digests.DIGESTS` is called in a safeguard's reason.
CATEGORIES = {
    "racial": "racial or ethnic slur",
    "religious": "religious slur",
    "sexuality": "homophobic or transphobic slur",
    "ableist": "ableist slur",
    "abuse": "term sexualising minors",
    "hate": "hate slogan",
    "extra": "listed harmful term",
}
#: Terms of at most this many words are looked for.
MAX_WORDS = 3
_MAX_MASKS = 2
_MAX_RUNS = 5

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"))
#: Cyrillic and Greek letters that look like Latin ones.
_LOOKALIKE = str.maketrans("авекмнорстухьіјѕԁɡαβεικνορτυχ", "abekmhopctyxbijsdgabeikvoptux")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                       "@": "a", "$": "s", "!": "i", "|": "i", "+": "t"})
#: A whitespace-separated chunk: word characters, leet symbols and the separators that may sit inside.
_CHUNK = re.compile(r"[\w@$!|+*'’.~-]+")
_EDGE = "'’.!~-_"
_SEPARATORS = re.compile(r"[.~_-]+")
_STARRED = re.compile(r"^(?:[a-z0-9]\*)+[a-z0-9]$")
_RUN = re.compile(r"([a-z])\1+")


@dataclass(frozen=True)
class HarmHit:
    """A harmful term found in a text: its category, its lexicon digest, the words it was found in (as
    read: case and accents folded) and their position among the text's words."""

    category: str
    digest: str
    surface: str
    position: int

    def label(self) -> str:
        """The category's name and the matched words masked after their first letter."""
        return f"{CATEGORIES.get(self.category, self.category)} ({self.surface[0] + '*' * min(len(self.surface) - 1, 11)!r})"


# -- normalisation ------------------------------------------------------------------------------
def _fold(text: str) -> str:
    """Accents dropped, compatibility forms and case folded, zero-width characters removed, look-alike
    letters mapped to Latin ones."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ZERO_WIDTH))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return bare.casefold().translate(_LOOKALIKE)


def _leet(word: str) -> list[str]:
    """``word`` with leetspeak read as letters (``1`` both as ``i`` and ``l``); a number stays a number."""
    if not any(c.isalpha() for c in word):
        return [word]
    forms = [word.translate(_LEET)]
    if "1" in word:
        forms.append(word.replace("1", "l").translate(_LEET))
    return forms


def _runs(word: str) -> list[str]:
    """``word`` with each run of a repeated letter as one and as two letters."""
    runs = list(_RUN.finditer(word))
    if not runs:
        return [word]
    if len(runs) > _MAX_RUNS:
        return list(dict.fromkeys([word, _RUN.sub(r"\1", word), _RUN.sub(r"\1\1", word)]))
    forms = [word]
    for widths in itertools.product((1, 2), repeat=len(runs)):
        pieces, last = [], 0
        for m, w in zip(runs, widths):
            pieces.append(word[last : m.start()] + m.group(1) * w)
            last = m.end()
        forms.append("".join(pieces) + word[last:])
    return list(dict.fromkeys(forms))


def _masks(word: str) -> list[str]:
    """``word`` with each asterisk as every letter (up to two asterisks), or the asterisks dropped."""
    n = word.count("*")
    if n == 0:
        return [word]
    if _STARRED.match(word):
        return [word.replace("*", "")]
    out = [word.replace("*", "")]
    if n <= _MAX_MASKS:
        parts = word.split("*")
        for letters in itertools.product(string.ascii_lowercase, repeat=n):
            out.append("".join(p + c for p, c in zip(parts, letters)) + parts[-1])
    return out


def _pieces(chunk: str) -> list[str]:
    """The parts of a chunk between its separators, apostrophes dropped (``it's`` is one part)."""
    return [p for p in _SEPARATORS.split(chunk.replace("'", "").replace("’", "")) if p]


@lru_cache(maxsize=1 << 15)
def _forms(chunk: str) -> tuple[str, ...]:
    """Every spelling a folded chunk (a word, perhaps with separators inside) is read as."""
    pieces = _pieces(chunk)
    candidates = ["".join(pieces)] + (pieces if len(pieces) > 1 else [])
    out: dict[str, None] = {}
    for cand in candidates:
        for masked in _masks(cand):
            for plain in _leet(masked):
                if "*" in plain or not plain:
                    continue
                for form in _runs(plain):
                    out[form] = None
    return tuple(out)


def _suffixed(form: str) -> Iterator[str]:
    """``form`` and its singular when it looks like an English plural (``-s``; ``-es`` after s, x, z, ch,
    sh or o; ``-ies``; ``-z`` after a vowel), at least three letters left. Other inflections are entries
    of their own (the list's builder adds them), so that ``spiced`` is not read as a slur plus ``-ed``."""
    yield form
    if len(form) < 4:
        return
    if form.endswith("ies") and len(form) >= 6:
        yield form[:-3] + "y"
    if form.endswith("es") and form[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):
        yield form[:-2]
    if form.endswith("s") and not form.endswith("ss"):
        yield form[:-1]
    elif form.endswith("z") and form[-2] in "aeiou":
        yield form[:-1]


def canonical(term: str) -> str:
    """The form a lexicon entry is hashed in: the text folded, leetspeak read as letters (``1`` as
    ``i``), apostrophes dropped, separators inside a word joined, words joined by one space."""
    words = ("".join(_pieces(c.strip(_EDGE).strip("*"))).replace("*", "") for c in _CHUNK.findall(_fold(term)))
    return " ".join(_leet(w)[0] for w in words if w)


@lru_cache(maxsize=1 << 15)
def _digest(form: str) -> str:
    return hashlib.sha256((SALT + form).encode("utf-8")).hexdigest()


def harm_digest(term: str) -> str:
    """The salted SHA-256 digest of ``term``'s canonical form (:func:`canonical`), as the lexicon stores it."""
    form = canonical(term)
    if not form:
        raise InputError(f"harm term {term!r}: no letters or digits in it")
    if form.count(" ") >= MAX_WORDS:
        raise InputError(f"harm term {term!r}: at most {MAX_WORDS} words")
    return _digest(form)


def entry_digests(term: str) -> list[str]:
    """The digests a lexicon entry for ``term`` needs: its canonical form's, and for two words of three
    letters or more also the compound's (so ``ab-cd``, ``ab cd`` and ``abcd`` all match)."""
    out = [harm_digest(term)]
    parts = canonical(term).split(" ")
    if len(parts) == 2 and min(map(len, parts)) >= 3:
        out.append(_digest("".join(parts)))
    return out


@lru_cache(maxsize=64)
def _lexicon(extra: tuple[str, ...]) -> tuple[dict[str, str], int]:
    """Digest → category for the built-in list plus ``extra`` (terms or 64-hex digests), and the most
    words an entry may have (the built-in list has phrases of two; a digest may stand for up to three)."""
    table = {d: c for c, d in DIGESTS}
    longest = 2
    for i, term in enumerate(extra):
        if not isinstance(term, str) or not term.strip():
            raise InputError(f"extra_harm_terms[{i}]: expected a word or a digest, got {term!r}")
        t = term.strip().lower()
        if re.fullmatch(r"[0-9a-f]{64}", t):
            digests, longest = [t], MAX_WORDS
        else:
            digests, longest = entry_digests(term), max(longest, canonical(term).count(" ") + 1)
        for digest in digests:
            table.setdefault(digest, "extra")
    return table, longest


def extra_terms(value: object, field: str = "extra_harm_terms") -> tuple[str, ...]:
    """``value`` checked as a list of extra harm terms (words or digests) and returned as a tuple."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InputError(f"{field}: expected a list of words or digests, got {value!r}")
    terms = tuple(value)
    _lexicon(terms)  # validates every entry
    return terms


# -- finding terms ------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    """The words of the folded text: whitespace-separated chunks without surrounding punctuation or
    markdown emphasis."""
    out = []
    for raw in _CHUNK.findall(_fold(text)):
        chunk = raw.strip(_EDGE)
        if chunk.startswith("*"):  # markdown emphasis, not a masked letter
            chunk = chunk.strip("*").strip(_EDGE)
        if chunk:
            out.append(chunk)
    return out


def _spaced_letters(words: list[str]) -> list[tuple[int, str]]:
    """``(position, word)`` for each stretch of three to 16 one-character words (``n a m e``), joined; every
    stretch of a longer run is tried, as the run may begin or end with a real one-letter word (``a``)."""
    joined: list[tuple[int, str]] = []
    run: list[int] = []
    for i, w in enumerate(words + ["--"]):
        if len(w) == 1:
            run.append(i)
            continue
        for a in range(len(run)):
            for b in range(a + 3, min(len(run), a + 16) + 1):
                joined.append((run[a], "".join(words[j] for j in run[a:b])))
        run = []
    return joined


def find_harm_terms(text: str, extra: Sequence[str] = ()) -> list[HarmHit]:
    """The harmful terms in ``text`` (the built-in list plus ``extra``), in order of position."""
    table, longest = _lexicon(tuple(extra))
    words = _words(text)
    hits: list[HarmHit] = []

    def look(position: int, surface: str, forms: Iterable[str]) -> None:
        for form in forms:
            for f in _suffixed(form):
                digest = _digest(f)
                if digest in table:
                    hits.append(HarmHit(table[digest], digest, surface, position))
                    return

    for position, chunk in [*enumerate(words), *_spaced_letters(words)]:
        look(position, chunk, _forms(chunk))
    for n in range(2, longest + 1):
        for i in range(len(words) - n + 1):
            options = [_forms(w)[:2] for w in words[i : i + n]]
            phrases: Iterable[str] = (" ".join(parts) for parts in itertools.product(*options))
            look(i, " ".join(words[i : i + n]), phrases)
    return sorted(hits, key=lambda h: h.position)


def introduced_harm(text: str, reference: str, extra: Sequence[str] = ()) -> str | None:
    """Why ``text`` adds harmful content that ``reference`` (the stage's input) does not have, or
    ``None``: the terms of :func:`find_harm_terms` in ``text`` whose entry is not in ``reference``
    (quoting the input is not adding)."""
    known = {h.digest for h in find_harm_terms(reference, extra)}
    new: dict[str, HarmHit] = {}
    for h in find_harm_terms(text, extra):
        if h.digest not in known:
            new.setdefault(h.digest, h)
    if not new:
        return None
    labels = ", ".join(h.label() for h in new.values())
    return f"adds a {labels} that its input does not have" if len(new) == 1 else f"adds harmful terms its input does not have: {labels}"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rewriters.harm_terms [--category C] TERM...``: print a ``DIGESTS`` line per term."""
    parser = argparse.ArgumentParser(prog="python -m rewriters.harm_terms", description=main.__doc__)
    parser.add_argument("--category", default="extra", choices=sorted(CATEGORIES))
    parser.add_argument("terms", nargs="+")
    args = parser.parse_args(argv)
    for term in args.terms:
        for digest in entry_digests(term):
            print(f'    ("{args.category}", "{digest}"),')


if __name__ == "__main__":
    main()
