"""The corrector's text shaping: the flattened question, sentences and sentence groups (whole or incremental)."""

from __future__ import annotations

import random

import pytest

from middleware.errors import InputError
from rewriters.sentences import ChunkSplitter, flatten_question, split_chunks, split_sentences
from text_stage_fakes import LONG_ANSWER, QUESTION


def test_flatten_question() -> None:
    assert flatten_question([{"role": "system", "content": "Be nice."}, {"role": "user", "content": QUESTION}]) == QUESTION
    conv = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": QUESTION},
    ]
    assert flatten_question(conv) == f"User: Hi\nAssistant: Hello! How can I help?\nUser: {QUESTION}"
    with pytest.raises(InputError):
        flatten_question([{"role": "system", "content": "x"}])


def test_split_sentences_and_chunks_give_the_text_back() -> None:
    sents = split_sentences(LONG_ANSWER)
    assert "".join(sents) == LONG_ANSWER
    assert sents[0] == "Water them when the top of the soil feels dry. "
    assert any(s.startswith("Use a pot with drainage holes, e.g. a terracotta one") for s in sents)  # e.g. kept
    assert any(s.startswith("1. Feed them") for s in sents)  # list numbers kept
    for min_chars in (1, 40, 10_000):
        assert "".join(split_chunks(LONG_ANSWER, min_chars)) == LONG_ANSWER
    assert len(split_chunks(LONG_ANSWER, 10_000)) == 1


@pytest.mark.parametrize("min_chars", [1, 25, 60])
def test_incremental_chunks_do_not_depend_on_piece_sizes(min_chars: int) -> None:
    expected = split_chunks(LONG_ANSWER, min_chars)
    rng = random.Random(min_chars)
    for _ in range(200):
        sp, got, i = ChunkSplitter(min_chars), [], 0
        while i < len(LONG_ANSWER):
            k = rng.randint(1, 9)
            got += sp.feed(LONG_ANSWER[i : i + k])
            i += k
        got += sp.finish()
        assert got == expected
