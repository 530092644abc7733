"""DPO pairs that teach a response corrector to leave a good answer alone (:func:`build_keep_pairs`).

A corrector trained on harmlessness pairs learns to decline, and then declines benign requests too (README,
"Corrector: mixed data, then DPO": 22% of Vicuna Eval answers against 0% for the plain model). On prompts
whose answers need no correction (benign instructions answered by the target model itself), the corrector's
own correction is the rejected side and the answer as it is the chosen one, so that leaving it alone wins.
A pair is kept where the corrector changes the answer and the change declines a request the answer did not
decline (``middleware.evaluate.is_refusal``), or, with a judge, scores at least ``min_gap`` below the answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from middleware.dpo_data import DPOExample
from middleware.errors import InputError
from middleware.evaluate.refusals import is_refusal
from middleware.models import cache_dir as cache_root
from middleware.types import MessagesLike, to_messages

from .correction_checks import CorrectionCheck
from .correction_pairs import resolve_corrector, usable_correction
from .preference_pairs import Sampler, judge_scores, sample_texts
from .sentences import flatten_question
from .templates import Template

__all__ = ["KeepReport", "build_keep_pairs"]


@dataclass
class KeepReport:
    """What :func:`build_keep_pairs` did with its answers: left as they were (the corrector kept the answer,
    or its correction is one the stage would not use), changed into a refusal of what the answer did not
    refuse, changed into something the judge scores ``min_gap`` or more below the answer, changed otherwise
    (no pair), or lost because the corrector or the judge failed (the first error kept); ``skipped``: empty
    answers."""

    answers: int = 0
    unchanged: int = 0
    declines: int = 0
    judged_worse: int = 0
    changed_otherwise: int = 0
    failed: int = 0
    skipped: int = 0
    first_error: str | None = None

    @property
    def kept(self) -> int:
        return self.declines + self.judged_worse

    def fail(self, message: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or message

    def summary(self) -> str:
        text = (f"{self.answers} answers: {self.unchanged} left as they were; {self.kept} keep pairs ({self.declines} "
                f"declining what the answer did not, {self.judged_worse} judged worse); {self.changed_otherwise} "
                f"changed otherwise; {self.skipped} empty; {self.failed} failed")
        return text + (f" (first: {self.first_error})" if self.first_error else "")


def build_keep_pairs(
    items: Iterable[tuple[MessagesLike, str]],
    corrector: Sampler,
    judge: Any = None,
    *,
    min_gap: float = 1.0,
    template: "str | Template | None" = None,
    max_new_tokens: int | None = None,
    check: CorrectionCheck | None = CorrectionCheck(),
    batch_size: int = 8,
    seed: int = 0,
    cache_dir: "str | os.PathLike[str] | None" = None,
    progress: bool = True,
) -> tuple[list[DPOExample], KeepReport]:
    """DPO examples in which an answer left as it is beats the corrector's change of it.

    Args:
        items: ``(conversation, answer)``: prompts that need no correction (benign instructions) with the
            target model's own answers to them (``pipeline.batch(prompts)``, as the corrector will see them).
        corrector: the corrector to learn from (a ``TextGenerator``, an adapter folder, or a callable
            ``(question, answer) -> [correction]``); it corrects each answer once, with its own decoding
            (greedy unless its manifest says otherwise), as the stage does.
        judge: optional (a reward model folder or an object with ``score_batch``): a change it scores at least
            ``min_gap`` below the answer is kept too. Without one, only changes that decline are kept.
        check: the stage's safeguard; a correction it would not use leaves the answer as it is (no pair).

    Returns:
        ``(examples, report)``: ``source`` = the corrector template on the question and the answer,
        ``chosen`` = the answer, ``rejected`` = the correction; ``group`` = the item's index.
    """
    if min_gap < 0:
        raise InputError(f"min_gap must be 0 or more, got {min_gap}")
    rows = [(to_messages(conv), answer.strip() if isinstance(answer, str) else answer) for conv, answer in items]
    for i, (_, answer) in enumerate(rows):
        if not isinstance(answer, str):
            raise InputError(f"items[{i}]: the answer must be a string, got {type(answer).__name__}")
    model, tmpl = resolve_corrector(corrector, template, judge)
    report = KeepReport(answers=len(rows))
    todo = [i for i, (_, answer) in enumerate(rows) if answer]
    report.skipped = len(rows) - len(todo)
    questions = {i: flatten_question(rows[i][0]) for i in todo}
    sources = {i: tmpl.render(question=questions[i], answer=rows[i][1]) for i in todo}
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "answers"
    gens, errors = sample_texts(model, [sources[i] for i in todo], [(questions[i], rows[i][1]) for i in todo], samples=1,
                                seed=seed, temperature=None, top_p=None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                cache_dir=cache, label="corrector", progress=progress, names=todo)
    changed: dict[int, str] = {}
    for n, i in enumerate(todo):
        if n in errors:
            report.fail(errors[n])
            continue
        answer = rows[i][1]
        text = usable_correction(questions[i], answer, gens[n][0], check) if gens[n] else None
        if text is None or text == answer:
            report.unchanged += 1
        else:
            changed[i] = text
    declining = {i for i, text in changed.items() if is_refusal(text) and not is_refusal(rows[i][1])}
    worse: set[int] = set()
    unjudged: set[int] = set()
    rest = [i for i in changed if i not in declining]
    if judge is not None and rest:
        scores, failures = judge_scores(judge, [(rows[i][0], rows[i][1]) for i in rest] + [(rows[i][0], changed[i]) for i in rest],
                                        cache_dir=cache, progress=progress)
        for k, i in enumerate(rest):
            bad = failures.get(k) or failures.get(len(rest) + k)
            if bad is not None:
                report.fail(f"row {i}: judge failed: {bad}")
                unjudged.add(i)
                continue
            as_is, corrected = scores[k], scores[len(rest) + k]
            if as_is is not None and corrected is not None and as_is - corrected >= min_gap:
                worse.add(i)
    report.declines, report.judged_worse = len(declining), len(worse)
    report.changed_otherwise = len(changed) - len(declining) - len(worse) - len(unjudged)
    examples = [DPOExample(source=sources[i], chosen=rows[i][1], rejected=changed[i], group=i)
                for i in sorted(declining | worse)]
    return examples, report

