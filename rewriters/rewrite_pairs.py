"""Preference pairs for the prompt rewriter without a teacher (:func:`build_rewrite_pairs`): the rewriter
samples several rewrites of each training prompt, the target model answers each, a reward model scores the
answers against the original prompt, and the best and worst rewrite make a DPO example when their reward
gap is large against the judge's noise. Run it again with the DPO-trained adapter for an on-policy round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from middleware.dpo_data import DPOExample
from middleware.errors import InputError
from middleware.evaluate import load_judge
from middleware.llm import LLM
from middleware.models import cache_dir as cache_root
from middleware.types import Message, PreferencePair

from .answer_cache import TextCache, cache_identity
from .pairs import as_pairs
from .preference_pairs import MinGap, PairReport, PairRow, Sampler, check_min_gap, decide_rows, drop, fill_candidates
from .preference_pairs import judge_scores, resolve_sampler, sample_texts
from .rewrite_checks import RewriteCheck, check_rewrite, clean_rewrite
from .selection import answer_conversations
from .stage import Generated, resolve_llm
from .templates import Template

__all__ = ["build_rewrite_pairs"]

PLAIN = -1  # the slot of the plain prompt's answers in a row


def build_rewrite_pairs(
    pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]",
    rewriter: Sampler,
    target: "LLM | str",
    judge: Any,
    *,
    samples: int = 4,
    min_gap: MinGap = 1.0,
    noise_k: float = 2.0,
    answers_per_rewrite: int = 1,
    max_tokens: int = 128,
    temperature: float | None = None,
    seed: int = 0,
    sample_temperature: float | None = None,
    sample_top_p: float | None = None,
    sample_max_new_tokens: int | None = None,
    template: "str | Template | None" = None,
    check: RewriteCheck | None = RewriteCheck(),
    batch_size: int = 16,
    cache_dir: "str | os.PathLike[str] | None" = None,
    progress: bool = True,
) -> tuple[list[DPOExample], PairReport]:
    """DPO examples for the rewriter from its own rewrites, ranked by what they do to the target's answer.

    For each pair's last user message the ``rewriter`` samples ``samples`` rewrites (seeds ``seed`` …; a
    ``TextGenerator``, an adapter folder, or any callable ``prompt -> list[str]`` returning its own
    rewrites). Each rewrite is cleaned as the stage cleans it; one the stage would not use (cut off at the
    token limit, or failing ``check``, the stage's safeguard; ``check=None`` keeps any non-empty one) is left out and
    counted as unusable, and repeats count once. The ``target`` answers the plain prompt and each rewrite
    (history kept; ``answers_per_rewrite`` answers at ``temperature``, seeds ``seed`` …, rewards averaged)
    and the ``judge`` scores every answer against the *original* prompt. The row's highest- and
    lowest-scored rewrites make one example when their reward gap is at least ``min_gap``; the plain
    prompt's reward is only reported (``PairRow.baseline``).

    ``min_gap`` is in the judge's reward units. The default 1.0 is about the spread of the reward change one
    prompt change makes with the project's judges (1.1 measured, see README), so a single comparison that
    wins by less is mostly noise. ``min_gap="auto"`` measures the noise from the samples: ``noise_k`` × the
    standard deviation of the reward difference between two answers to the same prompt: two target
    answers to the same rewrite with ``answers_per_rewrite`` >= 2 (the target's and the judge's noise),
    else two answers to different rewrites of the same prompt (the rewrites' whole spread, so only the
    rows whose gap stands out from it are kept). The measured value is ``report.noise``.

    Each example's ``source`` is the rewriter's template rendered on the original prompt (what
    ``build_rewriter_data`` gives SFT, and what the rewriter is prompted with), ``chosen`` / ``rejected``
    the best / worst rewrite, ``group`` the pair's index. Rewrites sampled by a model folder, target
    answers and (for a saved reward model folder) scores are cached on disk under ``cache_dir`` (default
    ``<alignware cache>/answers``, shared with ``select_by_reward``), so a rerun makes no model calls; a
    retrained adapter is another model (its checksums name it), so a second, on-policy round with the
    DPO-trained adapter as ``rewriter`` samples afresh and reuses the target's answers to rewrites it
    repeats. A failing rewriter, target or judge drops its row (``report.failed``, the first error kept).

    Returns:
        ``(examples, report)``, examples in the order of ``pairs``.
    """
    if samples < 1 or answers_per_rewrite < 1 or max_tokens < 1 or batch_size < 1:
        raise InputError(
            f"samples, answers_per_rewrite, max_tokens and batch_size must be at least 1, got {samples}, "
            f"{answers_per_rewrite}, {max_tokens}, {batch_size}"
        )
    if answers_per_rewrite > 1 and not temperature:
        raise InputError(f"answers_per_rewrite={answers_per_rewrite} needs a temperature above 0: greedy answers would all be the same")
    check_min_gap(min_gap, noise_k)
    if min_gap == "auto" and samples < 2 and answers_per_rewrite < 2:
        raise InputError("min_gap='auto' measures the spread between two answers to one prompt: use samples >= 2 or answers_per_rewrite >= 2")
    rows = as_pairs(pairs)
    llm = resolve_llm(target)
    if not isinstance(judge, (str, os.PathLike)):
        load_judge(judge)  # a judge object without score_batch fails before any generation
    model, tmpl = resolve_sampler(rewriter, kind="rewriter", template=template, default="bpo")
    if tmpl.fields != ("prompt",):
        raise InputError(f"template {tmpl.name!r} takes fields {list(tmpl.fields)}; a rewriter template takes 'prompt'")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "answers"
    report = PairReport(kind="rewrite", prompts=len(rows))
    sources = [tmpl.render(prompt=r.question) for r in rows]
    gens, errors = sample_texts(
        model, sources, [(r.question,) for r in rows], samples=samples, seed=seed, temperature=sample_temperature,
        top_p=sample_top_p, max_new_tokens=sample_max_new_tokens, batch_size=batch_size, cache_dir=root,
        label="rewriter", progress=progress,
    )
    report.rows = [PairRow(i, r.question) for i, r in enumerate(rows)]
    fill_candidates(report, gens, errors, lambda row, g: _usable_rewrite(row.prompt, g, check), "rewrites")
    _judge_answers(rows, report, llm, target, judge, root=root, answers=answers_per_rewrite, max_tokens=max_tokens,
                   temperature=temperature, seed=seed, batch_size=batch_size, progress=progress)
    active = [r for r in report.rows if r.reason is None]
    if answers_per_rewrite > 1:
        groups = [c.rewards for r in active for c in r.candidates]
    else:
        groups = [[c.reward for c in r.candidates] for r in active]
    decide_rows(report, min_gap, noise_k, groups)
    examples = [DPOExample(source=sources[r.index], chosen=r.best.text, rejected=r.worst.text, group=r.index)
                for r in report.rows if r.kept]
    return examples, report


def _usable_rewrite(prompt: str, g: Generated, check: RewriteCheck | None) -> str | None:
    """The rewrite as the stage would use it, or ``None`` when the stage would keep the original prompt
    (``check=None``: any non-empty rewrite, cut off or not)."""
    text = clean_rewrite(g.text)
    if not text or (check is not None and (g.finish_reason == "length" or check_rewrite(prompt, text, check) is not None)):
        return None
    return text


def _judge_answers(
    rows: Sequence[PreferencePair],
    report: PairReport,
    llm: LLM,
    target: "LLM | str",
    judge: Any,
    *,
    root: Path,
    answers: int,
    max_tokens: int,
    temperature: float | None,
    seed: int,
    batch_size: int,
    progress: bool,
) -> None:
    """Let the target answer the plain prompt and every candidate rewrite of the rows still in, ``answers``
    times each, and put the judge's rewards on the candidates (and the plain prompt's mean on the row's
    ``baseline``); a failed answer or score drops its row."""
    decoding = "" if temperature is None else f"|temperature={temperature}"
    name = cache_identity(target, llm)
    caches = [TextCache(root, f"{name}|max_tokens={max_tokens}|seed={seed + k}{decoding}") for k in range(answers)]
    # each distinct conversation is asked once (a rewrite may repeat the prompt, or another row's rewrite):
    # block b holds conversations b * answers ... (b + 1) * answers - 1, sample j % answers
    convs: list[list[Message]] = []
    blocks: dict[str, int] = {}
    owner: list[tuple[int, int, int]] = []  # (row index, candidate slot or PLAIN, block)
    for row in report.rows:
        if row.reason is not None:
            continue
        history = list(rows[row.index].prompt[:-1])
        for slot in [PLAIN, *range(len(row.candidates))]:
            conv = history + [Message(role="user", content=row.prompt if slot == PLAIN else row.candidates[slot].text)]
            key = json.dumps([m.model_dump(mode="json") for m in conv], sort_keys=True)
            if key not in blocks:
                blocks[key] = len(blocks)
                convs += [conv] * answers
            owner.append((row.index, slot, blocks[key]))
    texts, failures = answer_conversations(llm, convs, caches, max_tokens=max_tokens, seed=seed, temperature=temperature,
                              batch_size=batch_size, progress=progress)
    failed_blocks = {j // answers: failures[j] for j in sorted(failures, reverse=True)}
    for i, _, b in owner:
        if b in failed_blocks:
            drop(report.rows[i], report, f"row {i}: target failed: {failed_blocks[b]}", failed=True)
    todo = [(i, slot, b * answers + k) for i, slot, b in owner if report.rows[i].reason is None for k in range(answers)]
    scores, judge_errors = judge_scores(judge, [(rows[i].prompt, texts[j]) for i, _, j in todo], cache_dir=root, progress=progress)
    for n in sorted(judge_errors):
        i = todo[n][0]
        drop(report.rows[i], report, f"row {i}: judge failed: {judge_errors[n]}", failed=True)
    plain: dict[int, list[float]] = {}
    for (i, slot, _), s in zip(todo, scores):
        row = report.rows[i]
        if row.reason is not None or s is None:
            continue
        (plain.setdefault(i, []) if slot == PLAIN else row.candidates[slot].rewards).append(s)
    for i, rs in plain.items():
        if report.rows[i].reason is None:
            report.rows[i].baseline = sum(rs) / len(rs)
