"""BPO's data construction for the prompt rewriter: the teacher's task (:func:`teacher_prompt`: compare a
good and a bad response, write an optimized instruction), reading its answer
(:func:`parse_teacher_output`), and BPO's filters on the optimized prompts (:func:`bpo_filter`, with its
check that the prompt does not carry the good answer's text).
"""

from __future__ import annotations

import ast
import re

from middleware.types import PreferencePair

from .rewrite_checks import BPO_MAX_RATIO, BPO_MIN_RATIO
from .text import normalized, words

__all__ = ["TEACHER_PROMPT", "teacher_prompt", "parse_teacher_output", "bpo_filter"]

TEACHER_PROMPT = """{history}instruction: "{instruction}"

bad response:
"{rejected}"

good response:
"{chosen}"

Compare the good response with the bad response on correctness (whether the response follows the \
instruction and is accurate; most important), helpfulness (depth, creativity, coherence) and harmlessness. \
Then, as an expert prompt engineer, improve my instruction so that it leads to responses like the good \
response rather than the bad one.

Rules:
1. If the instruction raises any safety issue, rewrite it to be completely harmless and safe on the same topic.
2. Keep every piece of information in the original instruction.
3. Do not add detailed content constraints taken from the good response that the instruction does not \
mention, except as examples.
4. Keep any protected parts of the instruction exactly as they are.
5. Never answer the instruction yourself.
6. Keep the original meaning of the instruction and the user's intent.

Answer in exactly this format:
Detailed Comparison Result: xxx
Optimized Instruction: xxx [END]"""


def teacher_prompt(pair: PreferencePair) -> str:
    """The teacher's task for one pair, following BPO's data construction: compare the good (chosen) and
    bad (rejected) responses, then write an optimized instruction. Earlier turns of a multi-turn
    conversation are shown before the instruction as context."""
    history = ""
    if len(pair.prompt) > 1:
        lines = [f"{m.role}: {m.content}" for m in pair.prompt[:-1]]
        history = "conversation so far (context only; optimize the last instruction):\n" + "\n".join(lines) + "\n\n"
    return TEACHER_PROMPT.format(
        history=history, instruction=pair.question, rejected=pair.rejected, chosen=pair.chosen
    )


_OPT_MARK = re.compile(
    r"(?:\*\*|__|#+\s*)?optimi[sz]ed\s+(?:instruction|prompt)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?", re.IGNORECASE
)
_CRIT_MARK = re.compile(r"^\s*(?:\*\*|__|#+\s*)?detailed\s+comparison\s+result\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?", re.IGNORECASE)


def parse_teacher_output(text: str) -> tuple[str, str]:
    """``(critique, optimized_prompt)`` from a teacher's answer in BPO's format
    (``Detailed Comparison Result: ... Optimized Instruction: ... [END]``).

    Tolerates markdown bold or headings around the labels, ``Optimized Prompt`` for ``Optimized
    Instruction``, a missing ``[END]``, and quotes or code fences around the prompt (read as a string
    literal where they form one, never evaluated). Raises ``ValueError`` when there is no optimized prompt.
    """
    body = text.split("[END]")[0]
    marks = list(_OPT_MARK.finditer(body))
    if not marks:
        raise ValueError("no 'Optimized Instruction:' in the teacher's answer")
    m = marks[-1]
    critique = _CRIT_MARK.sub("", body[: m.start()]).strip()
    prompt = body[m.end() :].strip()
    if prompt.startswith("```") and prompt.endswith("```") and len(prompt) >= 6:
        prompt = prompt[3:-3].strip()
    if len(prompt) >= 2 and prompt[0] in "\"'" and prompt[-1] == prompt[0]:
        try:
            value = ast.literal_eval(prompt)
            if isinstance(value, str):
                prompt = value
        except (ValueError, SyntaxError):
            prompt = prompt[1:-1]
    prompt = prompt.strip().strip("*").strip()
    if not prompt:
        raise ValueError("the teacher's optimized prompt is empty")
    return critique, prompt


def _shingles(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _leaks_answer(optimized: str, chosen: str, original: str, n: int = 8, share: float = 0.5, run: int = 20) -> bool:
    """Whether the optimized prompt carries the chosen answer's text (words compared in lower case,
    punctuation ignored; text already in the original prompt does not count):

    - the whole answer, when it has 4+ words;
    - at least ``share`` of the answer's ``n``-word runs;
    - any run of ``run`` consecutive words of the answer.

    Shorter shared runs are common and harmless: answers often restate the task in the prompt's words.
    """
    o, c, p = normalized(optimized), normalized(chosen), normalized(original)
    cw, ow, pw = c.split(), o.split(), p.split()
    if len(cw) >= 4 and c in o and c not in p:
        return True
    if len(cw) < n:
        return False
    grams = _shingles(cw, n) - _shingles(pw, n)
    if grams and len(grams & _shingles(ow, n)) >= share * len(grams):
        return True
    if len(cw) >= run:
        long_runs = _shingles(cw, run) - _shingles(pw, run)
        return bool(long_runs & _shingles(ow, run))
    return False


def bpo_filter(original: str, optimized: str, chosen: str | None = None) -> str | None:
    """BPO's data filters; the reason a pair is dropped, or ``None``.

    ``empty``; ``length_ratio`` (the original has more than twice the words of the optimized prompt, or the
    optimized prompt more than six times the original's, as in BPO's ``process_no_ctx``); ``protected``
    (a ``[protected`` placeholder leaked from the teacher, as in BPO); ``unchanged`` (the optimized prompt
    is the original, ignoring case, spacing and punctuation); ``leaked_answer`` (the optimized prompt
    carries the chosen answer's text, see :func:`_leaks_answer`).
    """
    if not optimized.strip():
        return "empty"
    a, b = len(words(original)), len(words(optimized))
    if a and (a / b > 1 / BPO_MIN_RATIO or b / a > BPO_MAX_RATIO):
        return "length_ratio"
    if "[protected" in optimized.lower():
        return "protected"
    if normalized(optimized) == normalized(original):
        return "unchanged"
    if chosen and _leaks_answer(optimized, chosen, original):
        return "leaked_answer"
    return None
