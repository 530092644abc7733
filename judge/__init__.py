"""The judge: a reward model that scores answers, trained from preference pairs.

Every stage family (rewriters, steering) and the evaluation code use the judge from here. ``import
judge`` is cheap: every name below is imported on first use (torch and transformers load only when a
model is).

- ``RewardModel``: a scalar head on a transformers backbone (optionally LoRA-adapted); ``score`` and
  ``score_batch`` rate answers, ``pair_margins`` compares pairs, ``RewardModel.load(DIR)`` reads a
  trained one.
- ``train_reward_model``, ``RewardConfig``, ``TrainConfig``, ``TrainResult``: Bradley–Terry training from
  preference pairs, with a held-out split, checkpoints and resume (``alignware train reward``).
- ``accuracy_from_margins``: pairwise accuracy from reward margins (ties count half).

Modules: ``judge.config`` (settings, file names), ``judge.encoding`` (rendering, pair packing),
``judge.model`` (network and ``RewardModel``), ``judge.train`` (the trainer), ``judge.cli`` (the command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "RewardConfig": ".config",
    "TrainConfig": ".config",
    "RewardModel": ".model",
    "accuracy_from_margins": ".model",
    "TrainResult": ".train",
    "train_reward_model": ".train",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .config import RewardConfig, TrainConfig
    from .model import RewardModel, accuracy_from_margins
    from .train import TrainResult, train_reward_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'judge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
