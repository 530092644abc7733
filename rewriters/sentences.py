"""How the response corrector cuts text: a conversation into Aligner's one question
(:func:`flatten_question`), and an answer into sentences (:func:`split_sentences`) and the sentence groups
chunked correction works on (:func:`split_chunks`, incrementally :class:`ChunkSplitter`).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from middleware.errors import InputError
from middleware.types import Message

__all__ = ["flatten_question", "split_sentences", "ChunkSplitter", "split_chunks"]


# -- the question ---------------------------------------------------------------------------------
def flatten_question(messages: Sequence[Message | dict[str, Any]]) -> str:
    """The conversation as Aligner's one ``question``.

    One user turn (system messages aside): its text, unchanged. Several turns: ``User: ...`` and
    ``Assistant: ...`` lines joined by newlines, ending with the last user message. System messages are
    left out.
    """
    msgs = [m if isinstance(m, Message) else Message.model_validate(m) for m in messages]
    turns = [m for m in msgs if m.role != "system"]
    if not turns:
        raise InputError("the conversation has no user message to correct an answer to")
    if len(turns) == 1:
        return turns[0].content
    return "\n".join(f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}" for m in turns)


# -- segmentation ---------------------------------------------------------------------------------
#: A sentence ends at ``.``/``!``/``?``/``…`` (then closing quotes or brackets, or markdown emphasis)
#: followed by whitespace, or at a line break; the whitespace after it belongs to it.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]*_]*\s+|\n\s*")
_ABBREVIATIONS = frozenset("e.g i.e etc vs mr mrs ms dr prof st jr sr no fig approx cf al dept inc ltd".split())
_LAST_WORD = re.compile(r"(?:^|[^\w.])((?:[A-Za-z]\.)*[A-Za-z]+|\d{1,3})$")


def _after_abbreviation(text: str, dot: int) -> bool:
    """Whether the single ``.`` at index ``dot`` closes an abbreviation ("e.g.", "Dr.") or a list number ("2.")."""
    m = _LAST_WORD.search(text, 0, dot)
    return m is not None and (m.group(1).isdigit() or m.group(1).lower() in _ABBREVIATIONS)


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` into sentences, each with the whitespace after it; joined, they give ``text`` back.

    A boundary is a sentence end (``.``, ``!``, ``?``, ``…``, then closing quotes, brackets or markdown
    emphasis) followed by whitespace, or a line break. A ``.`` after an abbreviation ("e.g.", "Dr.") or
    after a number of up to three digits ("2. Mix the flour") on the same line is no boundary. The last piece may be unfinished.
    """
    out: list[str] = []
    start = pos = 0
    while True:
        m = _BOUNDARY.search(text, pos)
        if m is None:
            break
        found = m.group(0)
        if found[0] == "." and found[1:2] != "." and "\n" not in found and _after_abbreviation(text, m.start()):
            pos = m.end()
            continue
        out.append(text[start : m.end()])
        start = pos = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


class ChunkSplitter:
    """Incremental :func:`split_chunks`: feed text pieces of any size, get each group as soon as it is
    complete; ``finish()`` returns the rest. The groups do not depend on how the text was cut into pieces.

    A sentence is complete once the first character of the next one has arrived (until then the
    whitespace after it might still grow). Complete sentences are grouped until a group has
    ``min_chars`` characters (not counting surrounding whitespace).
    """

    def __init__(self, min_chars: int = 40) -> None:
        if min_chars < 1:
            raise InputError(f"min_chars must be at least 1, got {min_chars!r}")
        self.min_chars = min_chars
        self._tail = ""
        self._group = ""

    def feed(self, piece: str) -> list[str]:
        """Add ``piece``; return the groups it completed."""
        if not piece:
            return []
        sentences = split_sentences(self._tail + piece)
        self._tail = sentences.pop()
        done: list[str] = []
        for s in sentences:
            self._group += s
            if len(self._group.strip()) >= self.min_chars:
                done.append(self._group)
                self._group = ""
        return done

    def finish(self) -> list[str]:
        """The remaining text as the last group (none when nothing is left)."""
        rest = self._group + self._tail
        self._group = self._tail = ""
        return [rest] if rest else []


def split_chunks(text: str, min_chars: int = 40) -> list[str]:
    """The groups of sentences chunked correction works on; joined, they give ``text`` back."""
    sp = ChunkSplitter(min_chars)
    return sp.feed(text) + sp.finish()

