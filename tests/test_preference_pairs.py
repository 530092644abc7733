"""What the two pair builders share: the gap rule, the judge's scores and the stage model's samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from local_models import fresh_bases  # noqa: F401  (fixture)
from middleware.errors import InputError
from middleware.types import Message
from rewriters.generator import TextGenerator
from rewriters.preference_pairs import judge_scores, resolve_min_gap, sample_texts
from rewriters.templates import get_template
from text_stage_fakes import WordJudge


def test_the_gap_rule() -> None:
    assert resolve_min_gap(0.5, [[1.0, 2.0]], 2.0) == (0.5, None)
    # disjoint pairs within a group (1-3; 10 has no partner, a lone value none): spread 2, times k
    assert resolve_min_gap("auto", [[1.0, 3.0, 10.0], [2.0]], 1.5) == (3.0, 2.0)
    assert resolve_min_gap("auto", [[1.0, 3.0], [5.0, 1.0]], 1.0) == (pytest.approx(math.sqrt(10)), pytest.approx(math.sqrt(10)))
    assert resolve_min_gap("auto", [[4.0]], 2.0) == (math.inf, None)  # nothing measured: no gap is enough


def test_judge_scores_keep_the_scores_they_can_and_name_what_failed(tmp_path: Path) -> None:
    class HalfJudge(WordJudge):
        def score_batch(self, items: list[tuple[Any, str]]) -> list[float]:
            return [math.nan if "nan" in a else s for (_, a), s in zip(items, super().score_batch(items))]

    conv = [Message(role="user", content="q")]
    judge = HalfJudge()
    items = [(conv, "one two"), (conv, "nan please"), (conv, "three")]
    scores, errors = judge_scores(judge, items, cache_dir=tmp_path, progress=False)
    assert scores == [2.0, None, 1.0] and errors == {1: "the judge gave nan for an answer"}
    # a judge object has no checksum to name it in a cache: it is asked again
    judge_scores(judge, items, cache_dir=tmp_path, progress=False)
    assert len(judge.items) == 6 and not any(tmp_path.iterdir())


def test_sample_texts_loses_only_the_row_a_model_fails_on(tiny_model_dir: Path, tmp_path: Path, fresh_bases: None) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    bpo = get_template("bpo")
    prompts = ["Hello there", "word " * 600, "What is the capital of France?"]  # the second is past the context
    sources = [bpo.render(prompt=p) for p in prompts]
    kw: dict[str, Any] = dict(samples=2, seed=5, temperature=None, top_p=None, max_new_tokens=4, batch_size=8,
                              cache_dir=tmp_path, label="rewriter", progress=False)
    out, errors = sample_texts(gen, sources, [(p,) for p in prompts], names=[7, 8, 9], **kw)
    assert list(errors) == [1] and errors[1].startswith("row 8: rewriter failed: ") and "context" in errors[1]
    assert out[1] == [] and [len(o) for o in out] == [2, 0, 2]
    # the samples are the generator's own, seed by seed, at its template's decoding (BPO: 0.6, top_p 0.9)
    for k in range(2):
        assert [out[0][k].text, out[2][k].text] == gen.generate([sources[0], sources[2]], seed=5 + k, temperature=0.6,
                                                                top_p=0.9, max_new_tokens=4)
    again, _ = sample_texts(gen, sources, [(p,) for p in prompts], **kw)
    assert again == out and any(tmp_path.iterdir())
    with pytest.raises(InputError, match="samples=2 needs a sampling temperature above 0"):
        sample_texts(gen, sources, [(p,) for p in prompts], **{**kw, "temperature": 0.0})
