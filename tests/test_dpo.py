"""The DPO trainer (``middleware.dpo``) and its objective (``middleware.dpo_loss``) on a tiny random Llama:
the loss on hand-computed numbers, the reference with the adapter off, the direction of an update, held-out
preference accuracy, starting from an SFT adapter, resume after a crash and after Ctrl-C."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from middleware.checkpoints import CheckpointManager
from middleware.dpo import _PairRows, _tokenize, reference_logps, train_dpo
from middleware.dpo_data import DPOExample
from middleware.dpo_loss import DPOSettings, dpo_loss
from middleware.errors import InputError
from middleware.models import load_causal_lm
from middleware.sft import TargetLoss, load_training_model, train_sft
from middleware.sft_data import IGNORE_INDEX, SFTConfig, SFTExample, collate
from rewriters.templates import get_template

ALIGNER = get_template("aligner-v1.0")


def _examples(n: int = 24) -> list[DPOExample]:
    return [
        DPOExample(ALIGNER.render(question=f"question {i} about cats", answer=f"answer {i}"),
                   "a kind and careful answer.", "go away, stupid.", group=i)
        for i in range(n)
    ]


def _config(tiny_model_dir: Path, **kw) -> SFTConfig:
    base = dict(base_model=str(tiny_model_dir), kind="corrector", lora_r=8, lora_alpha=16, learning_rate=2e-2, epochs=3,
                batch_size=4, eval_fraction=0.25, eval_every=3, save_every=3, seed=0, max_length=64)
    base.update(kw)
    return SFTConfig(**base)


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _same_adapter(a: Path, b: Path) -> None:
    x, y = _tensors(a), _tensors(b)
    assert x.keys() == y.keys() and x
    for k in x:
        assert torch.equal(x[k], y[k]), k


# -- the objective --------------------------------------------------------------------------------
def test_sigmoid_loss_and_rewards_by_hand() -> None:
    t = torch.tensor
    losses, chosen, rejected = dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), DPOSettings(beta=0.5))
    # log-ratios +0.5 and -0.5: h = 1.0, loss = -log sigmoid(0.5 * 1.0) = log(1 + e^-0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)


def test_ipo_loss_averages_over_tokens() -> None:
    t = torch.tensor
    s = DPOSettings(beta=0.5, loss="ipo")
    losses, chosen, rejected = dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), s, t([2]), t([4]))
    # per token: chosen -0.5 vs -0.75 (+0.25), rejected -0.5 vs -0.375 (-0.125); h = 0.375; (h - 1/(2 beta))^2
    assert losses.item() == pytest.approx((0.375 - 1.0) ** 2, abs=1e-6)
    assert chosen.item() == pytest.approx(0.125) and rejected.item() == pytest.approx(-0.0625)
    with pytest.raises(InputError, match="token counts"):
        dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), s)


def test_bad_settings_and_examples_are_named() -> None:
    for bad in (DPOSettings(beta=0), DPOSettings(beta=float("nan")), DPOSettings(loss="hinge")):  # type: ignore[arg-type]
        with pytest.raises(InputError, match="beta|loss"):
            bad.validate()
    with pytest.raises(InputError, match=r"examples\[1\].*same text"):
        train_dpo([DPOExample("s", "a", "b"), DPOExample("s", "c", "c")], SFTConfig(), "/nonexistent/never-written")
    with pytest.raises(InputError, match="no preference examples"):
        train_dpo([], SFTConfig(), "/nonexistent/never-written")


# -- the reference --------------------------------------------------------------------------------
def _plain_logps(tiny_model_dir: Path, rows: _PairRows, i: int) -> tuple[float, float]:
    """Target log-probabilities of example ``i`` under the base model alone (no peft), full-vocabulary softmax."""
    base, _ = load_causal_lm(str(tiny_model_dir))
    base.eval()
    out = []
    for row in (rows.chosen[i], rows.rejected[i]):
        b = collate([row], 0)
        with torch.no_grad():
            logp = base(input_ids=b["input_ids"]).logits[0, :-1].log_softmax(-1)
        labels = b["labels"][0, 1:]
        keep = labels != IGNORE_INDEX
        out.append(float(logp[keep].gather(-1, labels[keep][:, None]).sum()))
    return out[0], out[1]


def test_reference_is_the_base_with_the_adapter_off(tiny_model_dir: Path) -> None:
    cfg = _config(tiny_model_dir)
    model, tok = load_training_model(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an adapter that changes the outputs
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    rows = _tokenize(tok, _examples(6), cfg)
    scorer = TargetLoss(model)
    off_sums, off_counts = reference_logps(scorer, rows, tok.eos_token_id, "cpu", 4, adapter_off=True, progress=False)
    on_sums, _ = reference_logps(scorer, rows, tok.eos_token_id, "cpu", 4, adapter_off=False, progress=False)
    for i in (0, 5):
        plain = _plain_logps(tiny_model_dir, rows, i)
        assert off_sums[i].tolist() == pytest.approx(plain, abs=1e-4)
        assert abs(on_sums[i, 0].item() - plain[0]) > 1e-3  # the adapter is there: switching it off mattered
    assert off_counts[0].tolist() == [sum(x != IGNORE_INDEX for x in rows.chosen[0]["labels"]),
                                      sum(x != IGNORE_INDEX for x in rows.rejected[0]["labels"])]


# -- training ---------------------------------------------------------------------------------------
def test_one_step_raises_the_chosen_minus_rejected_log_ratio(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    cfg = _config(tiny_model_dir, lora_dropout=0.0, eval_fraction=0.0, max_steps=1, batch_size=8)
    res = train_dpo(_examples(8), cfg, tmp_path / "one", progress=False)
    assert res.steps == 1 and res.history[0]["step"] == 1
    assert res.history[0]["rewards_margin"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference

    base, tok = load_causal_lm(str(tiny_model_dir))
    model = PeftModel.from_pretrained(base, str(tmp_path / "one"))
    rows = _tokenize(tok, _examples(8), cfg)
    scorer = TargetLoss(model)
    after, _ = reference_logps(scorer, rows, tok.eos_token_id, "cpu", 8, adapter_off=False, progress=False)
    before, _ = reference_logps(scorer, rows, tok.eos_token_id, "cpu", 8, adapter_off=True, progress=False)
    ratio = after - before  # log pi / pi_ref of each target
    margin = ratio[:, 0] - ratio[:, 1]
    assert margin.mean().item() > 1e-3
    assert (margin > 0).all()


def test_training_learns_the_preference_on_held_out_pairs(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = train_dpo(_examples(), _config(tiny_model_dir, epochs=4), out, settings=DPOSettings(beta=0.5), progress=False)
    assert res.held_out == 6 and res.steps == 4 * 5  # 18 training pairs, batch 4
    assert res.eval_untrained is not None and res.eval_final is not None
    assert res.eval_untrained["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference
    assert res.eval_final["eval_loss"] < math.log(2) - 0.2
    assert res.eval_final["eval_rewards_accuracy"] == 1.0 and res.eval_final["eval_rewards_margin"] > 0
    assert res.pairs_per_second > 0
    manifest = json.loads((out / "alignware.json").read_text())
    assert manifest["kind"] == "corrector" and manifest["training"]["method"] == "dpo"
    assert manifest["training"]["dpo"] == {"beta": 0.5, "loss": "sigmoid"} and manifest["training"]["finished"]
    for name in ("adapter_model.safetensors", "history.json", "loss.png"):
        assert (out / name).is_file()


def test_ipo_trains_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = train_dpo(_examples(), _config(tiny_model_dir, epochs=4), tmp_path / "ipo", settings=DPOSettings(beta=0.5, loss="ipo"),
                    progress=False)
    assert res.eval_untrained and res.eval_final
    assert res.eval_final["eval_loss"] < res.eval_untrained["eval_loss"]
    assert res.eval_final["eval_rewards_accuracy"] == 1.0


def test_starting_from_an_sft_adapter_uses_it_as_the_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    sft_cfg = _config(tiny_model_dir, lora_r=4, lora_alpha=8, epochs=2, eval_fraction=0.0, save_every=100)
    sft = [SFTExample(ex.source, ex.chosen) for ex in _examples(8)]
    train_sft(sft, sft_cfg, tmp_path / "sft", progress=False)
    # the DPO config asks for r=8; the LoRA shape comes from the starting adapter
    res = train_dpo(_examples(), _config(tiny_model_dir, epochs=1), tmp_path / "dpo", init=tmp_path / "sft", progress=False)
    assert res.eval_untrained is not None
    # the policy starts as the SFT adapter and the reference is that adapter: no reward yet, loss log 2
    assert res.eval_untrained["eval_rewards_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert res.eval_untrained["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    cfg = json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())
    assert cfg["r"] == 4
    assert json.loads((tmp_path / "dpo" / "alignware.json").read_text())["training"]["init"] == str(tmp_path / "sft")
    bad = _config(tiny_model_dir, kind="rewriter", template="bpo", epochs=2, eval_fraction=0.0, save_every=100)
    train_sft(sft, bad, tmp_path / "rw", progress=False)
    with pytest.raises(InputError, match="rewriter adapter cannot start a corrector"):
        train_dpo(_examples(), _config(tiny_model_dir), tmp_path / "x", init=tmp_path / "rw", progress=False)


def test_resume_after_a_crash_and_after_ctrl_c_equals_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, lora_dropout=0.1)  # dropout draws masks in every forward pass
    full = train_dpo(_examples(), cfg, tmp_path / "full", progress=False)

    def crash(row: dict) -> None:
        if row["step"] == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        train_dpo(_examples(), cfg, tmp_path / "crash", progress=False, callback=crash)
    assert CheckpointManager(tmp_path / "crash").latest().name == "step-0000003"
    resumed = train_dpo(_examples(), cfg, tmp_path / "crash", progress=False)
    assert resumed.resumed_from == 3 and resumed.steps == full.steps and resumed.reference_seconds == 0.0
    _same_adapter(tmp_path / "full", tmp_path / "crash")
    assert resumed.history == full.history

    def ctrl_c(row: dict) -> None:
        if row["step"] == 7:
            raise KeyboardInterrupt

    cut = train_dpo(_examples(), cfg, tmp_path / "cut", progress=False, callback=ctrl_c)
    assert cut.interrupted and cut.steps == 7
    assert json.loads((tmp_path / "cut" / "alignware.json").read_text())["training"]["finished"] is False
    resumed = train_dpo(_examples(), cfg, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 7 and resumed.steps == full.steps and not resumed.interrupted
    _same_adapter(tmp_path / "full", tmp_path / "cut")
    assert resumed.eval_final == full.eval_final


def test_other_settings_refuse_the_old_checkpoints(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, epochs=1)
    train_dpo(_examples(), cfg, tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="other settings"):
        train_dpo(_examples(), cfg, tmp_path / "r", settings=DPOSettings(beta=0.3), progress=False)
    res = train_dpo(_examples(), cfg, tmp_path / "r", settings=DPOSettings(beta=0.3), progress=False, resume=False)
    assert res.resumed_from is None
