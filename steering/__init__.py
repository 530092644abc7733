"""Stages that work on a local model's internals: steering vectors, value-guided editing and other
in-model interventions (the family after the text-to-text ``rewriters``).

- ``RAHF`` (a ``ModelStage``: the RAHF alignment adapter switched on per call, or its merged checkpoint),
  ``RAHFConfig``, ``train_rahf`` / ``RAHFResult`` (modules ``rahf``, ``rahf_train``, ``rahf_targets``).
- ``decoder_layers(model)``: the list of decoder blocks of any decoder-only transformers model (bare or
  peft-wrapped), where steering hooks attach; ``InputError`` names the model type when there is none.
- ``SteeringVector``: per-layer directions trained from preference pairs (``train``) or persona templates
  (``from_templates``), saved as safetensors + manifest, applied with ``apply(model, coefficient)``.
- ``SteeringStage``: steering vectors as a pipeline stage (``type: steering_vector``).
- ``export_gguf``: a vector as a llama.cpp / ollama control vector.
- ``search``: the layer range and coefficient that raise the reward most, saved as the vector's default.
- ``ValueGuidedEditor``, ``ReControlConfig``, ``train_recontrol``: RE-Control (``steering.recontrol``; the
  value function in ``steering.value``, its training data in ``steering.rollouts``), ``type: recontrol``.

The reward model that judges answers lives in the ``judge`` package. This package imports ``middleware``
and ``judge``, never ``rewriters``. ``import steering`` is cheap: the names that need torch import on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from middleware.lazy import lazy_exports
from middleware.models import decoder_layers

if TYPE_CHECKING:  # pragma: no cover
    from .gguf import export_gguf
    from .layer_search import search
    from .rahf import RAHF, RAHFConfig
    from .rahf_train import RAHFResult, train_rahf
    from .recontrol import ReControlResult, ValueGuidedEditor, train_recontrol
    from .stage import SteeringStage
    from .value import ReControlConfig
    from .vector import SteeringVector

# torch loads with these
__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "SteeringVector": ".vector", "SteeringStage": ".stage", "export_gguf": ".gguf", "search": ".layer_search",
        "ValueGuidedEditor": ".recontrol", "ReControlResult": ".recontrol", "train_recontrol": ".recontrol",
        "ReControlConfig": ".value",
        "RAHF": ".rahf", "RAHFConfig": ".rahf", "RAHFResult": ".rahf_train", "train_rahf": ".rahf_train",
    },
)

__all__ = [
    "decoder_layers", "SteeringVector", "SteeringStage", "export_gguf", "search",
    "ReControlConfig", "ReControlResult", "ValueGuidedEditor", "train_recontrol",
    "RAHF", "RAHFConfig", "RAHFResult", "train_rahf",
]
