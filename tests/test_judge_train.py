"""The reward trainer: Bradley–Terry learning, resume, time-boxed runs, starting over, Ctrl-C (tiny random model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from judge import RewardModel, TrainConfig, accuracy_from_margins, train_reward_model
from judge_pairs import cfg, toy_pairs
from middleware.checkpoints import CheckpointManager
from middleware.errors import InputError
from middleware.types import PreferencePair

@pytest.mark.parametrize("mode", ["lora", "full", "head"])
def test_loss_decreases_and_separable_pairs_reach_full_accuracy(tiny_model_dir: Path, tmp_path: Path, mode: str) -> None:
    pairs = toy_pairs(16)
    res = train_reward_model(
        pairs,
        tmp_path / "run",
        cfg(tiny_model_dir, train=mode),
        TrainConfig(epochs=6, batch_size=4, learning_rate=3e-3 if mode != "head" else 1e-2, head_lr=1e-2, eval_fraction=0.25, save_every=100),
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
    train = TrainConfig(max_steps=7, batch_size=4, learning_rate=1e-3, save_every=2, eval_fraction=0.2, seed=3)
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


def test_ctrl_c_saves_the_last_finished_step_and_a_rerun_ends_with_the_uninterrupted_weights(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = toy_pairs(20)
    model = cfg(tiny_model_dir, train="lora", train_layers=1, lora_dropout=0.1)  # dropout: the random state matters
    train = TrainConfig(max_steps=7, batch_size=4, learning_rate=1e-3, save_every=2, eval_fraction=0.2, seed=3)
    full = train_reward_model(pairs, tmp_path / "a", model, train, progress=False)

    # Ctrl-C in the forward pass of step 6: steps 1-5 are kept, step 6 is done again on resume
    real = RewardModel.pair_rewards
    calls = {"n": 0}

    def forward_then_ctrl_c(self, enc, **kw):
        out = real(self, enc, **kw)
        if self.net.training:
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt
        return out

    monkeypatch.setattr(RewardModel, "pair_rewards", forward_then_ctrl_c)
    cut = train_reward_model(pairs, tmp_path / "b", model, train, progress=False)
    monkeypatch.setattr(RewardModel, "pair_rewards", real)
    assert cut.interrupted and not cut.finished and cut.steps == 5
    assert CheckpointManager(tmp_path / "b").latest().name == "step-0000005"
    assert not (tmp_path / "b" / "reward_config.json").exists()
    resumed = train_reward_model(pairs, tmp_path / "b", model, train, progress=False)
    assert resumed.finished and resumed.steps == 7 and not resumed.interrupted
    a, b = _state(full.model), _state(resumed.model)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history == resumed.history


def test_ctrl_c_during_the_update_undoes_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    pairs = toy_pairs(12)
    model = cfg(tiny_model_dir, train="head")
    train = TrainConfig(max_steps=6, batch_size=4, save_every=4)
    full = train_reward_model(pairs, tmp_path / "a", model, train, progress=False)
    calls = {"n": 0}

    def garble_then_ctrl_c(optimizer, args, kwargs) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].add_(1.0)
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(garble_then_ctrl_c)
    try:
        cut = train_reward_model(pairs, tmp_path / "b", model, train, progress=False)
    finally:
        handle.remove()
    assert cut.interrupted and cut.steps == 2
    assert CheckpointManager(tmp_path / "b").latest().name == "step-0000002"
    resumed = train_reward_model(pairs, tmp_path / "b", model, train, progress=False)
    a, b = _state(full.model), _state(resumed.model)
    for k in a:
        assert torch.equal(a[k], b[k]), k
