"""Tiny random models the steering tests share: Llama, Qwen2 and GPT-2 with lively weights, and a
wrapper that makes decoder blocks return tuples (as older transformers blocks do)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from local_models import lively_backend
from middleware.local import LocalBackend
from middleware.models import decoder_layers
from tiny import make_tiny_model_dir

class TupleBlock(torch.nn.Module):
    """A decoder block that returns ``(hidden, None)`` and accepts a tuple from the block before it."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, hidden: Any, *args: Any, **kw: Any) -> tuple[Any, None]:
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        return (self.block(hidden, *args, **kw), None)


def tuple_blocks(model: Any) -> Any:
    """Wrap every decoder block of ``model`` in ``TupleBlock``; the final norm unwraps the last tuple."""
    blocks = decoder_layers(model)
    for i in range(len(blocks)):
        blocks[i] = TupleBlock(blocks[i])
    norm = model.transformer.ln_f if hasattr(model, "transformer") else model.model.norm
    norm.register_forward_pre_hook(lambda m, args: (args[0][0],) + tuple(args[1:]) if isinstance(args[0], tuple) else None)
    return model


def lively_model(root: Path, arch: str, *, layers: int = 3, tuples: bool = False) -> tuple[Any, Any]:
    """A tiny checkpoint of ``arch`` loaded with its weights redrawn at std 0.3 (greedy answers differ
    from prompt to prompt), optionally with tuple-returning blocks."""
    lively = lively_backend(make_tiny_model_dir(root, arch=arch, layers=layers))
    model, tok = lively.model, lively.tokenizer
    return (tuple_blocks(model) if tuples else model), tok


def backend(model: Any, tok: Any, max_tokens: int = 12) -> LocalBackend:
    return LocalBackend(model_obj=model, tokenizer=tok, max_tokens=max_tokens)


def hook_count(model: Any) -> int:
    """Forward hooks on the decoder blocks and below (the final norm's own pre-hook is not counted)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for b in decoder_layers(model) for m in b.modules())


@pytest.fixture(scope="module", autouse=False)
def one_thread() -> Iterator[None]:
    """One torch thread for the module (tiny models: threads only contend on a shared CPU), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
