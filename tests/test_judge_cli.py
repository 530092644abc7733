"""``alignware train reward``: training, resuming and exit codes from the command line (tiny random model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from judge import RewardModel, train_reward_model
from judge.cli import train_main
from judge_pairs import cfg, toy_pairs
from middleware.errors import InputError

def test_cli_trains_resumes_and_reports_bad_data(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(p.model_dump_json() + "\n" for p in toy_pairs(12)))
    base = ["--data", str(data), "--out", str(tmp_path / "rm"), "--backbone", str(tiny_model_dir), "--max-length", "48",
            "--train", "head", "--max-steps", "4", "--batch-size", "4", "--save-every", "2", "--quiet"]
    assert train_main(base + ["--stop-after", "2"]) == 0
    assert "rerun the same command" in capsys.readouterr().out
    assert train_main(base) == 0
    out = capsys.readouterr().out
    assert "done: 4 steps" in out
    assert RewardModel.load(tmp_path / "rm").info["train_metrics"]["steps"] == 4

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "chosen": "a"}\n')
    assert train_main(["--data", str(bad), "--out", str(tmp_path / "x"), "--backbone", str(tiny_model_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "rejected" in err
    with pytest.raises(InputError, match="bad.jsonl:2"):
        train_reward_model(bad, tmp_path / "y", cfg(tiny_model_dir), progress=False)


def test_cli_shared_flags_and_ctrl_c_exit_code(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import judge.cli

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(p.model_dump_json() + "\n" for p in toy_pairs(8)))
    seen = {}

    def fake_train(pairs, out, mcfg, tcfg, **kw):
        seen.update(tcfg=tcfg, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(judge.cli, "train_reward_model", fake_train)
    argv = ["--data", str(data), "--out", str(tmp_path / "rm"), "--backbone", str(tiny_model_dir), "--lr", "0.01",
            "--keep-checkpoints", "3", "--fresh", "--quiet"]
    assert train_main(argv) == 130
    assert seen["tcfg"].learning_rate == 0.01 and seen["tcfg"].keep_checkpoints == 3 and seen["resume"] is False
    again = [a for a in argv if a not in ("--fresh", "--lr", "0.01")] + ["--learning-rate", "0.02"]
    assert train_main(again) == 130 and seen["tcfg"].learning_rate == 0.02 and seen["resume"] is True
