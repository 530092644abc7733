"""Hidden states of a causal LM over the answer tokens of (prompt, answer) items: what every steering
method is trained from.

A decoder block returns a tensor or a tuple whose first element is the hidden state, depending on the
architecture and the transformers version; ``block_hidden`` and ``with_block_hidden`` read and replace it
either way. ``capture_blocks`` records block outputs with forward hooks (the same place the steering
hooks act on, so a direction read here is added back at the very point it was measured), and
``response_states`` runs items through the model and keeps the states of the answer tokens only.
Conversations are rendered and truncated as the reward model does (``judge.encoding.PairEncoder``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal, Sequence

import torch
from tqdm.auto import tqdm

from judge.encoding import PairEncoder, PromptLike, fit
from middleware.errors import InputError
from middleware.models import decoder_layers
from middleware.types import PreferencePair

__all__ = [
    "block_hidden", "block_states", "capture_blocks", "layer_indices", "pair_states", "response_states", "right_padded",
    "with_block_hidden",
]

Reduce = Literal["mean", "last", "none"]


def block_hidden(output: Any) -> torch.Tensor:
    """The hidden state in a decoder block's output (the tensor itself, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def with_block_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden state replaced by ``hidden``, in the same structure."""
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


def layer_indices(model: Any, layers: "Sequence[int] | None") -> list[int]:
    """``layers`` as sorted, distinct, non-negative block indices (negative ones count from the end;
    ``None``: every block). ``InputError`` names an index the model does not have."""
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    out = set()
    for i in layers:
        if not isinstance(i, int) or isinstance(i, bool) or not -n <= i < n:
            raise InputError(f"layer {i!r} does not exist: the model has {n} decoder blocks (0 to {n - 1}, or -{n} to -1)")
        out.add(i % n)
    if not out:
        raise InputError("layers is empty: name at least one decoder block")
    return sorted(out)


@contextlib.contextmanager
def capture_blocks(model: Any, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, the dict holds the output hidden state of each block in ``layers`` from the
    latest forward call (detached). The hooks are removed on exit, also when the block raises."""
    blocks = decoder_layers(model)
    seen: dict[int, torch.Tensor] = {}
    handles = []

    def hook_for(i: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            seen[i] = block_hidden(output).detach()

        return hook

    try:
        for i in layers:
            handles.append(blocks[i].register_forward_hook(hook_for(i)))
        yield seen
    finally:
        for h in handles:
            h.remove()


def right_padded(rows: Sequence[list[int]], pad: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded on the right to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    return ids.to(device), mask.to(device)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the last block wanted has run."""


def block_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The output hidden states of blocks ``layers`` (sorted indices) for one batch, computed only as far
    as the last of them: the blocks after it and the output head never run. Gradients flow (call it
    under ``torch.no_grad()`` when none are needed)."""
    blocks = decoder_layers(model)
    seen: dict[int, torch.Tensor] = {}
    last = max(layers)
    handles = []

    def hook_for(i: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            seen[i] = block_hidden(output)
            if i == last:
                raise _StopForward

        return hook

    try:
        for i in layers:
            handles.append(blocks[i].register_forward_hook(hook_for(i)))
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    return seen


def response_states(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[PromptLike, str]],
    layers: Sequence[int],
    *,
    reduce: Reduce = "mean",
    max_length: int = 256,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "hidden states",
    closed: bool = True,
) -> dict[int, Any]:
    """The output hidden states of blocks ``layers`` over the answer tokens of each ``(prompt, answer)``.

    Returns ``{layer: states}`` in the order of ``items``: with ``reduce="mean"`` a float32 tensor
    ``[len(items), hidden]`` (the mean over the answer's tokens), ``"last"`` the state at the answer's
    last token, ``"none"`` a list of ``[answer tokens, hidden]`` tensors. Items are run in batches sorted
    by length (right padding, attention mask), without gradients. ``closed=False`` reads each answer
    as an unfinished continuation: its text tokenized as is after the rendered prompt, without the chat
    template's end-of-turn tokens (repeng's truncated answer openings, read with ``reduce="last"``).
    """
    if not items:
        raise InputError("no items to read hidden states from")
    layers = layer_indices(model, layers)
    encoded = PairEncoder(tokenizer, max_length).encode_split(items) if closed else _encode_open(tokenizer, items, max_length)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    kept: dict[int, list[Any]] = {i: [None] * len(items) for i in layers}
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress)
    with capture_blocks(model, layers) as seen, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = right_padded([encoded[k][0] + encoded[k][1] for k in chunk], pad, device)
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            for layer in layers:
                h = seen[layer].float()
                for j, k in enumerate(chunk):
                    start, size = len(encoded[k][0]), len(encoded[k][1])
                    span = h[j, start : start + size]
                    kept[layer][k] = span.mean(0) if reduce == "mean" else span[-1] if reduce == "last" else span.cpu()
            bar.update(len(chunk))
    bar.close()
    if reduce == "none":
        return kept
    return {layer: torch.stack(v).cpu() for layer, v in kept.items()}


def _encode_open(tokenizer: Any, items: Sequence[tuple[PromptLike, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
    enc = PairEncoder(tokenizer, max_length)
    out = []
    for prompt, answer in items:
        text = enc.render_prompt(prompt)
        p = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if enc.bos and not text.startswith(tokenizer.bos_token):
            p = [tokenizer.bos_token_id] + p
        a = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) or [tokenizer.pad_token_id]
        keep_p, (keep_a,) = fit(p, [a], max_length)
        out.append((keep_p, keep_a))
    return out


def pair_states(
    model: Any, tokenizer: Any, pairs: Sequence[PreferencePair], layers: Sequence[int], **kw: Any
) -> tuple[dict[int, Any], dict[int, Any]]:
    """``response_states`` of every pair's chosen answer and of its rejected answer (same keywords)."""
    chosen = response_states(model, tokenizer, [(p.prompt, p.chosen) for p in pairs], layers, **kw)
    rejected = response_states(model, tokenizer, [(p.prompt, p.rejected) for p in pairs], layers, **kw)
    return chosen, rejected
