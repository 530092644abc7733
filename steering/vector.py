"""``SteeringVector``: per-layer directions read from preference pairs (or contrastive persona templates),
added to a local model's residual stream while it generates; saved as safetensors with a JSON manifest.

Training (``SteeringVector.train``) reads the output hidden state of each decoder block, averaged over
the answer tokens, for prompt+chosen and for prompt+rejected (``steering.hidden.pair_states``), and takes
per layer either the mean of the differences (``mean_diff``) or their first principal direction
(``pca_diff``), its sign chosen so that chosen answers project above rejected ones in most pairs.
``from_templates`` builds the pairs as repeng's users do: one instruction ("Act as if you are extremely
{persona}.") with two personas, followed by truncated answer openings, read at the last token.

Conventions:
- ``directions[layer]`` is added to the OUTPUT of 0-based decoder block ``layer`` (the hidden state the
  next block reads; ``model.model.layers[layer]`` in a Llama). llama.cpp's ``direction.N`` is the same
  block (``steering.gguf``).
- Directions are not unit vectors: each is scaled so that coefficient 1 moves the state by the mean
  chosen-minus-rejected separation along it (for ``mean_diff`` the mean difference itself; for
  ``pca_diff`` the unit principal direction times the mean projection of the differences). A coefficient
  then means "so many times the gap the pairs show", comparable across layers and models. What is added
  at one block stays in the residual stream of the blocks after it, so over L layers the shifts add up:
  a trained vector's default coefficient is 1/L for its L default layers (one gap in all). On
  SmolLM2-135M (64 HH pairs, mean_diff, blocks 8-20) about 0.1 per layer changes the tone, 0.3 already
  turns benign answers into refusals and 1 breaks the text. The layer range and coefficient that work
  best are found by ``steering.search``.

Where this differs from repeng (``ControlVector.train``) and why:
- repeng reads one token (the last) of short contrastive strings; pairs here are whole answers, so the
  state is averaged over the answer's tokens (the last token of a long answer says little about it).
  ``from_templates`` keeps repeng's last-token reading for its short openings.
- repeng's ``pca_diff`` runs sklearn's PCA, which centres the differences first: when the pairs differ
  consistently, centring removes exactly that common difference and the component follows the noise.
  Here the principal direction is that of the uncentred differences (the direction that explains most
  of their squared length), which for consistent pairs is the mean difference's direction.
- repeng's directions are unit vectors and its coefficients raw hidden-state units (their useful scale
  changes with the model and the layer); here they are scaled by the measured gap (above).
- ``metadata["agreement"][layer]``: the fraction of training pairs whose chosen answer projects above the
  rejected one, a per-layer check of how well the direction separates them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Sequence

import torch

from judge.encoding import PromptLike
from middleware.adapters import base_label
from middleware.checkpoints import read_format_manifest, sha256, write_json_atomic
from middleware.errors import CheckpointError, InputError
from middleware.models import decoder_layers
from middleware.types import PreferencePair

from .directions import (
    DEFAULT_PROMPTS,
    DEFAULT_SUFFIXES,
    DEFAULT_TEMPLATE,
    METHODS,
    Method,
    default_layers,
    directions_from_states,
    openings,
    train_layers,
)
from .hidden import pair_states, response_states
from .hooks import hidden_size, steer

__all__ = ["MANIFEST", "TENSORS", "SteeringVector"]

MANIFEST = "manifest.json"
TENSORS = "vector.safetensors"
FORMAT = "alignware-steering-vector"

@dataclass
class SteeringVector:
    """Directions added to the output of decoder blocks, with the defaults they are applied with.

    Attributes:
        directions: ``{block index: float32 tensor [hidden]}`` (see the module docstring for the index and scale).
        model_type: the model's ``config.model_type`` (llama.cpp's ``model_hint``).
        base_model: the model it was trained on (``"embedded"`` or a path).
        method: ``"pca_diff"``, ``"mean_diff"`` or how it was made (``"sum"`` after arithmetic).
        coefficient: the default coefficient (set by ``steering.search``).
        layers: the default layers it is applied at (``None``: every layer it has).
        metadata: anything else worth keeping (data size, per-layer agreement, search result).
    """

    directions: dict[int, torch.Tensor]
    model_type: str = ""
    base_model: str = ""
    method: str = "pca_diff"
    coefficient: float = 1.0
    layers: list[int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise InputError("a steering vector needs at least one layer's direction")
        sizes = {int(d.shape[-1]) for d in self.directions.values()}
        if len(sizes) != 1 or any(d.dim() != 1 for d in self.directions.values()):
            raise InputError(f"every direction must be one vector of the same width, got widths {sorted(sizes)}")
        self.directions = {int(k): v.detach().float().cpu().contiguous() for k, v in sorted(self.directions.items())}
        if self.layers is not None:
            missing = sorted(set(self.layers) - set(self.directions))
            if missing:
                raise InputError(f"default layers {missing} have no direction (the vector has {sorted(self.directions)})")
            self.layers = sorted(set(int(i) for i in self.layers))

    def __repr__(self) -> str:
        return (f"SteeringVector(method={self.method!r}, layers={sorted(self.directions)}, hidden_size={self.hidden_size}, "
                f"coefficient={self.coefficient:g}, base_model={self.base_model!r})")

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def default_layers(self) -> list[int]:
        return list(self.layers) if self.layers is not None else sorted(self.directions)

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        model: Any,
        tokenizer: Any,
        pairs: Sequence[PreferencePair],
        *,
        layers: Sequence[int] | None = None,
        method: Method = "pca_diff",
        max_length: int = 256,
        batch_size: int = 8,
        progress: bool = False,
        base_model: "str | Path | None" = None,
    ) -> "SteeringVector":
        """Directions from the answer-token states of chosen against rejected answers.

        ``layers``: the blocks to read (default: every block but the first, which llama.cpp cannot
        steer); the vector's default layers are the middle half of them, its default coefficient one over
        their number (see the module docstring). ``base_model`` names the model
        in the manifest (default: the model's ``name_or_path``).
        """
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if len(pairs) < 2:
            raise InputError(f"a steering vector needs at least 2 preference pairs, got {len(pairs)}")
        read = train_layers(model, layers)
        chosen, rejected = pair_states(model, tokenizer, pairs, read, max_length=max_length, batch_size=batch_size, progress=progress)
        directions, agreement = directions_from_states(chosen, rejected, method)
        return cls._made(model, directions, method, base_model, read, data_size=len(pairs), agreement=agreement, source="pairs")

    @classmethod
    def from_templates(
        cls,
        model: Any,
        tokenizer: Any,
        positive: str,
        negative: str,
        *,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        suffixes: Sequence[str] = DEFAULT_SUFFIXES,
        template: str = DEFAULT_TEMPLATE,
        layers: Sequence[int] | None = None,
        method: Method = "pca_diff",
        max_length: int = 256,
        batch_size: int = 8,
        progress: bool = False,
        base_model: "str | Path | None" = None,
    ) -> "SteeringVector":
        """Directions from contrastive persona instructions, as repeng's users make them.

        For every prompt and every word-by-word opening of every suffix, the user turn is
        ``template.format(persona=positive)`` (then ``negative``) followed by the prompt, the answer the
        unfinished opening; the state is read at its last token. The instruction goes into the user turn
        rather than a system turn, which some chat templates reject.
        """
        if "{persona}" not in template:
            raise InputError(f"template must contain {{persona}}, got {template!r}")
        if not positive.strip() or not negative.strip():
            raise InputError("positive and negative personas must not be empty")
        starts = openings(suffixes)
        if not starts or not prompts:
            raise InputError("from_templates needs at least one prompt and one non-empty suffix")

        def items(persona: str) -> list[tuple[PromptLike, str]]:
            instruction = template.format(persona=persona)
            return [(f"{instruction} {p}".strip(), o) for p in prompts for o in starts]

        read = train_layers(model, layers)
        kw: dict[str, Any] = dict(reduce="last", closed=False, max_length=max_length, batch_size=batch_size, progress=progress)
        pos = response_states(model, tokenizer, items(positive), read, **kw)
        neg = response_states(model, tokenizer, items(negative), read, **kw)
        directions, agreement = directions_from_states(pos, neg, method)
        n = len(prompts) * len(starts)
        return cls._made(
            model, directions, method, base_model, read, data_size=n, agreement=agreement,
            source="templates", positive=positive, negative=negative, template=template,
        )

    @classmethod
    def _made(cls, model: Any, directions: dict[int, torch.Tensor], method: str, base_model: Any, read: list[int], **meta: Any) -> "SteeringVector":
        cfg = getattr(model, "config", None)
        name = base_model if base_model is not None else (getattr(cfg, "name_or_path", "") or getattr(model, "name_or_path", "") or None)
        defaults = [i for i in default_layers(len(decoder_layers(model))) if i in directions] or list(read)
        meta["agreement"] = {str(k): round(v, 4) for k, v in meta.get("agreement", {}).items()}
        return cls(directions, model_type=str(getattr(cfg, "model_type", "") or ""), base_model=base_label(name),
                   method=method, coefficient=round(1.0 / len(defaults), 4), layers=defaults, metadata=meta)

    # -- arithmetic (repeng's, with the layers' union) --------------------------------------
    def _combine(self, other: "SteeringVector", sign: float) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hidden_size != self.hidden_size:
            raise InputError(f"cannot combine steering vectors of hidden sizes {self.hidden_size} and {other.hidden_size}")
        out = {k: v.clone() for k, v in self.directions.items()}
        for k, v in other.directions.items():
            out[k] = out[k] + sign * v if k in out else sign * v
        layers = None if self.layers is None or other.layers is None else sorted(set(self.layers) | set(other.layers))
        return SteeringVector(out, model_type=self.model_type or other.model_type, base_model=self.base_model or other.base_model,
                              method="sum", coefficient=self.coefficient, layers=layers, metadata={"parts": [self.method, other.method]})

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, 1.0)

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> "SteeringVector":
        if isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
            return NotImplemented
        return SteeringVector({k: v * float(scalar) for k, v in self.directions.items()}, model_type=self.model_type,
                              base_model=self.base_model, method=self.method, coefficient=self.coefficient,
                              layers=self.layers, metadata=dict(self.metadata))

    __rmul__ = __mul__

    def __neg__(self) -> "SteeringVector":
        return self * -1.0

    def __truediv__(self, scalar: float) -> "SteeringVector":
        return self * (1.0 / scalar)

    # -- use --------------------------------------------------------------------------------
    def scaled_directions(self, coefficient: float | None = None, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """``coefficient * direction`` for ``layers`` (defaults: the vector's own); ``InputError`` for a
        layer the vector has no direction for."""
        c = self.coefficient if coefficient is None else float(coefficient)
        chosen = self.default_layers if layers is None else sorted(set(int(i) for i in layers))
        missing = [i for i in chosen if i not in self.directions]
        if missing:
            raise InputError(f"the steering vector has no direction for layers {missing} (it has {sorted(self.directions)})")
        return {i: self.directions[i] * c for i in chosen}

    def check_model(self, model: Any) -> None:
        """``InputError`` when ``model``'s hidden size differs from the vector's (naming both)."""
        width = hidden_size(model)
        if width != self.hidden_size:
            raise InputError(
                f"the steering vector has hidden size {self.hidden_size} (trained on {self.base_model or 'an unnamed model'}); "
                f"the model has hidden size {width}"
            )

    def apply(self, model: Any, coefficient: float | None = None, layers: Sequence[int] | None = None, normalize: bool = False) -> ContextManager[None]:
        """A context manager that steers ``model`` while it is open (see ``steering.hooks.steer``)."""
        self.check_model(model)
        return steer(model, self.scaled_directions(coefficient, layers), 1.0, normalize=normalize)

    # -- files ------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "base_model": self.base_model,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "layers": sorted(self.directions),
            "method": self.method,
            "coefficient": self.coefficient,
            "default_layers": self.layers,
            "data_size": self.metadata.get("data_size"),
            "metadata": self.metadata,
        }

    def save(self, path: "str | Path") -> Path:
        """Write ``vector.safetensors`` and ``manifest.json`` (with the tensors' checksum) into folder ``path``, each atomically."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (TENSORS + ".tmp")
        save_file({f"direction.{k}": v for k, v in self.directions.items()}, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, out / TENSORS)
        write_json_atomic(out / MANIFEST, {**self.manifest(), "sha256": sha256(out / TENSORS)})
        return out

    @classmethod
    def load(cls, path: "str | Path") -> "SteeringVector":
        """Read a folder written by ``save``; ``CheckpointError`` names a missing, corrupt or foreign file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(path).expanduser()
        man, tens = folder / MANIFEST, folder / TENSORS
        if not tens.is_file():
            raise CheckpointError(f"{tens}: no such file (a steering vector folder holds {MANIFEST} and {TENSORS})")
        meta = read_format_manifest(man, FORMAT, "steering vector")
        if meta.get("sha256") and sha256(tens) != meta["sha256"]:
            raise CheckpointError(f"{tens}: checksum mismatch (the file changed or was cut short since it was saved)")
        try:
            tensors = load_file(str(tens))
            directions = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("direction.")}
        except (SafetensorError, ValueError, OSError) as e:
            raise CheckpointError(f"{tens}: cannot be read ({e})") from None
        try:
            return cls(directions, model_type=str(meta.get("model_type") or ""), base_model=str(meta.get("base_model") or ""),
                       method=str(meta.get("method") or ""), coefficient=float(meta.get("coefficient", 1.0)),
                       layers=meta.get("default_layers"), metadata=dict(meta.get("metadata") or {}))
        except InputError as e:
            raise CheckpointError(f"{folder}: {e}") from None
