"""``alignware train rewriter`` and ``alignware train corrector`` on a tiny checkpoint, then the trained
adapters loaded as stages."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import json
from pathlib import Path

import pytest

from middleware.pipeline import Pipeline
from middleware.types import PreferencePair, save_pairs
from rewriters.cli import train_corrector_main, train_rewriter_main
from rewriters.prompt_rewriter import PromptRewriter
from rewriters.response_corrector import ResponseCorrector
from text_stage_fakes import ANSWER, PROMPT, QUESTION, FixedLLM, echo_llm, received


# -- alignware train rewriter ---------------------------------------------------------------------------
def test_train_rewriter_cli_selects_with_a_reward_model(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from judge import RewardConfig, RewardModel

    RewardModel.create(RewardConfig(backbone=str(tiny_model_dir), max_length=64, train="head")).save(tmp_path / "judge")
    data = tmp_path / "pairs.jsonl"
    save_pairs(
        [PreferencePair(prompt=f"question {i} about plants", chosen="good", rejected="bad",
                        optimized_prompt=f"Explain question {i} about plants, step by step.") for i in range(6)],
        data,
    )
    out = tmp_path / "rw"
    args = [
        "--data", str(data), "--out", str(out), "--base-model", str(tiny_model_dir), "--data-only",
        "--judge", str(tmp_path / "judge"), "--target", f"local:{tiny_model_dir}", "--select-max-tokens", "4",
        "--cache-dir", str(tmp_path / "cache"),
    ]
    assert train_rewriter_main(args + ["--select-margin", "-1000"]) == 0
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == 12 and all(json.loads(p.read_text())["model"].startswith(str(tiny_model_dir.resolve())) for p in cached)
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["gain"] == pytest.approx(r["rewritten_reward"] - r["reward"]) for r in rows)
    assert all(r["kept"] and r["answer"] and r["rewritten_answer"] for r in rows)
    assert len((out / "rewriter_data.jsonl").read_text().splitlines()) == 6
    assert train_rewriter_main(args + ["--select-margin", "1000"]) == 2  # bad input: the exit code every train verb uses
    assert "no training examples" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and not any(r["kept"] for r in rows)

    # sampled answers from the local model: two per side, mean rewards in selection.jsonl
    assert train_rewriter_main(args + ["--select-margin", "-1000", "--select-samples", "2"]) == 0
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert all(len(r["rewards"]) == 2 and r["reward"] == pytest.approx(sum(r["rewards"]) / 2) for r in rows)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 12 + 24


def test_train_main_then_from_pretrained(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    save_pairs(
        [
            PreferencePair(prompt=f"question number {i} about plants", chosen="good", rejected="bad",
                           optimized_prompt=f"Explain question number {i} about plants in detail.")
            for i in range(6)
        ],
        data,
    )
    out = tmp_path / "rewriter"
    rc = train_rewriter_main([
        "--data", str(data), "--out", str(out), "--base-model", str(tiny_model_dir),
        "--max-steps", "2", "--batch-size", "2", "--lora-r", "2", "--lora-alpha", "4", "--eval-fraction", "0.2",
    ])
    assert rc == 0
    manifest = json.loads((out / "alignware.json").read_text())
    assert manifest["kind"] == "rewriter" and manifest["template"] == "bpo"
    rw = PromptRewriter.from_pretrained(out, max_new_tokens=4)
    assert rw.mode == "model" and rw.template.name == "bpo" and rw.params["top_p"] == 0.9
    resp = Pipeline(echo_llm(), [rw]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT  # four random tokens never make a valid rewrite


# -- alignware train corrector --------------------------------------------------------------------------
def test_train_main_with_warmup_then_from_pretrained(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    save_pairs([PreferencePair(prompt=f"question {i}", chosen=f"good answer {i}.", rejected=f"bad {i}") for i in range(6)], data)
    out = tmp_path / "corrector"
    rc = train_corrector_main([
        "--data", str(data), "--out", str(out), "--base-model", str(tiny_model_dir), "--batch-size", "4",
        "--lora-r", "2", "--lora-alpha", "4", "--epochs", "1", "--warmup-epochs", "1", "--eval-fraction", "0.2",
    ])
    assert rc == 0
    manifest = json.loads((out / "alignware.json").read_text())
    assert manifest["kind"] == "corrector" and manifest["template"] == "aligner-v1.0"
    assert manifest["training"]["warmup_examples"] == 6 and manifest["training"]["examples"] == 6
    history = json.loads((out / "history.json").read_text())
    assert any(row.get("warmup") for row in history)
    corrector = ResponseCorrector.from_pretrained(out, max_new_tokens=4)
    assert corrector.mode == "model" and corrector.template.name == "aligner-v1.0"
    resp = Pipeline(FixedLLM(ANSWER), [corrector]).chat(QUESTION)
    assert resp.text == ANSWER  # four random tokens are cut off: the answer is kept


# -- exit codes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("main", [train_rewriter_main, train_corrector_main])
def test_bad_input_exits_2_with_the_file_and_line(main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Hi", "chosen": "Hello"}\n', encoding="utf-8")  # no "rejected"
    assert main(["--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{data}:1" in err and "rejected" in err
    assert not (tmp_path / "run").exists()
