"""The alignware guardrail in the real LiteLLM proxy: ``examples/litellm_proxy/`` started as a user would
(``litellm --config config.yaml``) in front of a loopback OpenAI-compatible upstream, called with the real
``openai`` client. The proxy takes tens of seconds to import, so one proxy serves the whole module."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from fake_upstream import FakeOpenAI, cleared, ok

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "litellm_proxy"
START_DEADLINE_S = 300  # importing the proxy takes 15-60 s on two shared cores

QUESTION = [{"role": "user", "content": "Name a colour."}]
ANSWER = "My favourite colour is blue, a calm colour."
CORRECTED = "My favorite color is blue, a calm color."
REWRITTEN = "Name a colour. Please answer in one sentence."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _litellm_command() -> list[str]:
    script = Path(sys.executable).with_name("litellm")
    if script.exists():
        return [str(script)]
    found = shutil.which("litellm")
    if found is None:
        pytest.fail("the `litellm` command is not installed: install the dev extra (litellm's proxy dependencies)")
    return [found]


class Proxy:
    """A running ``litellm --config`` process: its base URL, master key, start-up time and log."""

    def __init__(self, upstream: FakeOpenAI, log_path: Path) -> None:
        self.port = _free_port()
        self.key = "sk-" + secrets.token_hex(32)
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_", "LITELLM_"))}
        env.update(
            LITELLM_MASTER_KEY=self.key,
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no cost-map download
            LITELLM_TELEMETRY="False",
            UPSTREAM_BASE=upstream.base,
            UPSTREAM_KEY="sk-upstream-test",
            PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT), env.get("PYTHONPATH", "")]),  # this checkout's middleware
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        self._log = open(log_path, "wb")
        t0 = time.perf_counter()
        self.process = subprocess.Popen(
            [*_litellm_command(), "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=EXAMPLE, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0

    def output(self, last: int = 6000) -> str:
        self._log.flush()
        return self.log_path.read_bytes().decode(errors="replace")[-last:]

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the LiteLLM proxy exited with {self.process.returncode} while starting:\n{self.output()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"the LiteLLM proxy did not answer within {START_DEADLINE_S} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture(scope="module")
def proxy(_upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    running = Proxy(_upstream, tmp_path_factory.mktemp("proxy") / "proxy.log")
    print(f"\nLiteLLM proxy started in {running.startup_s:.1f} s")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def upstream(_upstream: FakeOpenAI) -> FakeOpenAI:
    fake = cleared(_upstream)
    fake.script("upstream-model", ok(ANSWER))
    return fake


def _client(proxy: Proxy) -> Any:
    return openai.OpenAI(base_url=proxy.base, api_key=proxy.key, max_retries=0, timeout=60)


def _check_trace(trace: list[dict[str, Any]]) -> None:
    assert [(t["stage"], t["kind"], t["verdict"]) for t in trace] == [
        ("AppendToPrompt", "prompt", "modified"),
        ("ReplaceWords", "response", "modified"),
    ]
    assert (trace[0]["before"], trace[0]["after"]) == ("Name a colour.", REWRITTEN)
    assert (trace[1]["before"], trace[1]["after"]) == (ANSWER, CORRECTED)


def _upstream_request(fake: FakeOpenAI) -> dict[str, Any]:
    assert len(fake.requests) == 1, fake.requests
    sent = fake.requests[0]
    assert sent["messages"][-1]["content"] == REWRITTEN, "the upstream saw the rewritten prompt"
    assert "alignware" not in str({k: v for k, v in sent.items() if k != "messages"}), "our state stays in the proxy"
    return sent


def test_proxy_rewrites_the_prompt_and_corrects_the_reply(proxy: Proxy, upstream: FakeOpenAI) -> None:
    try:
        reply = _client(proxy).chat.completions.create(model="chat", messages=QUESTION, temperature=0.2)
    except openai.APIError as e:
        pytest.fail(f"{e}\nproxy output:\n{proxy.output()}")
    assert reply.choices[0].message.content == CORRECTED
    assert _upstream_request(upstream)["temperature"] == 0.2
    _check_trace(reply.model_extra["alignware_trace"])


def test_proxy_corrects_a_streamed_reply_as_it_streams(proxy: Proxy, upstream: FakeOpenAI) -> None:
    try:
        chunks = list(_client(proxy).chat.completions.create(model="chat", messages=QUESTION, stream=True))
    except openai.APIError as e:
        pytest.fail(f"{e}\nproxy output:\n{proxy.output()}")
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == CORRECTED
    assert len(texts) > 3, "corrected word by word, not held back to the end"
    _upstream_request(upstream)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    _check_trace(finishing[0].model_extra["alignware_trace"])
    assert sum(1 for c in chunks if (c.model_extra or {}).get("alignware_trace")) == 1


def test_proxy_keeps_the_conversation_around_the_rewritten_turn(proxy: Proxy, upstream: FakeOpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello.", "name": "ann"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Name a colour.", "name": "ann"},
    ]
    reply = _client(proxy).chat.completions.create(model="chat", messages=messages)
    assert reply.choices[0].message.content == CORRECTED
    sent = upstream.requests[0]["messages"]
    assert [(m["role"], m["content"], m.get("name")) for m in sent] == [
        ("system", "You are terse.", None), ("user", "Hello.", "ann"), ("assistant", "Hi.", None), ("user", REWRITTEN, "ann"),
    ]


# -- the hooks called directly, as the proxy calls them (no proxy process) ---------------------------
from litellm.types.utils import Choices, Delta, Message, ModelResponse, ModelResponseStream, StreamingChoices, Usage  # noqa: E402

from middleware import InputError  # noqa: E402
from middleware.guardrail import ENV_PIPELINE, AlignwareGuardrail  # noqa: E402


def _guardrail(tmp_path: Path, stages: str, **kw: Any) -> AlignwareGuardrail:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))  # the example's stages module, as the proxy finds it through PYTHONPATH
    (tmp_path / "p.yaml").write_text(f"stages: {stages}\n")
    return AlignwareGuardrail(pipeline=str(tmp_path / "p.yaml"), guardrail_name="alignware", event_hook=["pre_call", "post_call"], default_on=True, **kw)


def _chunk(text: str | None = None, finish: str | None = None, usage: Usage | None = None) -> ModelResponseStream:
    choices = [] if usage is not None else [StreamingChoices(index=0, delta=Delta(content=text), finish_reason=finish)]
    chunk = ModelResponseStream(id="chatcmpl-up", created=1, model="up", choices=choices)
    if usage is not None:
        setattr(chunk, "usage", usage)
    return chunk


async def _stream(guard: AlignwareGuardrail, chunks: list[ModelResponseStream], data: dict[str, Any]) -> list[Any]:
    async def upstream() -> Any:
        for c in chunks:
            yield c

    return [c async for c in guard.async_post_call_streaming_iterator_hook(None, upstream(), data)]


REPLACE = "[{type: 'stages:ReplaceWords', replace: {colour: color}}]"


def test_streamed_closing_chunks_follow_the_corrected_text(tmp_path: Path) -> None:
    guard = _guardrail(tmp_path, REPLACE, trace=True)
    data = {"messages": QUESTION, "model": "chat"}
    up = [_chunk(""), _chunk("My col"), _chunk("our is "), _chunk("blue colour", finish="stop"), _chunk(usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3))]
    out = asyncio.run(_stream(guard, up, data))
    texts = [c.choices[0].delta.content for c in out if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == "My color is blue color"
    assert out[0] is up[0], "the role chunk goes first"
    assert [c.choices[0].finish_reason for c in out if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert out[-2].choices[0].finish_reason == "stop" and out[-1] is up[-1], "finish, then usage, after the text"
    assert [t["stage"] for t in out[-2].alignware_trace] == ["ReplaceWords"]
    assert all(c.id == "chatcmpl-up" for c in out)


def test_a_failing_stage_passes_the_reply_through(tmp_path: Path) -> None:
    guard = _guardrail(tmp_path, "[{type: 'core_stages:BoomResponse'}]", trace=True)
    reply = ModelResponse(choices=[Choices(index=0, message=Message(content=ANSWER, role="assistant"), finish_reason="stop")])
    out = asyncio.run(guard.async_post_call_success_hook({"messages": QUESTION}, None, reply))
    assert out.choices[0].message.content == ANSWER
    assert [(t["stage"], t["verdict"]) for t in out.alignware_trace] == [("BoomResponse", "failed")]
    streamed = asyncio.run(_stream(guard, [_chunk("My colour"), _chunk(" is blue.", finish="stop")], {"messages": QUESTION}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "My colour is blue."


def test_no_trace_unless_asked_and_unreadable_requests_pass_untouched(tmp_path: Path) -> None:
    guard = _guardrail(tmp_path, "[{type: append_to_prompt, text: Be brief.}]")
    image = {"type": "image_url", "image_url": {"url": "x"}}
    data: dict[str, Any] = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]}
    sent = asyncio.run(guard.async_pre_call_hook(None, None, data, "acompletion"))["messages"][0]["content"]
    assert sent == [{"type": "text", "text": "What is it? Be brief."}, image]  # the stages rewrite the text; the image stays
    data = {"messages": [{"role": "user", "content": [{"image_url": {"url": "x"}}]}]}  # a part with no type: unreadable
    assert asyncio.run(guard.async_pre_call_hook(None, None, data, "acompletion"))["messages"][0]["content"] == [{"image_url": {"url": "x"}}]
    data = {"messages": list(QUESTION)}
    asyncio.run(guard.async_pre_call_hook(None, None, data, "acompletion"))
    assert data["messages"][-1]["content"] == "Name a colour. Be brief."
    reply = ModelResponse(choices=[Choices(index=0, message=Message(content=ANSWER, role="assistant"), finish_reason="stop")])
    assert not hasattr(asyncio.run(guard.async_post_call_success_hook(data, None, reply)), "alignware_trace")


def test_the_pipeline_file_is_required_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PIPELINE, raising=False)
    with pytest.raises(InputError, match="pipeline: path.yaml"):
        AlignwareGuardrail(guardrail_name="alignware")
    monkeypatch.setenv(ENV_PIPELINE, str(tmp_path / "missing.yaml"))
    with pytest.raises(InputError, match="missing.yaml: no such pipeline config file"):
        AlignwareGuardrail(guardrail_name="alignware")
    with pytest.raises(InputError, match="stages.0"):
        _guardrail(tmp_path, "[{type: no_such_stage}]")


def test_prompt_stages_alone_still_trace_a_streamed_reply(tmp_path: Path) -> None:
    guard = _guardrail(tmp_path, "[{type: append_to_prompt, text: Be brief.}]", trace=True)
    data: dict[str, Any] = {"messages": list(QUESTION)}
    asyncio.run(guard.async_pre_call_hook(None, None, data, "acompletion"))
    out = asyncio.run(_stream(guard, [_chunk("Blue"), _chunk(".", finish="stop")], data))
    assert "".join(c.choices[0].delta.content or "" for c in out if c.choices) == "Blue."
    assert [t["after"] for t in out[-1].alignware_trace] == ["Name a colour. Be brief."]
