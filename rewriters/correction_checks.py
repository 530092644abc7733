"""The response corrector's safeguards: the rules a correction must pass to replace the LLM's answer
(:func:`check_correction`, settings in :class:`CorrectionCheck`), among them the generation-loop
detector :func:`degeneration` and the harmful-term check of :mod:`rewriters.harm_terms`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .harm_terms import extra_terms, introduced_harm
from .text import norm_words

__all__ = ["CorrectionCheck", "degeneration", "check_correction"]

#: Pieces of the prompt templates a correction must not contain: the wrapper's turn markers as upper-case
#: words (with or without the colon: a model that leaks them often writes "... ASSISTANT." or "USER"), and
#: the ``##`` section headers.
_TEMPLATE_MARKERS = re.compile(r"BEGINNING OF CONVERSATION|##\s*(?:Question|Answer|Correction)\s*:|\b(?:ASSISTANT|USER)\b")
_LOOP = re.compile(r"(.{4,80}?)\1{3,}", re.DOTALL)


@dataclass(frozen=True)
class CorrectionCheck:
    """The safeguard settings of a corrector (see :func:`check_correction`). ``extra_harm_terms``: terms
    (words of up to three, or digests from :func:`rewriters.harm_terms.harm_digest`) that a correction
    must not add, besides the built-in list."""

    reject_truncated: bool = True
    check_degenerate: bool = True
    ngram: int = 6
    max_ngram_repeats: int = 4
    min_distinct_ratio: float = 0.4
    distinct_min_words: int = 60
    max_line_repeats: int = 3
    check_dropped_tail: bool = True
    dropped_tail_ratio: float = 0.5
    check_template_leak: bool = True
    check_introduced_harm: bool = True
    extra_harm_terms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_harm_terms", extra_terms(self.extra_harm_terms))


def degeneration(text: str, reference: str = "", check: CorrectionCheck = CorrectionCheck()) -> str | None:
    """Why ``text`` looks like a generation loop, or ``None``. Repetition already in ``reference`` (the
    original answer) does not count.

    - a line (3+ characters) that occurs ``max_line_repeats`` times or more;
    - a piece of 4 to 80 characters repeated 4 times or more back to back;
    - a run of ``ngram`` words that occurs ``max_ngram_repeats`` times or more;
    - for ``distinct_min_words`` words or more: fewer than ``min_distinct_ratio`` of its 4-word runs distinct.
    """
    lines = Counter(ln.strip().lower() for ln in text.splitlines() if len(ln.strip()) >= 3)
    ref_lines = Counter(ln.strip().lower() for ln in reference.splitlines() if len(ln.strip()) >= 3)
    for line, n in lines.most_common(3):
        if n >= check.max_line_repeats and n > ref_lines.get(line, 0):
            return f"degenerate: the line {line[:40]!r} repeats {n} times"
    m = _LOOP.search(text)
    if m and m.group(0) not in reference and m.group(1).strip():
        unit = m.group(1)
        return f"degenerate: {unit[:30]!r} repeats {len(m.group(0)) // len(unit)} times in a row"
    words = norm_words(text)
    n = check.ngram
    if len(words) >= n * check.max_ngram_repeats:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        gram, count = grams.most_common(1)[0]
        if count >= check.max_ngram_repeats:
            ref = norm_words(reference)
            ref_count = sum(1 for i in range(len(ref) - n + 1) if tuple(ref[i : i + n]) == gram)
            if count > ref_count:
                return f"degenerate: the phrase {' '.join(gram)!r} repeats {count} times"
    if len(words) >= check.distinct_min_words:
        quads = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
        ratio = len(set(quads)) / len(quads)
        if ratio < check.min_distinct_ratio:
            ref = norm_words(reference)
            ref_quads = [tuple(ref[i : i + 4]) for i in range(len(ref) - 3)]
            ref_ratio = len(set(ref_quads)) / len(ref_quads) if ref_quads else 1.0
            if ratio < ref_ratio:
                return f"degenerate: only {ratio:.0%} of its 4-word runs are distinct"
    return None


def check_correction(
    original: str,
    correction: str,
    *,
    finish_reason: str = "stop",
    check: CorrectionCheck = CorrectionCheck(),
    context: str = "",
) -> str | None:
    """Why ``correction`` must not replace ``original``, or ``None`` when it may. ``context``: the rest
    of the corrector's input (the question, earlier parts of the answer), for the harmful-term rule.

    Rules, in order:

    1. ``empty``: nothing but whitespace.
    2. ``introduced harm``: it contains a harmful term (a slur; see :mod:`rewriters.harm_terms`) that
       neither ``original`` nor ``context`` contains (``check_introduced_harm``): quoting the user is
       not adding.
    3. ``truncated``: the generation stopped at the token limit (``finish_reason == "length"``): its end
       is missing, and a cut answer is worse than the original.
    4. ``template leak``: it contains a marker of the prompt template (``ASSISTANT:``, ``##Question:``...)
       that the original does not.
    5. ``degenerate``: a repetition loop (:func:`degeneration`).
    6. ``dropped tail``: it is a beginning of the original, less than ``dropped_tail_ratio`` of its
       length (the model copied the answer and stopped early). A much shorter correction that is *not*
       a copy, such as a refusal replacing a harmful answer, is allowed.
    """
    if not correction.strip():
        return "empty correction"
    if check.check_introduced_harm:
        reason = introduced_harm(correction, f"{context}\n{original}", check.extra_harm_terms)
        if reason:
            return f"correction {reason}"
    if check.reject_truncated and finish_reason == "length":
        return "correction cut off at the token limit"
    if check.check_template_leak:
        in_original = {m.group(0) for m in _TEMPLATE_MARKERS.finditer(original)}
        for m in _TEMPLATE_MARKERS.finditer(correction):
            if m.group(0) not in in_original:
                return f"correction contains the prompt template marker {m.group(0)!r}"
    if check.check_degenerate:
        reason = degeneration(correction, original, check)
        if reason:
            return reason
    if check.check_dropped_tail:
        c, o = " ".join(norm_words(correction)), " ".join(norm_words(original))
        if c and o.startswith(c) and len(c) < check.dropped_tail_ratio * len(o):
            return f"correction drops the end of the answer (a copy of its first {len(c) * 100 // max(1, len(o))}%)"
    return None
