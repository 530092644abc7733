"""The judge: a reward model that scores answers, trained from preference pairs.

The evaluation (``middleware.evaluate``), reward selection (``rewriters.selection``) and the steering and
DPO code use the judge from here, through the ``Judge`` protocol that ``middleware.evaluate`` defines
(anything with ``score_batch``); a folder becomes a ``RewardModel`` with ``middleware.evaluate.load_judge``.
``import judge`` is cheap: the names that need torch import on first use.

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

from typing import TYPE_CHECKING

from middleware.evaluate.judges import accuracy as accuracy_from_margins
from middleware.lazy import lazy_exports

from .config import RewardConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from .model import RewardModel
    from .train import TrainResult, train_reward_model

# torch loads with these
__getattr__, __dir__ = lazy_exports(
    __name__, globals(), {"RewardModel": ".model", "TrainResult": ".train", "train_reward_model": ".train"}
)

__all__ = ["RewardModel", "RewardConfig", "TrainConfig", "TrainResult", "train_reward_model", "accuracy_from_margins"]
