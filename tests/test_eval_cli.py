"""``alignware eval`` on the command line: pipeline, pairs and rejudge modes, bad arguments (``middleware.evaluate.cli``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.errors import InputError
from middleware.evaluate.cli import main
from middleware.evaluate.judges import pairwise_accuracy
from middleware.evaluate.run import evaluate_pipeline
from middleware.evaluate.scoring import rejudge
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from middleware.types import PreferencePair
from eval_helpers import LengthJudge, Longer, PROMPTS, echo, judge_dir


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


def test_cli_rejects_zero_threads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--judge", "unused", "--pairs", "unused.jsonl", "--threads", "0"]) == 2
    assert "--threads must be 1 or more, got 0" in capsys.readouterr().err


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


def test_demo_skips_stages_that_cannot_be_built(capsys: pytest.CaptureFixture[str]) -> None:
    from middleware.demo import build_stages

    stages = build_stages([{"type": "no_such_package.module:Stage"}, {"type": "identity_response", "name": "kept"}])
    assert [s.name for s in stages] == ["kept"]
    assert "stage no_such_package.module:Stage: skipped" in capsys.readouterr().out
