"""What ``alignware serve`` answers to hostile request bodies and to upstream failures: a client error is a
400 naming the field with nothing sent upstream; an upstream failure gets a status that says whose problem
it is and never the provider's message about the server's own key. Real uvicorn on loopback, raw httpx,
the loopback fake upstream behind ``LiteLLMBackend``."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from middleware import Pipeline, load_pipeline

httpx = pytest.importorskip("httpx")

from fake_upstream import FakeOpenAI, cleared, drip, fail, raw_stream, serve_fake  # noqa: E402
from middleware.server import app_from_args, create_app  # noqa: E402
from test_server import _serve  # noqa: E402


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with serve_fake() as f:
        yield f


@pytest.fixture(scope="module")
def url(fake: FakeOpenAI) -> Iterator[str]:
    options = {"api_base": fake.base, "api_key": "sk-provider-secret-9876", "max_retries": 0, "timeout": 10}
    pipe = load_pipeline({"llm": "openai/upstream-model", "llm_options": options})
    assert isinstance(pipe, Pipeline)
    with _serve(create_app(pipe)) as base:
        yield base


def _post(url: str, raw: str) -> Any:
    return httpx.post(f"{url}/chat/completions", content=raw.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("name", ["temperature", "top_p"])
def test_non_finite_sampling_numbers_are_400s_naming_the_field(url: str, fake: FakeOpenAI, name: str, value: str) -> None:
    cleared(fake)
    r = _post(url, '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (name, value))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == name and r.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests == []  # nothing went upstream


@pytest.mark.parametrize(
    "raw, where",
    [
        ('{"model": "m", "messages": [{"role": "user", "content": "bad \\ud800 text"}]}', "messages[0].content"),
        ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["ok", "\\udfff"]}', "stop[1]"),
    ],
)
def test_an_unpaired_surrogate_is_a_400_naming_where_it_is(url: str, fake: FakeOpenAI, raw: str, where: str) -> None:
    cleared(fake)
    r = _post(url, raw)
    assert r.status_code == 400 and r.json()["error"]["param"] == where, r.text
    assert fake.requests == []
    # a surrogate pair (an emoji written as two escapes) is text and goes through
    ok = _post(url, '{"model": "m", "messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}')
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "echo: smile \U0001f600"


def test_an_unpaired_surrogate_in_a_key_is_named_without_breaking_the_answer(url: str) -> None:
    r = _post(url, '{"\\ud800": null}')  # found by tests/test_fuzz.py: the path named the key as it was
    assert r.status_code == 400 and r.json()["error"]["param"] == "\\ud800"


def test_a_body_nested_too_deeply_is_a_400_and_the_connection_stays_usable(url: str) -> None:
    deep = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + '[' * 100_000 + ']' * 100_000 + '}'
    with httpx.Client() as client:
        r = client.post(f"{url}/chat/completions", content=deep.encode(), headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
        again = client.post(f"{url}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert again.status_code == 200


@pytest.mark.parametrize(
    "upstream, status",
    [(401, 502), (403, 502), (404, 502), (408, 504), (500, 502), (503, 502), (429, 429), (400, 400)],
)
def test_upstream_failures_get_a_status_that_says_whose_problem_it_is(url: str, fake: FakeOpenAI, upstream: int, status: int) -> None:
    cleared(fake).script("upstream-model", fail(upstream, f"provider says no to key sk-...9876 (status {upstream})"))
    r = httpx.post(f"{url}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "upstream_error"
    if upstream in (401, 403, 404):  # about the server's own key or model: no provider detail
        assert "9876" not in error["message"] and "upstream-model" not in error["message"]


@pytest.mark.parametrize("body", ["data: [DONE]\n\n", "<html>not events</html>\n"])
def test_an_empty_upstream_stream_is_an_error_not_an_empty_answer(url: str, fake: FakeOpenAI, body: str) -> None:
    cleared(fake).script("upstream-model", raw_stream(body))
    r = httpx.post(f"{url}/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error", r.text
    assert "without a single event" in r.json()["error"]["message"]


# -- limits and the open server ----------------------------------------------------------------
@pytest.fixture(scope="module")
def small(fake: FakeOpenAI) -> Iterator[str]:
    """A server without a key whose limits are small enough to reach in a test."""
    options = {"api_base": fake.base, "api_key": "sk-provider", "max_retries": 0}
    pipe = load_pipeline({"llm": "openai/upstream-model", "llm_options": options})
    assert isinstance(pipe, Pipeline)
    with _serve(create_app(pipe, max_body_bytes=4096, max_messages=8)) as base:
        yield base


def test_a_body_over_the_limit_is_413_whether_its_length_is_announced_or_not(small: str, fake: FakeOpenAI) -> None:
    cleared(fake)
    big = '{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % ("x" * 5000)
    r = _post(small, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # sent chunked: no Content-Length to go by
        yield big.encode()

    r = httpx.post(f"{small}/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert fake.requests == []


def test_too_many_messages_is_a_400_naming_messages(small: str, fake: FakeOpenAI) -> None:
    cleared(fake)
    r = httpx.post(f"{small}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "a"}] * 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    ok = httpx.post(f"{small}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "a"}] * 8})
    assert ok.status_code == 200 and len(fake.requests) == 1


def test_an_open_server_refuses_what_a_web_page_elsewhere_could_send(small: str, fake: FakeOpenAI) -> None:
    cleared(fake)
    body = '{"model": "m", "messages": [{"role": "user", "content": "spend my credit"}]}'
    # a "simple" cross-site POST: text/plain needs no CORS preflight
    simple = httpx.post(f"{small}/chat/completions", content=body.encode(), headers={"Content-Type": "text/plain"})
    assert simple.status_code == 415
    # DNS rebinding: the page's own host name pointed at 127.0.0.1
    rebound = httpx.post(f"{small}/chat/completions", content=body.encode(),
                         headers={"Content-Type": "application/json", "Host": "attacker.example"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{small}/models", headers={"Host": "attacker.example:8000"}).status_code == 403
    assert fake.requests == []
    for host in ("127.0.0.1", "localhost:1234", "[::1]:8000"):
        r = httpx.post(f"{small}/chat/completions", content=body.encode(), headers={"Content-Type": "application/json", "Host": host})
        assert r.status_code == 200, (host, r.text)


def test_docs_and_schema_need_the_key_when_one_is_set(fake: FakeOpenAI) -> None:
    pipe = load_pipeline({"llm": "openai/upstream-model", "llm_options": {"api_base": fake.base, "api_key": "sk-p"}})
    assert isinstance(pipe, Pipeline)
    with _serve(create_app(pipe, api_key="sk-ours")) as base:
        root = base.removesuffix("/v1")
        assert httpx.get(f"{root}/openapi.json").status_code == 401
        schema = httpx.get(f"{root}/openapi.json", headers={"Authorization": "Bearer sk-ours"})
        assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
        assert httpx.get(f"{root}/docs").status_code == 404
        # with a key, any Host and content type may reach the key check (it is the protection)
        r = httpx.post(f"{base}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": "Bearer sk-ours", "Host": "alignware.internal"})
        assert r.status_code == 200


def test_serve_flags_set_the_allowed_hosts_and_the_body_limit() -> None:
    app, _, _ = app_from_args(["--model", "openai/upstream-model", "--no-credential-check",
                               "--allowed-host", "box.lan", "--max-body-mb", "0.001"])
    with _serve(app) as base:
        assert httpx.get(f"{base}/models", headers={"Host": "box.lan:8000"}).status_code == 200
        assert httpx.get(f"{base}/models", headers={"Host": "127.0.0.1"}).status_code == 200
        assert httpx.get(f"{base}/models", headers={"Host": "other.lan"}).status_code == 403
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
        assert httpx.post(f"{base}/chat/completions", json=big).status_code == 413


def test_a_dripping_upstream_is_a_504_within_the_timeout(fake: FakeOpenAI) -> None:
    options = {"api_base": fake.base, "api_key": "sk-p", "max_retries": 0, "timeout": 1.0}
    pipe = load_pipeline({"llm": "openai/upstream-model", "llm_options": options})
    assert isinstance(pipe, Pipeline)
    with _serve(create_app(pipe)) as base:
        for stream in (False, True):
            cleared(fake).script("upstream-model", drip(6.0))
            t0 = time.perf_counter()
            r = httpx.post(f"{base}/chat/completions", timeout=30,
                           json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 504 and time.perf_counter() - t0 < 4.0, (stream, r.text)


def test_the_upstreams_retry_after_reaches_the_client_with_one_upstream_call_per_request(fake: FakeOpenAI) -> None:
    options = {"api_base": fake.base, "api_key": "sk-p", "max_retries": 3, "backoff_max": 2.0}
    pipe = load_pipeline({"llm": "openai/upstream-model", "llm_options": options})
    assert isinstance(pipe, Pipeline)
    with _serve(create_app(pipe)) as base:
        cleared(fake).script("upstream-model", fail(429, "rate limited", **{"Retry-After": "20"}))
        r = httpx.post(f"{base}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 429 and r.headers["retry-after"] == "20"
        assert fake.calls("upstream-model") == 1  # a wait longer than backoff_max is the client's to make


@pytest.mark.parametrize("upstream, calls", [(500, 3), (503, 3), (401, 1)])
@pytest.mark.parametrize("stream", [False, True])
def test_the_stock_openai_client_does_not_repeat_the_servers_retries(fake: FakeOpenAI, upstream: int, calls: int, stream: bool) -> None:
    openai = pytest.importorskip("openai")
    options = {"api_base": fake.base, "api_key": "sk-p", "max_retries": 2, "backoff_initial": 0.01, "backoff_max": 0.02}
    pipe = load_pipeline({"llm": "openai/upstream-model", "llm_options": options})
    assert isinstance(pipe, Pipeline)
    with _serve(create_app(pipe)) as base:
        cleared(fake).script("upstream-model", fail(upstream, "upstream trouble"))
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=2)  # the SDK's default retries
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=stream)
        assert caught.value.status_code == 502
        assert caught.value.response.headers["x-should-retry"] == "false"
        # the backend's 1 + 2 attempts (a refused key: one), not 3 x 3 with the client's own retries
        assert fake.calls("upstream-model") == calls
