"""Stages that work on a local model's internals: steering vectors, value-guided editing and other
in-model interventions (the family after the text-to-text ``rewriters``).

- ``RAHF`` (a ``ModelStage``: the RAHF alignment adapter switched on per call, or its merged checkpoint),
  ``RAHFConfig``, ``train_rahf`` / ``RAHFResult`` (modules ``rahf``, ``rahf_train``, ``rahf_targets``).
- ``decoder_layers(model)``: the list of decoder blocks of any decoder-only transformers model (bare or
  peft-wrapped), where steering hooks attach; ``InputError`` names the model type when there is none.

The reward model that judges answers lives in the ``judge`` package. This package imports ``middleware``
and ``judge``, never ``rewriters``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from middleware.lazy import lazy_exports
from middleware.models import decoder_layers

if TYPE_CHECKING:  # pragma: no cover
    from .rahf import RAHF, RAHFConfig
    from .rahf_train import RAHFResult, train_rahf

# torch loads with these
__getattr__, __dir__ = lazy_exports(
    __name__, globals(),
    {"RAHF": ".rahf", "RAHFConfig": ".rahf", "RAHFResult": ".rahf_train", "train_rahf": ".rahf_train"},
)

__all__ = ["decoder_layers", "RAHF", "RAHFConfig", "RAHFResult", "train_rahf"]
