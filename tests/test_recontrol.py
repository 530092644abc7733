"""RE-Control: collection of the head's input states, the ``ValueGuidedEditor`` stage (zero steps is plain
decoding, a known value gradient moves the tokens, the cap holds, batches, streams, hooks removed), its
files, and ``train_recontrol`` end to end on tiny random models (Llama, Qwen2, GPT-2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from judge import RewardModel
from judge_pairs import cfg as judge_cfg
from judge_pairs import toy_pairs
from middleware.config import PipelineConfig
from middleware.errors import BackendError, CheckpointError, InputError
from middleware.local import LocalBackend
from middleware.models import load_causal_lm
from middleware.types import ChatRequest, Message
from steering import ReControlConfig, ValueGuidedEditor, train_recontrol
from steering import rollouts as rollouts_mod
from steering.rollouts import collect_rollouts, output_head, sample_rollouts
from steering.value import ValueNet
from local_models import lively_backend
from steering_models import one_thread
from tiny import make_tiny_model_dir

PROMPTS = ["Hi", "What is the capital of France? Please answer.", "The quick brown fox jumps over the lazy dog.", "Paris"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks run fastest on one thread
_ = one_thread


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    """A tiny model with its weights redrawn at std 0.3, so greedy answers differ between prompts and edits."""
    lively = lively_backend(make_tiny_model_dir(tmp_path_factory.mktemp(f"rec-{request.param}"), arch=request.param))
    lively.max_tokens = 10
    return lively


def req(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest.build(text, **kw)


def hidden_of(backend: LocalBackend) -> int:
    return int(output_head(backend.model).weight.shape[-1])


def random_editor(hidden: int, **kw: Any) -> ValueGuidedEditor:
    torch.manual_seed(0)
    return ValueGuidedEditor(ValueNet(hidden, 16, 2), **kw)


def token_editor(backend: LocalBackend, token: int, **kw: Any) -> ValueGuidedEditor:
    """V(h) = W[token]·h: its gradient is the head row of ``token``, so ascent raises that token's logit."""
    w = output_head(backend.model).weight[token].detach().clone()
    net = ValueNet(len(w), 4, 1)
    net.mlp = nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        net.mlp.weight.copy_(w[None])
    return ValueGuidedEditor(net, **kw)


def head_hooks(backend: LocalBackend) -> int:
    return len(output_head(backend.model)._forward_pre_hooks)


def test_zero_steps_is_plain_decoding(backend: LocalBackend) -> None:
    requests = [req(p) for p in PROMPTS]
    plain = [backend.complete(r).text for r in requests]
    off = random_editor(hidden_of(backend), steps=0)
    assert [backend.complete(r, model_stages=[off]).text for r in requests] == plain
    assert [r.text for r in backend.batch(requests, model_stages=[off])] == plain
    assert "".join(c.delta for c in backend.stream(requests[1], model_stages=[off])) == plain[1]
    # the same check can fail: with steps the answers move
    on = token_editor(backend, 7, steps=3, step_size=5.0, max_edit_norm=None)
    assert [backend.complete(r, model_stages=[on]).text for r in requests] != plain


def test_known_gradient_raises_its_tokens_logit_and_the_cap_holds(backend: LocalBackend) -> None:
    model, token = backend.model, 7
    ids = torch.tensor([backend.prompt_ids(req(PROMPTS[1]))])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits[0, -1].float()
    w2 = float(output_head(model).weight[token].detach().pow(2).sum())
    ed = token_editor(backend, token, steps=3, step_size=0.01, max_edit_norm=None)
    with ed.attach(model), torch.inference_mode():
        edited = model(input_ids=ids).logits[0, -1].float()
    # h' = h + 3·0.01·w, so logit_k moves by 0.03·|w|², and every logit j by 0.03·W_j·w
    assert float(edited[token] - plain[token]) == pytest.approx(0.03 * w2, rel=1e-3)
    assert int((edited - plain).argmax()) == token

    # a big step makes the model say the token every time; the cap bounds each edit's norm
    strong = token_editor(backend, token, steps=2, step_size=100.0, max_edit_norm=None)
    out = backend.complete(req(PROMPTS[0], max_tokens=5), model_stages=[strong])
    assert out.usage.completion_tokens == 5 and out.text == backend.tokenizer.decode([token] * 5)
    capped = token_editor(backend, token, steps=4, step_size=100.0, max_edit_norm=0.5)
    backend.batch([req(p) for p in PROMPTS], model_stages=[capped])
    assert capped.edits > 0 and capped.edit_norm_max <= 0.5 + 1e-4
    assert capped.edit_norm_max == pytest.approx(0.5, rel=1e-3)


def test_batch_and_stream_give_what_one_by_one_gives(backend: LocalBackend) -> None:
    requests = [req(p) for p in PROMPTS]
    ed = random_editor(hidden_of(backend), steps=2, step_size=20.0, max_edit_norm=3.0)
    alone = [backend.complete(r, model_stages=[ed]).text for r in requests]
    assert alone != [backend.complete(r).text for r in requests]  # the edit does something
    assert [r.text for r in backend.batch(requests, model_stages=[ed])] == alone
    assert "".join(c.delta for c in backend.stream(requests[2], model_stages=[ed])) == alone[2]
    assert head_hooks(backend) == 0


def test_hooks_gone_also_when_generation_raises(backend: LocalBackend) -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("value net exploded")

    ed = random_editor(hidden_of(backend), steps=1, on_error="raise")
    ed.value.mlp = Boom()
    with pytest.raises(BackendError, match="value net exploded"):
        backend.complete(req("Hi"), model_stages=[ed])
    assert head_hooks(backend) == 0
    with pytest.raises(BackendError):
        backend.batch([req("Hi"), req("Paris")], model_stages=[ed])
    with pytest.raises(BackendError):
        list(backend.stream(req("Hi"), model_stages=[ed]))
    assert head_hooks(backend) == 0


def test_collection_records_one_state_per_token_aligned_with_a_recompute(backend: LocalBackend) -> None:
    model, tok = backend.model, backend.tokenizer
    prompts = [[Message(role="user", content=p)] for p in PROMPTS[:3]]
    rolls = sample_rollouts(model, tok, prompts, samples=2, max_new_tokens=7, temperature=1.0, seed=3, batch_size=4)
    assert [(r.prompt_index, r.sample) for r in rolls] == [(i, s) for i in range(3) for s in range(2)]
    eos = backend._decoder.eos_ids
    for r in rolls:
        ids = backend.prompt_ids(ChatRequest(messages=prompts[r.prompt_index]))
        closing = [min(eos)] if r.finish == "stop" else []
        assert len(r.states) == len(r.ids) + len(closing) and len(r.states) >= 1
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids + r.ids + closing]), output_hidden_states=True)
        expect = out.hidden_states[-1][0, len(ids) - 1 : len(ids) - 1 + len(r.states)]
        assert torch.allclose(expect, r.states, atol=1e-4), r
    # the same seeds in another batch layout give the same answers
    again = sample_rollouts(model, tok, prompts, samples=2, max_new_tokens=7, temperature=1.0, seed=3, batch_size=1)
    assert [r.ids for r in again] == [r.ids for r in rolls]
    assert head_hooks(backend) == 0


def test_wrong_hidden_size_is_refused(backend: LocalBackend) -> None:
    ed = random_editor(16, steps=1)
    with pytest.raises(InputError, match=rf"size 16.*size {hidden_of(backend)}"):
        with ed.attach(backend.model):
            pass
    resp = backend.complete(req("Hi"), model_stages=[ed])  # fail-open: the plain answer, trace says why
    assert resp.text == backend.complete(req("Hi")).text
    assert resp.trace[0].verdict == "failed" and "16" in (resp.trace[0].reason or "")


def test_save_load_and_pipeline_config(tmp_path: Path) -> None:
    ed = random_editor(32, steps=3, step_size=0.25, max_edit_norm=2.0, info={"base_model": "tiny", "training": {"steps": 5}})
    with torch.no_grad():
        ed.value.reward_mean.fill_(1.5)
    ed.save(tmp_path / "rc")
    m = json.loads((tmp_path / "rc" / "manifest.json").read_text())
    assert m["hidden_size"] == 32 and m["width"] == 16 and m["depth"] == 2 and m["base_model"] == "tiny"
    assert m["steps"] == 3 and m["step_size"] == 0.25 and m["max_edit_norm"] == 2.0 and m["reward_mean"] == 1.5
    back = ValueGuidedEditor.load(tmp_path / "rc", steps=1)
    assert back.steps == 1 and back.step_size == 0.25 and back.max_edit_norm == 2.0
    h = torch.randn(3, 32)
    assert torch.equal(back.value(h), ed.value(h))
    stage = PipelineConfig.load({"stages": [{"type": "recontrol", "path": str(tmp_path / "rc"), "steps": 2, "name": "rc"}]}).build_stage(0)
    assert isinstance(stage, ValueGuidedEditor) and stage.steps == 2 and stage.name == "rc"
    w = tmp_path / "rc" / "value.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(CheckpointError, match="checksum"):
        ValueGuidedEditor.load(tmp_path / "rc")
    with pytest.raises(CheckpointError, match="not a RE-Control folder"):
        ValueGuidedEditor.load(tmp_path)
    with pytest.raises(InputError, match="steps"):
        random_editor(32, steps=-1)


def test_train_recontrol_end_to_end_and_rerun_resumes_without_sampling(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    judge = RewardModel.create(judge_cfg(tiny_model_dir, train="head"))
    pairs = toy_pairs(6)
    cfg = ReControlConfig(samples_per_prompt=2, max_new_tokens=5, width=16, depth=1, max_steps=6, batch_size=4, save_every=3,
                          eval_fraction=0.25, steps=2, step_size=0.5, max_edit_norm=1.0)
    res = train_recontrol(pairs, tmp_path / "run", cfg, judge=judge, base=tiny_model_dir, progress=False)
    out = tmp_path / "run"
    assert res.finished and not res.interrupted
    for name in ("value.safetensors", "manifest.json", "metrics.json", "value_training.png", "rollouts/identity.json"):
        assert (out / name).is_file(), name
    n_prompts = len({json.dumps([m.model_dump() for m in p.prompt]) for p in pairs})
    assert res.metrics["n_prompts"] == n_prompts and res.metrics["n_answers"] == 2 * n_prompts
    assert res.metrics["n_train"] + res.metrics["n_eval"] == 2 * n_prompts and res.metrics["n_eval"] >= 2
    assert set(res.timings) == {"load", "collect", "label", "train"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"] == str(Path(tiny_model_dir).resolve()) and manifest["max_edit_norm"] == 1.0

    def no_sampling(*a: Any, **k: Any) -> Any:
        raise AssertionError("sampled again")

    monkeypatch.setattr(rollouts_mod, "sample_rollouts", no_sampling)
    again = train_recontrol(pairs, out, cfg, judge=judge, base=tiny_model_dir, progress=False)
    assert again.finished and again.metrics["steps"] == 6

    editor = ValueGuidedEditor.load(out)
    llm = LocalBackend(tiny_model_dir, device="cpu", max_tokens=6)
    resp = llm.complete(req("Hi"), model_stages=[editor])
    assert resp.trace[0].verdict == "modified" and editor.edits == resp.usage.completion_tokens


def test_interrupted_collection_resumes_from_its_last_part(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    prompts = [[Message(role="user", content=p)] for p in PROMPTS]
    cfg = ReControlConfig(samples_per_prompt=2, max_new_tokens=4)
    whole = collect_rollouts(model, tok, prompts, tmp_path / "a", cfg, base="tiny", progress=False, prompts_per_part=1)
    real, calls, stop_at = rollouts_mod.sample_rollouts, [], [2]

    def flaky(*a: Any, **k: Any) -> Any:
        calls.append(k["first_index"])
        if k["first_index"] in stop_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rollouts_mod, "sample_rollouts", flaky)
    with pytest.raises(KeyboardInterrupt):
        collect_rollouts(model, tok, prompts, tmp_path / "b", cfg, base="tiny", progress=False, prompts_per_part=1)
    calls.clear()
    stop_at.clear()
    again = collect_rollouts(model, tok, prompts, tmp_path / "b", cfg, base="tiny", progress=False, prompts_per_part=1)
    assert calls == [2, 3] and again == whole
    # other settings in the same folder: sampled again from scratch
    calls.clear()
    collect_rollouts(model, tok, prompts, tmp_path / "b", ReControlConfig(samples_per_prompt=1, max_new_tokens=4), base="tiny",
                     progress=False, prompts_per_part=1)
    assert calls == [0, 1, 2, 3]


def test_the_editor_describes_its_edits_in_the_trace() -> None:
    from steering.value import ValueNet

    editor = ValueGuidedEditor(ValueNet(8, 4, 1), steps=3, step_size=0.5, max_edit_norm=2.0)
    assert editor.describe() == "value-guided edits: 3 steps of 0.5, capped at 2.0"
