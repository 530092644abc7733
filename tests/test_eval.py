"""Evaluation harness: win rates, gains, stage statistics, pairwise accuracy, CLI (tiny models)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from middleware.errors import InputError
from middleware.evaluate import evaluate_pipeline, first_sentence, main, mean_interval, pairwise_accuracy, rejudge, win_rate_interval
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from middleware.stages import IdentityPromptStage, IdentityResponseStage, PromptStage, ResponseStage
from middleware.types import ChatRequest, ChatResponse, PreferencePair
from judge import RewardConfig, RewardModel

PROMPTS = ["What is the capital of France?", "How can I help you today?", "Please improve this prompt.", "Hello!"]


@pytest.fixture(scope="module")
def judge_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) reward model on the tiny backbone, saved as a folder."""
    rm = RewardModel.create(RewardConfig(backbone=str(tiny_model_dir), max_length=64, train="head"))
    return rm.save(tmp_path_factory.mktemp("judge"))


def echo(messages: list[dict]) -> str:
    return "You asked: " + messages[-1]["content"]


class LengthJudge:
    """A transparent judge: longer answers are better."""

    def score_batch(self, items):
        return [float(len(r)) for _, r in items]


class Longer(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": response.text + " Here is more detail."})


class Broken(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        raise RuntimeError("model unavailable")


class Noisy(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": response.text + "!" * random.randint(0, 5)})


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


def test_pairwise_accuracy(judge_dir: Path, tmp_path: Path) -> None:
    pairs = [PreferencePair(prompt=p, chosen="A long and helpful answer.", rejected="No.") for p in PROMPTS]
    assert pairwise_accuracy(LengthJudge(), pairs) == 1.0
    flipped = [PreferencePair(prompt=p.prompt, chosen=p.rejected, rejected=p.chosen) for p in pairs]
    assert pairwise_accuracy(LengthJudge(), flipped) == 0.0
    acc = pairwise_accuracy(judge_dir, pairs)
    assert 0.0 <= acc <= 1.0


def test_cli_pipeline_and_pairs_modes(tiny_model_dir: Path, judge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(
        f"llm: {tiny_model_dir}\ndefaults: {{max_tokens: 5}}\nstages:\n  - type: identity_prompt\n  - type: identity_response\n"
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    out = tmp_path / "report"
    assert main(["--pipeline", str(cfg), "--prompts", str(prompts), "--judge", str(judge_dir), "--limit", "3", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| pipeline | IdentityPromptStage, IdentityResponseStage | 50.0% | 0 / 3 / 0 | 19%-81% | +0.000 |" in printed
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.png"}
    again = tmp_path / "rejudged"
    assert main(["--rejudge", str(out / "report.json"), "--judge", str(judge_dir), "--out", str(again), "--quiet"]) == 0
    assert "| pipeline | IdentityPromptStage, IdentityResponseStage | 50.0% | 0 / 3 / 0 | 19%-81% | +0.000 |" in capsys.readouterr().out
    assert json.loads((again / "report.json").read_text())["samples"] == json.loads((out / "report.json").read_text())["samples"]

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(PreferencePair(prompt=p, chosen="Yes, gladly.", rejected="No.").model_dump_json() + "\n" for p in PROMPTS))
    assert main(["--judge", str(judge_dir), "--pairs", str(pairs), "--out", str(out), "--quiet"]) == 0
    assert "pairwise accuracy" in capsys.readouterr().out
    assert json.loads((out / "pairwise.json").read_text())["n"] == 4

    assert main(["--judge", str(tmp_path / "nope"), "--pairs", str(pairs), "--quiet"]) == 1
    assert "no such reward model folder" in capsys.readouterr().err
    assert main(["--pipeline", str(cfg), "--prompts", str(tmp_path / "missing.jsonl"), "--judge", str(judge_dir), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_demo_skips_stages_that_cannot_be_built(capsys: pytest.CaptureFixture[str]) -> None:
    from middleware.demo import build_stages

    stages = build_stages([{"type": "no_such_package.module:Stage"}, {"type": "identity_response", "name": "kept"}])
    assert [s.name for s in stages] == ["kept"]
    assert "stage no_such_package.module:Stage: skipped" in capsys.readouterr().out


def test_report_samples_keep_what_a_prompt_stage_made_of_the_prompt() -> None:
    class Polite(PromptStage):
        def process(self, request: ChatRequest) -> ChatRequest:
            return request.with_last_user_message("Please answer in detail: " + request.last_user_message)

    report = evaluate_pipeline(Pipeline(FunctionLLM(echo), [Polite()]), PROMPTS[:2], LengthJudge(), progress=False, per_stage=False)
    for prompt, sample in zip(PROMPTS, report.to_dict()["samples"]):
        (row,) = sample["answers"]["pipeline"]["trace"]
        assert row["verdict"] == "modified" and row["rewritten_prompt"] == "Please answer in detail: " + prompt
        assert "before" not in row and "after" not in row


def test_cli_rejects_zero_threads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--judge", "unused", "--pairs", "unused.jsonl", "--threads", "0"]) == 2
    assert "--threads must be 1 or more, got 0" in capsys.readouterr().err


def test_first_sentence_control_and_answer_lengths() -> None:
    assert first_sentence("Paris. It is big! Really?") == "Paris."
    assert first_sentence("  No end mark here") == "  No end mark here"  # unchanged: the control ties
    assert first_sentence("Version 2.5 is out. Get it.") == "Version 2.5 is out."

    def two_sentences(messages: list[dict]) -> str:
        return "Short. " + "A much longer second sentence follows here."

    pipe = Pipeline(FunctionLLM(two_sentences), [Longer()])
    report = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False, per_stage=False)
    (control,) = report.controls
    # the length judge prefers the full answer to its first sentence: the control loses every time
    assert control.name == "control: first sentence" and (control.wins, control.ties, control.losses) == (0, 0, 4)
    assert control.mean_words == 1 and report.plain_mean_words == 8
    assert report.variant("pipeline").mean_words == 12
    assert "| control: first sentence | (none) | 0.0% | 0 / 0 / 4 | 0%-49% |" in report.to_markdown()
    assert report.to_dict()["controls"][0]["win_rate"] == 0.0
    assert evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False, per_stage=False, control=False).controls == []


class ShortJudge:
    """The opposite of LengthJudge: shorter answers are better."""

    def score_batch(self, items):
        return [-float(len(r)) for _, r in items]


def test_rejudge_scores_the_same_answers_with_another_judge(tmp_path: Path) -> None:
    calls = []

    def counting_echo(messages: list[dict]) -> str:
        calls.append(1)
        return echo(messages)

    pipe = Pipeline(FunctionLLM(counting_echo), [Longer(skip_if=lambda r: "Hello" in r.last_user_message)])
    report = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False)
    paths = report.write(tmp_path / "first")
    generated = len(calls)

    same = rejudge(paths["json"], LengthJudge())
    assert same.to_dict() == {**report.to_dict(), "judge": "LengthJudge"}

    other = rejudge(paths["json"], ShortJudge())
    assert len(calls) == generated  # nothing generated again
    longer = other.variant("Longer")
    assert (longer.wins, longer.ties, longer.losses) == (0, 1, 3)
    assert longer.mean_gain == pytest.approx(-3 * len(" Here is more detail.") / 4)
    assert longer.stage_stats == report.variant("Longer").stage_stats and longer.ms_per_prompt == report.variant("Longer").ms_per_prompt
    assert other.controls[0].wins == report.controls[0].losses
    assert [s["answers"]["plain"]["text"] for s in other.samples] == [s["answers"]["plain"]["text"] for s in report.samples]


def test_rejudge_cli_and_bad_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = evaluate_pipeline(Pipeline(FunctionLLM(echo), [Longer()]), PROMPTS[:2], LengthJudge(), progress=False)
    data = report.to_dict()
    del data["samples"][1]["answers"]["Longer"]
    with pytest.raises(InputError, match=r"samples\[1\]\.answers: no answer of variant 'Longer'"):
        rejudge(data, LengthJudge())
    with pytest.raises(InputError, match="missing field 'samples'"):
        rejudge({"variants": []}, LengthJudge())
    with pytest.raises(InputError, match="no such report"):
        rejudge(tmp_path / "nope.json", LengthJudge())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not a readable JSON report"):
        rejudge(tmp_path / "bad.json", LengthJudge())
    assert main(["--rejudge", "x.json", "--judge", "j", "--pairs", "p.jsonl"]) == 2
    assert "--rejudge takes the answers from the report" in capsys.readouterr().err
    assert main(["--rejudge", "x.json", "--judge", "j", "--limit", "1", "--no-control"]) == 2
    assert "--limit, --no-control only apply when answers are generated" in capsys.readouterr().err


def test_tie_threshold_from_the_report_and_for_pairs(judge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--rejudge keeps the report's epsilon unless --epsilon is given; --pairs applies --epsilon too."""
    report = evaluate_pipeline(Pipeline(FunctionLLM(echo), [Longer()]), PROMPTS, judge_dir, progress=False, epsilon=1000.0)
    assert report.variant("pipeline").ties == len(PROMPTS)
    paths = report.write(tmp_path / "first")
    assert main(["--rejudge", str(paths["json"]), "--judge", str(judge_dir), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["epsilon"] == 1000.0 and again["variants"][0]["ties"] == len(PROMPTS)
    capsys.readouterr()

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(PreferencePair(prompt=p, chosen="Yes, gladly, here it is.", rejected="No.").model_dump_json() + "\n" for p in PROMPTS))
    out = tmp_path / "pairs_out"
    assert main(["--judge", str(judge_dir), "--pairs", str(pairs), "--epsilon", "1000", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "pairwise.json").read_text())["accuracy"] == 0.5  # every margin is a tie
    assert pairwise_accuracy(LengthJudge(), [PreferencePair(prompt="q", chosen="ab", rejected="a")], epsilon=5) == 0.5


def test_win_rate_interval() -> None:
    # one win and one loss are added: 10 ties -> 12 scores, mean 0.5, variance 0.5 / 11
    lo, hi = win_rate_interval([0.5] * 10)
    assert lo == pytest.approx(0.5 - 1.96 * (0.5 / 11) ** 0.5 / 12 ** 0.5) and hi == pytest.approx(1 - lo)
    lo, hi = win_rate_interval([1.0, 0.0] * 20)  # 42 scores, mean 0.5, variance 10.5 / 41
    assert lo == pytest.approx(0.5 - 1.96 * (10.5 / 41) ** 0.5 / 42 ** 0.5) and hi == pytest.approx(1 - lo)
    lo, hi = win_rate_interval([1.0, 1.0])  # 2 wins of 2 is not certainty: [1, 1, 1, 0], mean 0.75, sd 0.5
    assert lo == pytest.approx(0.75 - 1.96 * 0.5 / 2) and hi == 1.0  # clipped
    assert win_rate_interval([]) == (0.0, 1.0)
    assert mean_interval([1.0, 3.0]) == pytest.approx((2 - 1.96, 2 + 1.96)) and mean_interval([5.0]) is None


class Coin(PromptStage):
    """A sampling prompt stage: per request, from the request's seed, it either adds a plea for detail or not."""

    def process(self, request: ChatRequest) -> ChatRequest:
        if random.Random(f"{request.seed}/{request.last_user_message}").random() < 0.5:
            return request.with_last_user_message(request.last_user_message + " Please answer in detail.")
        return request


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
        # the stage variant always runs k times; the plain one once when the LLM says it is deterministic
        assert len(calls) == (plain_calls + k) * len(PROMPTS)
        for smp in report.samples:
            runs = smp["answers"]["plain"]["runs"]
            assert len(runs) == k and {r["text"] for r in runs} == {echo([{"content": smp["prompt"][0]["content"]}])}
        assert report.plain_ms_per_prompt >= 0
    # a deterministic stage on a deterministic LLM: every variant runs once
    calls.clear()
    report = evaluate_pipeline(Pipeline(FunctionLLM(counting, deterministic=True), [IdentityPromptStage()]), PROMPTS, LengthJudge(),
                               repeats=k, progress=False, per_stage=False)
    assert len(calls) == 2 * len(PROMPTS) and report.variant("pipeline").stage_stats[0].passed == k * len(PROMPTS)
    # one repeat: no difference
    calls.clear()
    evaluate_pipeline(Pipeline(FunctionLLM(counting, deterministic=True), [Coin()]), PROMPTS, LengthJudge(), repeats=1, progress=False, per_stage=False)
    assert len(calls) == 2 * len(PROMPTS)


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


def test_wins_per_prompt_source(tmp_path: Path) -> None:
    from middleware.types import PromptRecord

    rows = [PromptRecord(prompt=p, source=src) for p, src in
            [("Tell me a story.", "eval/writing"), ("Write a poem.", "eval/writing"), ("What is 2+2?", "eval/math"), ("Hello!", "eval/math")]]
    # the stage adds detail to the writing prompts only, and to one of them in a way the judge punishes
    class Detail(ResponseStage):
        def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
            if "poem" in request.last_user_message:
                return response.model_copy(update={"text": "x"})
            if "story" in request.last_user_message:
                return response.model_copy(update={"text": response.text + " Once upon a time."})
            return response

    pipe = Pipeline(FunctionLLM(echo), [Detail()])
    report = evaluate_pipeline(pipe, rows, LengthJudge(), progress=False)
    assert report.by_source() == {"eval/math": {"Detail": (0, 2, 0), "pipeline": (0, 2, 0)},
                                  "eval/writing": {"Detail": (1, 0, 1), "pipeline": (1, 0, 1)}}
    md = report.to_markdown()
    assert "| source | prompts | Detail: win rate (W / T / L) |" in md  # the one-stage chain is not repeated
    assert "| eval/math | 2 | 50% (0 / 2 / 0) |" in md and "| eval/writing | 2 | 50% (1 / 0 / 1) |" in md
    paths = report.write(tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert [s["source"] for s in data["samples"]] == [r.source for r in rows]
    assert data["by_source"]["eval/writing"]["Detail"] == {"wins": 1, "ties": 0, "losses": 1}
    # a second judge regroups the same answers
    assert rejudge(paths["json"], ShortJudge()).by_source()["eval/writing"]["Detail"] == (1, 0, 1)
    assert rejudge(paths["json"], ShortJudge()).by_source()["eval/math"]["Detail"] == (0, 2, 0)
    # prompts from a file keep their source; prompts without one make one group and no table
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": r.prompt[0].content, "source": r.source}) + "\n" for r in rows))
    assert set(evaluate_pipeline(pipe, f, LengthJudge(), progress=False).by_source()) == {"eval/math", "eval/writing"}
    plain = evaluate_pipeline(pipe, [r.prompt[0].content for r in rows], LengthJudge(), progress=False)
    assert list(plain.by_source()) == ["(none)"] and "| source |" not in plain.to_markdown()
