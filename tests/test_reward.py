"""Reward model: encoding, Bradley–Terry training, resume, checkpoint integrity, CLI (tiny random model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from middleware.errors import CheckpointError, InputError
from middleware.training import CheckpointManager, load_checkpoint
from middleware.types import PreferencePair
from judge import RewardConfig, RewardModel, TrainConfig, accuracy_from_margins, train_reward_model
from judge.cli import train_main
from judge.encoding import fit as _fit

QUESTIONS = ["What is the capital of France?", "How can I help you today?", "Please improve this prompt.", "Hello! What is the quick fox?"]


def toy_pairs(n: int = 16) -> list[PreferencePair]:
    """Separable pairs: the chosen answer is always the helpful sentence, the rejected one a refusal."""
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i % 3)}]
        if i % 4 == 3:
            prompt = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello! How can I help?"}] + prompt
        out.append(
            PreferencePair(
                prompt=prompt,
                chosen="Here is a helpful and harmless answer: Paris is the capital of France.",
                rejected="I cannot help with that.",
            )
        )
    return out


def cfg(tiny: Path, **kw) -> RewardConfig:
    return RewardConfig(backbone=str(tiny), max_length=64, **kw)


def test_fit_keeps_response_and_cuts_prompt_from_the_left() -> None:
    p, (c, r) = _fit(list(range(100)), [[1000, 1001], [2000]], 10)
    assert c == [1000, 1001] and r == [2000]
    assert p == list(range(92, 100))
    p, (c,) = _fit(list(range(10)), [list(range(500, 600))], 20)
    assert len(p) + len(c) == 20 and p == list(range(5, 10)) and c[0] == 500


def test_score_types_and_truncation(tiny_model_dir: Path) -> None:
    rm = RewardModel.create(cfg(tiny_model_dir, train="head"))
    a = rm.score("What is the capital of France?", "Paris.")
    b = rm.score([{"role": "user", "content": "What is the capital of France?"}], "Paris.")
    assert isinstance(a, float) and a == pytest.approx(b, abs=1e-5)
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 50
    batch = rm.score_batch([(long_prompt, "Paris."), ("Hi", "Paris."), (long_prompt, "Paris.")])
    assert len(batch) == 3 and batch[0] == pytest.approx(batch[2], abs=1e-5)
    assert max(len(s) for s in rm.encode([(long_prompt, "Paris.")])) == 64


def test_shared_prompt_packing_matches_separate_sequences(tiny_model_dir: Path) -> None:
    rm = RewardModel.create(cfg(tiny_model_dir, train="lora"))
    enc = rm.encode_pairs(toy_pairs(6))
    with torch.no_grad():
        c1, r1 = rm.pair_rewards(enc, share_prompt=True)
        c2, r2 = rm.pair_rewards(enc, share_prompt=False)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r1, r2, atol=1e-5, rtol=1e-5)
    scored = rm.score_batch([(p.prompt, p.chosen) for p in toy_pairs(6)])
    torch.testing.assert_close(torch.tensor(scored), c1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["lora", "full", "head"])
def test_loss_decreases_and_separable_pairs_reach_full_accuracy(tiny_model_dir: Path, tmp_path: Path, mode: str) -> None:
    pairs = toy_pairs(16)
    res = train_reward_model(
        pairs,
        tmp_path / "run",
        cfg(tiny_model_dir, train=mode),
        TrainConfig(epochs=6, batch_size=4, lr=3e-3 if mode != "head" else 1e-2, head_lr=1e-2, eval_fraction=0.25, save_every=100),
        progress=False,
    )
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert res.finished and len(losses) == res.total_steps
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    rm = RewardModel.load(tmp_path / "run")
    assert accuracy_from_margins(rm.pair_margins(pairs)) == 1.0
    assert res.metrics["eval_acc"] == 1.0
    assert (tmp_path / "run" / "training.png").stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "reward_config.json").read_text())
    assert saved["backbone"] == str(tiny_model_dir) and saved["config"]["train"] == mode


def _state(rm: RewardModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in rm.trainable_state().items()}


def test_resume_after_interruption_gives_identical_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = toy_pairs(20)
    model = cfg(tiny_model_dir, train="lora", train_layers=1)
    train = TrainConfig(max_steps=7, batch_size=4, lr=1e-3, save_every=2, eval_fraction=0.2, seed=3)
    full = train_reward_model(pairs, tmp_path / "a", model, train, progress=False)

    class Crash(RuntimeError):
        pass

    def crash_at_5(step: int, row: dict) -> None:
        if step == 5:
            raise Crash("simulated interruption")

    with pytest.raises(Crash):
        train_reward_model(pairs, tmp_path / "b", model, train, callbacks=[crash_at_5], progress=False)
    assert CheckpointManager(tmp_path / "b").latest().name == "step-0000004"
    assert not (tmp_path / "b" / "reward_config.json").exists()
    resumed = train_reward_model(pairs, tmp_path / "b", model, train, progress=False)
    assert resumed.finished and resumed.steps == 7
    a, b = _state(full.model), _state(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r for r in full.history] == [r for r in resumed.history]
    # A finished run is not trained again.
    again = train_reward_model(pairs, tmp_path / "b", model, train, progress=False)
    assert again.steps == 7 and again.metrics["train_seconds_this_run"] == 0.0


def test_stop_after_then_rerun_continues(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = toy_pairs(12)
    model = cfg(tiny_model_dir, train="head")
    part = train_reward_model(pairs, tmp_path / "r", model, TrainConfig(max_steps=6, batch_size=4, save_every=4, stop_after=3), progress=False)
    assert not part.finished and part.steps == 3
    assert CheckpointManager(tmp_path / "r").latest().name == "step-0000003"
    rest = train_reward_model(pairs, tmp_path / "r", model, TrainConfig(max_steps=6, batch_size=4, save_every=4), progress=False)
    assert rest.finished and rest.steps == 6


def test_mismatched_settings_refuse_to_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = toy_pairs(8)
    model = cfg(tiny_model_dir, train="head")
    train_reward_model(pairs, tmp_path / "r", model, TrainConfig(max_steps=4, batch_size=4, save_every=2, stop_after=2), progress=False)
    with pytest.raises(InputError, match="different train"):
        train_reward_model(pairs, tmp_path / "r", model, TrainConfig(max_steps=4, batch_size=2, save_every=2), progress=False)


def test_starting_over_leaves_nothing_of_the_earlier_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``resume=False`` (``--fresh``) removes the earlier run's final model: a fresh run stopped early
    must not leave ``RewardModel.load`` returning the earlier, finished model."""
    pairs = toy_pairs(8)
    model = cfg(tiny_model_dir, train="head")
    first = train_reward_model(pairs, tmp_path / "r", model, TrainConfig(max_steps=4, batch_size=4, save_every=2), progress=False)
    assert first.finished and (tmp_path / "r" / "reward_config.json").is_file()
    flipped = [PreferencePair(prompt=p.prompt, chosen=p.rejected, rejected=p.chosen) for p in pairs]
    again = train_reward_model(
        flipped, tmp_path / "r", model, TrainConfig(max_steps=4, batch_size=4, save_every=1, stop_after=1), resume=False, progress=False
    )
    assert not again.finished and not (tmp_path / "r" / "reward_config.json").exists()
    loaded = RewardModel.load(tmp_path / "r")
    assert loaded.info["checkpoint_step"] == 1


def test_corrupt_and_half_written_checkpoints(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = toy_pairs(12)
    model = cfg(tiny_model_dir, train="lora", train_layers=1)
    train = TrainConfig(max_steps=6, batch_size=4, save_every=2, keep=3)
    res = train_reward_model(pairs, tmp_path / "r", model, train, progress=False)
    mgr = CheckpointManager(tmp_path / "r")
    ck2, ck4, ck6 = mgr.all()

    # Corrupt the newest checkpoint's weights: detected, and the previous one still loads.
    data = bytearray((ck6 / "model.safetensors").read_bytes())
    data[-8:] = b"\x00garbage"
    (ck6 / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(ck6)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        RewardModel.load(ck6)
    assert mgr.latest() == ck4
    prev = RewardModel.load(ck4)
    assert prev.info["checkpoint_step"] == 4
    assert isinstance(prev.score("Hello", "Hi"), float)

    # A half-written checkpoint (no state.json) is reported as such.
    (ck4 / "state.json").unlink()
    with pytest.raises(CheckpointError, match="half-written"):
        RewardModel.load(ck4)
    assert mgr.latest() == ck2

    # The final model folder is checked too.
    w = tmp_path / "r" / "reward.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        RewardModel.load(tmp_path / "r")
    with pytest.raises(CheckpointError, match="no such"):
        RewardModel.load(tmp_path / "missing")

    # Resuming skips the broken checkpoints and continues from the good one.
    shutil.rmtree(ck6)
    again = train_reward_model(pairs, tmp_path / "r", model, train, progress=False)
    assert again.finished and again.steps == 6
    assert res.total_steps == 6


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


def test_loaded_model_saves_again_and_scores_the_same(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = train_reward_model(toy_pairs(8), tmp_path / "r", cfg(tiny_model_dir, train="lora", train_layers=1), TrainConfig(max_steps=2, batch_size=4), progress=False)
    merged = RewardModel.load(tmp_path / "r")
    unmerged = RewardModel.load(tmp_path / "r", merge=False)
    items = [(p.prompt, p.chosen) for p in toy_pairs(4)]
    expected = res.model.score_batch(items)
    assert merged.score_batch(items) == pytest.approx(expected, abs=1e-5)
    assert unmerged.score_batch(items) == pytest.approx(expected, abs=1e-5)
    merged.save(tmp_path / "copy")
    assert RewardModel.load(tmp_path / "copy").score_batch(items) == pytest.approx(expected, abs=1e-5)
