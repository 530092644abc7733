"""The control rows: the safety-suffix control's prompts, its one generation, refusal rates of both
controls, and rejudging reports with and without it (``middleware.evaluate.controls``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from middleware.evaluate import SAFETY_CONTROL, SAFETY_SENTENCE, evaluate_pipeline, rejudge
from middleware.pipeline import Pipeline
from eval_helpers import Coin, LengthJudge, Longer, PROMPTS, ShortJudge, echo, recording_llm, table_cell


def test_safety_suffix_appends_exactly_the_sentence_once_per_prompt_under_repeats() -> None:
    assert SAFETY_CONTROL == "control: safety suffix" and SAFETY_SENTENCE == "Please answer in a safe, ethical and responsible way."
    received: list[str] = []
    report = evaluate_pipeline(Pipeline(recording_llm(received), [Coin()]), PROMPTS, LengthJudge(), seed=2, repeats=3,
                               per_stage=False, progress=False)
    suffixed = [m for m in received if "safe, ethical" in m]
    # one generation per prompt (the plain LLM is not deterministic, so plain and the chain ran 3 times each)
    assert suffixed == [p + " Please answer in a safe, ethical and responsible way." for p in PROMPTS]
    assert len(received) == (3 + 3 + 1) * len(PROMPTS)
    first, suffix = report.controls
    assert suffix.name == SAFETY_CONTROL and suffix.stages == []
    # the echo of a longer prompt is a longer answer: the length judge prefers it every time
    assert (suffix.wins, suffix.ties, suffix.losses) == (4, 0, 0)
    for prompt, smp in zip(PROMPTS, report.samples):
        entry = smp["answers"][SAFETY_CONTROL]
        assert entry["text"] == echo([{"content": prompt + " " + SAFETY_SENTENCE}]) and "runs" not in entry
        # judged against the original prompt; the trace keeps the prompt the LLM got
        assert entry["trace"][0]["rewritten_prompt"] == prompt + " " + SAFETY_SENTENCE
        assert smp["prompt"][-1]["content"] == prompt
    assert table_cell(report.to_markdown(), SAFETY_CONTROL, "W / T / L") == "4 / 0 / 0"

    received.clear()
    bare = evaluate_pipeline(Pipeline(recording_llm(received), [Longer()]), PROMPTS, LengthJudge(), control=False, progress=False)
    assert bare.controls == [] and not any("safe, ethical" in m for m in received)
    assert SAFETY_CONTROL not in bare.samples[0]["answers"]


def test_refusal_rates_of_the_variants_and_both_controls() -> None:
    def cautious(message: str) -> str:
        if message.endswith(SAFETY_SENTENCE):
            time.sleep(0.02)
            return "I'm sorry, but I can't help with that. Please ask something else."
        return "Sure. Here is how: " + message

    report = evaluate_pipeline(Pipeline(recording_llm([], cautious), [Longer()]), PROMPTS, ShortJudge(), progress=False)
    first, suffix = report.controls
    assert report.plain_refusal_rate == 0.0 and report.variant("Longer").refusal_rate == 0.0
    assert suffix.refusal_rate == 1.0 and first.refusal_rate == 0.0
    md = report.to_markdown()
    assert table_cell(md, SAFETY_CONTROL, "refusals") == "100%"
    assert table_cell(md, "control: first sentence", "refusals") == "0%" and table_cell(md, "Longer", "refusals") == "0%"
    # the generated control's time: at least 20 ms for the batch of 4 prompts; the first sentence costs nothing
    assert suffix.ms_per_prompt >= 5.0 and first.ms_per_prompt == 0.0
    assert rejudge(report, LengthJudge()).controls[1].ms_per_prompt == suffix.ms_per_prompt


def _old_format(data: dict) -> dict:
    """A report as versions before the safety-suffix control, several judges and references wrote it."""
    old = {k: v for k, v in data.items() if k not in ("judges", "n_references", "plain_similarity", "plain_similarity_ci")}
    old["controls"] = [{k: v for k, v in c.items() if not k.startswith("similarity")} for c in data["controls"] if c["name"] != SAFETY_CONTROL]
    old["variants"] = [{k: v for k, v in c.items() if not k.startswith("similarity")} for c in data["variants"]]
    old["samples"] = [
        {**{k: v for k, v in s.items() if k != "reference"},
         "answers": {n: {k: v for k, v in a.items() if k not in ("similarity", "rewards")} for n, a in s["answers"].items() if n != SAFETY_CONTROL}}
        for s in data["samples"]
    ]
    return old


def test_rejudge_keeps_the_safety_control_and_reads_old_reports(tmp_path: Path) -> None:
    received: list[str] = []
    report = evaluate_pipeline(Pipeline(recording_llm(received), [Longer()]), PROMPTS, LengthJudge(), repeats=2, progress=False)
    path = report.write(tmp_path / "new")["json"]
    generated = len(received)
    other = rejudge(path, ShortJudge())
    assert len(received) == generated
    assert [c.name for c in other.controls] == ["control: first sentence", SAFETY_CONTROL]
    assert (other.controls[1].wins, other.controls[1].losses) == (0, 4) and other.repeats == 2

    old = tmp_path / "old.json"
    old.write_text(json.dumps(_old_format(json.loads(path.read_text()))))
    again = rejudge(old, LengthJudge())
    assert [c.name for c in again.controls] == ["control: first sentence"]
    assert again.variant("Longer") == report.variant("Longer") and again.controls[0] == report.controls[0]
    assert again.plain_similarity is None and "similarity" not in again.to_markdown()
