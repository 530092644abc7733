"""Reward selection: ``select_by_reward`` keeps the rewrites that raise the target model's reward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from middleware.errors import InputError
from middleware.llm import LLM
from middleware.types import ChatRequest, ChatResponse
from rewriters.selection import select_by_reward
from text_stage_fakes import WordJudge, detail_app
from text_stage_fakes import selection_pairs as _selection_pairs


def test_select_by_reward_keeps_the_rewrites_that_raise_the_targets_reward(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    calls: list[list[dict[str, str]]] = []
    judge = WordJudge()
    rewrites = {i: p.optimized_prompt for i, p in enumerate(pairs)}
    choices = select_by_reward(pairs, rewrites, detail_app(calls), judge, cache_dir=tmp_path, progress=False)
    assert [c.kept for c in choices] == [True, False, True]
    assert [c.gain for c in choices] == [6.0, 0.0, 6.0]
    assert choices[0].rewritten_answer.startswith("step one") and choices[1].answer == "It depends."
    # the target saw the rewrite with the history kept; the judge scored against the original prompt
    assert calls[5] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": pairs[2].optimized_prompt}]
    assert [m.content for m in judge.items[5][0]] == ["hi", "Hello!", "why is the sky blue"]
    assert len(judge.items) == 6 and all(m[-1].content == p.question for (m, _), p in zip(judge.items[::2], pairs))

    # a margin keeps only clear gains; a rerun takes the answers from the cache
    calls.clear()
    strict = select_by_reward(pairs, rewrites, detail_app(calls), WordJudge(), margin=6.0, cache_dir=tmp_path, progress=False)
    assert calls == [] and [c.kept for c in strict] == [False, False, False]
    # another answer length is another cache entry
    select_by_reward(pairs, {0: rewrites[0]}, detail_app(calls), WordJudge(), max_tokens=64, cache_dir=tmp_path, progress=False)
    assert len(calls) == 2
    with pytest.raises(InputError, match="max_tokens"):
        select_by_reward(pairs, rewrites, detail_app(calls), WordJudge(), max_tokens=0, progress=False)


class SamplingApp(LLM):
    """A chat app whose answer depends on the request's seed: asked for detail, it answers with 1 + seed
    words more than otherwise; it records each request's seed and temperature."""

    name = "sampling-app"

    def __init__(self) -> None:
        self.requests: list[tuple[int | None, float | None]] = []

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        self.requests.append((request.seed, request.temperature))
        base = 3 if "tides" in request.last_user_message else 2
        extra = 1 + (request.seed or 0) if "detail" in request.last_user_message else 0
        return ChatResponse(text=" ".join(["word"] * (base + extra)), model=self.name)


def test_select_by_reward_compares_mean_rewards_over_samples(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    rewrites = {i: p.optimized_prompt for i, p in enumerate(pairs)}
    app = SamplingApp()
    choices = select_by_reward(pairs, rewrites, app, WordJudge(), samples=3, temperature=0.7, seed=4,
                               margin=5.5, cache_dir=tmp_path, progress=False)
    # seeds 4, 5, 6 at temperature 0.7, for both sides of every row
    assert sorted(set(app.requests)) == [(4, 0.7), (5, 0.7), (6, 0.7)] and len(app.requests) == 18
    first, tides, sky = choices
    assert first.rewards == [2.0, 2.0, 2.0] and first.rewritten_rewards == [7.0, 8.0, 9.0]
    assert (first.reward, first.rewritten_reward, first.gain) == (2.0, 8.0, 6.0) and first.kept
    assert first.rewritten_answer == "word " * 6 + "word"  # the first sample's answer
    assert tides.gain == 0.0 and not tides.kept
    assert sky.gain == 6.0 and sky.kept
    # the samples are cached per seed and temperature: a rerun asks nothing, another temperature asks again
    app.requests.clear()
    select_by_reward(pairs, rewrites, app, WordJudge(), samples=3, temperature=0.7, seed=4, cache_dir=tmp_path, progress=False)
    assert app.requests == []
    select_by_reward(pairs, {0: rewrites[0]}, app, WordJudge(), samples=2, temperature=0.9, seed=4, cache_dir=tmp_path, progress=False)
    assert len(app.requests) == 4
    with pytest.raises(InputError, match="samples=3 needs a temperature above 0"):
        select_by_reward(pairs, rewrites, app, WordJudge(), samples=3, progress=False)
    with pytest.raises(InputError, match="samples must be at least 1, got 0"):
        select_by_reward(pairs, rewrites, app, WordJudge(), samples=0, progress=False)
