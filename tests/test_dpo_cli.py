"""``alignware train rewriter|corrector --method dpo`` on a tiny checkpoint: the corrector from the data's
own pairs and from an SFT start, the rewriter from its own rewrites, and the usage errors."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import json
from pathlib import Path

import pytest

from middleware.types import PreferencePair, save_pairs
from rewriters.cli import train_corrector_main, train_rewriter_main
from middleware.sft import init_adapter
from rewriters.response_corrector import ResponseCorrector
from rewriters.sft_config import SFTConfig

SMALL = ["--batch-size", "2", "--lora-r", "2", "--lora-alpha", "4", "--max-length", "96", "--quiet"]


def _pairs(tmp_path: Path, n: int = 8) -> Path:
    data = tmp_path / "pairs.jsonl"
    save_pairs([PreferencePair(prompt=f"question {i} about birds", chosen=f"A careful answer {i}.", rejected=f"go away {i}")
                for i in range(n)], data)
    return data


def test_corrector_dpo_from_the_data_then_from_an_sft_start(tmp_path: Path, tiny_model_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = _pairs(tmp_path)
    base = ["--data", str(data), "--base-model", str(tiny_model_dir), *SMALL]
    out = tmp_path / "dpo"
    assert train_corrector_main([*base, "--out", str(out), "--method", "dpo", "--epochs", "1", "--eval-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "correction pairs: 8 rows" in printed and "8 from the data" in printed and "by DPO" in printed
    manifest = json.loads((out / "alignware.json").read_text())
    assert manifest["kind"] == "corrector" and manifest["training"]["method"] == "dpo"
    assert manifest["training"]["config"]["learning_rate"] == 5e-5  # the DPO default when --lr is not given
    assert manifest["training"]["examples"] == 8 and manifest["training"]["held_out"] == 2
    assert json.loads((out / "pairs_report.json").read_text())["from_data"] == 8
    assert ResponseCorrector.from_pretrained(out, max_new_tokens=4).mode == "model"  # loads as a stage

    sft = tmp_path / "sft"
    assert train_corrector_main([*base, "--out", str(sft), "--max-steps", "2", "--device", "cpu"]) == 0
    then = tmp_path / "sft_dpo"
    rc = train_corrector_main([*base, "--out", str(then), "--method", "dpo", "--init", str(sft), "--max-steps", "2", "--device", "cpu",
                               "--lr", "1e-4", "--beta", "0.2", "--dpo-loss", "ipo"])
    assert rc == 0
    training = json.loads((then / "alignware.json").read_text())["training"]
    assert training["init"] == str(sft) and training["dpo"] == {"beta": 0.2, "loss": "ipo"}
    assert training["config"]["learning_rate"] == 1e-4


def test_rewriter_dpo_builds_pairs_from_its_own_rewrites(tmp_path: Path, tiny_model_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from judge import RewardConfig, RewardModel

    RewardModel.create(RewardConfig(backbone=str(tiny_model_dir), max_length=64, train="head")).save(tmp_path / "judge")
    data = _pairs(tmp_path, 4)
    sft = init_adapter(SFTConfig(base_model=str(tiny_model_dir), kind="rewriter", template="bpo", lora_r=2, lora_alpha=4),
                       tmp_path / "rw_sft", random_init=True)
    common = ["--data", str(data), "--base-model", str(tiny_model_dir), *SMALL]
    out = tmp_path / "rw_dpo"
    args = [*common, "--out", str(out), "--method", "dpo", "--init", str(sft), "--judge", str(tmp_path / "judge"),
            "--target", f"local:{tiny_model_dir}", "--select-max-tokens", "4", "--samples", "2",
            "--cache-dir", str(tmp_path / "cache")]
    rc = train_rewriter_main([*args, "--min-gap", "0", "--max-steps", "1"])
    printed = capsys.readouterr()
    report = json.loads((out / "pairs_report.json").read_text())
    assert report["prompts"] == 4
    if rc == 2:  # a random tiny rewriter may produce fewer than two usable rewrites for every prompt
        assert report["kept"] == 0 and "no preference examples" in printed.err
    else:
        assert rc == 0 and report["kept"] >= 1
        assert json.loads((out / "alignware.json").read_text())["training"]["method"] == "dpo"
    assert train_rewriter_main([*args, "--min-gap", "1000", "--fresh"]) == 2  # nothing clears the gap
    assert json.loads((out / "pairs_report.json").read_text())["kept"] == 0


def test_usage_errors_exit_2(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _pairs(tmp_path, 2)
    base = ["--data", str(data), "--out", str(tmp_path / "x"), "--base-model", str(tiny_model_dir), "--method", "dpo"]
    assert train_rewriter_main(base) == 2
    assert "--init" in capsys.readouterr().err
    assert train_corrector_main([*base, "--judge", str(tmp_path / "judge")]) == 2
    assert "--init" in capsys.readouterr().err
    assert train_corrector_main([*base, "--beta", "0"]) == 2
    assert "beta" in capsys.readouterr().err
    assert train_corrector_main([*base, "--min-gap", "wide", "--judge", "j", "--init", "i"]) == 2
    assert "--min-gap" in capsys.readouterr().err
