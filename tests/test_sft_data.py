"""SFT token rows (``middleware.sft_data``) on a tiny random Llama's tokenizer: masking, truncation, per-batch padding."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.sft_data import SFTExample, collate, tokenize_example


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from middleware.models import load_causal_lm

    return load_causal_lm(tiny_model_dir)[1]


def test_tokenize_masks_source_and_padding(tokenizer) -> None:
    ex = SFTExample("Edit the following question answer pair:", " Paris is the capital of France.")
    src = tokenizer(ex.source)["input_ids"]
    row = tokenize_example(tokenizer, ex, 64, pad_to_max_length=True)
    ids, labels, mask = row["input_ids"], row["labels"], row["attention_mask"]
    assert len(ids) == len(labels) == len(mask) == 64
    n_src = len(src)
    n_real = sum(mask)
    assert ids[:n_src] == src
    assert all(lab == -100 for lab in labels[:n_src])  # source masked
    assert labels[n_src:n_real] == ids[n_src:n_real]  # target (+ EOS) learned
    assert ids[n_real - 1] == tokenizer.eos_token_id and labels[n_real - 1] == tokenizer.eos_token_id
    assert all(lab == -100 for lab in labels[n_real:])  # padding masked
    assert mask[:n_real] == [1] * n_real and mask[n_real:] == [0] * (64 - n_real)
    target = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
    assert ids[n_src : n_real - 1] == target


def test_tokenize_truncates_source_from_the_left(tokenizer) -> None:
    ex = SFTExample("The quick brown fox jumps over the lazy dog. " * 20 + "END", " Hello!")
    row = tokenize_example(tokenizer, ex, 32)
    target = tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(row["input_ids"]) == 32
    assert row["input_ids"][-len(target) :] == target  # target kept whole
    src_ids = tokenizer(ex.source)["input_ids"]
    kept = 32 - len(target)
    assert row["input_ids"][:kept] == src_ids[-kept:]  # the end of the source is kept
    assert sum(lab != -100 for lab in row["labels"]) == len(target)


def test_collate_pads_per_batch(tokenizer) -> None:
    rows = [tokenize_example(tokenizer, SFTExample("a" * k, " b"), 512) for k in (1, 9, 30)]
    batch = collate(rows, pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows)  # not 512
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["labels"][i, :n].tolist() == r["labels"]
        assert (batch["labels"][i, n:] == -100).all() and (batch["attention_mask"][i, n:] == 0).all()
