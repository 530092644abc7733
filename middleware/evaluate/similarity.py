"""Similarity of answers to reference answers: a measure no reward model can be fooled on.

Where prompt rows carry a reference answer (Dolly's ``reference``; a preference pair's ``chosen``), a
report gives each variant's mean similarity to it. The measure is a **TF-IDF cosine** over words:
lower-cased ``\\w+`` tokens, term counts weighted by the smoothed inverse document frequency of the
references (``ln((1 + N) / (1 + df)) + 1``, as scikit-learn's ``TfidfVectorizer`` computes it), and the
cosine of the two weighted vectors. It runs offline on a CPU with nothing to download, is deterministic, and
one variant's score does not depend on which other variants were run (the weights come from the references
alone). It is a proxy: it counts shared words, not meaning, so a correct answer in other words scores low and
a refusal that repeats the question's words scores some. It reads best as a comparison between variants on the
same prompts: an answer equal to its reference scores 1.0, one with no word in common 0.0, and a stage
that moves answers away from the references (into refusals, say) lowers the mean.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

__all__ = ["ReferenceSimilarity", "tokens"]

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """The words of ``text``, lower-cased."""
    return _WORD.findall(text.lower())


class ReferenceSimilarity:
    """TF-IDF cosine between an answer and the reference of its prompt, weights fitted on ``references``
    (``None`` for a prompt without one)."""

    def __init__(self, references: Sequence[str | None]) -> None:
        self.references = list(references)
        docs = [set(tokens(r)) for r in self.references if r is not None]
        df = Counter(w for d in docs for w in d)
        n = len(docs)
        self._idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self._unseen = math.log(1 + n) + 1.0  # a word no reference uses
        self._refs = [None if r is None else self._vector(r) for r in self.references]

    def _vector(self, text: str) -> dict[str, float]:
        counts = Counter(tokens(text))
        return {w: c * self._idf.get(w, self._unseen) for w, c in counts.items()}

    def has_reference(self, i: int) -> bool:
        return i < len(self._refs) and self._refs[i] is not None

    def __call__(self, i: int, text: str) -> float:
        """The similarity of ``text`` to prompt ``i``'s reference, in [0, 1] (0 when either has no words)."""
        ref = self._refs[i]
        if ref is None:
            raise ValueError(f"prompt {i} has no reference answer")
        vec = self._vector(text)
        dot = sum(v * ref[w] for w, v in vec.items() if w in ref)
        norm = math.sqrt(sum(v * v for v in vec.values())) * math.sqrt(sum(v * v for v in ref.values()))
        return min(1.0, dot / norm) if norm else 0.0
