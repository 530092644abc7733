"""Preference pairs for the data builders, given as a JSONL path, dicts or ``PreferencePair`` objects."""

from __future__ import annotations

import os
from typing import Any, Iterable

from middleware.errors import InputError
from middleware.types import PreferencePair, load_pairs

__all__ = ["as_pairs"]


def as_pairs(pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]") -> list[PreferencePair]:
    """The pairs as ``PreferencePair`` objects; a path is read with ``load_pairs``. A row that is not a
    pair raises ``InputError`` naming its index."""
    if isinstance(pairs, (str, os.PathLike)):
        return load_pairs(pairs)
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, PreferencePair):
            out.append(p)
        else:
            try:
                out.append(PreferencePair.model_validate(p))
            except Exception as e:
                raise InputError(f"pairs[{i}]: not a preference pair: {e}") from None
    return out
