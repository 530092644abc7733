"""Adding directions to the residual stream: forward hooks on decoder blocks, for the time of a ``with``.

``steer(model, {layer: direction}, coefficient)`` adds ``coefficient * direction`` to the output hidden
state of decoder block ``layer`` (0-based; the state the next block reads) at every position, in the
hidden state's own dtype and device. Prompt, answer and padding positions alike: padded positions are
masked out of attention, so a left-padded batch gives what each row gives alone, and a step over the KV
cache gives what a recompute of the whole sequence gives (the cached keys and values were computed from
steered states too). The hooks are removed on exit, also when the body raises.

``normalize=True`` rescales each position's modified state to the norm it had before (repeng's
``normalize``), so the direction turns the state rather than lengthening it. Several ``steer`` blocks
nest and their directions add up; a stage that applies several vectors sums them first
(``combine_directions``), so a normalized state is rescaled once.

Differences from the reference implementations: repeng wraps each layer module in a ``ControlModule``
(the model's module tree changes while steered) and skips left-padding positions by reading
``position_ids``; here a plain forward hook does the job and leaves the module tree alone, and padding is
left to the attention mask, which already keeps it from reaching any real position.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch

from middleware.errors import InputError
from middleware.models import decoder_layers

from .hidden import block_hidden, layer_indices, with_block_hidden

__all__ = ["combine_directions", "hidden_size", "steer"]


def hidden_size(model: Any) -> int:
    """The width of ``model``'s hidden states (the input embedding's dimension)."""
    try:
        return int(model.get_input_embeddings().weight.shape[-1])
    except (AttributeError, NotImplementedError):
        cfg = getattr(model, "config", None)
        size = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
        if size is None:
            raise InputError(f"cannot tell the hidden size of {type(model).__name__}") from None
        return int(size)


def combine_directions(parts: "list[tuple[Mapping[int, torch.Tensor], float]]") -> dict[int, torch.Tensor]:
    """``sum(coefficient * directions)`` layer by layer (float32), for several vectors applied at once."""
    out: dict[int, torch.Tensor] = {}
    for directions, coefficient in parts:
        for layer, d in directions.items():
            add = d.detach().float().cpu() * float(coefficient)
            out[layer] = out[layer] + add if layer in out else add
    return out


def _check(model: Any, directions: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    width = hidden_size(model)
    layer_indices(model, list(directions))  # InputError for a block the model does not have
    n = len(decoder_layers(model))
    checked: dict[int, torch.Tensor] = {}
    for layer, d in directions.items():
        if not isinstance(d, torch.Tensor) or d.dim() != 1 or d.shape[0] != width:
            shape = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise InputError(f"the direction for layer {layer} has shape {shape}; the model's hidden size is {width}")
        i = layer % n
        checked[i] = checked[i] + d.detach() if i in checked else d.detach()
    return checked


@contextlib.contextmanager
def steer(
    model: Any, directions: Mapping[int, torch.Tensor], coefficient: float = 1.0, *, normalize: bool = False
) -> Iterator[None]:
    """Within the block, block ``layer``'s output gets ``coefficient * directions[layer]`` added at every
    position (optionally rescaled to its former norm). Layer indices may be negative (from the end);
    ``InputError`` names a layer the model does not have or a direction of the wrong width."""
    checked = _check(model, directions)
    blocks = decoder_layers(model)
    first = next(model.parameters())
    # converted once, to where the hidden states will be; a state elsewhere (offloaded blocks, autocast) converts per call
    deltas = {layer: (d.float() * float(coefficient)).to(device=first.device, dtype=first.dtype) for layer, d in checked.items()}

    def hook_for(layer: int) -> Any:
        delta = deltas[layer]

        def hook(module: Any, args: Any, output: Any) -> Any:
            h = block_hidden(output)
            d = delta if (delta.device == h.device and delta.dtype == h.dtype) else delta.to(device=h.device, dtype=h.dtype)
            new = h + d
            if normalize:
                before = h.norm(dim=-1, keepdim=True)
                new = new * (before / new.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(new.dtype).tiny))
            return with_block_hidden(output, new)

        return hook

    handles = []
    try:
        for layer in checked:
            handles.append(blocks[layer].register_forward_hook(hook_for(layer)))
        yield
    finally:
        for h in handles:
            h.remove()
