"""Reward selection of rewriter training data: keep the rewrites that raise the reward of the target
model's answer (:func:`select_by_reward`), one :class:`RewardChoice` per judged row.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from middleware.concurrency import concurrency_for, run_bounded
from middleware.errors import InputError
from middleware.evaluate import load_judge
from middleware.llm import LLM
from middleware.models import cache_dir as cache_root
from middleware.types import ChatRequest, Message, PreferencePair

from .answer_cache import TextCache, cache_identity, failure_message, progress_bar
from .stage import resolve_llm

log = logging.getLogger("alignware")

__all__ = ["RewardChoice", "answer_conversations", "select_by_reward"]


@dataclass
class RewardChoice:
    """One row of :func:`select_by_reward`: the target model's answers to the original and the rewritten
    prompt, their rewards (both judged against the original prompt) and whether the rewrite is kept."""

    index: int
    prompt: str
    rewrite: str
    answer: str
    rewritten_answer: str
    reward: float
    rewritten_reward: float
    kept: bool
    error: str | None = None  # the target failed to answer: the row is dropped
    #: the reward of each sampled answer, one per sample (``reward`` / ``rewritten_reward`` are their means;
    #: ``answer`` / ``rewritten_answer`` are the first samples); empty when the target failed
    rewards: list[float] = field(default_factory=list)
    rewritten_rewards: list[float] = field(default_factory=list)

    @property
    def gain(self) -> float:
        return self.rewritten_reward - self.reward


def select_by_reward(
    rows: Sequence[PreferencePair],
    rewrites: "dict[int, str]",
    target: "LLM | str",
    judge: Any,
    *,
    max_tokens: int = 128,
    margin: float = 0.0,
    seed: int = 0,
    samples: int = 1,
    temperature: float | None = None,
    batch_size: int = 16,
    cache_dir: "str | os.PathLike[str] | None" = None,
    progress: bool = True,
    concurrency: int | None = None,
) -> list[RewardChoice]:
    """Keep the rewrites that help *this* target model: the target answers each original prompt and its
    rewrite (history kept, ``max_tokens``, ``seed``), the ``judge`` scores both answers against the original
    prompt, and a rewrite is kept when its answer scores more than ``margin`` higher.

    BPO picks its optimized prompts from preferences over a strong model's answers; a small target model
    may not gain from the same rewrites. Training on the kept rows teaches the rewriter the rewrites that
    raise the reward for the model it will serve. Answers are cached on disk (``cache_dir``, default
    ``<alignware cache>/answers``) keyed by the target (its name, or its resolved folder when ``target`` is a
    path), ``max_tokens``, ``seed``, ``temperature`` and the messages, so a rerun does not generate again.

    One answer per side is a noisy comparison: the reward of a small model's answer swings with any change
    of wording. ``samples=K`` with a ``temperature`` samples K answers per side (seeds ``seed`` …
    ``seed+K-1``) and compares the mean rewards.

    Args:
        rows: the preference pairs; ``rewrites`` maps a row index to its rewritten last user message.
        target: the model the rewriter will serve (an ``LLM``, a litellm model string, ``"embedded"``).
        judge: a reward model folder or any object with ``score_batch([(prompt, response), ...])``.
        samples: answers per side; more than 1 needs ``temperature`` > 0 (greedy answers repeat).
        temperature: the target's sampling temperature (``None``: its default decoding, greedy for local models).
        concurrency: for a remote target, send the answers' requests async with at most this many in flight
            (instead of ``batch_size`` batches); a failed request drops its row only. A local target batches
            and ignores it.
    """
    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens!r}")
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples!r}")
    if samples > 1 and not temperature:
        raise InputError(f"samples={samples} needs a temperature above 0: greedy answers would all be the same")
    llm = resolve_llm(target)
    judge_obj = load_judge(judge)
    if cache_dir is None:
        cache_dir = cache_root() / "answers"
    name = cache_identity(target, llm)
    decoding = "" if temperature is None else f"|temperature={temperature}"
    caches = [TextCache(Path(cache_dir), f"{name}|max_tokens={max_tokens}|seed={seed + k}{decoding}") for k in range(samples)]
    order = sorted(rewrites)
    # j = (2 * pos + side) * samples + k: row order[pos], original (side 0) or rewrite (side 1), sample k
    convs: list[list[Message]] = []
    for i in order:
        for c in (list(rows[i].prompt), list(rows[i].prompt[:-1]) + [Message(role="user", content=rewrites[i])]):
            convs += [c] * samples
    answers, errors = answer_conversations(
        llm, convs, caches, max_tokens=max_tokens, seed=seed, temperature=temperature, batch_size=batch_size, progress=progress,
        concurrency=concurrency_for(llm, concurrency, "select_by_reward"),
    )
    return _choose(rows, rewrites, order, answers, errors, judge_obj, samples=samples, margin=margin)


def _seed_batches(todo: list[int], samples: int, batch_size: int) -> list[list[int]]:
    """``todo`` in batches of ``batch_size`` that each hold one seed (conversation ``j`` has seed ``j % samples``:
    a batched generation samples from one generator)."""
    chunks: list[list[int]] = []
    for k in range(samples):
        js = [j for j in todo if j % samples == k]
        chunks += [js[b : b + batch_size] for b in range(0, len(js), batch_size)]
    return chunks


def answer_conversations(
    llm: LLM,
    convs: list[list[Message]],
    caches: list[TextCache],
    *,
    max_tokens: int,
    seed: int,
    temperature: float | None,
    batch_size: int,
    progress: bool,
    concurrency: int | None = None,
) -> tuple[list[str], dict[int, str]]:
    """The target's answer to every conversation (conversation ``j`` is sample ``k = j % len(caches)``:
    seed ``seed + k``, cached in ``caches[k]``), from the cache or generated in batches of one seed (with
    ``concurrency``: one async request each, that many in flight); and the failures (conversation index ->
    message), whose answers are empty."""
    samples = len(caches)
    keys = [json.dumps([m.model_dump(mode="json") for m in c], ensure_ascii=False, sort_keys=True) for c in convs]
    texts: list[str | None] = [caches[j % samples].get(k) for j, k in enumerate(keys)]
    todo = [j for j, t in enumerate(texts) if t is None]
    bar = progress_bar(len(todo), "target answers", "answer") if progress and todo else None
    errors: dict[int, str] = {}

    def request(j: int) -> ChatRequest:
        return ChatRequest(messages=convs[j], max_tokens=max_tokens, seed=seed + j % samples, temperature=temperature)

    def keep(got: list[tuple[int, str]]) -> None:
        for j, text in got:
            texts[j] = text
            try:
                caches[j % samples].put(keys[j], text)
            except OSError as e:
                log.warning("cannot cache an answer in %s: %s", caches[0].root, e)

    if concurrency is not None:
        out = run_bounded([functools.partial(llm.acomplete, request(j)) for j in todo], concurrency,
                          on_done=None if bar is None else lambda _: bar.update(1))
        errors.update((j, failure_message(r)) for j, r in zip(todo, out) if isinstance(r, Exception))
        keep([(j, r.text) for j, r in zip(todo, out) if not isinstance(r, Exception)])
    for chunk in [] if concurrency is not None else _seed_batches(todo, samples, batch_size):
        try:
            got: list[tuple[int, str]] = [(j, r.text) for j, r in zip(chunk, llm.batch([request(j) for j in chunk]))]
        except Exception:  # one failure fails a batch: ask one by one to lose only the failed rows
            got = []
            for j in chunk:
                try:
                    got.append((j, llm.complete(request(j)).text))
                except Exception as e:
                    errors[j] = failure_message(e)
        keep(got)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return [t or "" for t in texts], errors


def _choose(
    rows: Sequence[PreferencePair],
    rewrites: dict[int, str],
    order: list[int],
    answers: list[str],
    errors: dict[int, str],
    judge: Any,
    *,
    samples: int,
    margin: float,
) -> list[RewardChoice]:
    """Score the answered rows with ``judge`` (both sides against the original prompt) and decide each
    row: kept when the rewrite's mean reward beats the original's by more than ``margin``."""
    per_row = 2 * samples
    failed = {j // per_row for j in errors}  # positions in ``order`` with an unanswered answer
    # both answers are judged as answers to the prompt the user wrote
    scored = [j for j in range(len(answers)) if j // per_row not in failed]
    scores = dict(zip(scored, judge.score_batch([(list(rows[order[j // per_row]].prompt), answers[j]) for j in scored])))
    choices = []
    for pos, i in enumerate(order):
        first, second = per_row * pos, per_row * pos + samples  # first sample of each side
        if pos in failed:
            err = next(errors[j] for j in range(first, first + per_row) if j in errors)
            choices.append(
                RewardChoice(i, rows[i].question, rewrites[i], answers[first], answers[second],
                             float("nan"), float("nan"), kept=False, error=f"row {i}: target failed: {err}")
            )
            continue
        rs0 = [float(scores[j]) for j in range(first, second)]
        rs1 = [float(scores[j]) for j in range(second, second + samples)]
        r0, r1 = sum(rs0) / samples, sum(rs1) / samples
        choices.append(
            RewardChoice(
                index=i,
                prompt=rows[i].question,
                rewrite=rewrites[i],
                answer=answers[first],
                rewritten_answer=answers[second],
                reward=r0,
                rewritten_reward=r1,
                kept=r1 - r0 > margin,
                rewards=rs0,
                rewritten_rewards=rs1,
            )
        )
    return choices
