"""The rewriter's and corrector's SFT settings (``rewriters.sft_config``): kinds, templates and their
manifest entries, and the ``alignware train rewriter|corrector`` flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from middleware.errors import InputError
from middleware.sft import train_sft
from middleware.sft_data import SFTExample
from rewriters.sft_config import SFTConfig, add_train_args, config_from_args
from rewriters.templates import get_template


def test_the_manifest_names_the_template_and_its_decoding_defaults(tiny_model_dir: Path, tmp_path: Path) -> None:
    bpo = get_template("bpo")
    examples = [SFTExample(bpo.render(prompt=f"question {i}"), "Please improve this prompt.") for i in range(4)]
    cfg = SFTConfig(base_model=str(tiny_model_dir), lora_r=2, lora_alpha=4, batch_size=2, max_steps=1, eval_fraction=0)
    train_sft(examples, cfg, tmp_path / "run", progress=False)
    manifest = json.loads((tmp_path / "run" / "alignware.json").read_text())
    assert manifest["kind"] == "rewriter" and manifest["template"] == "bpo"
    assert manifest["base_model"] == str(tiny_model_dir.resolve())
    assert manifest["generation"] == {"temperature": 0.6, "top_p": 0.9}
    assert manifest["template_spec"] == bpo.to_dict()


def test_bad_kind_or_template_is_reported(tiny_model_dir: Path) -> None:
    with pytest.raises(InputError, match="template"):
        SFTConfig(base_model=str(tiny_model_dir), template="nope").validate()
    with pytest.raises(InputError, match="template is required"):
        SFTConfig(template=None).validate()  # type: ignore[arg-type]
    with pytest.raises(InputError, match="kind must be one of rewriter, corrector"):
        SFTConfig(kind="rahf").validate()
    with pytest.raises(InputError, match="batch_size"):  # the generic checks still run
        SFTConfig(batch_size=0).validate()


def test_cli_flags_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    args = parser.parse_args(["--lora-r", "4", "--target-modules", "q_proj,v_proj", "--lr", "1e-3", "--epochs", "2.5",
                              "--max-steps", "7", "--fresh"])
    cfg = config_from_args(args, kind="corrector")
    assert cfg.kind == "corrector" and cfg.template == "aligner-v1.0"
    assert cfg.lora_r == 4 and cfg.target_modules == ("q_proj", "v_proj") and cfg.learning_rate == 1e-3
    assert cfg.epochs == 2.5 and cfg.max_steps == 7 and args.resume is False
    assert config_from_args(parser.parse_args([])) == SFTConfig()


def test_threads_flag_sets_torch_threads_and_rejects_zero() -> None:
    import torch

    from middleware.training import set_threads

    parser = argparse.ArgumentParser()
    add_train_args(parser)
    assert parser.parse_args(["--threads", "1"]).threads == 1 and parser.parse_args([]).threads is None
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InputError, match="--threads must be 1 or more, got 0"):
        set_threads(0)
