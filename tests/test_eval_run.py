"""Running an evaluation: variants, seeds, repeats, stage statistics (``middleware.evaluate.run``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from middleware.errors import InputError
from middleware.evaluate.cli import main
from middleware.evaluate.run import evaluate_pipeline
from middleware.evaluate.scoring import rejudge
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from middleware.stages import IdentityPromptStage, IdentityResponseStage, PromptStage
from middleware.types import ChatRequest
from eval_helpers import Broken, Coin, LengthJudge, Longer, Noisy, PROMPTS, ShortJudge, echo, judge_dir


def test_noop_stages_give_exactly_half_and_zero_gain(judge_dir: Path, tmp_path: Path) -> None:
    pipe = Pipeline(FunctionLLM(echo), [IdentityPromptStage(name="noop_prompt"), IdentityResponseStage(name="noop_response")])
    report = evaluate_pipeline(pipe, PROMPTS, judge_dir, progress=False)
    assert [v.name for v in report.variants] == ["noop_prompt", "noop_response", "pipeline"]
    for v in report.variants:
        assert v.win_rate == 0.5 and v.mean_gain == 0.0 and v.ties == len(PROMPTS)
    chain = report.variant("pipeline")
    assert [(s.stage, s.passed, s.modified) for s in chain.stage_stats] == [("noop_prompt", 4, 0), ("noop_response", 4, 0)]
    paths = report.write(tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["variants"][2]["win_rate"] == 0.5 and len(data["samples"]) == 4
    assert "| pipeline |" in paths["markdown"].read_text() and paths["png"].stat().st_size > 0


def test_noop_pipeline_on_local_backend(tiny_model_dir: Path, judge_dir: Path) -> None:
    from middleware.local import LocalBackend

    pipe = Pipeline(LocalBackend(str(tiny_model_dir), max_tokens=6), [IdentityResponseStage()])
    report = evaluate_pipeline(pipe, PROMPTS[:3], judge_dir, progress=False)
    assert all(v.win_rate == 0.5 and v.mean_gain == 0.0 for v in report.variants)


def test_wins_failures_skips_and_latency() -> None:
    longer = Longer(skip_if=lambda r: "Hello" in r.last_user_message)
    pipe = Pipeline(FunctionLLM(echo), [longer, Broken()])
    report = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False)
    alone = report.variant("Longer")
    assert (alone.wins, alone.ties, alone.losses) == (3, 1, 0) and alone.win_rate == pytest.approx(3.5 / 4)
    assert alone.mean_gain == pytest.approx(3 * len(" Here is more detail.") / 4)
    (stats,) = alone.stage_stats
    assert (stats.modified, stats.skipped, stats.failed) == (3, 1, 0) and stats.mean_latency_ms >= 0
    broken = report.variant("Broken")
    assert broken.win_rate == 0.5 and broken.stage_stats[0].failed == 4
    assert "model unavailable" in broken.stage_stats[0].failures[0]
    chain = report.variant("pipeline")
    assert chain.wins == 3 and [s.stage for s in chain.stage_stats] == ["Longer", "Broken"]
    # gains 21, 21, 21, 0: mean 15.75, sample sd 10.5, standard error 5.25
    assert alone.gain_ci == pytest.approx((15.75 - 1.96 * 5.25, 15.75 + 1.96 * 5.25))
    assert broken.gain_ci == (0.0, 0.0)
    md = report.to_markdown()
    assert "| Longer | Longer | 87.5% | 3 / 1 / 0 | 42%-100% | +15.750 | +5.460 to +26.040 |" in md
    one = evaluate_pipeline(Pipeline(FunctionLLM(echo), [Longer()]), PROMPTS[:1], LengthJudge(), progress=False, per_stage=False)
    assert one.variant("pipeline").gain_ci is None and "| +21.000 | - |" in one.to_markdown()


def test_deterministic_given_seed() -> None:
    pipe = Pipeline(FunctionLLM(echo), [Noisy(), Noisy(name="Noisy2")])
    a = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), seed=7, progress=False).to_dict()
    b = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), seed=7, progress=False).to_dict()
    strip = lambda d: [(v["name"], v["wins"], v["mean_gain"]) for v in d["variants"]]  # noqa: E731
    assert strip(a) == strip(b)
    texts = lambda d: [{k: v["text"] for k, v in s["answers"].items()} for s in d["samples"]]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(evaluate_pipeline(pipe, PROMPTS, LengthJudge(), seed=8, progress=False).to_dict())


def test_duplicate_stage_names_and_limit() -> None:
    pipe = Pipeline(FunctionLLM(echo), [Longer(), Longer()])
    report = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), limit=2, progress=False)
    assert [v.name for v in report.variants] == ["Longer", "Longer#2", "pipeline"] and report.n_prompts == 2


def test_report_samples_keep_what_a_prompt_stage_made_of_the_prompt() -> None:
    class Polite(PromptStage):
        def process(self, request: ChatRequest) -> ChatRequest:
            return request.with_last_user_message("Please answer in detail: " + request.last_user_message)

    report = evaluate_pipeline(Pipeline(FunctionLLM(echo), [Polite()]), PROMPTS[:2], LengthJudge(), progress=False, per_stage=False)
    for prompt, sample in zip(PROMPTS, report.to_dict()["samples"]):
        (row,) = sample["answers"]["pipeline"]["trace"]
        assert row["verdict"] == "modified" and row["rewritten_prompt"] == "Please answer in detail: " + prompt
        assert "before" not in row and "after" not in row


def test_repeats_compare_mean_rewards_over_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipe = Pipeline(FunctionLLM(echo), [Coin()])
    k = 6
    report = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), seed=3, repeats=k, progress=False, per_stage=False)
    assert report.repeats == k
    extra = len(" Please answer in detail.")
    chain = report.variant("pipeline")
    wins = 0
    for prompt, smp in zip(PROMPTS, report.samples):
        runs = smp["answers"]["pipeline"]["runs"]
        changed = [random.Random(f"{3 + j}/{prompt}").random() < 0.5 for j in range(k)]
        # every run is the answer to that run's seed, and the reward is the mean over the runs
        assert [r["text"] == echo([{"content": prompt}]) + (" Please answer in detail." if c else "") for r, c in zip(runs, changed)] == [True] * k
        assert smp["answers"]["pipeline"]["reward"] == pytest.approx(len(echo([{"content": prompt}])) + extra * sum(changed) / k)
        assert len(smp["answers"]["plain"]["runs"]) == k
        wins += any(changed)
    assert (chain.wins, chain.ties, chain.losses) == (wins, len(PROMPTS) - wins, 0)
    (stats,) = chain.stage_stats
    assert stats.modified + stats.passed == k * len(PROMPTS)
    assert "seeds 3-8 (mean of 6 runs per prompt)" in report.to_markdown()

    # rejudging keeps the runs: the opposite judge turns every win into a loss
    paths = report.write(tmp_path / "rep")
    other = rejudge(paths["json"], ShortJudge())
    assert other.repeats == k and (other.variant("pipeline").losses, other.variant("pipeline").wins) == (wins, 0)
    data = json.loads(paths["json"].read_text())
    del data["samples"][0]["answers"]["plain"]["runs"][-1]
    with pytest.raises(InputError, match=r"samples\[0\]\.answers\.plain: 5 runs, the report says repeats=6"):
        rejudge(data, LengthJudge())
    with pytest.raises(InputError, match="repeats must be 1 or more, got 0"):
        evaluate_pipeline(pipe, PROMPTS, LengthJudge(), repeats=0, progress=False)
    assert main(["--judge", "unused", "--pairs", "unused.jsonl", "--repeats", "0"]) == 2
    assert "--repeats must be 1 or more, got 0" in capsys.readouterr().err


def test_repeats_generate_a_deterministic_plain_answer_once() -> None:
    calls: list[str] = []

    def counting(messages: list[dict]) -> str:
        calls.append(messages[-1]["content"])
        return echo(messages)

    k = 3
    for deterministic, plain_calls in ((True, 1), (False, k)):
        calls.clear()
        pipe = Pipeline(FunctionLLM(counting, deterministic=deterministic), [Coin()])
        report = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), seed=1, repeats=k, progress=False, per_stage=False)
        # the stage variant always runs k times; the plain one once when the LLM says it is deterministic;
        # the safety-suffix control once whatever the LLM says
        assert len(calls) == (plain_calls + k + 1) * len(PROMPTS)
        for smp in report.samples:
            runs = smp["answers"]["plain"]["runs"]
            assert len(runs) == k and {r["text"] for r in runs} == {echo([{"content": smp["prompt"][0]["content"]}])}
        assert report.plain_ms_per_prompt >= 0
    # a deterministic stage on a deterministic LLM: every variant runs once
    calls.clear()
    report = evaluate_pipeline(Pipeline(FunctionLLM(counting, deterministic=True), [IdentityPromptStage()]), PROMPTS, LengthJudge(),
                               repeats=k, progress=False, per_stage=False)
    assert len(calls) == 3 * len(PROMPTS) and report.variant("pipeline").stage_stats[0].passed == k * len(PROMPTS)
    # one repeat: no difference
    calls.clear()
    evaluate_pipeline(Pipeline(FunctionLLM(counting, deterministic=True), [Coin()]), PROMPTS, LengthJudge(), repeats=1, progress=False, per_stage=False)
    assert len(calls) == 3 * len(PROMPTS)


def test_local_backend_is_deterministic_only_when_greedy(tiny_model_dir: Path) -> None:
    from middleware.local import LocalBackend

    llm = LocalBackend(str(tiny_model_dir), max_tokens=8)
    assert llm.deterministic(ChatRequest.build("Hi")) and llm.deterministic(ChatRequest.build("Hi", temperature=0))
    assert not llm.deterministic(ChatRequest.build("Hi", temperature=0.7))
    assert not FunctionLLM(echo).deterministic(ChatRequest.build("Hi"))
    # what the eval relies on: greedy answers repeat across seeds, sampled ones differ
    pipe = Pipeline(llm)
    greedy = [pipe.batch(PROMPTS, seed=s) for s in (0, 1)]
    assert [r.text for r in greedy[0]] == [r.text for r in greedy[1]]
    sampled = [pipe.batch(PROMPTS, seed=s, temperature=1.0) for s in (0, 1)]
    assert [r.text for r in sampled[0]] != [r.text for r in sampled[1]]
    report = evaluate_pipeline(Pipeline(llm, defaults={"temperature": 1.0}), PROMPTS, LengthJudge(), repeats=2, progress=False)
    assert any(len({r["text"] for r in s["answers"]["plain"]["runs"]}) == 2 for s in report.samples)
