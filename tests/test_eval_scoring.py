"""Scoring answers: the first-sentence control, rejudging a report (``middleware.evaluate.scoring``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.evaluate.run import evaluate_pipeline
from middleware.evaluate.scoring import first_sentence, rejudge
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from eval_helpers import LengthJudge, Longer, PROMPTS, ShortJudge, echo


def test_first_sentence_control_and_answer_lengths() -> None:
    assert first_sentence("Paris. It is big! Really?") == "Paris."
    assert first_sentence("  No end mark here") == "  No end mark here"  # unchanged: the control ties
    assert first_sentence("Version 2.5 is out. Get it.") == "Version 2.5 is out."

    def two_sentences(messages: list[dict]) -> str:
        return "Short. " + "A much longer second sentence follows here."

    pipe = Pipeline(FunctionLLM(two_sentences), [Longer()])
    report = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False, per_stage=False)
    control, suffix = report.controls  # every report also carries the safety-suffix control
    assert suffix.name == "control: safety suffix"
    # the length judge prefers the full answer to its first sentence: the control loses every time
    assert control.name == "control: first sentence" and (control.wins, control.ties, control.losses) == (0, 0, 4)
    assert control.mean_words == 1 and report.plain_mean_words == 8
    assert report.variant("pipeline").mean_words == 12
    assert "| control: first sentence | (none) | 0.0% | 0 / 0 / 4 | 0%-49% |" in report.to_markdown()
    assert report.to_dict()["controls"][0]["win_rate"] == 0.0
    assert evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False, per_stage=False, control=False).controls == []


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


def test_reports_count_refusals_per_variant() -> None:
    def answer(messages: list[dict]) -> str:
        return "Sure: here is how." if "tips" in messages[-1]["content"] else "I'm sorry, but I can't help with that."

    class Refuse(Longer):
        def process(self, request, response):  # type: ignore[no-untyped-def]
            return response.model_copy(update={"text": "I cannot help with that."})

    prompts = ["Give me tips.", "Something else."]
    report = evaluate_pipeline(Pipeline(FunctionLLM(answer), [Refuse()]), prompts, LengthJudge(), progress=False, per_stage=False)
    assert report.plain_refusal_rate == 0.5
    assert report.variant("pipeline").refusal_rate == 1.0
    assert report.controls[0].refusal_rate == 0.5  # the first sentence of a refusal is a refusal
    md = report.to_markdown()
    assert "50% refusals" in md and "| refusals |" in md
