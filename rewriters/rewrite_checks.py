"""The prompt rewriter's safeguards: what a model wraps around a rewrite (:func:`clean_rewrite`) and the
rules a rewrite must pass to replace the user's prompt (:func:`check_rewrite`, settings in
:class:`RewriteCheck`), with BPO's length ratio bounds and the harmful-term check of :mod:`rewriters.harm_terms`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .harm_terms import extra_terms, introduced_harm
from .text import first_word, numbers, stems, words

__all__ = ["BPO_MIN_RATIO", "BPO_MAX_RATIO", "DEFAULT_SLACK_WORDS", "clean_rewrite", "RewriteCheck", "check_rewrite"]

# -- BPO's length bounds ----------------------------------------------------------------------
#: BPO's data filter (``src/data_construction/process_optimized_prompts.py``) drops a pair when the
#: original has more than twice the words of the optimized prompt, or the optimized prompt more than six
#: times the words of the original (words = whitespace-separated tokens).
BPO_MIN_RATIO = 0.5
BPO_MAX_RATIO = 6.0
#: At inference a very short prompt ("write a poem") may grow by a sentence or two without being an
#: answer, so the upper bound is ``max(max_ratio * words, words + slack_words)``.
DEFAULT_SLACK_WORDS = 16

#: Openings that mark an answer to the prompt rather than a rewrite of it.
_ANSWER_OPENING = re.compile(
    r"^\W*(?:sure|certainly|of course|absolutely|okay|ok|great question|good question|yes|no|"
    r"here(?:'s|’s| is| are)|i(?:'m|’m| am) (?:sorry|happy|glad|unable|not able)|i can(?:not|'t|’t)|"
    r"i (?:would|will|'d|’d) (?:be happy|recommend|suggest)|as an ai|unfortunately|hello|hi)\b",
    re.IGNORECASE,
)

#: Labels a model may put in front of its rewrite; stripped before the checks.
_LABEL = re.compile(
    r"^\s*(?:\*\*|__|#+\s*)?(?:(?:here(?:'s|’s| is)\s+)?(?:an?\s+|the\s+|my\s+)?"
    r"(?:improved|optimi[sz]ed|rewritten|revised|refined|better|enhanced|new)\s+"
    r"(?:version\s+of\s+(?:the|your)\s+)?(?:prompt|instruction|request|query)[^:\n]{0,60}|"
    r"(?:optimi[sz]ed|improved|rewritten|revised)\s+(?:prompt|instruction)|prompt)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
#: Words that make a sentence a request ("Explain...", "Can you...", "Please..."): a rewrite of a question
#: that is neither a question nor contains one of these is a statement, i.e. an answer. (On the BPO pairs,
#: none of the 105 optimized prompts of questions is flagged by this rule.)
_REQUEST_WORD = re.compile(
    r"\b(?:please|explain|describe|provide|give|list|write|tell|suggest|recommend|help|create|compare|discuss|"
    r"outline|summari[sz]e|identify|analy[sz]e|share|offer|generate|design|develop|draft|compose|calculate|"
    r"determine|find|make|plan|prepare|propose|rewrite|translate|evaluate|assess|consider|imagine|pretend|"
    r"show|teach|guide|answer|respond|define|clarify|elaborate|name|brainstorm|convert|classify|rank|choose|"
    r"select|edit|correct|improve|fix|solve|compute|estimate|predict|review|i\s+need|i\s+want|i'd\s+like|"
    r"i\s+would\s+like|can\s+you|could\s+you|would\s+you)\b",
    re.IGNORECASE,
)
#: A prompt that sets a role ("As a pirate captain, ...", "Imagine you are a time traveller ...").
_ROLE = re.compile(
    r"^\W*(?:as an? |imagine (?:that )?(?:you are|you're) (?:an? )?|pretend (?:to be|you are|you're) (?:an? )?|"
    r"you are an? |act as (?:an? )?)([^,.?!:;]{3,80})",
    re.IGNORECASE,
)

_ROLE_QUALIFIER = re.compile(r"\s+(?:from|in|on|at|with|who|that|of|for|during|living|working)\s+", re.IGNORECASE)

_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}


def clean_rewrite(text: str) -> str:
    """Strip what models wrap around a rewrite: a trailing ``[END]``, a label such as ``Optimized prompt:``
    or ``Here is an improved version of the prompt:``, code fences and quotes around the whole text."""
    t = text.split("[END]")[0].strip()
    if t.startswith("```") and t.endswith("```") and len(t) >= 6:
        t = t[3:-3]
        t = t.split("\n", 1)[1] if "\n" in t and not t.split("\n", 1)[0].strip().count(" ") else t
        t = t.strip()
    for _ in range(2):
        m = _LABEL.match(t)
        if m and m.end() < len(t):
            t = t[m.end() :].strip()
    if len(t) >= 2 and t[0] in _QUOTES and t.endswith(_QUOTES[t[0]]) and t.count(t[0]) <= 2:
        t = t[1:-1].strip()
    return t


@dataclass(frozen=True)
class RewriteCheck:
    """The safeguard settings of a rewriter (see :func:`check_rewrite`). ``extra_harm_terms``: terms (words
    of up to three, or digests from :func:`rewriters.harm_terms.harm_digest`) that a rewrite must not add,
    besides the built-in list."""

    min_ratio: float = BPO_MIN_RATIO
    max_ratio: float = BPO_MAX_RATIO
    slack_words: int = DEFAULT_SLACK_WORDS
    min_key_overlap: float = 0.25
    check_answer: bool = True
    keep_numbers: bool = True
    keep_role: bool = True
    check_introduced_harm: bool = True
    extra_harm_terms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_harm_terms", extra_terms(self.extra_harm_terms))


def check_rewrite(original: str, rewrite: str, check: RewriteCheck = RewriteCheck()) -> str | None:
    """Why ``rewrite`` must not replace ``original``, or ``None`` when it may.

    Rules, in order:

    1. ``empty``: nothing left after :func:`clean_rewrite`.
    2. ``introduced harm``: it contains a harmful term (a slur; see :mod:`rewriters.harm_terms`) that the
       original does not (``check_introduced_harm``).
    3. ``too short``: fewer than ``min_ratio`` × the original's words (BPO: the original may have at most
       twice the words of the rewrite).
    4. ``too long``: more than ``max(max_ratio × words, words + slack_words)`` words (BPO: at most six
       times the words; the slack lets a two-word prompt grow into a sentence).
    5. ``answers the prompt``: the rewrite opens like an answer ("Sure", "Here is", "I'm sorry", "As an
       AI"...) while the original does not open with the same word; or the original is a question and
       the rewrite is a statement (no question mark, no request word such as "explain" or "please").
    6. ``drops numbers``: a number of the original is missing from the rewrite (``keep_numbers``).
    7. ``drops the role``: the original sets a role ("As a pirate captain, ...", "Imagine you are ...")
       and none of the role's words remain (``keep_role``).
    8. ``lost the request's key content``: the original has 3+ content words (no stopwords) and fewer than
       ``min_key_overlap`` of them (compared by their first five letters) remain in the rewrite.
    """
    if not rewrite.strip():
        return "empty rewrite"
    if check.check_introduced_harm:
        reason = introduced_harm(rewrite, original, check.extra_harm_terms)
        if reason:
            return f"rewrite {reason}"
    n_orig, n_new = len(words(original)), len(words(rewrite))
    if n_orig and n_new < check.min_ratio * n_orig:
        return f"rewrite too short ({n_new} words for a {n_orig}-word prompt)"
    limit = max(check.max_ratio * n_orig, n_orig + check.slack_words)
    if n_new > limit:
        return f"rewrite too long ({n_new} words for a {n_orig}-word prompt; limit {int(limit)})"
    if not check.check_answer:
        return None
    m = _ANSWER_OPENING.match(rewrite)
    if m and first_word(m.group(0)) != first_word(original):
        return f"rewrite answers the prompt instead of rewriting it (opens with {m.group(0).strip()!r})"
    if original.rstrip().endswith("?") and "?" not in rewrite and not _REQUEST_WORD.search(rewrite):
        return "rewrite answers the prompt instead of rewriting it (a statement, neither a question nor a request)"
    if check.keep_numbers:
        lost = sorted(numbers(original) - numbers(rewrite), key=lambda n: original.find(n))
        if lost:
            return f"rewrite drops numbers the prompt gives ({', '.join(lost[:5])})"
    if check.keep_role:
        m = _ROLE.match(original)
        # the role itself, without what qualifies it ("a time traveler from the year 3000" -> "time traveler")
        role_text = _ROLE_QUALIFIER.split(m.group(1))[0].strip() if m else ""
        role = stems(role_text)
        if role and not role & stems(rewrite):
            return f"rewrite drops the role the prompt sets ({role_text!r})"
    key = stems(original)
    if len(key) >= 3:
        kept = len(key & stems(rewrite)) / len(key)
        if kept < check.min_key_overlap:
            return f"rewrite lost the request's key content ({kept:.0%} of its content words kept)"
    return None
