"""The training skeleton (``middleware.training``): data order, bucketing, the learning-rate schedule,
resume identity, the loop's Ctrl-C rollback, the shared flags and exit codes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from middleware.checkpoints import CheckpointManager, load_checkpoint
from middleware.errors import CheckpointError, InputError
from middleware.training import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    LRSchedule,
    flag_values,
    mixed_precision,
    TrainingLoop,
    add_training_flags,
    bucket_batches,
    epoch_order,
    latest_checkpoint,
    restore_optimizer,
    run_differences,
    run_train_command,
    split_holdout,
)


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1)
    assert sorted(epoch_order(10, 3, 1)) == list(range(10))
    assert epoch_order(10, 0, 1) != epoch_order(10, 1, 1)


def test_bucket_batches_group_similar_lengths_and_cover_every_row() -> None:
    lengths = [5, 100, 7, 90, 6, 95, 8, 99]
    order = epoch_order(len(lengths), 0, 0)
    out = bucket_batches(order, lengths, 2, window=4, shuffle_seed=1)
    assert sorted(i for b in out for i in b) == list(range(8))
    for b in out:  # one window holds everything: each batch pairs neighbours in length
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 10
    assert out == bucket_batches(order, lengths, 2, window=4, shuffle_seed=1)  # deterministic
    longest = bucket_batches(order, lengths, 2, window=4, shuffle_seed=1, longest_first=True)
    assert sorted(map(sorted, longest)) == sorted(map(sorted, out))


def test_split_holdout_is_deterministic_and_keeps_one_of_each() -> None:
    tr, ev = split_holdout(10, 0.2, 0)
    assert (tr, ev) == split_holdout(10, 0.2, 0) and len(ev) == 2 and sorted(tr + ev) == list(range(10))
    assert split_holdout(2, 0.01, 0)[1] and split_holdout(5, 0.0, 0) == (list(range(5)), [])


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    lin = LRSchedule(total=100, warmup=3, decay="linear")
    assert [lin.lr(s, 1.0) for s in range(3)] == [1 / 3, 2 / 3, 1.0]
    assert lin.lr(3, 1.0) == pytest.approx(1.0) and lin.lr(99, 1.0) == pytest.approx(1 / 97) and lin.lr(100, 1.0) == 0.0
    cos = LRSchedule(total=10, warmup=0, decay="cosine")
    assert cos.lr(0, 2.0) == 2.0 and cos.lr(5, 2.0) == pytest.approx(1.0) and cos.lr(10, 2.0) == pytest.approx(0.0)
    assert LRSchedule(total=10, warmup=2, decay="cosine").factor(0) == 0.5


def test_run_differences_names_the_keys_that_changed() -> None:
    run = {"model": {"a": 1}, "data": "abc", "n": 3}
    assert run_differences(run, dict(run)) == []
    assert run_differences({"model": {"a": 2}, "data": "abc"}, run) == ["model", "n"]


# -- the loop on a toy regression ---------------------------------------------------------------
def _toy(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    params = dict(net.named_parameters())
    opt = torch.optim.AdamW(list(params.values()), lr=0.01)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(dim=1, keepdim=True)
    return net, params, opt, x, y


def _run(tmp: Path, *, steps: int = 8, save_every: int = 3, hook=None, start_ckpt: bool = True):
    net, params, opt, x, y = _toy()
    manager = CheckpointManager(tmp, keep=5)
    history: list[dict] = []
    start = 0
    ck = latest_checkpoint(manager, resume=start_ckpt)
    if ck is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(ck.model[n])
        restore_optimizer(ck, opt)
        history, start = list(ck.state["history"]), ck.step

    def loss_fn(step: int):
        idx = torch.arange(step % 4 * 8, step % 4 * 8 + 8)
        loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
        return loss, lambda: {"step": step + 1, "loss": float(loss.detach())}

    def save(step: int, rng) -> None:
        manager.save(step, model_tensors=params, optimizer=opt, state={"history": history}, rng=rng)

    def unrecord(row: dict) -> None:
        if history and history[-1] is row:
            history.pop()

    loop = TrainingLoop(params, opt, LRSchedule(steps, 1), [0.01], save_every=save_every, progress=False)
    done = loop.run(loss_fn, start=start, stop=steps, save=save, record=history.append, unrecord=unrecord,
                    on_step=hook or (lambda s, r: None))
    return done, params, history, manager


def test_loop_resumes_to_the_uninterrupted_weights_after_ctrl_c_in_an_update(tmp_path: Path) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    full, full_params, full_hist, _ = _run(tmp_path / "full")
    assert full.step == 8 and not full.interrupted and full.train_seconds > 0
    calls = {"n": 0}

    def garble_then_ctrl_c(optimizer, args, kwargs) -> None:
        calls["n"] += 1
        if calls["n"] == 5:  # step 5's update ran half: the loop must undo it
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].add_(1.0)
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(garble_then_ctrl_c)
    try:
        cut, _, hist, manager = _run(tmp_path / "cut")
    finally:
        handle.remove()
    assert cut.interrupted and cut.stopped and cut.step == 4
    assert [r["step"] for r in hist] == [1, 2, 3, 4]
    assert load_checkpoint(manager.latest()).step == 4
    resumed, params, hist, _ = _run(tmp_path / "cut")
    assert resumed.step == 8 and hist == full_hist
    for n in params:
        assert torch.equal(params[n], full_params[n]), n


def test_loop_stops_when_a_hook_asks_and_saves_that_step(tmp_path: Path) -> None:
    done, _, hist, manager = _run(tmp_path, hook=lambda step, row: step == 2)
    assert done.stopped and not done.interrupted and done.step == 2
    assert load_checkpoint(manager.latest()).step == 2


def test_loop_lets_other_errors_through_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    def boom(step: int, row: dict) -> None:
        if step == 5:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _run(tmp_path, hook=boom)
    assert CheckpointManager(tmp_path).latest().name == "step-0000003"


# -- command line ------------------------------------------------------------------------------
def test_shared_flags_have_one_spelling() -> None:
    p = argparse.ArgumentParser()
    add_training_flags(p, epochs=1.0, batch_size=8, learning_rate=None, eval_fraction=0.1, eval_every=None,
                       save_every=50, keep_checkpoints=2, seed=0, device=True)
    a = p.parse_args(["--lr", "0.5", "--keep-checkpoints", "3", "--fresh", "--max-steps", "9", "--device", "cpu"])
    assert a.learning_rate == 0.5 and a.keep_checkpoints == 3 and a.resume is False and a.max_steps == 9 and a.device == "cpu"
    b = p.parse_args(["--learning-rate", "0.25"])
    assert b.learning_rate == 0.25 and b.resume is True and b.quiet is False and b.threads is None


def test_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_train_command(lambda: EXIT_OK) == 0

    def raising(e: BaseException):
        def body() -> int:
            raise e
        return body

    assert run_train_command(raising(InputError("bad flag"))) == EXIT_USAGE == 2
    assert "error: bad flag" in capsys.readouterr().err
    assert run_train_command(raising(CheckpointError("rotten"))) == EXIT_FAILED == 1
    assert run_train_command(raising(KeyboardInterrupt())) == EXIT_INTERRUPTED == 130


def test_batch_plan_runs_the_phases_in_order_and_replays_any_step() -> None:
    from middleware.training import BatchPlan

    lengths = list(range(1, 21))
    plan = BatchPlan.from_epochs([("warmup", list(range(10, 20)), 1.5), ("main", list(range(10)), 1.0)], lengths, 4, seed=3,
                                 window=16, longest_first=True)
    assert plan.total == 5 + 3  # ceil(1.5 * 3) + ceil(10 / 4)
    seen = [plan.batch(s) for s in range(plan.total)]
    assert [ph.name for ph, _, _ in seen] == ["warmup"] * 5 + ["main"] * 3
    assert sorted(i for _, _, idx in seen[5:] for i in idx) == list(range(10))
    again = BatchPlan.from_epochs([("warmup", list(range(10, 20)), 1.5), ("main", list(range(10)), 1.0)], lengths, 4, seed=3,
                                  window=16, longest_first=True)
    assert [again.batch(s)[2] for s in reversed(range(plan.total))] == [idx for _, _, idx in reversed(seen)]
    capped = BatchPlan.from_epochs([("main", list(range(10)), 5.0)], lengths, 4, seed=3, max_steps=4)
    assert capped.total == 4
    plain = BatchPlan.from_epochs([("main", list(range(10)), 1.0)], lengths, 4, seed=3, bucket=False)
    from middleware.training import epoch_order

    assert [plain.batch(s)[2] for s in range(3)] == [epoch_order(10, 0, 3)[i : i + 4] for i in (0, 4, 8)]


def test_flag_values_take_the_flags_named_like_config_fields() -> None:
    @dataclass
    class Settings:
        epochs: float = 1.0
        seed: int = 0
        unflagged: str = "default"

    args = argparse.Namespace(epochs=3.0, seed=7, data="pairs.jsonl")
    assert flag_values(Settings, args) == {"epochs": 3.0, "seed": 7}
    assert Settings(**flag_values(Settings, args, skip=("seed",))) == Settings(epochs=3.0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_in_float32_weights_close_to_full_precision(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """``accelerate launch --mixed_precision`` sets ``ACCELERATE_MIXED_PRECISION``: the forward passes run under
    autocast (fp16 with a gradient scaler), the adapter stays float32 and learns what a float32 run learns."""
    import torch
    from safetensors.torch import load_file

    from middleware.sft import train_sft
    from middleware.sft_data import SFTConfig, SFTExample

    examples = [SFTExample(f"question number {i} about dogs", "Please improve this prompt.") for i in range(12)]
    cfg = SFTConfig(base_model=str(tiny_model_dir), kind="rewriter", lora_r=4, lora_alpha=8, learning_rate=3e-2, epochs=3,
                    batch_size=4, eval_fraction=0.25, save_every=100, seed=0)
    full = train_sft(examples, cfg, tmp_path / "fp32", progress=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", precision)
    seen: list[torch.dtype] = []
    forward = torch.nn.Linear.forward

    def recording(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        out = forward(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    mixed = train_sft(examples, cfg, tmp_path / precision, progress=False)
    want = torch.bfloat16 if precision == "bf16" else torch.float16
    assert want in seen  # the training forward passes ran in the lower precision
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / precision / "adapter_model.safetensors")).values())
    assert mixed.eval_loss_final < mixed.eval_loss_untrained - 0.2  # it learned
    assert abs(mixed.eval_loss_final - full.eval_loss_final) < 0.15 * full.eval_loss_untrained
    with pytest.raises(InputError, match="mixed precision must be one of no, bf16, fp16"):
        mixed_precision("int8")
