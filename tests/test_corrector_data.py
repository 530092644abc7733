"""The corrector's training data: Aligner examples with the identity warm-up, and held-out pairs kept out
of the warm-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.errors import InputError
from middleware.types import PreferencePair
from rewriters.corrector_data import build_corrector_data
from text_stage_fakes import ALIGNER_V1, QUESTION


def test_build_corrector_data_with_identity_warmup() -> None:
    pairs = [
        PreferencePair(prompt=QUESTION, chosen=" Paris. ", rejected="Lyon."),
        PreferencePair(prompt=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
                               {"role": "user", "content": "Help me"}], chosen="Sure, with what?", rejected="No."),
        PreferencePair(prompt="skip me", chosen="  ", rejected="x"),
    ]
    examples, warmup = build_corrector_data(pairs)
    assert [(e.source, e.target) for e in examples] == [
        (ALIGNER_V1.format(QUESTION, "Lyon."), "Paris."),
        (ALIGNER_V1.format("User: Hi\nAssistant: Hey\nUser: Help me", "No."), "Sure, with what?"),
    ]
    assert [(e.source, e.target) for e in warmup] == [
        (ALIGNER_V1.format(QUESTION, "Paris."), "Paris."),
        (ALIGNER_V1.format("User: Hi\nAssistant: Hey\nUser: Help me", "Sure, with what?"), "Sure, with what?"),
    ]
    assert [e.group for e in examples] == [e.group for e in warmup] == [0, 1]  # the pair each came from
    examples2, none = build_corrector_data(pairs, identity_warmup=False)
    assert examples2 == examples and none == []
    ex3, _ = build_corrector_data(pairs[:1], template="aligner-correction")
    assert "##Answer: Lyon." in ex3[0].source
    with pytest.raises(InputError, match="question and answer"):
        build_corrector_data(pairs, template="bpo")


def test_held_out_pairs_are_not_trained_on_in_the_warm_up(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import middleware.sft as sft
    from rewriters.sft_config import SFTConfig

    pairs = [PreferencePair(prompt=f"question {i}", chosen=f"good answer number {i}.", rejected=f"bad {i}") for i in range(10)]
    examples, warmup = build_corrector_data(pairs)
    # record the target tokens of every batch the trainer scores: training batches vs held-out evaluation
    seen: dict[str, set[tuple[int, ...]]] = {"train": set(), "eval": set()}
    real = sft.TargetLoss.__call__

    def recording(self, batch):
        for labels in batch["labels"]:
            seen["train" if self.model.training else "eval"].add(tuple(labels[labels != -100].tolist()))
        return real(self, batch)

    monkeypatch.setattr(sft.TargetLoss, "__call__", recording)
    cfg = SFTConfig(
        base_model=str(tiny_model_dir), kind="corrector", template="aligner-v1.0", lora_r=2, lora_alpha=4,
        batch_size=4, epochs=1, warmup_epochs=1, eval_fraction=0.3, save_every=100, eval_every=100,
    )
    res = sft.train_sft(examples, cfg, tmp_path / "c", warmup_examples=warmup, progress=False)
    assert len(seen["eval"]) == 3  # three pairs held out, each with its own target
    assert not seen["eval"] & seen["train"], "a held-out pair's target was trained on"
    assert len(seen["train"]) == 7  # the other pairs' targets, in both phases
    warm_steps = [r for r in res.history if r.get("warmup")]
    assert len(warm_steps) == 2 and sum(r["target_tokens"] for r in warm_steps) > 0  # ceil(7 / 4) warm-up steps
    manifest = json.loads((tmp_path / "c" / "alignware.json").read_text())
    assert manifest["training"]["warmup_examples_held_out"] == 3
