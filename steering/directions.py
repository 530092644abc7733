"""The arithmetic of steering directions: per-layer directions from paired hidden states (mean
difference or the principal direction of the differences, sign and scale fixed as ``steering.vector``
describes), the default layers, and repeng-style contrastive template data.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch

from middleware.errors import InputError
from middleware.models import decoder_layers

from .hidden import layer_indices

__all__ = ["DEFAULT_PROMPTS", "DEFAULT_SUFFIXES", "DEFAULT_TEMPLATE", "METHODS", "Method", "default_layers",
           "directions_from_states", "openings", "train_layers"]

Method = Literal["pca_diff", "mean_diff"]
METHODS = ("pca_diff", "mean_diff")
DEFAULT_TEMPLATE = "Act as if you are extremely {persona}."
DEFAULT_PROMPTS = ("Tell me about yourself.", "What do you think about the world?", "Can you help me with something?")
DEFAULT_SUFFIXES = (
    "I think that the most important thing is",
    "Sure, here is what I would do about it.",
    "Honestly, my view of people is that they",
    "That is a question I get asked a lot, and",
    "Well, let me tell you how I see it:",
)


def default_layers(n: int) -> list[int]:
    """The default layers a vector is applied at: the middle half of the blocks (at least one)."""
    lo, hi = n // 4, max(n // 4 + 1, (3 * n) // 4)
    return list(range(max(lo, 1 if n > 1 else 0), hi))


def directions_from_states(
    chosen: dict[int, torch.Tensor], rejected: dict[int, torch.Tensor], method: Method = "pca_diff"
) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """Per-layer directions from paired states ``[n, hidden]`` (row i of ``chosen`` against row i of
    ``rejected``), scaled by the mean gap, and the fraction of pairs each direction orders correctly."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    directions: dict[int, torch.Tensor] = {}
    agreement: dict[int, float] = {}
    for layer in chosen:
        diff = (chosen[layer].float() - rejected[layer].float()).cpu()
        if method == "mean_diff":
            d = diff.mean(0)
        else:
            # first right-singular vector of the uncentred differences (see the module docstring)
            _, _, vh = torch.linalg.svd(diff, full_matrices=False)
            u = vh[0]
            proj = diff @ u
            if (proj < 0).sum() > (proj > 0).sum():  # repeng's rule: chosen above rejected in most pairs
                u, proj = -u, -proj
            d = u * proj.mean().abs()
        norm = d.norm()
        proj = diff @ (d / norm) if norm > 0 else torch.zeros(len(diff))
        agreement[layer] = float((proj > 0).float().mean())
        directions[layer] = d.contiguous()
    return directions, agreement


def train_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = len(decoder_layers(model))
    return layer_indices(model, layers if layers is not None else (list(range(1, n)) if n > 1 else [0]))


def openings(suffixes: Sequence[str]) -> list[str]:
    """Every word-by-word prefix of every suffix (repeng's truncated outputs), without repeats."""
    seen: dict[str, None] = {}
    for s in suffixes:
        words = s.split()
        for k in range(1, len(words) + 1):
            seen.setdefault(" ".join(words[:k]), None)
    return list(seen)
