"""``alignware train steering`` and ``alignware steer search`` on a tiny model and a tiny judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge import RewardModel
from judge_pairs import cfg, toy_pairs
from middleware.cli import main
from middleware.types import save_pairs
from steering.vector import MANIFEST, SteeringVector
from steering_models import one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread


@pytest.fixture(scope="module")
def files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("steer-cli")
    save_pairs(toy_pairs(12), root / "pairs.jsonl")
    RewardModel.create(cfg(tiny_model_dir, train="head")).save(root / "judge")
    (root / "benign.jsonl").write_text('{"prompt": "Hello!"}\n{"prompt": "What is the quick fox?"}\n')
    return {"root": root, "pairs": root / "pairs.jsonl", "judge": root / "judge", "benign": root / "benign.jsonl", "model": tiny_model_dir}


def test_train_a_vector_then_search_it(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "vec"
    code = main(["train", "steering", "--method", "vector", "--data", str(files["pairs"]), "--out", str(out),
                 "--base", str(files["model"]), "--eval-fraction", "0.25", "--layers", "1", "--quiet",
                 "--search", "--judge", str(files["judge"]), "--coefficients", "0", "2", "--search-max-tokens", "4",
                 "--benign", str(files["benign"])])
    assert code == 0
    for name in ("vector.safetensors", MANIFEST, "training.png", "search.json", "search.png", "command.json"):
        assert (out / name).is_file(), name
    v = SteeringVector.load(out)
    assert sorted(v.directions) == [1] and v.metadata["data_size"] == 9  # 12 pairs, a quarter held out
    grid = json.loads((out / "search.json").read_text())
    assert grid["prompts"] == 3 and len(grid["cells"]) == 2 and grid["baseline_refusal_rate"] is not None
    assert "best: layers" in capsys.readouterr().out

    code = main(["steer", "search", "--vector", str(out), "--prompts", str(files["pairs"]), "--limit", "2", "--judge",
                 str(files["judge"]), "--base", str(files["model"]), "--coefficients", "1", "--layer-ranges", "1-1",
                 "--search-max-tokens", "3", "--quiet"])
    assert code == 0
    assert json.loads((out / "search.json").read_text())["prompts"] == 2


def test_bad_usage_exits_2(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "steering", "--method", "vector", "--data", str(files["pairs"]), "--base", str(files["model"]), "--quiet"]
    assert main(base + ["--out", str(files["root"] / "a"), "--layers", "x-y"]) == 2
    assert "--layers 'x-y'" in capsys.readouterr().err
    assert main(base + ["--out", str(files["root"] / "b"), "--search"]) == 2
    assert "--search needs --judge" in capsys.readouterr().err
    assert main(base + ["--out", str(files["root"] / "c"), "--layers", "7"]) == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert main(["steer"]) == 2
    assert "search" in capsys.readouterr().err


def test_train_recontrol(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "rc"
    argv = ["train", "steering", "--method", "recontrol", "--data", str(files["pairs"]), "--out", str(out), "--base",
            str(files["model"]), "--judge", str(files["judge"]), "--samples-per-prompt", "1", "--max-new-tokens", "4",
            "--width", "16", "--epochs", "2", "--steps", "3", "--quiet"]
    assert main(argv) == 0
    assert "RE-Control editor ->" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "recontrol" and manifest["base_model"] == str(files["model"])
    from steering import ValueGuidedEditor

    assert ValueGuidedEditor.load(out).steps == 3
    assert main(argv[:-1] + ["--layers", "1", "--quiet"]) == 2  # recontrol edits the head's input, not blocks
    assert main([a for a in argv if a not in ("--judge", str(files["judge"]))]) == 2


def test_train_rahf(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "rahf"
    argv = ["train", "steering", "--method", "rahf", "--data", str(files["pairs"]), "--out", str(out), "--base",
            str(files["model"]), "--layers", "1", "--alpha", "2", "--max-length", "48", "--batch-size", "4",
            "--sft-max-steps", "2", "--max-steps", "2", "--quiet"]
    assert main(argv) == 0
    assert "RAHF: fit loss" in capsys.readouterr().out
    manifest = json.loads((out / "rahf.json").read_text())
    assert manifest["variant"] == "scit" and manifest["layers"] == [1] and manifest["alpha"] == 2.0
    assert (out / "merged" / "config.json").is_file() and (out / "adapter").is_dir()
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses the choice
        main(argv[:-1] + ["--variant", "triple", "--quiet"])
    assert exit_info.value.code == 2
