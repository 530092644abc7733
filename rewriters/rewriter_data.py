"""Training data for the prompt rewriter: SFT examples from preference pairs (:func:`build_rewriter_data`),
with the optimized prompts taken from the data or written by a teacher model (BPO's procedure, see
:mod:`rewriters.teacher`), optionally kept only where they raise a target model's reward
(:mod:`rewriters.selection`); :class:`RewriterDataReport` says what became of each row.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from middleware.concurrency import concurrency_for, is_local, run_bounded
from middleware.errors import InputError
from middleware.llm import LLM
from middleware.models import cache_dir as cache_root
from middleware.sft_data import SFTExample
from middleware.types import ChatRequest, Message, PreferencePair

from .answer_cache import TextCache, cache_identity, failure_message, progress_bar
from .pairs import as_pairs
from .selection import RewardChoice, select_by_reward
from .stage import resolve_llm
from .teacher import bpo_filter, parse_teacher_output, teacher_prompt
from .templates import Template, get_template

#: teacher calls in flight at once to a remote teacher, unless ``concurrency`` says otherwise
TEACHER_CONCURRENCY = 8

log = logging.getLogger("alignware")

__all__ = ["RewriterDataReport", "build_rewriter_data"]


@dataclass
class RewriterDataReport:
    """What :func:`build_rewriter_data` did with each row."""

    total: int = 0
    kept: int = 0
    from_data: int = 0
    from_teacher: int = 0
    filtered: Counter = field(default_factory=Counter)
    no_target: int = 0
    teacher_failures: int = 0
    teacher_calls: int = 0
    cache_hits: int = 0
    failures: list[str] = field(default_factory=list)
    #: reward selection (``judge=``): rows judged, rows dropped because the rewrite did not raise the reward
    selection_judged: int = 0
    selection_dropped: int = 0
    selection_mean_gain: float | None = None
    selection_failures: int = 0

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"{self.total} pairs: {self.kept} kept ({self.from_data} with an optimized prompt in the data, "
            f"{self.from_teacher} from the teacher)",
        ]
        if self.filtered:
            parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.filtered.items()))
            lines.append(f"filtered {sum(self.filtered.values())} ({parts})")
        if self.no_target:
            lines.append(f"skipped {self.no_target} without an optimized prompt (no teacher given)")
        if self.teacher_calls or self.cache_hits or self.teacher_failures:
            lines.append(
                f"teacher: {self.teacher_calls} calls, {self.cache_hits} cached, {self.teacher_failures} failed"
            )
        if self.selection_judged or self.selection_failures:
            gain = "n/a" if self.selection_mean_gain is None else f"{self.selection_mean_gain:+.3f}"
            lines.append(
                f"reward selection: {self.selection_judged} rewrites judged on the target model's answers, "
                f"{self.selection_dropped} dropped (no gain), {self.selection_failures} dropped (target failed), "
                f"mean gain {gain}"
            )
        for f in self.failures[:5]:
            lines.append(f"  {f}")
        if len(self.failures) > 5:
            lines.append(f"  ... and {len(self.failures) - 5} more failures")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["filtered"] = dict(self.filtered)
        return d


def build_rewriter_data(
    pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]",
    teacher: "LLM | str | None" = None,
    *,
    cache_dir: "str | os.PathLike[str] | None" = None,
    concurrency: int | None = None,
    max_concurrency: int | None = None,
    progress: bool = True,
    teacher_temperature: float = 0.7,
    teacher_max_tokens: int = 1024,
    filter_given: bool = False,
    template: "str | Template" = "bpo",
    judge: Any = None,
    target: "LLM | str | None" = None,
    select_max_tokens: int = 128,
    select_margin: float = 0.0,
    select_samples: int = 1,
    select_temperature: float | None = None,
    choices_out: "list[RewardChoice] | None" = None,
) -> "tuple[list[SFTExample], RewriterDataReport]":
    """Training examples for the rewriter: source, the last user message rendered with ``template`` (the
    text the trained model will be prompted with); target, the optimized prompt.

    Rows with an ``optimized_prompt`` are used as they are (the published BPO data keeps some unchanged
    and some long rewrites on purpose; ``filter_given=True`` applies the filters to them too). For the
    others, the ``teacher`` compares ``chosen`` with ``rejected`` and writes a critique and an optimized
    prompt (BPO's procedure, :func:`teacher_prompt`); its answers go through :func:`bpo_filter`.

    Teacher calls to a remote model go out async, ``concurrency`` in flight at once (default
    ``TEACHER_CONCURRENCY``; ``max_concurrency`` is its former name), in the rows' order; a local teacher
    answers one row at a time. They are cached on disk under ``cache_dir`` (default:
    ``<alignware cache>/teacher``), keyed by a hash of the teacher's model name and the prompt, so a rerun
    makes no calls. A failed or unparseable teacher answer skips that row and is counted, never raised.

    With a ``judge`` (a reward model), only the rewrites that raise the reward of the ``target`` model's
    answer (default: the embedded model) by more than ``select_margin`` are kept (:func:`select_by_reward`;
    ``select_samples`` answers per side at ``select_temperature``, mean rewards compared); pass a list as
    ``choices_out`` to receive every judged row.

    Returns:
        ``(examples, report)``; examples keep the order of ``pairs``.
    """
    tmpl = get_template(template)
    if tmpl.fields != ("prompt",):
        raise InputError(f"template {tmpl.name!r} takes fields {list(tmpl.fields)}; a rewriter template takes 'prompt'")
    rows = as_pairs(pairs)
    report = RewriterDataReport(total=len(rows))
    given = concurrency if concurrency is not None else max_concurrency
    if given is not None and given < 1:
        raise InputError(f"concurrency must be at least 1, got {given!r}")
    targets, need = _given_targets(rows, report, teacher=teacher is not None, filter_given=filter_given)
    if need:
        assert teacher is not None
        answers = _ask_teacher(
            rows, need, teacher, report,
            cache_dir=cache_dir, concurrency=given, progress=progress,
            temperature=teacher_temperature, max_tokens=teacher_max_tokens,
        )
        for i in sorted(answers):
            _, optimized = parse_teacher_output(answers[i])
            reason = bpo_filter(rows[i].question, optimized, rows[i].chosen)
            if reason:
                report.filtered[reason] += 1
                continue
            targets[i] = optimized
            report.from_teacher += 1

    if judge is not None and targets:
        choices = select_by_reward(
            rows,
            targets,
            target if target is not None else "embedded",
            judge,
            max_tokens=select_max_tokens,
            margin=select_margin,
            samples=select_samples,
            temperature=select_temperature,
            cache_dir=cache_dir,
            progress=progress,
            concurrency=concurrency,
        )
        _apply_selection(choices, targets, report)
        if choices_out is not None:
            choices_out.extend(choices)
    examples = [SFTExample(source=tmpl.render(prompt=rows[i].question), target=targets[i]) for i in sorted(targets)]
    report.kept = len(examples)
    return examples, report


def _given_targets(
    rows: Sequence[PreferencePair], report: RewriterDataReport, *, teacher: bool, filter_given: bool
) -> tuple[dict[int, str], list[int]]:
    """The optimized prompts the data gives (filtered with ``filter_given``), by row index, and the rows
    left for the teacher (none without one: they are counted as ``no_target``)."""
    targets: dict[int, str] = {}
    need: list[int] = []
    for i, row in enumerate(rows):
        if row.optimized_prompt and row.optimized_prompt.strip():
            reason = bpo_filter(row.question, row.optimized_prompt, row.chosen) if filter_given else None
            if reason:
                report.filtered[reason] += 1
            else:
                targets[i] = row.optimized_prompt.strip()
                report.from_data += 1
        elif not teacher:
            report.no_target += 1
        else:
            need.append(i)
    return targets, need


def _ask_teacher(
    rows: Sequence[PreferencePair],
    need: list[int],
    teacher: "LLM | str",
    report: RewriterDataReport,
    *,
    cache_dir: "str | os.PathLike[str] | None",
    concurrency: int | None,
    progress: bool,
    temperature: float,
    max_tokens: int,
) -> dict[int, str]:
    """The teacher's usable answers for the rows ``need``, by row index: from the disk cache or asked
    ``concurrency`` at a time (a local teacher: one at a time). Failed calls and unparseable answers go to
    ``report.failures``, in row order."""
    llm = resolve_llm(teacher)
    limit = concurrency_for(llm, concurrency, "build_rewriter_data")
    if limit is None:
        limit = 1 if is_local(llm) else TEACHER_CONCURRENCY
    model_name = f"{cache_identity(teacher, llm)}|temperature={temperature}|max_tokens={max_tokens}"
    teacher_dir = cache_root() / "teacher" if cache_dir is None else Path(cache_dir)
    cache = TextCache(teacher_dir, str(model_name))

    async def ask(i: int) -> str:
        """Row ``i``'s usable answer; raises ``_Unusable`` with the row's failure."""
        prompt = teacher_prompt(rows[i])
        cached = cache.get(prompt)
        if cached is not None:
            report.cache_hits += 1
            return cached
        req = ChatRequest(
            messages=[Message(role="user", content=prompt)],
            temperature=temperature,
            max_tokens=max_tokens,
        )
        report.teacher_calls += 1
        try:
            text = (await llm.acomplete(req)).text
        except Exception as e:  # any backend failure skips the row
            raise _Unusable(f"row {i}: teacher call failed: {failure_message(e)}") from e
        try:
            parse_teacher_output(text)
        except ValueError as e:
            raise _Unusable(f"row {i}: unusable teacher answer: {e}") from e
        try:
            cache.put(prompt, text)
        except OSError as e:
            log.warning("cannot cache a teacher answer in %s: %s", cache.root, e)
        return text

    bar = progress_bar(len(need), "teacher", "pair") if progress else None
    out = run_bounded([functools.partial(ask, i) for i in need], limit, on_done=None if bar is None else lambda _: bar.update(1))
    if bar is not None:
        bar.close()
    answers: dict[int, str] = {}
    for i, got in zip(need, out):
        if isinstance(got, Exception):
            report.teacher_failures += 1
            report.failures.append(str(got) if isinstance(got, _Unusable) else f"row {i}: {failure_message(got)}")
        else:
            answers[i] = got
    return answers


class _Unusable(Exception):
    """A row the teacher gave no usable answer for (the message names the row and the reason)."""


def _apply_selection(choices: list[RewardChoice], targets: dict[int, str], report: RewriterDataReport) -> None:
    """Count the reward selection in ``report`` and drop the rows it did not keep from ``targets``."""
    judged = [c for c in choices if c.error is None]
    report.selection_judged = len(judged)
    report.selection_dropped = sum(not c.kept for c in judged)
    report.selection_failures = len(choices) - len(judged)
    report.failures.extend(c.error for c in choices if c.error is not None)
    report.selection_mean_gain = sum(c.gain for c in judged) / len(judged) if judged else None
    for c in choices:
        if not c.kept:
            del targets[c.index]
