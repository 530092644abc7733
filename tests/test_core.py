"""Types, stages and the pipeline's failure policy, on a plain function LLM."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from middleware import (
    LLM,
    ChatChunk,
    ChatRequest,
    FunctionLLM,
    InputError,
    Message,
    Pipeline,
    PromptStage,
    ResponseStage,
    StageError,
    load_pairs,
    load_prompts,
    note,
)
from middleware.config import PipelineConfig, load_pipeline
from middleware.stages import IdentityPromptStage, IdentityResponseStage, is_title_request


def echo_llm() -> FunctionLLM:
    return FunctionLLM(lambda msgs: f"echo: {msgs[-1]['content']}", name="echo")


class Upper(PromptStage):
    def process(self, request):
        return request.with_last_user_message(request.last_user_message.upper())


class Boom(PromptStage):
    def process(self, request):
        raise RuntimeError("rewriter crashed")


class Slow(PromptStage):
    def process(self, request):
        time.sleep(0.5)
        return request.with_last_user_message("too late")


class Exclaim(ResponseStage):
    def process(self, request, response):
        return response.model_copy(update={"text": response.text + "!"})


class BoomResponse(ResponseStage):
    def process(self, request, response):
        raise ValueError("corrector crashed")


class Noting(ResponseStage):
    def process(self, request, response):
        note("kept the original: looked fine")
        return response


# -- types -----------------------------------------------------------------------------
def test_request_rejects_bad_input_with_named_problem():
    with pytest.raises(InputError, match="messages is empty"):
        ChatRequest.build([])
    with pytest.raises(InputError, match=r"messages\[1\].*unknown role 'robot'"):
        ChatRequest.build([{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}])
    with pytest.raises(InputError, match="image_url.*only text content"):
        ChatRequest.build([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    req = ChatRequest.build([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert req.messages[0].content == "ab"
    with pytest.raises(InputError, match="max_tokens"):
        ChatRequest.build("hi", max_tokens=0)


def test_with_last_user_message_keeps_history():
    req = ChatRequest.build(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    )
    new = req.with_last_user_message("C")
    assert [m.content for m in new.messages] == ["a", "b", "C"]
    assert req.messages[2].content == "c"


def test_load_pairs_reports_file_line_field(tmp_path):
    f = tmp_path / "pairs.jsonl"
    good = {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(InputError, match=rf"{f}:3: rejected: Field required"):
        load_pairs(f)
    f.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(InputError, match=rf"{f}:2: invalid JSON"):
        load_pairs(f)
    bad_role = dict(good, prompt=[{"role": "bot", "content": "q"}])
    f.write_text(json.dumps(bad_role) + "\n")
    with pytest.raises(InputError, match=rf"{f}:1: prompt.0.role: unknown role 'bot'"):
        load_pairs(f)
    last_assistant = dict(good, prompt=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}])
    f.write_text(json.dumps(last_assistant) + "\n")
    with pytest.raises(InputError, match="last message of prompt must be the user's"):
        load_pairs(f)
    with pytest.raises(InputError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    f.write_bytes(json.dumps(good).encode() + b"\n" + json.dumps(dict(good, chosen="caf\u00e9")).encode().replace(b"\\u00e9", b"\xe9") + b"\n")
    with pytest.raises(InputError, match=rf"{f}:2: not UTF-8 text"):
        load_pairs(f)
    f.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert len(load_pairs(f, limit=1)) == 1
    for limit in (0, -5):
        with pytest.raises(InputError, match=f"limit must be at least 1, got {limit}"):
            load_pairs(f, limit=limit)
    f.write_text(json.dumps({"prompt": "q"}) + "\n" + json.dumps({"prompt": last_assistant["prompt"]}) + "\n")
    with pytest.raises(InputError, match=rf"{f}:2: the last message of prompt must be the user's"):
        load_prompts(f)


def test_shared_data_loads(shared_data):
    pairs = load_pairs(shared_data / "hh_harmless.jsonl")
    assert len(pairs) == 2003 and all(p.prompt[-1].role == "user" for p in pairs)
    bpo = load_pairs(shared_data / "bpo_pairs.jsonl")
    assert len(bpo) == 300 and bpo[0].optimized_prompt
    assert len(load_prompts(shared_data / "vicuna_eval_prompts.jsonl")) == 80


# -- pipeline --------------------------------------------------------------------------
def test_middle_stage_failure_keeps_request_and_answer():
    pipe = Pipeline(echo_llm(), [Upper(), Boom(), Exclaim()])
    r = pipe.chat("hello")
    assert r.text == "echo: HELLO!"
    verdicts = [(t.stage, t.verdict) for t in r.trace]
    assert verdicts == [("Upper", "modified"), ("Boom", "failed"), ("Exclaim", "modified")]
    assert "RuntimeError: rewriter crashed" in r.trace[1].reason


def test_response_stage_failure_passes_answer_through():
    r = Pipeline(echo_llm(), [BoomResponse(), Exclaim()]).chat("x")
    assert r.text == "echo: x!"
    assert r.trace[0].verdict == "failed" and "corrector crashed" in r.trace[0].reason


def test_on_error_raise():
    with pytest.raises(StageError, match="'Boom' failed: RuntimeError: rewriter crashed"):
        Pipeline(echo_llm(), [Boom(on_error="raise")]).chat("x")


def test_timeout_fails_open():
    r = Pipeline(echo_llm(), [Slow(timeout=0.05)]).chat("original")
    assert r.text == "echo: original"
    assert r.trace[0].verdict == "failed" and r.trace[0].reason == "timed out after 0.05s"


def test_skip_if_and_notes():
    pipe = Pipeline(echo_llm(), [Upper(skip_if=is_title_request), Noting()])
    r = pipe.chat("### Task: Generate a concise title for the chat")
    assert r.trace[0].verdict == "skipped"
    assert r.trace[1].verdict == "passed" and r.trace[1].reason == "kept the original: looked fine"
    assert pipe.chat("plain").trace[0].verdict == "modified"


def test_stream_matches_chat_and_failed_stream_stage_passes_through():
    pipe = Pipeline(echo_llm(), [Upper(), BoomResponse(), Exclaim()])
    chunks = list(pipe.stream("hey"))
    assert "".join(c.delta for c in chunks) == pipe.chat("hey").text == "echo: HEY!"
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert [t.verdict for t in final.trace] == ["modified", "failed", "modified"]


class BrokenStream(LLM):
    """Streams half an answer, then the connection breaks."""

    name = "broken"

    def complete(self, request, *, model_stages=()):
        raise AssertionError("only streamed")

    def stream(self, request, *, model_stages=()):
        yield ChatChunk(delta="The first half, ")
        raise ConnectionError("the stream broke")


def test_an_upstream_stream_error_is_not_a_stage_failure():
    """The LLM's broken stream reaches the caller even with response stages in between; it is not
    recorded as a stage that failed and passed a truncated answer through as if complete."""
    pipe = Pipeline(BrokenStream(), [Exclaim(), IdentityResponseStage()])
    got = []
    with pytest.raises(ConnectionError, match="the stream broke"):
        for c in pipe.stream("x"):
            got.append(c)
    assert all(c.finish_reason is None for c in got)

    async def run():
        return [c async for c in pipe.astream("x")]

    with pytest.raises(ConnectionError, match="the stream broke"):
        asyncio.run(run())


class Hangs(ResponseStage):
    """Blocks in ``process`` until released (a hung corrector model)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.release = threading.Event()

    def process(self, request, response):
        self.release.wait(30)
        return response.model_copy(update={"text": "too late"})


def test_stream_timeout_passes_the_answer_through():
    stage = Hangs(timeout=0.1)
    try:
        chunks = list(Pipeline(echo_llm(), [stage]).stream("original"))
    finally:
        stage.release.set()
    astage = Hangs(timeout=0.1)

    async def run():
        try:
            return [c async for c in Pipeline(echo_llm(), [astage]).astream("original")]
        finally:
            astage.release.set()  # lets asyncio.run's executor shut down

    achunks = asyncio.run(run())
    for got in (chunks, achunks):
        assert "".join(c.delta for c in got) == "echo: original"
        trace = got[-1].trace[0]
        assert trace.verdict == "failed" and trace.reason == "timed out after 0.1s"


class SlowStream(LLM):
    """A slow upstream: each chunk takes a while to arrive."""

    name = "slow"

    def complete(self, request, *, model_stages=()):
        raise AssertionError("only streamed")

    def stream(self, request, *, model_stages=()):
        for word in ("one ", "two ", "three"):
            time.sleep(0.3)
            yield ChatChunk(delta=word)
        yield ChatChunk(finish_reason="stop")


class UpperStream(ResponseStage):
    def process_stream(self, request, chunks):
        for c in chunks:
            yield c.upper()


def test_stream_timeout_does_not_count_the_upstream_wait():
    """0.9 s of upstream chunks through a stage with a 0.25 s timeout: the stage's own time is tiny."""
    pipe = Pipeline(SlowStream(), [UpperStream(timeout=0.25)])
    chunks = list(pipe.stream("x"))
    assert "".join(c.delta for c in chunks) == "ONE TWO THREE"
    assert chunks[-1].trace[0].verdict == "modified"


def test_a_request_without_a_user_message_passes_prompt_stages():
    pipe = Pipeline(FunctionLLM(lambda msgs: f"{len(msgs)} messages"), [Upper()])
    r = pipe.chat([{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello!"}])
    assert r.text == "2 messages"
    assert r.trace[0].verdict == "failed" and "no user message" in r.trace[0].reason
    with pytest.raises(StageError, match="no user message"):
        Pipeline(echo_llm(), [Upper(on_error="raise")]).chat([{"role": "system", "content": "Be brief."}])


def test_async_twins_match_sync():
    pipe = Pipeline(echo_llm(), [Upper(), Boom(), Exclaim()])

    async def run():
        r = await pipe.achat("abc")
        pieces = [c async for c in pipe.astream("abc")]
        return r, pieces

    r, pieces = asyncio.run(run())
    assert r.text == "echo: ABC!" == "".join(c.delta for c in pieces)
    assert [t.verdict for t in r.trace] == [t.verdict for t in pieces[-1].trace]


def test_default_astream_takes_any_iterator_from_stream():
    """``stream`` may return a plain iterator (not a generator) or raise before yielding anything; the
    default ``astream`` hands over the chunks or the error and always ends."""

    class ListStream(LLM):
        def complete(self, request, *, model_stages=()):
            raise AssertionError("stream is overridden")

        def stream(self, request, *, model_stages=()):
            if request.last_user_message == "fail":
                raise ConnectionError("backend down")
            return iter([ChatChunk(delta="a"), ChatChunk(delta="b"), ChatChunk(finish_reason="stop")])

    async def collect(text):
        request = ChatRequest(messages=[{"role": "user", "content": text}])
        return [c async for c in ListStream().astream(request)]

    chunks = asyncio.run(asyncio.wait_for(collect("x"), timeout=10))
    assert [c.delta for c in chunks] == ["a", "b", ""] and chunks[-1].finish_reason == "stop"
    with pytest.raises(ConnectionError, match="backend down"):
        asyncio.run(asyncio.wait_for(collect("fail"), timeout=10))


def test_batch_keeps_order_and_traces():
    pipe = Pipeline(echo_llm(), [Upper(), Exclaim()])
    out = pipe.batch(["a", "b", "c"])
    assert [r.text for r in out] == ["echo: A!", "echo: B!", "echo: C!"]
    assert all(len(r.trace) == 2 for r in out)


def test_pipeline_rejects_non_stage():
    with pytest.raises(InputError, match=r"stages\[0\] is a str"):
        Pipeline(echo_llm(), ["not a stage"])


# -- config ----------------------------------------------------------------------------
def test_config_builds_pipeline(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("defaults: {max_tokens: 7}\nstages:\n  - type: identity_prompt\n  - type: identity_response\n    name: last\n")
    pipe = load_pipeline(f, llm=echo_llm())
    assert isinstance(pipe.stages[0], IdentityPromptStage) and isinstance(pipe.stages[1], IdentityResponseStage)
    assert pipe.stages[1].name == "last" and pipe.defaults == {"max_tokens": 7}
    assert [t.verdict for t in pipe.chat("x").trace] == ["passed", "passed"]


def test_config_errors_name_file_and_field(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("stages:\n  - name: x\n")
    with pytest.raises(InputError, match=rf"{f}: stages.0.type: Field required"):
        PipelineConfig.load(f)
    f.write_text("stages:\n  - type: nope\n")
    with pytest.raises(InputError, match="unknown stage type 'nope'"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("stages:\n  - type: identity_prompt\n    bogus: 1\n")
    with pytest.raises(InputError, match="stages.0 \\(identity_prompt\\).*bogus"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("lmm: x\n")
    with pytest.raises(InputError, match="lmm: Extra inputs are not permitted"):
        PipelineConfig.load(f)
    # a stage's own validation (ValueError), an unknown type and bad LLM options name the file and the entry
    f.write_text("stages:\n  - type: identity_prompt\n  - type: identity_response\n    on_error: fail\n")
    with pytest.raises(InputError, match=rf"{f}: stages.1 \(identity_response\): on_error must be 'pass' or 'raise'"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("stages:\n  - type: identity_prompt\n  - type: identiy_response\n")
    with pytest.raises(InputError, match=rf"{f}: stages.1 \(identiy_response\): unknown stage type"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("llm: openai/gpt-4o-mini\nllm_options: {max_retries: -1}\n")
    with pytest.raises(InputError, match=rf"{f}: llm_options: max_retries must be 0 or more"):
        load_pipeline(f)
    # generation defaults are checked as a request's parameters would be, when the file loads
    f.write_text("defaults: {max_tokens: lots}\n")
    with pytest.raises(InputError, match=rf"{f}: defaults: max_tokens: Input should be a valid integer"):
        PipelineConfig.load(f)
    f.write_text("defaults: {temprature: 0.2}\n")
    with pytest.raises(InputError, match=rf"{f}: defaults: unknown key\(s\) 'temprature'; known: model, temperature"):
        PipelineConfig.load(f)
    with pytest.raises(InputError, match="defaults: max_tokens: max_tokens must be at least 1"):
        Pipeline(echo_llm(), defaults={"max_tokens": 0})
    assert Pipeline(echo_llm(), defaults={"stop": "END"}).defaults == {"stop": ["END"]}


def test_message_is_immutable():
    m = Message(role="user", content="x")
    with pytest.raises(Exception):
        m.content = "y"  # type: ignore[misc]
