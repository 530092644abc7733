"""Checkpoint folders and the CheckpointManager: atomic replacement, verification, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.checkpoints import CheckpointManager, load_checkpoint


def _fake_ckpt(value: float) -> dict:
    import torch

    return {"w": torch.full((3,), value)}


def _corrupt(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"rotten")


def test_checkpoint_manager_prunes_verified_checkpoints_only(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=4)
    for step in (1, 2, 3, 4):
        manager.save(step, model_tensors=_fake_ckpt(step), state={})
    assert len(manager.all()) == 4
    manager.keep = 1
    _corrupt(manager.path_for(3))
    _corrupt(manager.path_for(4))
    assert manager.latest() == manager.path_for(2)

    # resumed from step 2, the run writes step 3 again: it replaces the corrupt folder and survives
    # the pruning; step 4 is corrupt but the newest, so it is kept; the good ones beyond keep go
    written = manager.save(3, model_tensors=_fake_ckpt(33.0), state={})
    assert written == manager.path_for(3)
    assert manager.all() == [manager.path_for(3), manager.path_for(4)]
    assert manager.latest() == written and float(load_checkpoint(written).model["w"][0]) == 33.0

    # once a newer good checkpoint exists, the corrupt one goes
    manager.save(5, model_tensors=_fake_ckpt(5.0), state={})
    assert manager.all() == [manager.path_for(5)]

    # keep counts good checkpoints only: a corrupt one in between takes no place
    manager.keep = 2
    manager.save(6, model_tensors=_fake_ckpt(6.0), state={})
    (manager.root / "step-0000007").mkdir()  # half-written: no state.json
    manager.save(8, model_tensors=_fake_ckpt(8.0), state={})
    assert manager.all() == [manager.path_for(6), manager.path_for(8)]


@pytest.mark.parametrize("failing_call", [2, 3])
def test_saving_over_a_step_folder_always_leaves_a_good_checkpoint_of_that_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    import os

    import middleware.checkpoints as checkpoints

    manager = CheckpointManager(tmp_path, keep=1)
    manager.save(4, model_tensors=_fake_ckpt(4.0), state={})
    _corrupt(manager.path_for(4))

    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):  # a rename of the replacement fails (a crash would stop there)
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise OSError("simulated failure while swapping the folders")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", flaky_replace)
    try:
        manager.save(4, model_tensors=_fake_ckpt(44.0), state={})
    except OSError:
        pass
    monkeypatch.setattr(checkpoints.os, "replace", real_replace)
    latest = manager.latest()
    assert latest is not None, "no good checkpoint of step 4 is left"
    ck = load_checkpoint(latest)
    assert ck.step == 4 and float(ck.model["w"][0]) == 44.0
    # the next save tidies up: one good checkpoint under its plain name
    manager.save(5, model_tensors=_fake_ckpt(5.0), state={})
    assert manager.all() == [manager.path_for(5)]
