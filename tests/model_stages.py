"""Model stages the tests attach to tiny models."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from middleware.stages import ModelStage


class AddVector(ModelStage):
    """Adds a fixed vector to the output of one decoder layer."""

    def __init__(self, vector: torch.Tensor, layer_index: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.vector = vector
        self.layer_index = layer_index

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        def hook(module: Any, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (output[0] + self.vector,) + tuple(output[1:])
            return output + self.vector

        handle = model.model.layers[self.layer_index].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
