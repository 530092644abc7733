"""Rewriter preference pairs without a teacher: ``build_rewrite_pairs`` ranks the rewriter's own rewrites
by the reward of the target's answer and keeps (best, worst) pairs over the gap."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from middleware.dpo_data import check_dpo_examples
from middleware.errors import InputError
from middleware.llm import FunctionLLM
from middleware.dpo import train_dpo
from middleware.sft import init_adapter
from middleware.types import PreferencePair
from local_models import fresh_bases  # noqa: F401  (fixture)
from rewriters.generator import TextGenerator
from rewriters.rewrite_pairs import build_rewrite_pairs
from rewriters.sft_config import SFTConfig
from rewriters.templates import get_template
from text_stage_fakes import WordJudge

HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
REWRITES = {
    "how do vaccines work": ["How do vaccines work?", "Explain in detail how vaccines work in the human body.",
                             "Explain how vaccines work.", "How do vaccines work?"],
    "how do tides work": ["How do tides work?", "Explain how tides work."],
    "why is the sky blue": ["Why is the sky blue?", "Explain in detail why the sky looks blue during the day."],
    "what is the capital of France?": ["What is the capital of France?", "Sure, the capital of France is Paris."],
}


def rows() -> list[PreferencePair]:
    return [
        PreferencePair(prompt="how do vaccines work", chosen="a", rejected="b"),
        PreferencePair(prompt="how do tides work", chosen="a", rejected="b"),
        PreferencePair(prompt=HISTORY + [{"role": "user", "content": "why is the sky blue"}], chosen="a", rejected="b"),
        PreferencePair(prompt="what is the capital of France?", chosen="a", rejected="b"),
    ]


def rewriter(prompt: str) -> list[str]:
    return REWRITES[prompt]


def echo_target(calls: list[list[dict[str, str]]], fail_on: str = "") -> FunctionLLM:
    """A target that answers with the prompt it received (so a rewrite's reward is its own length under
    ``WordJudge``), recording every call; it fails on prompts that contain ``fail_on``."""

    def fn(msgs: list[dict[str, str]]) -> str:
        calls.append(msgs)
        if fail_on and fail_on in msgs[-1]["content"]:
            raise RuntimeError("upstream down")
        return msgs[-1]["content"]

    return FunctionLLM(fn, name="echo-target")


def test_keeps_the_best_and_worst_rewrite_over_the_gap_and_counts_the_rest(tmp_path: Path) -> None:
    calls: list[list[dict[str, str]]] = []
    judge = WordJudge()
    examples, report = build_rewrite_pairs(rows(), rewriter, echo_target(calls), judge, min_gap=3.0,
                                           cache_dir=tmp_path, progress=False)
    check_dpo_examples(examples)
    bpo = get_template("bpo")
    assert [(e.group, e.source, e.chosen, e.rejected) for e in examples] == [
        (0, bpo.render(prompt="how do vaccines work"), "Explain in detail how vaccines work in the human body.",
         "How do vaccines work?"),
        (2, bpo.render(prompt="why is the sky blue"), "Explain in detail why the sky looks blue during the day.",
         "Why is the sky blue?"),
    ]
    # tides: both rewrites score 4 (gap 0); France: the second rewrite answers the prompt, one is left
    assert (report.prompts, report.kept, report.small_gap, report.too_few, report.failed) == (4, 2, 1, 1, 0)
    assert report.unusable == 1 and report.min_gap == 3.0 and report.gaps == [6.0, 6.0]
    assert (report.mean_gap, report.median_gap) == (6.0, 6.0)
    vaccines, tides, sky, france = report.rows
    assert [c.reward for c in vaccines.candidates] == [4.0, 10.0, 4.0]  # the repeated rewrite counts once
    assert vaccines.baseline == 4.0 and sky.baseline == 5.0  # the plain prompt's answer, reported only
    assert tides.gap == 0.0 and not tides.kept and "below 3" in str(tides.reason)
    assert [c.text for c in france.candidates] == ["What is the capital of France?"] and france.reason == "1 usable distinct rewrites of 2"
    # the target saw each rewrite with the history kept; the judge scored against the original prompt
    assert HISTORY + [{"role": "user", "content": REWRITES["why is the sky blue"][1]}] in calls
    sky_items = [m for m, a in judge.items if a == REWRITES["why is the sky blue"][1]]
    assert [x.content for x in sky_items[0]] == ["hi", "Hello!", "why is the sky blue"]
    # 3 rows with two or more rewrites: the plain prompt and each distinct rewrite answered once
    assert len(calls) == (1 + 3) + (1 + 2) + (1 + 2)
    line = report.summary()
    assert "4 rows, 2 pairs kept (gap >= 3" in line and "1 dropped for a small gap" in line and "\n" not in line
    # over the three judged rows: plain prompts 4, 4, 5; best rewrites 10, 4, 11; worst 4, 4, 5
    assert report.mean_rewards() == pytest.approx({"baseline": 13 / 3, "best": 25 / 3, "worst": 13 / 3})
    assert "mean reward baseline 4.33 / best 8.33 / worst 4.33" in line


def test_a_rerun_takes_the_answers_from_the_cache(tmp_path: Path) -> None:
    calls: list[list[dict[str, str]]] = []
    first, _ = build_rewrite_pairs(rows(), rewriter, echo_target(calls), WordJudge(), min_gap=3.0, cache_dir=tmp_path, progress=False)
    assert calls
    calls.clear()
    again, report = build_rewrite_pairs(rows(), rewriter, echo_target(calls), WordJudge(), min_gap=3.0, cache_dir=tmp_path,
                                        progress=False)
    assert calls == [] and again == first and report.kept == 2
    # another answer length is another cache entry
    build_rewrite_pairs(rows()[:1], rewriter, echo_target(calls), WordJudge(), max_tokens=64, cache_dir=tmp_path, progress=False)
    assert len(calls) == 4


def test_a_failing_target_judge_or_rewriter_drops_its_row_and_counts_it(tmp_path: Path) -> None:
    calls: list[list[dict[str, str]]] = []
    examples, report = build_rewrite_pairs(rows(), rewriter, echo_target(calls, fail_on="vaccines"), WordJudge(),
                                           min_gap=3.0, cache_dir=tmp_path, progress=False)
    assert [e.group for e in examples] == [2]
    assert report.failed == 1 and report.rows[0].reason == report.first_error
    assert report.first_error is not None and report.first_error.startswith("row 0: target failed")
    assert "upstream down" in report.first_error and "1 failed (first: row 0: target failed" in report.summary()

    class PickyJudge(WordJudge):
        def score_batch(self, items: list[tuple[Any, str]]) -> list[float]:
            if any("sky" in answer for _, answer in items):
                raise ValueError("answer too long for the judge")
            return super().score_batch(items)

    examples, report = build_rewrite_pairs(rows(), rewriter, echo_target(calls), PickyJudge(), min_gap=3.0,
                                           cache_dir=tmp_path, progress=False)
    assert [e.group for e in examples] == [0] and report.failed == 1
    assert report.first_error == "row 2: judge failed: ValueError: answer too long for the judge"

    def flaky(prompt: str) -> list[str]:
        if "tides" in prompt:
            raise TimeoutError("rewriter timed out")
        return REWRITES[prompt]

    _, report = build_rewrite_pairs(rows(), flaky, echo_target(calls), WordJudge(), min_gap=3.0, cache_dir=tmp_path,
                                    progress=False)
    assert report.failed == 1 and report.first_error == "row 1: rewriter failed: TimeoutError: rewriter timed out"
    assert report.kept == 2 and report.small_gap == 0


def test_auto_gap_is_k_times_the_spread_between_two_answers_to_one_prompt(tmp_path: Path) -> None:
    def noisy(msgs: list[dict[str, str]], seed: int = 0) -> str:
        return msgs[-1]["content"] + " more" * (seed % 2)  # seed 0 and 1: rewards differ by exactly 1

    target = FunctionLLM(noisy, name="noisy")
    examples, report = build_rewrite_pairs(rows(), rewriter, target, WordJudge(), min_gap="auto", answers_per_rewrite=2,
                                           temperature=0.7, cache_dir=tmp_path, progress=False)
    assert report.noise == 1.0 and report.min_gap == 2.0  # noise_k 2 x a difference of 1
    assert [e.group for e in examples] == [0, 2] and report.rows[0].candidates[1].rewards == [10.0, 11.0]
    _, strict = build_rewrite_pairs(rows(), rewriter, target, WordJudge(), min_gap="auto", noise_k=7, answers_per_rewrite=2,
                                    temperature=0.7, cache_dir=tmp_path, progress=False)
    assert strict.min_gap == 7.0 and strict.kept == 0 and strict.small_gap == 3
    # one answer per rewrite: the spread between the rewrites of one prompt (disjoint pairs: 4-10, 4-4, 5-11)
    _, spread = build_rewrite_pairs(rows(), rewriter, echo_target([]), WordJudge(), min_gap="auto", noise_k=1,
                                    cache_dir=tmp_path, progress=False)
    assert spread.noise == pytest.approx(math.sqrt((36 + 0 + 36) / 3))
    assert [r.kept for r in spread.rows] == [True, False, True, False]


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    target = echo_target([])
    with pytest.raises(InputError, match="min_gap must be a number >= 0 or 'auto'"):
        build_rewrite_pairs(rows(), rewriter, target, WordJudge(), min_gap=-1.0, progress=False)
    with pytest.raises(InputError, match="min_gap='auto' measures"):
        build_rewrite_pairs(rows(), rewriter, target, WordJudge(), min_gap="auto", samples=1, progress=False)
    with pytest.raises(InputError, match="answers_per_rewrite=2 needs a temperature"):
        build_rewrite_pairs(rows(), rewriter, target, WordJudge(), answers_per_rewrite=2, progress=False)
    with pytest.raises(InputError, match="judge must be a reward model folder or have score_batch"):
        build_rewrite_pairs(rows(), rewriter, target, object(), progress=False)
    with pytest.raises(InputError, match="row 0: the rewriter callable must return a list of strings"):
        build_rewrite_pairs(rows(), lambda p: p, target, WordJudge(), cache_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="a rewriter template takes 'prompt'"):
        build_rewrite_pairs(rows(), rewriter, target, WordJudge(), template="aligner-v1.0", progress=False)


def test_a_second_round_samples_the_dpo_trained_adapter_and_reuses_the_targets_answers(
    tiny_model_dir: Path, tmp_path: Path, fresh_bases: None
) -> None:
    from judge import RewardConfig, RewardModel

    config = SFTConfig(base_model=str(tiny_model_dir), lora_r=4, lora_alpha=32, seed=1)
    first = init_adapter(config, tmp_path / "rewriter", random_init=True)  # stands in for the SFT adapter
    judge = RewardModel.create(RewardConfig(backbone=str(tiny_model_dir), max_length=64, train="head")).save(tmp_path / "judge")
    pairs = rows()[:3]
    bpo = get_template("bpo")
    sources = [bpo.render(prompt=p.question) for p in pairs]
    cache = tmp_path / "cache"
    calls: list[list[dict[str, str]]] = []
    kw: dict[str, Any] = dict(samples=3, sample_max_new_tokens=6, check=None, min_gap=0.0, cache_dir=cache, progress=False)

    def own_samples(folder: Path) -> list[list[str]]:
        """The adapter's seeded samples of each source (BPO decoding from its manifest), repeats once."""
        gen = TextGenerator.from_pretrained(folder, kind="rewriter")
        sampled = [gen.generate(sources, seed=k, temperature=0.6, top_p=0.9, max_new_tokens=6) for k in range(3)]
        return [list(dict.fromkeys(t for t in (s[i] for s in sampled) if t)) for i in range(len(sources))]

    def sample_entries() -> int:
        return sum(json.loads(f.read_text())["model"].startswith("samples:") for f in cache.glob("*/*.json"))

    ex1, rep1 = build_rewrite_pairs(pairs, first, echo_target(calls), judge, **kw)
    assert [[c.text for c in r.candidates] for r in rep1.rows] == own_samples(first)
    assert rep1.kept == sum(len({c.reward for c in r.candidates}) > 1 for r in rep1.rows) > 0
    assert all(e.source == sources[e.group] for e in check_dpo_examples(ex1))
    assert sample_entries() == 9  # 3 rows x 3 seeds

    # round 2: DPO on round 1's pairs, then the same call with the trained adapter
    second = tmp_path / "rewriter_dpo"
    train_dpo(ex1, replace(config, max_steps=1, batch_size=4, eval_fraction=0.0, learning_rate=0.05), second, init=first,
              progress=False)
    calls.clear()
    ex2, rep2 = build_rewrite_pairs(pairs, second, echo_target(calls), judge, **kw)
    assert [[c.text for c in r.candidates] for r in rep2.rows] == own_samples(second)
    assert sample_entries() == 18  # the trained adapter is another model: its samples are its own
    # the plain prompts' answers and the rewrites both rounds sampled come from the cache; a conversation
    # two rows share is asked once

    def asked(report: Any) -> set[str]:
        return {json.dumps([m.content for m in pairs[r.index].prompt[:-1]] + [c.text]) for r in report.rows for c in r.candidates}

    assert sorted(json.dumps([m["content"] for m in c]) for c in calls) == sorted(asked(rep2) - asked(rep1))
    assert [r.baseline for r in rep2.rows] == [r.baseline for r in rep1.rows]

    # a rerun of either round generates nothing and loads no judge: rewrites, answers and scores are cached
    (tmp_path / "judge" / "reward.safetensors").unlink()
    calls.clear()
    assert build_rewrite_pairs(pairs, first, echo_target(calls), judge, **kw)[0] == ex1
    assert build_rewrite_pairs(pairs, second, echo_target(calls), judge, **kw)[0] == ex2
    assert calls == [] and sample_entries() == 18
    with pytest.raises(InputError, match="prompted with template 'bpo', not 'bpo-instruction'"):
        build_rewrite_pairs(pairs, first, echo_target(calls), judge, template="bpo-instruction", **kw)
