"""Shared helpers for the decoding, local backend, generator and shared-base tests.

``lively_backend``: the tiny checkpoint with its weights redrawn so that greedy answers differ from
prompt to prompt; ``make_adapters``: two random LoRA adapters on the tiny checkpoint. The fixtures
``fresh_bases`` and ``adapters`` are used by importing them into a test module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from middleware.local import LocalBackend
from middleware.models import load_causal_lm
from middleware.shared_base import SharedBase
from middleware.types import ChatRequest
from middleware.sft import init_adapter
from rewriters.sft_config import SFTConfig
from rewriters.templates import get_template

PROMPTS = [
    "Hi",
    "What is the capital of France? Please answer.",
    "The quick brown fox jumps over the lazy dog. Tell me more about foxes and dogs, and why the fox jumps.",
    "Paris",
    "Edit the following question answer pair to make it more helpful.",
]

BPO = get_template("bpo")
TEXTS = [
    BPO.render(prompt="Hello"),
    BPO.render(prompt="What is the capital of France? Please answer with a helpful and harmless answer."),
    "The quick brown fox",
    BPO.render(prompt="I cannot help with that"),
]


def req(text: Any, **params: Any) -> ChatRequest:
    return ChatRequest.build(text, **params)


def lively_backend(tiny_model_dir: Path) -> LocalBackend:
    """The tiny checkpoint with its weights redrawn at std 0.3.

    At the checkpoint's initialisation scale (std 0.02) greedy decoding repeats one token for
    every prompt, which would make equality checks between code paths vacuous; at std 0.3 the
    answers differ from prompt to prompt and contain broken multi-byte sequences, which exercises
    the incremental decoding of streams.
    """
    import torch

    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return LocalBackend(model_obj=model, tokenizer=tok, max_tokens=40)


def ascii_piece(text: str, start: int, size: int = 3) -> str:
    """The first ``size`` printable ASCII characters of ``text`` from ``start`` on (a stop string that
    cannot be confused with a half-decoded multi-byte character)."""
    for i in range(start, len(text) - size):
        piece = text[i : i + size]
        if piece.isascii() and piece.isprintable():
            return piece
    raise AssertionError(f"no printable ASCII run in {text!r}")


def make_adapters(tiny_model_dir: Path, root: Path) -> tuple[Path, Path]:
    """Two randomly initialised LoRA adapters on the tiny model (a rewriter and a corrector)."""
    a = init_adapter(SFTConfig(base_model=str(tiny_model_dir), lora_r=4, lora_alpha=32, seed=1), root / "rewriter", random_init=True)
    b = init_adapter(
        SFTConfig(base_model=str(tiny_model_dir), lora_r=4, lora_alpha=32, seed=2, kind="corrector", template="aligner-v1.0",
                  target_modules=("q_proj", "v_proj", "o_proj")),
        root / "corrector-v1.0",  # a dot in the folder name must not reach peft's module names
        random_init=True,
    )
    return a, b


def logits(model: Any, tok: Any, text: str) -> Any:
    import torch

    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


@pytest.fixture
def fresh_bases() -> Iterator[None]:
    """No ``SharedBase`` instance carried over from another test, nor left behind for the next."""
    SharedBase.clear()
    yield
    SharedBase.clear()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two randomly initialised LoRA adapters on the tiny model (a rewriter and a corrector)."""
    return make_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"))
