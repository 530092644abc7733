"""The BPO prompt rewriter stage: its template, safeguards through a real Pipeline, multi-turn requests,
construction, model mode on a tiny checkpoint, and the prompted example."""

from __future__ import annotations

import json
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

from pathlib import Path

import pytest

from middleware.errors import InputError
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from rewriters.prompt_rewriter import PromptRewriter
from rewriters.templates import Template, get_template
from text_stage_fakes import BPO_PUBLISHED, PROMPT, FixedLLM, echo_llm, received
from text_stage_fakes import BPORecordingGenerator as RecordingGenerator


# -- templates ----------------------------------------------------------------------------------------
def test_bpo_template_round_trip_is_byte_for_byte() -> None:
    t = get_template("bpo")
    assert t.render(prompt=PROMPT) == BPO_PUBLISHED.format(PROMPT)
    assert Template.from_dict(json.loads(json.dumps(t.to_dict()))).render(prompt=PROMPT) == BPO_PUBLISHED.format(PROMPT)
    gen = RecordingGenerator(["Explain step by step how photosynthesis works in plants."])
    Pipeline(echo_llm(), [PromptRewriter(gen)]).chat(PROMPT)
    assert gen.seen == [BPO_PUBLISHED.format(PROMPT)]
    assert gen.kwargs[0]["temperature"] == 0.6 and gen.kwargs[0]["top_p"] == 0.9  # BPO's inference settings


def test_greedy_and_custom_decoding() -> None:
    gen = RecordingGenerator(["Explain how photosynthesis works in plants."])
    PromptRewriter(gen, temperature=0.0, max_new_tokens=64).rewrite(PROMPT)
    assert gen.kwargs[0]["temperature"] == 0.0 and gen.kwargs[0]["max_new_tokens"] == 64


# -- safeguards, through a real pipeline ------------------------------------------------------------------
FALLBACKS = {
    "empty": ("", "empty rewrite"),
    "whitespace": ("   \n ", "empty rewrite"),
    "too long": (" ".join(["photosynthesis"] * 80), "too long"),
    "too short": ("plants", "too short"),
    "answers (Sure)": ("Sure! Photosynthesis is how plants turn light into sugar.", "answers the prompt"),
    "answers (Here is)": ("Here is how photosynthesis works: light is absorbed by chlorophyll.", "answers the prompt"),
    "answers (refusal)": ("I'm sorry, but I cannot help with photosynthesis questions.", "answers the prompt"),
    "answers (statement)": ("Photosynthesis is the process by which plants turn light into sugar.", "a statement"),
    "lost key content": ("Describe your favourite holiday destination and why you like it.", "key content"),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_each_fallback_keeps_the_original_prompt_with_a_reason(case: str) -> None:
    output, reason = FALLBACKS[case]
    pipe = Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM(output))])
    resp = pipe.chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    (trace,) = resp.trace
    assert trace.stage == "PromptRewriter" and trace.verdict == "passed"
    assert trace.reason and "kept the original prompt" in trace.reason and reason in trace.reason


def test_truncated_rewrite_keeps_the_original_prompt() -> None:
    llm = FixedLLM("Explain step by step how photosynthesis works in plants and", finish_reason="length")
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(llm)]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    assert "cut off at max_new_tokens" in resp.trace[0].reason


def test_model_mode_fallback_is_traced_too() -> None:
    gen = RecordingGenerator(["Certainly! Plants use sunlight."])
    resp = Pipeline(echo_llm(), [PromptRewriter(gen)]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    assert resp.trace[0].verdict == "passed" and "answers the prompt" in resp.trace[0].reason


def test_good_rewrite_replaces_the_prompt_and_labels_are_stripped() -> None:
    out = 'Optimized prompt: "Explain how photosynthesis works in plants, step by step, for a beginner."'
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM(out))]).chat(PROMPT)
    assert received(resp)[-1]["content"] == "Explain how photosynthesis works in plants, step by step, for a beginner."
    assert resp.trace[0].verdict == "modified"
    assert resp.trace[0].before == PROMPT


def test_failure_in_the_rewriter_llm_passes_the_prompt_through() -> None:
    def boom(msgs: list[dict]) -> str:
        raise RuntimeError("rewriter backend down")

    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(FunctionLLM(boom))]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    assert resp.trace[0].verdict == "failed" and "rewriter backend down" in resp.trace[0].reason


# -- multi-turn ---------------------------------------------------------------------------------------
def test_multi_turn_rewrites_the_last_user_message_only() -> None:
    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me about plants."},
        {"role": "assistant", "content": "Plants are living organisms."},
        {"role": "user", "content": PROMPT},
    ]
    llm = FixedLLM("Explain how photosynthesis works in plants, step by step.")
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(llm)]).chat(history)
    got = received(resp)
    assert got[:3] == history[:3]
    assert got[3] == {"role": "user", "content": "Explain how photosynthesis works in plants, step by step."}
    # the rewriter was asked about the last user message only
    (req,) = llm.requests
    assert PROMPT in req.messages[0].content and "Plants are living organisms" not in req.messages[0].content


async def test_async_pipeline_uses_the_same_rules() -> None:
    resp = await Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM("Sure, here you go."))]).achat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT and "answers the prompt" in resp.trace[0].reason
    good = FixedLLM("Explain how photosynthesis works in plants.")
    resp = await Pipeline(echo_llm(), [PromptRewriter.prompted(good)]).achat(PROMPT)
    assert received(resp)[-1]["content"] == "Explain how photosynthesis works in plants."


# -- construction ---------------------------------------------------------------------------------------
def test_from_config_prompted_through_litellm_mock() -> None:
    from middleware.config import load_pipeline

    pipe = load_pipeline(
        {
            "stages": [
                {
                    "type": "prompt_rewriter",
                    "mode": "prompted",
                    "llm": "openai/x",
                    "llm_options": {"mock_response": "Explain how photosynthesis works in plants.", "max_retries": 0},
                    "on_error": "raise",
                    "temperature": 0,
                }
            ]
        },
        llm=echo_llm(),
    )
    resp = pipe.chat(PROMPT)
    assert received(resp)[-1]["content"] == "Explain how photosynthesis works in plants."


def test_from_config_errors_name_the_problem() -> None:
    with pytest.raises(InputError, match="needs path"):
        PromptRewriter.from_config(mode="model")
    with pytest.raises(TypeError, match="unknown option"):
        PromptRewriter.from_config(mode="prompted", llm="openai/x", colour="blue")
    with pytest.raises(InputError, match="mode must be"):
        PromptRewriter.from_config(mode="magic", llm="openai/x")
    with pytest.raises(InputError, match="llm applies to mode 'prompted'"):
        PromptRewriter.from_config(mode="model", path="runs/rw", llm="openai/x")
    with pytest.raises(InputError, match="path applies to mode 'model'"):
        PromptRewriter.from_config(mode="prompted", path="runs/rw", llm="openai/x")
    with pytest.raises(InputError, match="exactly one"):
        PromptRewriter()
    with pytest.raises(InputError, match="exactly one field"):
        PromptRewriter.prompted(FixedLLM("x"), template="aligner-v1.0")
    with pytest.raises(InputError, match="temperature must be a finite number >= 0, got nan"):
        PromptRewriter.prompted(FixedLLM("x"), temperature=float("nan"))


def test_model_mode_on_a_tiny_checkpoint(tiny_model_dir: Path) -> None:
    from rewriters.generator import TextGenerator

    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    ids = gen.tokenizer(BPO_PUBLISHED.format(PROMPT))["input_ids"]
    assert gen.tokenizer.decode(ids, skip_special_tokens=True) == BPO_PUBLISHED.format(PROMPT)
    rw = PromptRewriter(gen, temperature=0.0, max_new_tokens=8)
    resp = Pipeline(echo_llm(), [rw]).chat(PROMPT)
    # a random model's rewrite never passes the safeguards: the prompt goes through, with the reason
    assert received(resp)[-1]["content"] == PROMPT
    assert resp.trace[0].verdict == "passed" and "kept the original prompt" in resp.trace[0].reason


def test_deterministic_only_when_greedy_without_timeout(tiny_model_dir: Path) -> None:
    from rewriters.generator import TextGenerator

    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    assert PromptRewriter(gen, temperature=0.0).deterministic()
    assert not PromptRewriter(gen).deterministic()  # BPO's published decoding samples (temperature 0.6)
    assert not PromptRewriter(gen, temperature=0.0, timeout=5).deterministic()
    # prompted mode: as deterministic as the LLM says its greedy requests are
    assert PromptRewriter.prompted(FunctionLLM(lambda m: "x", deterministic=True), temperature=0.0).deterministic()
    assert not PromptRewriter.prompted(FunctionLLM(lambda m: "x"), temperature=0.0).deterministic()
    assert not PromptRewriter.prompted(FunctionLLM(lambda m: "x", deterministic=True), temperature=0.7).deterministic()


def test_prompted_example_runs_offline(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = Path(__file__).resolve().parents[1] / "examples" / "rewriter_prompted.py"
    spec = importlib.util.spec_from_file_location("rewriter_prompted_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    out = capsys.readouterr().out
    assert "modified" in out and "kept the original prompt: rewrite answers the prompt" in out
