"""Stages that work on a local model's internals: steering vectors, value-guided editing and other
in-model interventions (the family after the text-to-text ``rewriters``).

- ``decoder_layers(model)``: the list of decoder blocks of any decoder-only transformers model (bare or
  peft-wrapped), where steering hooks attach; ``InputError`` names the model type when there is none.
- ``ValueGuidedEditor``, ``ReControlConfig``, ``train_recontrol``: RE-Control (``steering.recontrol``, the
  value function in ``steering.value``, its training data in ``steering.rollouts``).

The reward model that judges answers lives in the ``judge`` package. This package imports ``middleware``
and ``judge``, never ``rewriters``. ``import steering`` stays light: the names that need torch import on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from middleware.lazy import lazy_exports
from middleware.models import decoder_layers

if TYPE_CHECKING:  # pragma: no cover
    from .recontrol import ReControlResult, ValueGuidedEditor, train_recontrol
    from .value import ReControlConfig

# torch loads with these
__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "ValueGuidedEditor": ".recontrol",
        "ReControlResult": ".recontrol",
        "train_recontrol": ".recontrol",
        "ReControlConfig": ".value",
    },
)

__all__ = ["decoder_layers", "ReControlConfig", "ReControlResult", "ValueGuidedEditor", "train_recontrol"]
