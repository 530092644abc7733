"""Preference pairs for the response corrector without a teacher (:func:`build_correction_pairs`): the
data's own (chosen, rejected) as "the chosen answer beats leaving the rejected one as it is", plus, with a
corrector and a judge, the best and worst of the corrector's own sampled corrections when the judge's
reward gap between them is large enough.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from middleware.dpo_data import DPOExample
from middleware.errors import InputError
from middleware.evaluate import load_judge
from middleware.models import cache_dir as cache_root
from middleware.types import PreferencePair

from .correction_checks import CorrectionCheck, check_correction
from .pairs import as_pairs
from .preference_pairs import MinGap, PairReport, PairRow, Sampler, check_min_gap, decide_rows, drop, fill_candidates
from .preference_pairs import judge_scores, resolve_sampler, sample_texts
from .sentences import flatten_question
from .stage import Generated
from .templates import Template, get_template

__all__ = ["build_correction_pairs", "resolve_corrector", "usable_correction"]


def build_correction_pairs(
    pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]",
    corrector: Sampler | None = None,
    judge: Any = None,
    *,
    samples: int = 4,
    min_gap: MinGap = 1.0,
    noise_k: float = 2.0,
    seed: int = 0,
    sample_temperature: float | None = 0.7,
    sample_top_p: float | None = None,
    sample_max_new_tokens: int | None = None,
    template: "str | Template | None" = None,
    check: CorrectionCheck | None = CorrectionCheck(),
    batch_size: int = 8,
    cache_dir: "str | os.PathLike[str] | None" = None,
    progress: bool = True,
) -> tuple[list[DPOExample], PairReport]:
    """DPO examples for the corrector from preference pairs, and from its own corrections.

    Every pair gives one example as ``build_corrector_data`` renders its SFT example: ``source`` = the
    corrector template on the flattened conversation (:func:`flatten_question`) and the stripped
    ``rejected`` answer, ``chosen`` = the pair's ``chosen``, ``rejected`` = the ``rejected`` answer itself,
    so leaving a bad answer as it is loses. A pair with an empty side, or with both sides the same, gives
    nothing (``report.skipped``).

    With a ``corrector`` (a ``TextGenerator``, an adapter folder, or any callable ``(question, answer) ->
    list[str]`` returning its own corrections) and a ``judge``, the corrector also corrects each
    ``rejected`` answer ``samples`` times (at ``sample_temperature``, seeds ``seed`` …). A correction the
    stage would not use (empty, cut off, degenerate, leaking the template, dropping the answer's end:
    ``check``, the stage's safeguard; ``check=None`` keeps all) is left out as unusable; repeats count once.
    The judge scores each correction (and the rejected answer as it is, for ``PairRow.baseline``) against
    the conversation, and the best and worst correction make a second example on the same ``source`` when
    their gap is at least ``min_gap`` (as in ``build_rewrite_pairs``; ``"auto"`` is ``noise_k`` × the
    standard deviation of the reward difference between two corrections of the same answer). Samples and
    (for a saved reward model folder) scores are cached under ``cache_dir``. Both examples of a pair carry
    its index as ``group``; ``report.kept`` counts the corrector's own pairs, ``report.from_data`` the
    data's.

    Returns:
        ``(examples, report)``, in the order of ``pairs`` (a pair's data example first).
    """
    if (corrector is None) != (judge is None):
        raise InputError("the corrector's own pairs need both corrector= and judge= (or neither, for the data's pairs only)")
    if samples < 1 or batch_size < 1:
        raise InputError(f"samples and batch_size must be at least 1, got {samples}, {batch_size}")
    check_min_gap(min_gap, noise_k)
    if corrector is not None and min_gap == "auto" and samples < 2:
        raise InputError("min_gap='auto' measures the spread between two corrections of one answer: use samples >= 2")
    rows = as_pairs(pairs)
    model, tmpl = resolve_corrector(corrector, template, judge)
    report = PairReport(kind="correction", prompts=len(rows))
    questions = [flatten_question(r.prompt) for r in rows]
    answers = [r.rejected.strip() for r in rows]
    sources = [tmpl.render(question=q, answer=a) for q, a in zip(questions, answers)]
    good = [i for i, r in enumerate(rows) if r.chosen.strip() and answers[i] and r.chosen.strip() != answers[i]]
    report.skipped = len(rows) - len(good)
    report.from_data = len(good)
    own: dict[int, PairRow] = {}
    if model is not None:
        own = _own_pairs(model, rows, good, questions, answers, sources, judge, report, samples=samples, min_gap=min_gap,
                         noise_k=noise_k, seed=seed, temperature=sample_temperature, top_p=sample_top_p,
                         max_new_tokens=sample_max_new_tokens, check=check, batch_size=batch_size,
                         cache_dir=Path(cache_dir) if cache_dir is not None else cache_root() / "answers", progress=progress)
    examples: list[DPOExample] = []
    for i in good:
        examples.append(DPOExample(source=sources[i], chosen=rows[i].chosen.strip(), rejected=answers[i], group=i))
        row = own.get(i)
        if row is not None and row.kept:
            examples.append(DPOExample(source=sources[i], chosen=row.best.text, rejected=row.worst.text, group=i))
    return examples, report


def _own_pairs(
    model: Any,
    rows: list[PreferencePair],
    good: list[int],
    questions: list[str],
    answers: list[str],
    sources: list[str],
    judge: Any,
    report: PairReport,
    *,
    samples: int,
    min_gap: MinGap,
    noise_k: float,
    seed: int,
    temperature: float | None,
    top_p: float | None,
    max_new_tokens: int | None,
    check: CorrectionCheck | None,
    batch_size: int,
    cache_dir: Path,
    progress: bool,
) -> dict[int, PairRow]:
    """The corrector's sampled corrections of the ``good`` rows' rejected answers, judged and decided by
    the gap rule; the rows by pair index (``report.rows`` holds them too)."""
    gens, errors = sample_texts(
        model, [sources[i] for i in good], [(questions[i], answers[i]) for i in good], samples=samples, seed=seed,
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
        cache_dir=cache_dir, label="corrector", progress=progress, names=good,
    )
    report.rows = [PairRow(i, rows[i].question) for i in good]
    fill_candidates(report, gens, errors, lambda row, g: usable_correction(questions[row.index], answers[row.index], g, check),
                    "corrections")
    # every candidate and the answer as it is (the last slot), judged against the conversation
    items = [(row, slot) for row in report.rows if row.reason is None for slot in range(len(row.candidates) + 1)]
    scores, failures = judge_scores(
        judge,
        [(rows[row.index].prompt, row.candidates[slot].text if slot < len(row.candidates) else answers[row.index])
         for row, slot in items],
        cache_dir=cache_dir,
        progress=progress,
    )
    for n in sorted(failures):
        drop(items[n][0], report, f"row {items[n][0].index}: judge failed: {failures[n]}", failed=True)
    for (row, slot), s in zip(items, scores):
        if row.reason is None and s is not None:
            if slot < len(row.candidates):
                row.candidates[slot].rewards.append(s)
            else:
                row.baseline = s
    groups = [[c.reward for c in row.candidates] for row in report.rows if row.reason is None]
    decide_rows(report, min_gap, noise_k, groups)
    return {row.index: row for row in report.rows}


def resolve_corrector(corrector: Sampler | None, template: "str | Template | None", judge: Any = None) -> tuple[Any, Template]:
    """The corrector model (``None`` without one) and the template its sources are rendered with
    (``resolve_sampler``); ``InputError`` for a template that does not take a question and an answer, and
    for a judge object without ``score_batch``, before any generation."""
    model, tmpl = None, get_template(template if template is not None else "aligner-v1.0")
    if corrector is not None:
        model, tmpl = resolve_sampler(corrector, kind="corrector", template=template, default="aligner-v1.0")
    if set(tmpl.fields) != {"question", "answer"}:
        raise InputError(f"template {tmpl.name!r} takes fields {list(tmpl.fields)}; a corrector template takes question and answer")
    if judge is not None and not isinstance(judge, (str, os.PathLike)):
        load_judge(judge)
    return model, tmpl


def usable_correction(question: str, answer: str, g: Generated, check: CorrectionCheck | None) -> str | None:
    """The correction as the stage would use it, or ``None`` when the stage would keep the answer (the
    question is the context whose terms a correction may repeat)."""
    text = g.text.strip()
    if not text:
        return None
    if check is not None and check_correction(answer, text, finish_reason=g.finish_reason, check=check, context=question) is not None:
        return None
    return text
