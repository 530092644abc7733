"""RAHF (``steering.rahf``, ``rahf_train``, ``rahf_targets``) on tiny random Llama and Qwen2 models: the SCIT
examples, the masked loss, the fit, the merged checkpoint against the adapter switched on, the stage in a
pipeline on a shared base and on the merged folder, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from middleware.errors import InputError
from middleware.local import LocalBackend
from middleware.models import load_causal_lm
from middleware.pipeline import Pipeline
from middleware.shared_base import SharedBase
from middleware.types import ChatRequest, PreferencePair
from steering.rahf import BAD_INSTRUCTION, GOOD_INSTRUCTION, RAHF, RAHFConfig, default_layers, scit_examples
from steering.rahf_targets import masked_l2
from steering.rahf_train import RAHFResult, train_rahf
from tiny import make_tiny_model_dir

PAIRS = [
    PreferencePair(prompt=f"question {i} about cats", chosen=f"a kind and helpful answer number {i}.", rejected=f"go away {i}, rude")
    for i in range(8)
]


def _config(base: Path, **kw) -> RAHFConfig:
    settings = dict(base_model=str(base), lora_r=4, lora_alpha=8, batch_size=4, epochs=6, sft_epochs=2,
                    eval_fraction=0.25, alpha=4.0, learning_rate=1e-2, save_every=4)
    settings.update(kw)
    return RAHFConfig(**settings)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("rahf-llama"), layers=4)


@pytest.fixture(scope="module")
def scit_run(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> RAHFResult:
    return train_rahf(PAIRS, tmp_path_factory.mktemp("scit"), _config(llama), progress=False)


def test_scit_examples_carry_the_instructions(llama: Path) -> None:
    from judge.encoding import PairEncoder

    _, tok = load_causal_lm(llama)
    pairs = PAIRS[:2] + [PreferencePair(prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                                        chosen="Hello!", rejected="What.")]
    examples = scit_examples(pairs, PairEncoder(tok, 256), RAHFConfig())
    assert len(examples) == 6 and [e.group for e in examples] == [0, 0, 1, 1, 2, 2]
    for good, bad, pair in zip(examples[::2], examples[1::2], pairs):
        assert GOOD_INSTRUCTION in good.source and BAD_INSTRUCTION not in good.source and good.target == pair.chosen
        assert BAD_INSTRUCTION in bad.source and GOOD_INSTRUCTION not in bad.source and bad.target == pair.rejected
    assert f"{GOOD_INSTRUCTION}\n\nBe brief." in examples[4].source  # merged with the prompt's own system message
    assert "question 0 about cats" in examples[0].source
    assert "Please do not share false information under any circumstances." in GOOD_INSTRUCTION  # the reference's text
    assert default_layers(30) == [7, 9, 11, 13, 15, 17, 19, 21] and default_layers(4) == [1] and default_layers(1) == [0]


def test_the_loss_counts_answer_tokens_only() -> None:
    g = torch.Generator().manual_seed(0)
    hidden, target = torch.randn(2, 3, 7, 5, generator=g), torch.randn(2, 3, 7, 5, generator=g)
    answer = torch.zeros(3, 7, dtype=torch.bool)
    answer[0, 2:5], answer[1, 4:7], answer[2, 1:2] = True, True, True
    s, n = masked_l2(hidden, target, answer)
    assert n == 2 * (3 + 3 + 1)
    other = target.clone()
    other[:, ~answer] = 100.0  # the prompt's and the padding's targets
    s2, _ = masked_l2(hidden, other, answer)
    assert torch.equal(s, s2)
    expected = sum(float((hidden[l, b, t] - target[l, b, t]).norm()) for l in range(2) for b in range(3) for t in range(7) if answer[b, t])
    assert abs(float(s) - expected) < 1e-4
    target[0, 0, 3] += 1.0  # an answer token's target does count
    assert float(masked_l2(hidden, target, answer)[0]) != pytest.approx(float(s))


def test_scit_run_writes_adapter_merged_and_manifest(scit_run: RAHFResult, llama: Path) -> None:
    out = scit_run.out_dir
    for name in ("rahf.json", "history.json", "loss.png", "adapter/alignware.json", "adapter/adapter_model.safetensors",
                 "merged/config.json", "merged/model.safetensors", "merged/tokenizer.json", "sft/scit/alignware.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "rahf.json").read_text())
    assert manifest["kind"] == "rahf" and manifest["variant"] == "scit" and manifest["alpha"] == 4.0
    assert manifest["layers"] == scit_run.layers == [1] and manifest["base_model"] == str(llama.resolve())
    assert manifest["lora"]["layers_to_transform"] == [0, 1]
    assert json.loads((out / "sft/scit/alignware.json").read_text())["kind"] == "rahf-scit"


def test_the_fit_lowers_the_masked_l2(scit_run: RAHFResult) -> None:
    assert scit_run.fit_loss_untrained is not None and scit_run.fit_loss_final is not None
    assert scit_run.fit_loss_final < 0.8 * scit_run.fit_loss_untrained
    losses = [r["loss"] for r in scit_run.history if "loss" in r]
    assert len(losses) == scit_run.steps == 6 * 3  # 12 fit items (6 pairs x 2 answers), batch 4
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_checkpoint_gives_the_logits_of_the_adapter_switched_on(scit_run: RAHFResult, llama: Path) -> None:
    shared = SharedBase(*load_causal_lm(llama))
    shared.add_adapter("rahf", scit_run.adapter_dir)
    merged, _ = load_causal_lm(scit_run.merged_dir)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29, 33, 37]])
    with shared.using("rahf") as m:
        on = _logits(m, ids)
    with shared.using(None) as m:
        off = _logits(m, ids)
    assert torch.allclose(on, _logits(merged, ids), atol=1e-5)
    assert not torch.allclose(on, off, atol=1e-4)  # the adapter does something


def test_the_stage_on_a_shared_base_equals_the_merged_model(scit_run: RAHFResult, llama: Path) -> None:
    shared = SharedBase(*load_causal_lm(llama), path=llama)
    chat = shared.chat_backend(max_tokens=12)
    stage = RAHF(scit_run.out_dir)
    seen: list[str | None] = []
    probe = shared.model.register_forward_hook(lambda *a: seen.append(shared.active_adapter))
    try:
        steered = Pipeline(chat, [stage]).chat("question 1 about cats", temperature=0)
    finally:
        probe.remove()
    assert seen and set(seen) == {"rahf"}  # switched on for every forward pass of the call
    assert steered.trace[0].verdict == "modified"
    merged = Pipeline(LocalBackend(scit_run.merged_dir, max_tokens=12)).chat("question 1 about cats", temperature=0)
    assert steered.text == merged.text and steered.usage.completion_tokens == merged.usage.completion_tokens
    assert shared.active_adapter is None and not shared.model._forward_hooks and not shared.model._forward_pre_hooks
    req = ChatRequest(messages=[{"role": "user", "content": "question 2 about cats"}], temperature=0)
    assert [c.delta for c in chat.stream(req, model_stages=[stage])][:-1] != []  # streaming works too
    assert shared.active_adapter is None


def test_yaml_entry_on_the_merged_folder_and_a_plain_model(scit_run: RAHFResult, llama: Path) -> None:
    from middleware.config import load_pipeline

    pipe = load_pipeline({"llm": str(scit_run.merged_dir), "stages": [{"type": "rahf", "path": str(scit_run.out_dir)}]})
    out = pipe.chat("question 1 about cats", temperature=0, max_tokens=8)
    assert out.trace[0].verdict == "modified"
    plain = Pipeline(LocalBackend(llama, max_tokens=8), [RAHF(scit_run.out_dir)]).chat("hi", temperature=0)
    assert plain.trace[0].verdict == "failed" and "SharedBase" in (plain.trace[0].reason or "")
    with pytest.raises(InputError, match="not a RAHF run folder"):
        RAHF(scit_run.out_dir / "sft")


def test_resume_reuses_targets_and_checkpoints(scit_run: RAHFResult, llama: Path) -> None:
    shards = sorted((scit_run.out_dir / "targets").glob("shard-*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in shards]
    again = train_rahf(PAIRS, scit_run.out_dir, _config(llama), progress=False)
    assert [f.stat().st_mtime_ns for f in shards] == stamps  # the targets were not computed again
    assert again.resumed_from == scit_run.steps and again.steps == scit_run.steps
    assert again.history == scit_run.history


def test_alpha_zero_targets_the_plain_model(llama: Path, tmp_path: Path) -> None:
    # alpha = 0: the targets are the plain model's own states, which the fresh (identity) LoRA already has
    res = train_rahf(PAIRS, tmp_path, _config(llama, alpha=0.0, sft_max_steps=1, max_steps=1), progress=False)
    assert res.fit_loss_untrained is not None and res.fit_loss_untrained < 1e-6
    assert [r["loss"] for r in res.history if "loss" in r][0] < 1e-6


def test_dual_on_qwen2(tmp_path: Path) -> None:
    base = make_tiny_model_dir(tmp_path / "qwen", arch="qwen2", layers=4)
    res = train_rahf(PAIRS, tmp_path / "run", _config(base, variant="dual", answers="chosen", epochs=2), progress=False)
    assert set(res.sft) == {"chosen", "rejected"}
    assert json.loads((res.out_dir / "rahf.json").read_text())["variant"] == "dual"
    assert res.fit_loss_untrained and res.fit_loss_untrained > 0
    shared = SharedBase(*load_causal_lm(base))
    shared.add_adapter("rahf", res.adapter_dir)
    merged, _ = load_causal_lm(res.merged_dir)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with shared.using("rahf") as m:
        assert torch.allclose(_logits(m, ids), _logits(merged, ids), atol=1e-5)


def test_bad_settings_are_reported() -> None:
    with pytest.raises(InputError, match="variant"):
        RAHFConfig(variant="triple").validate()  # type: ignore[arg-type]
    with pytest.raises(InputError, match="alpha"):
        RAHFConfig(alpha=-1).validate()
    with pytest.raises(InputError, match="no preference pairs"):
        train_rahf([], "/nonexistent-rahf-out")


def test_shared_base_owning_finds_the_base_of_a_model(llama: Path) -> None:
    shared = SharedBase.get(llama, device="cpu")
    try:
        assert SharedBase.owning(shared.chat_backend().model) is shared  # the chat backend's scoped view
        assert SharedBase.owning(shared.model) is shared  # the cached instance's model itself
        assert SharedBase.owning(load_causal_lm(llama)[0]) is None  # another copy of the same weights
    finally:
        SharedBase.clear()
