"""Training data for the response corrector: Aligner's SFT examples from preference pairs, with the
identity warm-up (:func:`build_corrector_data`)."""

from __future__ import annotations

import os
from typing import Any, Iterable

from middleware.errors import InputError
from middleware.sft_data import SFTExample
from middleware.types import PreferencePair

from .pairs import as_pairs
from .sentences import flatten_question
from .templates import Template, get_template

__all__ = ["build_corrector_data"]


def build_corrector_data(
    pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]",
    *,
    identity_warmup: bool = True,
    template: "str | Template" = "aligner-v1.0",
) -> "tuple[list[SFTExample], list[SFTExample]]":
    """Aligner training examples from preference pairs.

    Main examples: question = the flattened conversation (:func:`flatten_question`), answer = ``rejected``,
    correction = ``chosen``. Warm-up examples (``identity_warmup``, Aligner's first phase: learn to copy
    a good answer): answer = ``chosen``, correction = ``chosen``. Sources are rendered with ``template``.
    Pairs whose ``chosen`` is empty are left out of both. Both examples of a pair carry the pair's index
    as ``group``, so ``train_sft`` leaves out the warm-up examples of held-out pairs (their targets are
    the held-out targets).

    Returns:
        ``(examples, warmup_examples)``; ``warmup_examples`` is empty without ``identity_warmup``.
    """
    tmpl = get_template(template)
    if set(tmpl.fields) != {"question", "answer"}:
        raise InputError(f"template {tmpl.name!r} takes fields {list(tmpl.fields)}; a corrector template takes question and answer")
    examples: list[SFTExample] = []
    warmup: list[SFTExample] = []
    for i, row in enumerate(as_pairs(pairs)):
        chosen = row.chosen.strip()
        if not chosen:
            continue
        question = flatten_question(row.prompt)
        examples.append(SFTExample(source=tmpl.render(question=question, answer=row.rejected.strip()), target=chosen, group=i))
        if identity_warmup:
            warmup.append(SFTExample(source=tmpl.render(question=question, answer=chosen), target=chosen, group=i))
    return examples, warmup
