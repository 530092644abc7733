"""Remote mode of the rewriter and the corrector: trained adapters served by an inference engine (vLLM's
multi-LoRA serving), reached through litellm's text-completion API. The loopback ``FakeOpenAI`` stands in
for the engine's ``/v1/completions``; each test checks what reached it against what the local mode
hands its model, and what the stage makes of the reply against what the local mode makes of the same
generation."""

from __future__ import annotations

import json
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

from pathlib import Path
from typing import Any

import pytest

from fake_upstream import FakeOpenAI, cut, fail, ok, slow
from local_models import fresh_bases, make_adapters  # noqa: F401  (fixture)
from middleware.config import load_pipeline
from middleware.errors import InputError
from middleware.pipeline import Pipeline
from middleware.types import StageTrace
from rewriters.prompt_rewriter import PromptRewriter
from rewriters.remote_generator import RemoteGenerator
from rewriters.rewrite_checks import RewriteCheck
from rewriters.response_corrector import ResponseCorrector
from rewriters.sentences import split_chunks
from rewriters.templates import Template, register_template
from text_stage_fakes import (
    ALIGNER_V1, ANSWER, BPO_PUBLISHED, LONG_ANSWER, PROMPT, QUESTION, BPORecordingGenerator, FixedLLM, RecordingGenerator,
    echo_llm, received, streamed,
)

FAST = {"max_retries": 0, "timeout": 5.0}
GOOD_REWRITE = "Explain step by step how photosynthesis works in plants, with one example."
GOOD_CORRECTION = "The capital of France is Paris, known for the Eiffel Tower and the Louvre. Anything else?"


def rewriter(server: FakeOpenAI, **kw: Any) -> PromptRewriter:
    options = {**FAST, **kw.pop("remote_options", {})}
    kw.setdefault("template", "bpo")
    return PromptRewriter.remote("hosted_vllm/rewriter", api_base=server.base, remote_options=options, **kw)


def corrector(server: FakeOpenAI, **kw: Any) -> ResponseCorrector:
    options = {**FAST, **kw.pop("remote_options", {})}
    kw.setdefault("template", "aligner-v1.0")
    return ResponseCorrector.remote("hosted_vllm/corrector", api_base=server.base, remote_options=options, **kw)


def sent(server: FakeOpenAI) -> list[str]:
    """The prompts the engine received, in order; every request went to the text-completion API."""
    assert server.paths and all(p == "/v1/completions" for p in server.paths), server.paths
    return [r["prompt"] for r in server.requests]


def outcome(trace: StageTrace) -> tuple[Any, ...]:
    return trace.stage, trace.verdict, trace.reason, trace.before, trace.after


# -- the exact template, and the same result as local mode ----------------------------------------------
def test_rewriter_sends_the_template_byte_for_byte_with_the_local_decoding(server: FakeOpenAI) -> None:
    server.script("rewriter", ok(GOOD_REWRITE))
    local_gen = BPORecordingGenerator([GOOD_REWRITE])
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": PROMPT},
    ]
    remote_resp = Pipeline(echo_llm(), [rewriter(server, seed=7)]).chat(conversation)
    local_resp = Pipeline(echo_llm(), [PromptRewriter(local_gen, seed=7)]).chat(conversation)

    assert sent(server) == local_gen.seen == [BPO_PUBLISHED.format(PROMPT)]
    body = server.requests[0]
    local_kw = local_gen.kwargs[0]
    assert body["model"] == "rewriter" and "messages" not in body
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (
        local_kw["temperature"], local_kw["top_p"], local_kw["max_new_tokens"], local_kw["seed"]
    ) == (0.6, 0.9, 512, 7)  # BPO's published decoding, the same in both modes
    assert received(remote_resp) == received(local_resp)
    assert received(remote_resp)[-1]["content"] == GOOD_REWRITE and received(remote_resp)[1]["content"] == "hi"
    assert outcome(remote_resp.trace[-1]) == outcome(local_resp.trace[-1])
    assert remote_resp.trace[-1].verdict == "modified"


def test_corrector_sends_the_template_byte_for_byte(server: FakeOpenAI) -> None:
    server.script("corrector", ok(GOOD_CORRECTION))
    local_gen = RecordingGenerator([GOOD_CORRECTION])
    remote_resp = Pipeline(FixedLLM(ANSWER), [corrector(server)]).chat(QUESTION)
    local_resp = Pipeline(FixedLLM(ANSWER), [ResponseCorrector(local_gen)]).chat(QUESTION)
    assert sent(server) == local_gen.seen == [ALIGNER_V1.format(QUESTION, ANSWER)]
    assert server.requests[0]["temperature"] == 0.0 and "seed" not in server.requests[0]  # greedy, no seed asked
    assert remote_resp.text == local_resp.text == GOOD_CORRECTION
    assert outcome(remote_resp.trace[-1]) == outcome(local_resp.trace[-1])


@pytest.mark.parametrize("kind", ["rewriter", "corrector"])
def test_remote_mode_matches_local_mode_on_the_same_adapter(
    kind: str, tiny_model_dir: Path, tmp_path: Path, server: FakeOpenAI, fresh_bases: None  # noqa: F811
) -> None:
    """The adapter folder the engine would serve: remote mode reads the template and decoding defaults
    from its manifest, sends what the local mode feeds its model, and, given the local model's own
    generation back, gives the same result and trace."""
    rewriter_dir, corrector_dir = make_adapters(tiny_model_dir, tmp_path)
    cls: Any = PromptRewriter if kind == "rewriter" else ResponseCorrector
    folder = rewriter_dir if kind == "rewriter" else corrector_dir
    local = cls.from_pretrained(folder, temperature=0.0, max_new_tokens=12)
    remote = cls.remote(f"hosted_vllm/{kind}", api_base=server.base, path=folder, remote_options=FAST,
                        temperature=0.0, max_new_tokens=12)
    assert remote.mode == "remote" and local.mode == "model"
    assert remote.template == local.template and remote.params == local.params
    assert remote.generator.kind == local.generator.kind == kind

    if kind == "rewriter":
        rendered = local.template.render(prompt=PROMPT)
        pipes = [Pipeline(echo_llm(), [stage]) for stage in (local, remote)]
        ask = PROMPT
    else:
        rendered = local.template.render(question=QUESTION, answer=ANSWER)
        pipes = [Pipeline(FixedLLM(ANSWER), [stage]) for stage in (local, remote)]
        ask = QUESTION
    (generation,) = local.generator.generate_ex([rendered], temperature=0.0, max_new_tokens=12)
    assert generation.text  # the random model says something: the comparison is not of two empty answers
    server.script(kind, {"status": 200, "text": generation.text, "finish_reason": generation.finish_reason})
    local_resp, remote_resp = (pipe.chat(ask) for pipe in pipes)

    assert sent(server) == [rendered]
    assert (server.requests[0]["max_tokens"], server.requests[0]["temperature"]) == (12, 0.0)
    assert remote_resp.text == local_resp.text
    assert outcome(remote_resp.trace[-1]) == outcome(local_resp.trace[-1])


# -- the safeguards apply to what comes back ----------------------------------------------------------
REWRITE_REPLIES = {
    "good": ok(GOOD_REWRITE),
    "empty": ok(""),
    "cut at the token limit": cut(GOOD_REWRITE),
    "answers instead": ok("Sure! Photosynthesis is how plants turn light into sugar."),
    "degenerate": ok("plants plants plants plants plants plants plants plants plants plants plants plants"),
    "drops the key content": ok("Describe your favourite holiday destination and why you like it."),
}


@pytest.mark.parametrize("case", sorted(REWRITE_REPLIES))
def test_rewriter_safeguards_apply_to_the_engines_reply(case: str, server: FakeOpenAI) -> None:
    reply = REWRITE_REPLIES[case]
    server.script("rewriter", reply)
    local_gen = BPORecordingGenerator([reply["text"]], finish_reason=reply.get("finish_reason", "stop"))
    remote_resp = Pipeline(echo_llm(), [rewriter(server)]).chat(PROMPT)
    local_resp = Pipeline(echo_llm(), [PromptRewriter(local_gen)]).chat(PROMPT)
    assert received(remote_resp) == received(local_resp)
    assert outcome(remote_resp.trace[-1]) == outcome(local_resp.trace[-1])
    if case == "good":
        assert received(remote_resp)[-1]["content"] == GOOD_REWRITE
    else:
        assert received(remote_resp)[-1]["content"] == PROMPT
        assert remote_resp.trace[-1].reason.startswith("kept the original prompt: ")


CORRECTION_REPLIES = {
    "good": ok(GOOD_CORRECTION),
    "empty": ok(""),
    "cut at the token limit": cut(GOOD_CORRECTION),
    "degenerate": ok("Paris is the capital. " * 12),
    "leaks the template": ok("The capital is Paris. ASSISTANT: The capital of France is Paris."),
    "drops the tail": ok("The capital"),
}


@pytest.mark.parametrize("case", sorted(CORRECTION_REPLIES))
def test_corrector_safeguards_apply_to_the_engines_reply(case: str, server: FakeOpenAI) -> None:
    reply = CORRECTION_REPLIES[case]
    server.script("corrector", reply)
    local_gen = RecordingGenerator([reply["text"]], finish_reason=reply.get("finish_reason", "stop"))
    remote_resp = Pipeline(FixedLLM(ANSWER), [corrector(server)]).chat(QUESTION)
    local_resp = Pipeline(FixedLLM(ANSWER), [ResponseCorrector(local_gen)]).chat(QUESTION)
    assert remote_resp.text == local_resp.text == (GOOD_CORRECTION if case == "good" else ANSWER)
    assert outcome(remote_resp.trace[-1]) == outcome(local_resp.trace[-1])
    if case != "good":
        assert remote_resp.trace[-1].reason.startswith("kept the original answer: ")


# -- streaming ----------------------------------------------------------------------------------------
def test_chunked_streaming_corrector_works_in_remote_mode(server: FakeOpenAI) -> None:
    groups = split_chunks(LONG_ANSWER, 30)
    corrections = [g.strip().upper() for g in groups]
    corrections[1] = ""  # one group's correction is refused: that group keeps its original text
    settings: dict[str, Any] = dict(streaming="chunked", chunk_min_chars=30, context_chunks=1, chunk_max_new_tokens=64)

    server.script("corrector", *[ok(c) for c in corrections])
    text, pieces, trace = streamed(Pipeline(FixedLLM(LONG_ANSWER, piece=4), [corrector(server, **settings)]), QUESTION)
    streamed_prompts = sent(server)

    local_gen = RecordingGenerator(list(corrections))
    local_text, _, local_trace = streamed(Pipeline(FixedLLM(LONG_ANSWER, piece=4), [ResponseCorrector(local_gen, **settings)]), QUESTION)
    assert streamed_prompts == local_gen.seen  # each group's prompt, corrected context in the model's mouth
    assert streamed_prompts[1].endswith(corrections[0]) and streamed_prompts[1].startswith(ALIGNER_V1.split("{}")[0])
    assert text == local_text and outcome(trace[-1]) == outcome(local_trace[-1])
    assert len(pieces) == len(groups) > 2
    assert groups[1].strip() in text and corrections[2] in text
    assert "chunk 2: kept the original: empty correction" in trace[-1].reason
    assert all(r["max_tokens"] == 64 for r in server.requests)

    server.requests.clear()
    server.paths.clear()
    server.script("corrector", *[ok(c) for c in corrections])
    plain = Pipeline(FixedLLM(LONG_ANSWER), [corrector(server, **settings)]).chat(QUESTION)
    assert plain.text == text and sent(server) == streamed_prompts  # streamed and not streamed agree


def test_chunk_token_limit_without_the_served_tokenizer(server: FakeOpenAI) -> None:
    """Without ``chunk_max_new_tokens`` a group's limit is twice its (estimated) tokens plus 32, at most
    ``max_new_tokens``, as in local mode with the exact count."""
    stage = corrector(server, streaming="chunked", chunk_min_chars=30, max_new_tokens=100)
    groups = split_chunks(LONG_ANSWER, 30)
    server.script("corrector", *[ok(g.strip()) for g in groups])
    Pipeline(FixedLLM(LONG_ANSWER), [stage]).chat(QUESTION)
    expected = [min(100, 2 * stage.generator.count_tokens(g) + 32) for g in groups]
    assert [r["max_tokens"] for r in server.requests] == expected
    assert len(set(expected)) > 1 and stage.generator.count_tokens("abcdefg") == 3


async def test_async_pipeline_in_remote_mode(server: FakeOpenAI) -> None:
    server.script("rewriter", ok(GOOD_REWRITE))
    server.script("corrector", ok(GOOD_CORRECTION))
    pipe = Pipeline(FixedLLM(ANSWER), [rewriter(server), corrector(server)])
    resp = await pipe.achat(PROMPT)
    assert resp.text == GOOD_CORRECTION
    assert sent(server) == [BPO_PUBLISHED.format(PROMPT), ALIGNER_V1.format(GOOD_REWRITE, ANSWER)]
    chunks = [c.delta async for c in pipe.astream(PROMPT) if c.delta]
    assert "".join(chunks) == GOOD_CORRECTION


# -- failures follow the stage failure policy -------------------------------------------------------------
def test_a_5xx_is_retried_then_the_prompt_passes_through_with_the_reason(server: FakeOpenAI) -> None:
    server.script("rewriter", fail(503, "engine overloaded"))
    stage = rewriter(server, remote_options={"max_retries": 1, "timeout": 5.0})
    stage.generator._client.backoff_initial = 0.01
    resp = Pipeline(echo_llm(), [stage]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    trace = resp.trace[-1]
    assert trace.verdict == "failed"
    assert "hosted_vllm/rewriter" in trace.reason and "HTTP 503" in trace.reason and "engine overloaded" in trace.reason
    assert server.calls("rewriter") == 2


def test_an_unknown_adapter_name_is_not_retried(server: FakeOpenAI) -> None:
    server.script("corrector", fail(404, "The model `corrector` does not exist."))
    stage = corrector(server, remote_options={"max_retries": 3})
    resp = Pipeline(FixedLLM(ANSWER), [stage]).chat(QUESTION)
    assert resp.text == ANSWER and resp.trace[-1].verdict == "failed" and "does not exist" in resp.trace[-1].reason
    assert server.calls("corrector") == 1


def test_a_timeout_passes_the_answer_through(server: FakeOpenAI) -> None:
    server.script("corrector", slow(1.0, GOOD_CORRECTION))
    stage = corrector(server, remote_options={"timeout": 0.3})
    resp = Pipeline(FixedLLM(ANSWER), [stage]).chat(QUESTION)
    assert resp.text == ANSWER
    assert resp.trace[-1].verdict == "failed" and "Timeout" in resp.trace[-1].reason


def test_a_failing_group_lets_the_rest_of_a_chunked_answer_through(server: FakeOpenAI) -> None:
    groups = split_chunks(LONG_ANSWER, 30)
    server.script("corrector", ok(groups[0].strip().upper()), fail(500, "worker died"))
    stage = corrector(server, streaming="chunked", chunk_min_chars=30, chunk_max_new_tokens=64)
    text, pieces, trace = streamed(Pipeline(FixedLLM(LONG_ANSWER, piece=4), [stage]), QUESTION)
    assert text == groups[0].upper() + "".join(groups[1:])
    assert "chunk 2: BackendError" in trace[-1].reason and "worker died" in trace[-1].reason
    assert server.calls("corrector") == 2  # the groups after the failure are not sent


# -- batches ---------------------------------------------------------------------------------------
def test_a_batch_goes_as_concurrent_requests_and_each_gets_its_own_answer(server: FakeOpenAI) -> None:
    """Unscripted, the fake engine answers ``echo: PROMPT``: each request must get its own."""
    register_template(Template(name="test-bare-prompt", text="{prompt}", fields=("prompt",)))
    prompts = [
        "how do vaccines train the immune system?",
        "why is the sky blue during the day?",
        "how do ocean tides work on the earth?",
    ]
    stage = rewriter(server, template="test-bare-prompt", check=RewriteCheck(check_answer=False))
    out = Pipeline(echo_llm(), [stage]).batch(prompts)
    assert sorted(sent(server)) == sorted(prompts)
    assert [received(r)[-1]["content"] for r in out] == [f"echo: {p}" for p in prompts]
    assert all(r.trace[-1].verdict == "modified" for r in out)


# -- construction and configuration -----------------------------------------------------------------
def test_config_remote_with_the_template_read_from_the_adapter_folder(tmp_path: Path, server: FakeOpenAI) -> None:
    folder = tmp_path / "corrector"
    folder.mkdir()
    (folder / "alignware.json").write_text(json.dumps({
        "kind": "corrector", "base_model": "embedded", "template": "aligner-correction",
        "generation": {"temperature": 0.0, "max_new_tokens": 48},
    }))
    server.script("corrector", ok(GOOD_CORRECTION))
    server.script("rewriter", ok(GOOD_REWRITE))
    pipe = load_pipeline({
        "llm": "embedded",
        "stages": [
            {"type": "prompt_rewriter", "template": "bpo", "temperature": 0,
             "remote": {"model": "hosted_vllm/rewriter", "api_base": server.base, "api_key": "sk-engine", "max_retries": 0}},
            {"type": "response_corrector", "path": str(folder), "remote": {"model": "hosted_vllm/corrector", "api_base": server.base}},
        ],
    }, llm=FixedLLM(ANSWER))
    rw, co = pipe.stages
    assert (rw.mode, co.mode) == ("remote", "remote") and not rw.deterministic()
    assert co.template.name == "aligner-correction" and co.params["max_new_tokens"] == 48
    assert "mode='remote'" in repr(co) and "hosted_vllm/corrector" in repr(co.generator)
    resp = pipe.chat(PROMPT)
    assert resp.text == GOOD_CORRECTION
    assert sent(server) == [BPO_PUBLISHED.format(PROMPT), co.template.render(question=GOOD_REWRITE, answer=ANSWER)]
    assert server.auth[0] == "Bearer sk-engine"
    assert server.requests[0]["temperature"] == 0 and server.requests[1]["max_tokens"] == 48


def test_a_remote_model_string_alone_uses_litellms_environment(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTED_VLLM_API_BASE", server.base)
    server.script("rewriter", ok(GOOD_REWRITE))
    stage = PromptRewriter.from_config(remote="hosted_vllm/rewriter", template="bpo")
    assert stage.rewrite(PROMPT) == (GOOD_REWRITE, None)


CONFIG_ERRORS = {
    "no template": ({"remote": "hosted_vllm/rewriter"}, "needs template"),
    "no model": ({"remote": {"api_base": "http://127.0.0.1:1/v1"}, "template": "bpo"}, "remote needs model"),
    "unknown key": ({"remote": {"model": "hosted_vllm/rewriter", "api_bsae": "x"}, "template": "bpo"}, "unknown key(s) api_bsae"),
    "with llm": ({"remote": "hosted_vllm/rewriter", "template": "bpo", "llm": "embedded"}, "do not apply to mode 'remote'"),
    "other mode": ({"remote": "hosted_vllm/rewriter", "mode": "prompted"}, "remote applies to mode 'remote'"),
    "mode without remote": ({"mode": "remote", "template": "bpo"}, "needs remote"),
    "chat-only provider": ({"remote": "anthropic/claude-3-haiku", "template": "bpo"}, "chat template"),
    "bad timeout": ({"remote": {"model": "hosted_vllm/rewriter", "timeout": 0}, "template": "bpo"}, "timeout must be positive"),
    "no such folder": ({"remote": "hosted_vllm/rewriter", "path": "/nonexistent/rewriter"}, "no such folder"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_errors_name_the_problem(case: str) -> None:
    params, message = CONFIG_ERRORS[case]
    with pytest.raises(InputError, match=None) as info:
        load_pipeline({"llm": "embedded", "stages": [{"type": "prompt_rewriter", **params}]}, llm=echo_llm())
    assert "stages.0 (prompt_rewriter)" in str(info.value) and message in str(info.value)


def test_a_folder_of_the_other_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alignware.json").write_text(json.dumps({"kind": "rewriter", "template": "bpo"}))
    with pytest.raises(InputError, match="holds a rewriter model, not a corrector"):
        ResponseCorrector.remote("hosted_vllm/corrector", path=tmp_path)
    gen = RemoteGenerator.from_folder(tmp_path, "hosted_vllm/rewriter")
    assert gen.kind == "rewriter" and gen.template.name == "bpo" and gen.manifest["served_as"] == "hosted_vllm/rewriter"
    with pytest.raises(InputError, match="texts\\[1\\] is empty"):
        gen.generate_ex(["x", ""])
