"""Stages that work on a local model's internals: steering vectors, value-guided editing and other
in-model interventions (the family after the text-to-text ``rewriters``).

- ``decoder_layers(model)``: the list of decoder blocks of any decoder-only transformers model (bare or
  peft-wrapped), where steering hooks attach; ``InputError`` names the model type when there is none.

The reward model that judges answers lives in the ``judge`` package. This package imports ``middleware``
and ``judge``, never ``rewriters``.
"""

from __future__ import annotations

from middleware.models import decoder_layers

__all__ = ["decoder_layers"]
