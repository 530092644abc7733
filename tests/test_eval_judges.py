"""Judges: pairwise accuracy on labelled pairs, several judges in one report, each judge's accuracy next to
its win rates, and training a judge on mixed pair files (``middleware.evaluate.judges``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge import TrainConfig, train_reward_model
from judge.cli import train_main
from middleware.evaluate import evaluate_pipeline, load_panel, pairwise_accuracy, rejudge
from middleware.evaluate.cli import main
from middleware.pipeline import Pipeline
from middleware.types import PreferencePair
from eval_helpers import LengthJudge, Longer, PROMPTS, ShortJudge, judge_dir, recording_llm, table_cell
from judge_pairs import cfg, toy_pairs


def test_pairwise_accuracy(judge_dir: Path, tmp_path: Path) -> None:
    pairs = [PreferencePair(prompt=p, chosen="A long and helpful answer.", rejected="No.") for p in PROMPTS]
    assert pairwise_accuracy(LengthJudge(), pairs) == 1.0
    flipped = [PreferencePair(prompt=p.prompt, chosen=p.rejected, rejected=p.chosen) for p in pairs]
    assert pairwise_accuracy(LengthJudge(), flipped) == 0.0
    acc = pairwise_accuracy(judge_dir, pairs)
    assert 0.0 <= acc <= 1.0


def test_two_judges_score_one_generation(tmp_path: Path) -> None:
    received: list[str] = []
    pipe = Pipeline(recording_llm(received), [Longer()])
    one = evaluate_pipeline(pipe, PROMPTS, LengthJudge(), progress=False)
    generated = len(received)
    received.clear()
    two = evaluate_pipeline(pipe, PROMPTS, [LengthJudge(), ShortJudge()], progress=False)
    assert len(received) == generated  # the second judge costs no generation
    assert [j.label for j in two.judges] == ["LengthJudge", "ShortJudge"] and two.judge == "LengthJudge"
    # the first judge's verdicts are the rows' own, as with one judge
    assert two.verdict("Longer") == one.verdict("Longer") and two.verdict("Longer").wins == two.variant("Longer").wins == 4
    extra = len(" Here is more detail.")
    short = two.verdict("Longer", "ShortJudge")
    assert (short.wins, short.ties, short.losses) == (0, 0, 4) and short.mean_gain == -extra
    assert two.verdict("control: safety suffix", 1).losses == 4 and two.judges[1].plain_mean_reward == -two.plain_mean_reward

    md = two.to_markdown()
    assert md.startswith("Judges: **LengthJudge** `LengthJudge` (accuracy: not measured); **ShortJudge** `ShortJudge` (accuracy: not measured)")
    assert table_cell(md, "Longer", "LengthJudge: W / T / L") == "4 / 0 / 0" and table_cell(md, "Longer", "ShortJudge: W / T / L") == "0 / 0 / 4"
    assert table_cell(md, "Longer", "ShortJudge: mean reward gain") == f"{-extra:+.3f}"
    assert "win rate vs plain | W / T / L" not in md  # every judge's columns carry its label

    path = two.write(tmp_path / "two")["json"]
    data = json.loads(path.read_text())
    assert [b["label"] for b in data["judges"]] == ["LengthJudge", "ShortJudge"]
    assert data["judges"][1]["verdicts"]["Longer"]["losses"] == 4 and data["judges"][1]["by_source"]["(none)"]["Longer"]["losses"] == 4
    answers = data["samples"][0]["answers"]["Longer"]
    assert answers["rewards"] == {"LengthJudge": answers["reward"], "ShortJudge": -answers["reward"]}
    # rejudging with both judges gives the same verdicts; the same class twice gets two labels
    assert rejudge(path, [LengthJudge(), ShortJudge()]).judges == two.judges
    twice = evaluate_pipeline(pipe, PROMPTS, [LengthJudge(), LengthJudge()], progress=False)
    assert [j.label for j in twice.judges] == ["LengthJudge", "LengthJudge#2"] and twice.by_source(1) == twice.by_source(0)
    with pytest.raises(KeyError, match="no judge 'Nobody'"):
        two.verdict("Longer", "Nobody")


def test_judge_pairs_put_an_accuracy_next_to_each_judge(tiny_model_dir: Path, judge_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    labelled = [PreferencePair(prompt=p, chosen="A long and helpful answer.", rejected="No.") for p in PROMPTS]
    pairs = tmp_path / "heldout.jsonl"
    pairs.write_text("".join(p.model_dump_json() + "\n" for p in labelled))
    report = evaluate_pipeline(Pipeline(recording_llm([]), [Longer()]), PROMPTS, [LengthJudge(), ShortJudge()], progress=False,
                               judge_pairs=pairs)
    length, short = (j.accuracy for j in report.judges)
    assert length is not None and short is not None
    assert (length.accuracy, length.n, short.accuracy, short.n) == (1.0, 4, 0.0, 4) and length.source == str(pairs)
    assert length.ci is not None and length.ci[0] < 1.0 == length.ci[1]
    md = report.to_markdown()
    assert f"**LengthJudge** `LengthJudge` (pairwise accuracy 1.000 (95% CI {length.ci[0]:.2f}-1.00) on 4 pairs from {pairs})" in md
    assert f"**ShortJudge** `ShortJudge` (pairwise accuracy 0.000 (95% CI 0.00-{short.ci[1]:.2f}) on 4 pairs from {pairs})" in md

    # on the command line, with two reward model folders; the accuracy is the one --pairs measures
    conf = tmp_path / "pipe.yaml"
    conf.write_text(f"llm: {tiny_model_dir}\ndefaults: {{max_tokens: 4}}\nstages:\n  - type: identity_response\n")
    out = tmp_path / "cli"
    argv = ["--pipeline", str(conf), "--prompts", str(pairs), "--judge", str(judge_dir), "--judge", str(judge_dir),
            "--judge-pairs", str(pairs), "--limit", "2", "--no-per-stage", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    acc = pairwise_accuracy(judge_dir, pairs)
    assert printed.count(f"pairwise accuracy {acc:.3f}") == 2 and f"**{judge_dir.name}#2**" in printed
    blocks = json.loads((out / "report.json").read_text())["judges"]
    assert [b["accuracy"]["n"] for b in blocks] == [4, 4] and blocks[1]["label"] == judge_dir.name + "#2"
    assert main(["--judge", str(judge_dir), "--judge", str(judge_dir), "--pairs", str(pairs), "--out", str(out), "--quiet"]) == 0
    assert [r["accuracy"] for r in json.loads((out / "pairwise.json").read_text())["judges"]] == [acc, acc]
    assert main(["--judge", str(judge_dir), "--pairs", str(pairs), "--judge-pairs", str(pairs), "--quiet"]) == 2
    assert "--judge-pairs goes with a report" in capsys.readouterr().err


def test_recorded_held_out_accuracy_and_mixed_pair_files(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A judge trained on several pair files, one with rows that are not pairs (a JSON true as chosen),
    shows the held-out accuracy its training recorded."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(p.model_dump_json() + "\n" for p in toy_pairs(12)))
    bad = {"prompt": [{"role": "user", "content": "Verify the statement."}], "chosen": True, "rejected": "True."}
    b.write_text(json.dumps(bad) + "\n" + "".join(p.model_dump_json() + "\n" for p in toy_pairs(8)) + json.dumps(bad) + "\n")
    out = tmp_path / "judge"
    argv = ["--data", str(a), str(b), "--out", str(out), "--backbone", str(tiny_model_dir), "--max-length", "48",
            "--train", "head", "--max-steps", "3", "--batch-size", "4", "--eval-fraction", "0.25", "--quiet"]
    assert train_main(argv) == 2
    assert "b.jsonl:1: chosen" in capsys.readouterr().err
    assert train_main(argv + ["--skip-bad-rows"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 bad rows (first: " in err and "b.jsonl:1: chosen" in err
    (panel,) = load_panel(out)
    metrics = panel.judge.info["train_metrics"]  # type: ignore[attr-defined]
    assert metrics["n_train"] + metrics["n_eval"] == 20
    assert panel.accuracy is not None and panel.accuracy.source == "its training's held-out split"
    assert (panel.accuracy.accuracy, panel.accuracy.n) == (metrics["eval_acc"], metrics["n_eval"])
    report = evaluate_pipeline(Pipeline(recording_llm([]), [Longer()]), PROMPTS[:2], out, progress=False)
    assert f"on {metrics['n_eval']} pairs from its training's held-out split" in report.to_markdown().splitlines()[0]
    # a judge trained without a held-out split has no accuracy to show
    none = train_reward_model(toy_pairs(8), tmp_path / "no_eval", cfg(tiny_model_dir, train="head"),
                              TrainConfig(max_steps=1, batch_size=4, eval_fraction=0.0), progress=False)
    assert load_panel(none.out_dir)[0].accuracy is None


def test_readme_mixed_judge_command(shared_data: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's one command for a helpful-and-harmless judge on HH, BPO and PandaLM pairs, on a tiny
    model: 150 pairs of each file reach PandaLM's rows whose chosen answer is a JSON true."""
    files = [str(shared_data / f) for f in ("hh_harmless.jsonl", "bpo_pairs.jsonl", "pandalm_pairs.jsonl")]
    argv = ["--data", *files, "--skip-bad-rows", "--out", str(tmp_path / "judge_hh"), "--backbone", str(tiny_model_dir),
            "--max-length", "48", "--train", "head", "--max-steps", "2", "--batch-size", "8", "--limit", "150", "--quiet"]
    assert train_main(argv) == 0
    assert "skipped 6 bad rows (first: " in capsys.readouterr().err
    assert load_panel(tmp_path / "judge_hh")[0].judge.info["train_metrics"]["n_eval"] == 45  # type: ignore[attr-defined]
