"""The report per prompt source, in Markdown and JSON (``middleware.evaluate.report``)."""

from __future__ import annotations

import json
from pathlib import Path

from middleware.evaluate.run import evaluate_pipeline
from middleware.evaluate.scoring import rejudge
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from middleware.stages import ResponseStage
from middleware.types import ChatRequest, ChatResponse
from eval_helpers import LengthJudge, ShortJudge, echo


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
