"""What a preference-optimisation (DPO) run trains on: ``DPOExample`` (a source text with a preferred and
a dispreferred target), checked with ``check_dpo_examples``.

The rewriter and corrector build these from preference pairs (``rewriters.preference_pairs``); the
trainer is ``middleware.dpo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import InputError

__all__ = ["DPOExample", "check_dpo_examples"]


@dataclass
class DPOExample:
    """One preference example: ``source`` is the rendered template text (as for ``SFTExample``),
    ``chosen`` the target to prefer and ``rejected`` the one to prefer less.

    ``group`` (optional) names the item the example was made from (e.g. the index of its preference
    pair or prompt), so that examples of one item stay on one side of the held-out split.
    """

    source: str
    chosen: str
    rejected: str
    group: int | str | None = None


def check_dpo_examples(examples: Sequence[DPOExample]) -> list[DPOExample]:
    """``examples`` as a list; ``InputError`` naming the first one that is not a usable ``DPOExample``."""
    out = list(examples)
    if not out:
        raise InputError("no preference examples")
    for i, ex in enumerate(out):
        if not isinstance(ex, DPOExample):
            raise InputError(f"examples[{i}] is a {type(ex).__name__}, expected DPOExample")
        for name in ("source", "chosen", "rejected"):
            if not isinstance(getattr(ex, name), str):
                raise InputError(f"examples[{i}].{name} must be a string, got {type(getattr(ex, name)).__name__}")
        if not ex.chosen.strip() or not ex.rejected.strip():
            raise InputError(f"examples[{i}]: chosen and rejected must both be non-empty")
        if ex.chosen == ex.rejected:
            raise InputError(f"examples[{i}]: chosen and rejected are the same text; the pair teaches nothing")
    return out
