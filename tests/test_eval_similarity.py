"""Similarity to reference answers (``middleware.evaluate.similarity``) and where a report takes the
references from (a prompt row's ``reference``, a preference pair's ``chosen``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.evaluate import ReferenceSimilarity, evaluate_pipeline, rejudge
from middleware.pipeline import Pipeline
from middleware.stages import ResponseStage
from middleware.types import ChatRequest, ChatResponse, PreferencePair, PromptRecord, load_prompts
from eval_helpers import LengthJudge, Longer, PROMPTS, echo, recording_llm, table_cell


class Unrelated(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": "Bananas grow on large herbaceous plants."})


def test_tfidf_cosine() -> None:
    refs = ["Paris is the capital of France.", "The quick brown fox jumps.", None]
    sim = ReferenceSimilarity(refs)
    assert sim(0, "Paris is the capital of France.") == pytest.approx(1.0)
    assert sim(0, "paris IS the capital, of france!") == pytest.approx(1.0)  # words, not case or punctuation
    assert sim(0, "Bananas grow on plants.") == 0.0 and sim(0, "") == 0.0
    partial = sim(0, "The capital of France is Paris, a large city on the Seine.")
    assert 0.0 < partial < 1.0
    # a word every reference uses weighs less than one only this reference uses
    assert sim(1, "The answer.") < sim(1, "A fox.")
    assert not sim.has_reference(2)
    with pytest.raises(ValueError, match="prompt 2 has no reference answer"):
        sim(2, "anything")


def test_report_similarity_per_variant(tmp_path: Path) -> None:
    rows = [PromptRecord(prompt=p, reference=echo([{"content": p}])) for p in PROMPTS[:3]] + [PromptRecord(prompt=PROMPTS[3])]
    pipe = Pipeline(recording_llm([]), [Longer(), Unrelated()])
    report = evaluate_pipeline(pipe, rows, LengthJudge(), progress=False)
    # the plain answer is the reference itself; one more sentence lowers it; an unrelated answer shares no word
    assert report.n_references == 3 and report.plain_similarity == pytest.approx(1.0)
    longer, unrelated = report.variant("Longer"), report.variant("Unrelated")
    assert longer.similarity is not None and 0.3 < longer.similarity < 1.0
    assert unrelated.similarity == 0.0 and unrelated.similarity_ci == (0.0, 0.0)
    assert longer.similarity_ci is not None and longer.similarity_ci[0] <= longer.similarity <= longer.similarity_ci[1]
    md = report.to_markdown()
    assert table_cell(md, "Unrelated", "similarity to reference") == "0.000"
    assert table_cell(md, "Longer", "similarity to reference") == f"{longer.similarity:.3f}"
    assert "similarity to reference 1.000" in md and "3 prompts with one" in md
    smp = report.samples
    assert smp[0]["reference"] == rows[0].reference and smp[0]["answers"]["plain"]["similarity"] == pytest.approx(1.0)
    assert "reference" not in smp[3] and "similarity" not in smp[3]["answers"]["plain"]
    # a second judge's report keeps the similarities: they come from the answers, not the judge
    again = rejudge(report.write(tmp_path / "r")["json"], LengthJudge())
    assert again.variant("Longer").similarity == longer.similarity and again.n_references == 3
    # without references: no similarity columns
    plain = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False)
    assert plain.plain_similarity is None and "similarity" not in plain.to_markdown()


def test_references_from_prompt_and_pair_files(tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text(
        json.dumps({"prompt": "What is 2+2?", "reference": "Four."}) + "\n"
        + PreferencePair(prompt="Say hi.", chosen="Hi there!", rejected="No.").model_dump_json() + "\n"
        + json.dumps({"prompt": "Verify this.", "chosen": True, "rejected": "True."}) + "\n"
        + json.dumps({"prompt": "Tell me a joke."}) + "\n"
    )
    assert [r.reference for r in load_prompts(f)] == ["Four.", "Hi there!", None, None]
    report = evaluate_pipeline(Pipeline(recording_llm([], lambda m: "Hi there!" if "hi" in m else "Four.")), f, LengthJudge(),
                               progress=False, control=False)
    assert report.n_references == 2 and report.plain_similarity == pytest.approx(1.0)
    # pairs given as objects: their chosen answer is the reference
    pairs = [PreferencePair(prompt="Say hi.", chosen="Hello!", rejected="No.")]
    assert evaluate_pipeline(Pipeline(recording_llm([], lambda m: "Hello!")), pairs, LengthJudge(), progress=False).plain_similarity == pytest.approx(1.0)


def test_shared_eval_files_carry_references(shared_data: Path) -> None:
    dolly = load_prompts(shared_data / "dolly_eval_prompts.jsonl")
    assert len(dolly) == 200 and all(r.reference for r in dolly)
    assert all(r.reference is None for r in load_prompts(shared_data / "vicuna_eval_prompts.jsonl"))
