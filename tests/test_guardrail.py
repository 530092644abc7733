"""The alignware guardrail in the real LiteLLM proxy: ``examples/litellm_proxy/`` started as a user would
(``litellm --config config.yaml``) in front of a loopback OpenAI-compatible upstream, called with the real
``openai`` client. The proxy takes tens of seconds to import, so one proxy serves the whole module."""

from __future__ import annotations

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

from fake_upstream import FakeOpenAI, cleared, ok, serve_fake

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
def _upstream() -> Iterator[FakeOpenAI]:
    with serve_fake() as fake:
        yield fake


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
