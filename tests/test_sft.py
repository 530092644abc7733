"""The SFT trainer (``middleware.sft``) on a tiny random Llama: learning, warm-up, resume, Ctrl-C, corrupt
checkpoints, the manifest of a plain config. The rewriters' config and flags: ``test_sft_config.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.errors import CheckpointError, InputError
from middleware.checkpoints import CheckpointManager, load_checkpoint
from middleware.sft import train_sft
from middleware.sft_data import SFTConfig, SFTExample
from rewriters.templates import get_template

BPO = get_template("bpo")


def _examples(n: int = 20) -> list[SFTExample]:
    return [SFTExample(BPO.render(prompt=f"question number {i} about dogs"), "Please improve this prompt.") for i in range(n)]


def _config(tiny_model_dir: Path, **kw) -> SFTConfig:
    base = dict(
        base_model=str(tiny_model_dir), kind="rewriter", template="bpo", lora_r=8, lora_alpha=16, learning_rate=3e-2, epochs=4, batch_size=4,
        eval_fraction=0.2, eval_every=4, save_every=3, seed=0,
    )
    base.update(kw)
    return SFTConfig(**base)


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_train_lowers_held_out_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = train_sft(_examples(), _config(tiny_model_dir, epochs=8, save_every=100, eval_every=100), out, progress=False)
    assert res.eval_loss_untrained is not None and res.eval_loss_final is not None
    assert res.eval_loss_final < res.eval_loss_untrained - 0.2
    assert res.steps == 8 * 4  # 16 training pairs, batch 4
    assert res.tokens_per_second > 0
    assert res.history[0] == {"step": 0, "eval_loss": res.eval_loss_untrained}
    for name in ("adapter_config.json", "adapter_model.safetensors", "alignware.json", "loss.png", "history.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "alignware.json").read_text())
    assert manifest["kind"] == "rewriter" and manifest["template"] == "bpo"
    assert manifest["base_model"] == str(tiny_model_dir.resolve())
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors"}


def test_warmup_phase_runs_first(tiny_model_dir: Path, tmp_path: Path) -> None:
    warm = [SFTExample(BPO.render(prompt=f"w{i}"), f"w{i}") for i in range(8)]
    res = train_sft(_examples(8), _config(tiny_model_dir, epochs=1, warmup_epochs=1.5, eval_fraction=0.25),
                    tmp_path / "w", warmup_examples=warm, progress=False)
    steps = [r for r in res.history if "loss" in r]
    assert [bool(r.get("warmup")) for r in steps] == [True] * 3 + [False] * 2  # ceil(1.5 * 2) + ceil(6 / 4)


def test_resume_equals_uninterrupted(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, lora_dropout=0.1)
    full = train_sft(_examples(), cfg, tmp_path / "full", progress=False)

    class Boom(RuntimeError):
        pass

    def interrupt(row: dict) -> None:
        if row["step"] == 5:
            raise Boom("simulated crash")

    with pytest.raises(Boom):
        train_sft(_examples(), cfg, tmp_path / "cut", progress=False, callback=interrupt)
    assert not (tmp_path / "cut" / "adapter_model.safetensors").exists()
    assert CheckpointManager(tmp_path / "cut").latest().name == "step-0000003"
    resumed = train_sft(_examples(), cfg, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 3 and resumed.steps == full.steps
    a, b = _adapter_tensors(tmp_path / "full"), _adapter_tensors(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert resumed.history == full.history
    assert resumed.eval_loss_final == full.eval_loss_final


def test_ctrl_c_exports_the_adapter_so_far_and_a_rerun_finishes(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir)
    full = train_sft(_examples(), cfg, tmp_path / "full", progress=False)

    def ctrl_c(row: dict) -> None:
        if row["step"] == 5:  # between two steps, as when the user presses Ctrl-C during the next forward pass
            raise KeyboardInterrupt

    cut = train_sft(_examples(), cfg, tmp_path / "cut", progress=False, callback=ctrl_c)
    assert cut.interrupted and cut.stopped_early and cut.steps == 5 and cut.total_steps == full.steps
    manifest = json.loads((tmp_path / "cut" / "alignware.json").read_text())
    assert manifest["training"]["steps"] == 5 and manifest["training"]["finished"] is False
    assert CheckpointManager(tmp_path / "cut").latest().name == "step-0000005"  # not the step-3 one
    exported, saved = _adapter_tensors(tmp_path / "cut"), load_checkpoint(CheckpointManager(tmp_path / "cut").latest()).model
    assert len(exported) == len(saved) > 0
    for v in exported.values():  # the exported adapter is the step-5 checkpoint's weights
        assert any(v.shape == w.shape and (v == w).all() for w in saved.values())

    resumed = train_sft(_examples(), cfg, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 5 and resumed.steps == full.steps and not resumed.interrupted
    a, b = _adapter_tensors(tmp_path / "full"), _adapter_tensors(tmp_path / "cut")
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert json.loads((tmp_path / "cut" / "alignware.json").read_text())["training"]["finished"] is True


def test_corrupt_checkpoint_falls_back_and_failed_run_keeps_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, save_every=2, epochs=2)  # 8 steps: checkpoints 6 and 8 kept
    out = tmp_path / "run"
    train_sft(_examples(), cfg, out, progress=False)
    good = _adapter_tensors(out)
    manager = CheckpointManager(out, keep=cfg.keep_checkpoints)
    newest, previous = manager.all()[-1], manager.all()[-2]
    assert (newest.name, previous.name) == ("step-0000008", "step-0000006")
    blob = bytearray((newest / "model.safetensors").read_bytes())
    blob[-8:] = b"\xff" * 8
    (newest / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(newest)
    assert manager.latest() == previous
    assert load_checkpoint(previous).step == 6

    # a run that fails leaves the finished adapter in place
    def fail(row: dict) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        train_sft(_examples(), cfg, out, progress=False, resume=True, callback=fail)
    after = _adapter_tensors(out)
    assert all((good[k] == after[k]).all() for k in good)

    # resuming from the previous good checkpoint ends with the same weights
    res = train_sft(_examples(), cfg, out, progress=False)
    assert res.resumed_from == 6
    final = _adapter_tensors(out)
    assert all((good[k] == final[k]).all() for k in good)


def test_a_plain_config_writes_its_labels_into_the_manifest(tiny_model_dir: Path, tmp_path: Path) -> None:
    from middleware.sft import init_adapter

    cfg = _config(tiny_model_dir, kind="rahf-scit", template=None)
    cfg.validate()  # free-form labels: any family names its own kinds
    manifest = json.loads((init_adapter(cfg, tmp_path / "a") / "alignware.json").read_text())
    assert manifest["kind"] == "rahf-scit" and manifest["template"] is None
    assert "template_spec" not in manifest and "generation" not in manifest
    assert manifest["lora"]["r"] == 8 and manifest["training"]["steps"] == 0


def test_other_run_checkpoints_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, epochs=1, save_every=2)
    train_sft(_examples(), cfg, tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="other settings"):
        train_sft(_examples(), _config(tiny_model_dir, epochs=1, save_every=2, learning_rate=1e-3), tmp_path / "r", progress=False)
    res = train_sft(_examples(), _config(tiny_model_dir, epochs=1, learning_rate=1e-3), tmp_path / "r", progress=False, resume=False)
    assert res.resumed_from is None


def test_bad_config_is_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="kind"):
        _config(tiny_model_dir, kind="").validate()
    with pytest.raises(InputError, match="batch_size"):
        _config(tiny_model_dir, batch_size=0).validate()
    with pytest.raises(InputError, match="not linear layers"):
        train_sft(_examples(4), _config(tiny_model_dir, target_modules=("qq_proj",)), tmp_path / "x", progress=False)


# -- Ctrl-C inside a step, pruning around corrupt checkpoints ---------------------------------------
def _assert_same_adapter(a_dir: Path, b_dir: Path) -> None:
    import torch

    a, b = _adapter_tensors(a_dir), _adapter_tensors(b_dir)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ctrl_c_during_a_forward_pass_resumes_to_the_uninterrupted_weights(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import middleware.sft as sft

    cfg = _config(tiny_model_dir, lora_dropout=0.1)  # dropout draws random masks in every forward pass
    full = train_sft(_examples(), cfg, tmp_path / "full", progress=False)

    real = sft.TargetLoss.__call__
    calls = {"train": 0}

    def forward_then_ctrl_c(self, batch):
        out = real(self, batch)  # the forward pass of the step has run: dropout has drawn its masks
        if self.model.training:
            calls["train"] += 1
            if calls["train"] == 6:
                raise KeyboardInterrupt  # Ctrl-C in step 6, before its update
        return out

    monkeypatch.setattr(sft.TargetLoss, "__call__", forward_then_ctrl_c)
    cut = train_sft(_examples(), cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(sft.TargetLoss, "__call__", real)
    assert cut.interrupted and cut.steps == 5
    assert CheckpointManager(tmp_path / "cut").latest().name == "step-0000005"

    resumed = train_sft(_examples(), cfg, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 5 and resumed.steps == full.steps
    _assert_same_adapter(tmp_path / "full", tmp_path / "cut")
    assert resumed.eval_loss_final == full.eval_loss_final


def test_ctrl_c_during_the_optimizer_update_saves_the_last_finished_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    cfg = _config(tiny_model_dir, lora_dropout=0.1)
    full = train_sft(_examples(), cfg, tmp_path / "full", progress=False)
    calls = {"n": 0}

    def half_update_then_ctrl_c(optimizer, args, kwargs) -> None:
        calls["n"] += 1
        if calls["n"] == 6:  # step 6's update ran; garble a weight as a half-written update would
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].add_(1.0)
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(half_update_then_ctrl_c)
    try:
        cut = train_sft(_examples(), cfg, tmp_path / "cut", progress=False)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during optimizer.step() escaped train_sft instead of saving the last finished step")
    finally:
        handle.remove()
    assert cut.interrupted and cut.steps == 5
    assert [r["step"] for r in cut.history if "loss" in r] == [1, 2, 3, 4, 5]
    ck = load_checkpoint(CheckpointManager(tmp_path / "cut").latest())
    assert ck.step == 5
    exported = _adapter_tensors(tmp_path / "cut")  # the adapter written on Ctrl-C: step 5's weights too
    for v in exported.values():
        assert any(v.shape == w.shape and torch.equal(v, w) for w in ck.model.values())

    resumed = train_sft(_examples(), cfg, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 5 and resumed.steps == full.steps
    _assert_same_adapter(tmp_path / "full", tmp_path / "cut")  # weights and moments were those of step 5
    assert resumed.history == full.history


def test_a_corrupt_newer_checkpoint_never_pushes_out_the_good_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_sft(_examples(), _config(tiny_model_dir, save_every=2, epochs=2), out, progress=False)  # 8 steps
    good = _adapter_tensors(out)
    manager = CheckpointManager(out)
    assert [p.name for p in manager.all()] == ["step-0000006", "step-0000008"]
    blob = bytearray((manager.all()[-1] / "model.safetensors").read_bytes())
    blob[-8:] = b"\xff" * 8
    (manager.all()[-1] / "model.safetensors").write_bytes(bytes(blob))  # bit rot in step 8

    # resume from step 6, a checkpoint every step, keep one; crash at step 8 before its checkpoint
    cfg = _config(tiny_model_dir, save_every=1, epochs=2, keep_checkpoints=1)
    seen: list[str | None] = []

    def check_then_crash(row: dict) -> None:
        latest = manager.latest()  # after the checkpoint of the previous step was written and pruned
        seen.append(latest.name if latest else None)
        if row["step"] == 8:
            raise RuntimeError("disk error at step 8")

    with pytest.raises(RuntimeError, match="disk error"):
        train_sft(_examples(), cfg, out, progress=False, callback=check_then_crash)
    assert seen == ["step-0000006", "step-0000007"]  # the newest written one, every time
    assert manager.latest().name == "step-0000007" and load_checkpoint(manager.latest()).step == 7

    # the rerun writes step 8 over the corrupt folder and keeps only it
    res = train_sft(_examples(), cfg, out, progress=False)
    assert res.resumed_from == 7
    assert [p.name for p in manager.all()] == ["step-0000008"]
    assert load_checkpoint(manager.latest()).step == 8
    final = _adapter_tensors(out)
    assert all((good[k] == final[k]).all() for k in good)
