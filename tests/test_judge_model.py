"""RewardModel: scoring, saving and loading (also from checkpoints, corrupt or half-written) on a tiny random model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from judge import RewardModel, TrainConfig, train_reward_model
from judge_pairs import cfg, toy_pairs
from middleware.checkpoints import CheckpointManager, load_checkpoint
from middleware.errors import CheckpointError

def test_score_types_and_truncation(tiny_model_dir: Path) -> None:
    rm = RewardModel.create(cfg(tiny_model_dir, train="head"))
    a = rm.score("What is the capital of France?", "Paris.")
    b = rm.score([{"role": "user", "content": "What is the capital of France?"}], "Paris.")
    assert isinstance(a, float) and a == pytest.approx(b, abs=1e-5)
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 50
    batch = rm.score_batch([(long_prompt, "Paris."), ("Hi", "Paris."), (long_prompt, "Paris.")])
    assert len(batch) == 3 and batch[0] == pytest.approx(batch[2], abs=1e-5)
    assert max(len(s) for s in rm.encode([(long_prompt, "Paris.")])) == 64


def test_corrupt_and_half_written_checkpoints(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = toy_pairs(12)
    model = cfg(tiny_model_dir, train="lora", train_layers=1)
    train = TrainConfig(max_steps=6, batch_size=4, save_every=2, keep_checkpoints=3)
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

