"""``SteeringStage``: one or several steering vectors applied to a local model while it answers
(``type: steering_vector`` in a pipeline config).

    stage = SteeringStage("runs/vector", coefficient=0.1)        # or SteeringStage(vector, ...)
    pipe = Pipeline(None, stages=[stage])                          # the embedded model
    print(pipe.chat("How do I pick a lock?").text)

In YAML::

    stages:
      - type: steering_vector
        path: runs/vector
        coefficient: 0.1          # default: the vector's own (set by ``steering.search``)
        layers: [8, 9, 10, 11]    # default: the vector's own
        normalize: false
      # several vectors: vectors: [{path: runs/harmless, coefficient: 0.1}, {path: runs/concise, coefficient: -0.05}]

Several vectors are summed layer by layer (each with its coefficient) into one hook per layer. The
stage checks the vectors' hidden size against the model when it attaches; a vector for another model
fails the stage (the answer is generated unsteered and the trace says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ContextManager, Mapping, Sequence, Union

import torch

from middleware.errors import InputError
from middleware.stages import ModelStage

from .hooks import combine_directions, steer
from .vector import SteeringVector

__all__ = ["SteeringStage"]

VectorLike = Union[SteeringVector, str, Path]


class SteeringStage(ModelStage):
    """Adds steering vectors to a local model's residual stream while it generates.

    Args:
        vectors: a ``SteeringVector`` or the folder of a saved one, or a list of them.
        coefficient: one number for every vector, or one per vector (default: each vector's own).
        layers: the blocks to steer, for every vector (default: each vector's own default layers).
        normalize: keep each position's hidden-state norm (see ``steering.hooks.steer``).
        **stage: ``name``, ``on_error``, ``timeout``, ``skip_if`` (see ``middleware.stages.Stage``).
    """

    def __init__(
        self,
        vectors: "VectorLike | Sequence[VectorLike]",
        coefficient: "float | Sequence[float | None] | None" = None,
        *,
        layers: Sequence[int] | None = None,
        normalize: bool = False,
        **stage: Any,
    ) -> None:
        super().__init__(**stage)
        items = [vectors] if isinstance(vectors, (SteeringVector, str, Path)) else list(vectors)
        if not items:
            raise InputError("SteeringStage needs at least one steering vector")
        self.vectors = [v if isinstance(v, SteeringVector) else SteeringVector.load(v) for v in items]
        if coefficient is None or isinstance(coefficient, (int, float)):
            coefficients: list[float | None] = [coefficient] * len(self.vectors)
        else:
            coefficients = list(coefficient)
            if len(coefficients) != len(self.vectors):
                raise InputError(f"{len(coefficients)} coefficients for {len(self.vectors)} steering vectors: give one, or one per vector")
        sizes = sorted({v.hidden_size for v in self.vectors})
        if len(sizes) > 1:
            raise InputError(f"the steering vectors have different hidden sizes {sizes}: they cannot steer one model")
        self.coefficients = [v.coefficient if c is None else float(c) for v, c in zip(self.vectors, coefficients)]
        self.layers = None if layers is None else [int(i) for i in layers]
        self.normalize = bool(normalize)
        self.directions: dict[int, torch.Tensor] = combine_directions(
            [(v.scaled_directions(1.0, self.layers), c) for v, c in zip(self.vectors, self.coefficients)]
        )

    def __repr__(self) -> str:
        return f"SteeringStage(name={self.name!r}, coefficients={self.coefficients}, layers={sorted(self.directions)})"

    @classmethod
    def from_config(
        cls,
        path: "str | Path | None" = None,
        coefficient: float | None = None,
        layers: Sequence[int] | None = None,
        normalize: bool = False,
        vectors: "Sequence[str | Mapping[str, Any]] | None" = None,
        **stage: Any,
    ) -> "SteeringStage":
        """From config keys: ``path`` (one vector) or ``vectors`` (a list of paths or ``{path, coefficient}``)."""
        if (path is None) == (vectors is None):
            raise InputError("a steering_vector stage needs either path: DIR or vectors: [...] (not both)")
        if path is not None:
            return cls(path, coefficient, layers=layers, normalize=normalize, **stage)
        paths: list[VectorLike] = []
        coefs: list[float | None] = []
        for i, v in enumerate(vectors or []):
            if isinstance(v, (str, Path)):
                paths.append(v)
                coefs.append(coefficient)
            elif isinstance(v, Mapping) and "path" in v and set(v) <= {"path", "coefficient"}:
                paths.append(v["path"])
                coefs.append(v.get("coefficient", coefficient))
            else:
                raise InputError(f"vectors[{i}]: expected a path or {{path, coefficient}}, got {v!r}")
        return cls(paths, coefs, layers=layers, normalize=normalize, **stage)

    def deterministic(self) -> bool:
        return True

    def describe(self) -> str:
        layers = sorted(self.directions)
        span = f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else ",".join(map(str, layers))
        coefficients = ", ".join(f"{c:g}" for c in self.coefficients)
        return f"steering blocks {span} (coefficient {coefficients}{', normalized' if self.normalize else ''})"

    def attach(self, model: Any) -> ContextManager[None]:
        for v in self.vectors:
            v.check_model(model)
        return steer(model, self.directions, 1.0, normalize=self.normalize)
