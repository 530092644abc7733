"""The real ``openai`` client against our OpenAI-compatible server on loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from middleware import LLM, BackendError, ChatChunk, ChatResponse, FunctionLLM, InputError, Pipeline, PromptStage, ResponseStage

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from middleware.server import create_app  # noqa: E402


class Upper(PromptStage):
    def process(self, request):
        return request.with_last_user_message(request.last_user_message.upper())


class Broken(ResponseStage):
    def process(self, request, response):
        raise RuntimeError("corrector down")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a loopback port; yields the ``/v1`` base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    llm = FunctionLLM(lambda msgs: f"you said {msgs[-1]['content']}", name="echo")
    with _serve(create_app(Pipeline(llm, [Upper(), Broken()]), model_name="aligned-echo", api_key="sk-test-key")) as url:
        yield url


def client(base_url: str, key: str = "sk-test-key") -> "openai.OpenAI":
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def test_completion_with_trace(base_url):
    resp = client(base_url).chat.completions.create(
        model="aligned-echo", messages=[{"role": "user", "content": "hello"}], max_tokens=20,
        extra_headers={"X-Alignware-Trace": "1"},
    )
    assert resp.choices[0].message.content == "you said HELLO"
    assert resp.choices[0].finish_reason == "stop"
    trace = resp.model_extra["alignware_trace"]
    assert [(t["stage"], t["verdict"]) for t in trace] == [("Upper", "modified"), ("Broken", "failed")]


def test_streaming_matches(base_url):
    stream = client(base_url).chat.completions.create(
        model="aligned-echo", messages=[{"role": "user", "content": "abc"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "you said ABC"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_and_errors(base_url):
    c = client(base_url)
    assert [m.id for m in c.models.list()] == ["aligned-echo"]
    with pytest.raises(openai.AuthenticationError):
        client(base_url, key="wrong").chat.completions.create(model="x", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.BadRequestError, match="unknown role 'robot'"):
        c.chat.completions.create(model="x", messages=[{"role": "robot", "content": "a"}])
    with pytest.raises(openai.BadRequestError, match="messages is empty"):
        c.chat.completions.create(model="x", messages=[])


# -- failures ---------------------------------------------------------------------------
# The last user message picks what ``Faulty`` does; anything else is answered "fine".
FAILURES: dict[str, Callable[[], Exception]] = {
    "crash": lambda: RuntimeError("model crashed"),
    "bad input": lambda: InputError("the prompt is too long for this model"),
    "rate limited": lambda: BackendError("rate limited by the provider", status_code=429),
    "upstream down": lambda: BackendError("connection refused"),
}


class Faulty(LLM):
    """Fails as the prompt says: before any text (``FAILURES``), or after two pieces ("crash late")."""

    name = "faulty"

    def complete(self, request, *, model_stages=()):
        prompt = request.last_user_message
        if prompt in FAILURES:
            raise FAILURES[prompt]()
        return ChatResponse(text="fine", model=self.name)

    def stream(self, request, *, model_stages=()):
        if request.last_user_message == "crash late":
            yield ChatChunk(delta="partial ", model=self.name)
            yield ChatChunk(delta="answer", model=self.name)
            raise RuntimeError("model crashed mid-answer")
        yield from super().stream(request, model_stages=model_stages)


class Noop(PromptStage):
    def process(self, request):
        return request


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def faulty_url() -> Iterator[str]:
    with _serve(create_app(Pipeline(Faulty(), [Noop()]), model_name="faulty")) as url:
        yield url


def _sse_lines(response: Any) -> list[str]:
    return [line for line in response.iter_lines() if line]


def test_unexpected_exception_is_a_json_500(faulty_url, caplog):
    with caplog.at_level(logging.ERROR, logger="alignware"):
        with pytest.raises(openai.InternalServerError) as e:
            client(faulty_url).chat.completions.create(model="faulty", messages=_user("crash"))
    assert e.value.status_code == 500
    assert e.value.body == {"message": "internal error: RuntimeError: model crashed", "type": "server_error", "param": None, "code": None}
    logged = [r for r in caplog.records if r.name == "alignware" and r.exc_info]
    assert logged and logged[0].exc_info[0] is RuntimeError  # the traceback is in the log


def test_error_mapping_non_streaming(faulty_url):
    c = client(faulty_url)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="faulty", messages=_user("bad input"))
    assert bad.value.body == {"message": "the prompt is too long for this model", "type": "invalid_request_error", "param": None, "code": None}
    with pytest.raises(openai.RateLimitError) as limited:
        c.chat.completions.create(model="faulty", messages=_user("rate limited"))
    assert limited.value.type == "upstream_error"
    with pytest.raises(openai.InternalServerError) as down:
        c.chat.completions.create(model="faulty", messages=_user("upstream down"))
    assert (down.value.status_code, down.value.type) == (502, "upstream_error")
    assert c.chat.completions.create(model="faulty", messages=_user("hello")).choices[0].message.content == "fine"


def test_bad_fields_are_400_naming_the_field(faulty_url):
    c = client(faulty_url)
    cases = [
        ({"extra_body": {"metadata": "x"}}, "metadata", "metadata: must be an object"),
        ({"stream": True, "extra_body": {"stream_options": "x"}}, "stream_options", "stream_options: must be an object"),
        ({"temperature": "hot"}, "temperature", "temperature: Input should be a valid number"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "max_tokens must be at least 1"),
        ({"extra_body": {"messages": 5}}, "messages", "messages: must be an array"),
    ]
    for kwargs, param, message in cases:
        with pytest.raises(openai.BadRequestError, match=message) as e:
            c.chat.completions.create(model="faulty", messages=_user("hello"), **kwargs)
        assert (e.value.param, e.value.type) == (param, "invalid_request_error"), kwargs
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="faulty", messages=[{"role": "robot", "content": "a"}])
    assert e.value.param == "messages[0].role"


def test_request_without_user_message_is_400_streamed_or_not(faulty_url):
    # the prompt stage passes it through (a failed trace); the model needs a user message: InputError, the client's fault
    messages = [{"role": "system", "content": "You are terse."}, {"role": "assistant", "content": "Hi!"}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="the request has no user message") as e:
            client(faulty_url).chat.completions.create(model="faulty", messages=messages, stream=stream)
        assert e.value.type == "invalid_request_error", stream


@pytest.mark.parametrize(
    "prompt, error, status, kind",
    [
        ("crash", openai.InternalServerError, 500, "server_error"),
        ("bad input", openai.BadRequestError, 400, "invalid_request_error"),
        ("rate limited", openai.RateLimitError, 429, "upstream_error"),
        ("upstream down", openai.InternalServerError, 502, "upstream_error"),
    ],
)
def test_stream_failing_before_first_chunk_is_an_http_error(faulty_url, prompt, error, status, kind):
    with pytest.raises(error) as e:
        client(faulty_url).chat.completions.create(model="faulty", messages=_user(prompt), stream=True)
    assert (e.value.status_code, e.value.type) == (status, kind)
    r = httpx.post(f"{faulty_url}/chat/completions", json={"model": "faulty", "messages": _user(prompt), "stream": True}, timeout=30)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["type"] == kind


def test_stream_failing_after_content_sends_one_error_event_then_done(faulty_url):
    body = {"model": "faulty", "messages": _user("crash late"), "stream": True}
    with httpx.stream("POST", f"{faulty_url}/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = _sse_lines(r)  # a connection cut short would raise httpx.RemoteProtocolError here
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    errors = [ev for ev in events if "error" in ev]
    assert errors == [events[-1]]
    assert errors[0]["error"] == {"message": "internal error: RuntimeError: model crashed mid-answer", "type": "server_error", "param": None, "code": None}
    text = "".join(ev["choices"][0]["delta"].get("content") or "" for ev in events[:-1])
    assert text == "partial answer"

    # the openai client: the content first, then an APIError carrying the error object
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client(faulty_url).chat.completions.create(model="faulty", messages=_user("crash late"), stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "partial answer"
    assert e.value.type == "server_error"
