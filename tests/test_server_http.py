"""The HTTP surface of ``alignware serve`` (``middleware/server_http.py`` and ``create_app``/``serve_main``):
CORS, OpenAI-shaped errors for unknown routes and methods, ``GET /v1/models/{id}``, bearer-key checks,
the opt-in trace, the served pipeline's upstream settings and credentials, streaming through whole-answer
stages. Real uvicorn on loopback, the real ``openai`` client or raw httpx, a loopback fake upstream."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest

from middleware import FunctionLLM, InputError, Pipeline, load_pipeline
from middleware.stages import IdentityResponseStage

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from fake_upstream import FakeOpenAI, cleared, serve_fake  # noqa: E402
from middleware.server import app_from_args, create_app, serve_main, serve_parser  # noqa: E402
from test_server import _free_port, _serve  # noqa: E402

KEY = "sk-test-key"
ORIGIN = "http://app.example"
USER = [{"role": "user", "content": "hello there"}]


def _echo() -> Pipeline:
    return Pipeline(FunctionLLM(lambda msgs: f"you said {msgs[-1]['content']}", name="echo"), [IdentityResponseStage()])


@pytest.fixture(scope="module")
def keyed() -> Iterator[str]:
    """A server with a key, one allowed browser origin and the trace off by default."""
    with _serve(create_app(_echo(), model_name="aligned", api_key=KEY, cors_origins=[ORIGIN])) as url:
        yield url


@pytest.fixture(scope="module")
def open_server() -> Iterator[str]:
    """A server with no key, no CORS, and the trace on for every reply."""
    with _serve(create_app(_echo(), model_name="aligned", trace=True)) as url:
        yield url


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with serve_fake() as f:
        yield f


def _client(url: str, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def _preflight(url: str, origin: str) -> Any:
    return httpx.options(f"{url}/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
    })


# -- CORS -------------------------------------------------------------------------------------
def test_cors_preflight_from_an_allowed_origin_succeeds_and_from_another_does_not(keyed):
    ok = _preflight(keyed, ORIGIN)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    other = _preflight(keyed, "http://evil.example")
    assert other.status_code >= 400 and "access-control-allow-origin" not in other.headers
    # the request itself, as a browser page on the allowed origin sends it
    r = httpx.post(f"{keyed}/chat/completions", json={"model": "aligned", "messages": USER},
                   headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN


def test_cors_is_off_by_default(open_server):
    r = _preflight(open_server, ORIGIN)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{open_server}/chat/completions", json={"model": "aligned", "messages": USER}, headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_origin_flag_repeats():
    assert serve_parser().parse_args(["--cors-origin", "http://a", "--cors-origin", "http://b"]).cors_origins == ["http://a", "http://b"]


# -- errors in OpenAI's shape ---------------------------------------------------------------------
def test_unknown_routes_and_wrong_methods_answer_in_openai_shape(keyed):
    r = httpx.get(f"{keyed}/nothing-here", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Invalid URL (GET /v1/nothing-here)", "type": "invalid_request_error", "param": None, "code": None}}
    r = httpx.get(f"{keyed}/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and "detail" not in r.json()
    assert r.json()["error"]["type"] == "invalid_request_error" and "POST" in r.headers["allow"]
    with pytest.raises(openai.NotFoundError) as e:  # the SDK on a path the server lacks
        _client(keyed).completions.create(model="aligned", prompt="hi")
    assert e.value.body["type"] == "invalid_request_error"


def test_models_by_id(keyed):
    c = _client(keyed)
    assert c.models.retrieve("aligned").id == "aligned"
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("gpt-4o")
    assert (e.value.code, e.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, key="wrong").models.retrieve("aligned")


# -- auth -------------------------------------------------------------------------------------
def _chat(url: str, auth: Any) -> Any:
    headers = {} if auth is None else {"Authorization": auth}
    return httpx.post(f"{url}/chat/completions", json={"model": "aligned", "messages": USER}, headers=headers)


def test_bearer_scheme_in_any_case_is_accepted(keyed):
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert _chat(keyed, f"{scheme} {KEY}").status_code == 200, scheme
    assert _client(keyed).chat.completions.create(model="aligned", messages=USER).choices[0].message.content == "you said hello there"


def test_refusals_say_what_to_send_and_carry_www_authenticate(keyed):
    bare = _chat(keyed, KEY)
    assert bare.status_code == 401 and "Authorization: Bearer" in bare.json()["error"]["message"]
    missing = _chat(keyed, None)
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    wrong = _chat(keyed, "Bearer sk-wrong")
    assert wrong.json()["error"] == {"message": "invalid API key", "type": "authentication_error", "param": None, "code": "invalid_api_key"}
    for r in (bare, missing, wrong):
        assert r.headers["www-authenticate"] == "Bearer"


def test_non_ascii_authorization_bytes_are_a_401_not_a_500(keyed):
    r = _chat(keyed, b"Bearer sk-\xff\xfe-test")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _chat(keyed, f"Bearer {KEY}").status_code == 200  # the connection and the server are fine


# -- the opt-in trace -------------------------------------------------------------------------
def _stream_events(url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = {"model": "aligned", "messages": USER, "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as r:
        lines = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_trace_is_sent_only_when_asked_for(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    c = _client(keyed)
    plain = c.chat.completions.create(model="aligned", messages=USER)
    assert "alignware_trace" not in (plain.model_extra or {})
    asked = c.chat.completions.create(model="aligned", messages=USER, extra_headers={"X-Alignware-Trace": "1"})
    assert [t["stage"] for t in asked.model_extra["alignware_trace"]] == ["IdentityResponseStage"]
    events = _stream_events(keyed, auth)
    assert not any("alignware_trace" in ev for ev in events)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    traced = _stream_events(keyed, {**auth, "X-Alignware-Trace": "true"})
    assert [ev["alignware_trace"][0]["verdict"] for ev in traced if "alignware_trace" in ev] == ["passed"]


def test_server_wide_trace_and_per_request_opt_out(open_server):
    c = _client(open_server)
    assert "alignware_trace" in c.chat.completions.create(model="aligned", messages=USER).model_extra
    off = c.chat.completions.create(model="aligned", messages=USER, extra_headers={"X-Alignware-Trace": "0"})
    assert "alignware_trace" not in (off.model_extra or {})
    assert any("alignware_trace" in ev for ev in _stream_events(open_server, {}))


# -- the upstream: credentials, llm_options, streaming -----------------------------------------
def test_missing_upstream_key_fails_fast_without_retries(fake, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cleared(fake)
    # with retries, the 2 s initial backoff alone would take 2 + 4 + 8 s
    pipe = load_pipeline({"llm": "openai/up", "llm_options": {"api_base": fake.base, "backoff_initial": 2.0}})
    with _serve(create_app(pipe)) as url:
        for attempt in range(2):  # the first request also loads litellm's lazy parts: time the second
            t0 = time.perf_counter()
            with pytest.raises(openai.APIStatusError) as e:
                _client(url).chat.completions.create(model="alignware", messages=USER)
            elapsed = time.perf_counter() - t0
    assert (e.value.status_code, e.value.type) == (502, "upstream_error")
    assert "not retried" in e.value.message and "OPENAI_API_KEY" in e.value.message
    assert elapsed < 2.0 and fake.requests == []  # one attempt, refused before any call


def test_serve_refuses_to_start_without_upstream_credentials(monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InputError, match="needs OPENAI_API_KEY"):
        serve_main(["--model", "openai/gpt-4o-mini", "--port", str(_free_port())])
    from middleware.cli import main

    assert main(["serve", "--model", "openai/gpt-4o-mini"]) == 1
    assert "needs OPENAI_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("ALIGNWARE_HOST", "0.0.0.0")
    monkeypatch.setenv("ALIGNWARE_PORT", "9123")
    _, host, port = app_from_args(["--model", "openai/gpt-4o-mini", "--no-credential-check"])
    assert (host, port) == ("0.0.0.0", 9123)
    _, host, port = app_from_args(["--model", "openai/gpt-4o-mini", "--api-key", "k", "--no-credential-check", "--host", "::1", "--port", "1"])
    assert (host, port) == ("::1", 1)


def test_readme_pipeline_streams_through_the_server(fake):
    """identity_prompt + identity_response (the README's pipeline.yaml) in front of a streaming upstream:
    the client gets the upstream's pieces, not one final chunk."""
    cleared(fake)
    pipe = load_pipeline({"llm": "openai/up", "llm_options": {"api_base": fake.base, "api_key": "sk-up"},
                          "stages": [{"type": "identity_prompt"}, {"type": "identity_response"}]})
    with _serve(create_app(pipe)) as url:
        stream = _client(url).chat.completions.create(model="alignware", messages=USER, stream=True)
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "echo: hello there" and len(pieces) == 5  # the fake streams 4 characters at a time


def test_serve_with_pipeline_and_model_keeps_llm_options(fake, tmp_path, monkeypatch):
    """``alignware serve --pipeline P --model M``: the upstream gets model M with the file's api_base and
    api_key; CORS origins and the trace come from the environment."""
    cleared(fake)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"llm: openai/from-file\nllm_options: {{api_base: '{fake.base}', api_key: sk-from-file}}\n"
        "stages:\n  - type: identity_response\n"
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ALIGNWARE_CORS_ORIGINS", f"{ORIGIN}, http://other.example")
    monkeypatch.setenv("ALIGNWARE_TRACE", "1")
    app, host, port = app_from_args(["--pipeline", str(config), "--model", "openai/from-flag"])
    assert (host, port) == ("127.0.0.1", 8000)
    with _serve(app) as url:
        resp = _client(url, key="unused").chat.completions.create(model="alignware", messages=USER)
        assert resp.choices[0].message.content == "echo: hello there"
        assert "alignware_trace" in resp.model_extra  # ALIGNWARE_TRACE=1
        assert _preflight(url, "http://other.example").headers["access-control-allow-origin"] == "http://other.example"
    assert [r["model"] for r in fake.requests] == ["from-flag"]
    assert fake.auth == ["Bearer sk-from-file"]


def test_access_log_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGNWARE_ACCESS_LOG", raising=False)
    assert serve_parser().parse_args([]).access_log is False
    assert serve_parser().parse_args(["--access-log"]).access_log is True
    monkeypatch.setenv("ALIGNWARE_ACCESS_LOG", "1")
    assert serve_parser().parse_args([]).access_log is True


def _idle_connection_closed(port: int, idle: float) -> bool:
    """Send one keep-alive request on a raw socket, wait ``idle`` seconds, and tell whether the server has
    closed the connection since."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            reply += s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        time.sleep(idle)
        s.settimeout(0.2)
        try:
            return s.recv(1) == b""  # end of stream: closed by the server
        except socket.timeout:
            return False  # still open, nothing to read


@pytest.mark.parametrize("flag, closed", [([], False), (["--keep-alive", "0.5"], True)])
def test_serve_keeps_idle_connections_open_longer_than_client_pools_do(flag: list[str], closed: bool) -> None:
    import subprocess
    import sys

    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from middleware.cli import main; sys.exit(main(sys.argv[1:]))",
           "serve", "--model", "openai/gpt-4o-mini", "--no-credential-check", "--port", str(port), *flag]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        # the default (75 s) outlasts the 5 s after which httpx and the openai SDK drop an idle connection
        assert serve_parser().parse_args([]).keep_alive == 75.0
        assert _idle_connection_closed(port, 1.5) is closed
    finally:
        proc.terminate()
        proc.wait(timeout=20)
