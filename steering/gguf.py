"""A steering vector as a llama.cpp control vector (``--control-vector FILE.gguf``; ollama runs llama.cpp).

The file: GGUF with ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model
type) and ``controlvector.layer_count``, and one float32 tensor ``direction.N`` of shape ``[hidden]`` per
layer, already multiplied by the coefficient (llama.cpp's ``--control-vector-scaled FILE S`` multiplies
again by ``S``).

Layer numbers, checked against llama.cpp's source: ``common_control_vector_load_one`` writes tensor
``direction.N`` at offset ``n_embd * (N - 1)`` of a flat buffer, and ``llama_adapter_cvec::apply`` fills
layer ``il``'s tensor from offset ``n_embd * (il - 1)``, for ``il`` from 1; ``build_cvec(cur, il)`` adds it to
block ``il``'s output (after the feed-forward residual). So ``direction.N`` steers the output of 0-based
block ``N``, exactly what ``SteeringVector.directions[N]`` does here, and the numbers are written as they
are. Block 0 cannot be addressed (a ``direction.0`` makes llama.cpp reject the whole file), so a vector
with a layer-0 direction is refused here rather than written into a file llama.cpp would skip.
llama.cpp has no norm preservation: a vector tuned with ``normalize=True`` behaves differently there.
repeng's exporter writes the same layout (its own directions are unit vectors; ours carry the gap scale).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from middleware.errors import InputError

from .vector import SteeringVector

__all__ = ["ARCH", "export_gguf", "read_gguf"]

ARCH = "controlvector"


def export_gguf(vector: SteeringVector, path: "str | Path", coefficient: float | None = None, layers: Sequence[int] | None = None) -> Path:
    """Write ``vector`` (``coefficient * direction`` for ``layers``; defaults: the vector's) to ``path`` atomically."""
    import gguf

    directions = vector.scaled_directions(coefficient, layers)
    if 0 in directions:
        raise InputError(
            "llama.cpp cannot steer block 0's output (direction.0 makes it reject the file): "
            f"export layers from 1 on, e.g. layers={[i for i in sorted(directions) if i > 0] or [1]}"
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    try:
        writer.add_string(f"{ARCH}.model_hint", vector.model_type or "unknown")
        writer.add_uint32(f"{ARCH}.layer_count", len(directions))
        for layer, d in sorted(directions.items()):
            writer.add_tensor(f"direction.{layer}", d.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def read_gguf(path: "str | Path") -> SteeringVector:
    """A control-vector GGUF (ours, repeng's or llama.cpp's) as a ``SteeringVector`` (coefficient 1)."""
    import gguf
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # the gguf package raises assorted errors on a bad file
        raise InputError(f"{p}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    def text(key: str) -> str:
        f = reader.get_field(key)
        return bytes(f.parts[-1]).decode("utf-8", "replace") if f is not None and f.parts else ""

    if text("general.architecture") != ARCH:
        raise InputError(f"{p}: architecture {text('general.architecture')!r}, not a control vector ({ARCH!r})")
    directions = {}
    for t in reader.tensors:
        head, _, num = t.name.partition(".")
        if head == "direction" and num.isdigit():
            directions[int(num)] = torch.tensor(np.asarray(t.data, dtype=np.float32).reshape(-1))
    if not directions:
        raise InputError(f"{p}: no direction.N tensors")
    return SteeringVector(directions, model_type=text(f"{ARCH}.model_hint"), method="gguf", metadata={"source": str(p)})
