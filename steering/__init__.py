"""Stages and models that work on a local model's internals, and the reward model that judges answers.

``import steering`` is cheap: every name below is imported on first use (torch and transformers load
only when a model is).

- ``RewardModel``: a scalar head on a transformers backbone (optionally LoRA-adapted); ``score`` and
  ``score_batch`` rate answers, ``RewardModel.load(DIR)`` reads a trained one.
- ``train_reward_model``, ``RewardConfig``, ``TrainConfig``, ``TrainResult``: Bradley–Terry training from
  preference pairs, with a held-out split, checkpoints and resume (``alignware train reward``).
- ``accuracy_from_margins``: pairwise accuracy from reward margins (ties count half).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "RewardModel": ".reward",
    "RewardConfig": ".reward",
    "TrainConfig": ".reward",
    "TrainResult": ".reward",
    "train_reward_model": ".reward",
    "accuracy_from_margins": ".reward",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .reward import RewardConfig, RewardModel, TrainConfig, TrainResult, accuracy_from_margins, train_reward_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'steering' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
