"""A local OpenAI-compatible server on 127.0.0.1, for tests that need a real upstream.

``FakeOpenAI`` holds scripted replies per model name (statuses, headers, texts, broken streams, tool
calls) and records every request body. It answers as the real API shapes its replies: ``n`` choices
(choice ``i > 0`` says ``TEXT (i+1)`` unless ``texts`` is scripted), ``logprobs`` (one entry per piece of
4 characters, ``top_logprobs`` alternatives each), tool calls (``content: null``; streamed as OpenAI
does: the id and name first, then the arguments in pieces, ``finish_reason: "tool_calls"``). It also
answers the text-completion API (``/v1/completions``, as vLLM serves it: ``prompt`` in, ``choices[].text``
out, ``finish_reason`` ``"stop"`` or, scripted with ``cut()``, ``"length"``); ``paths`` records the path of
every request. ``serve_fake()`` runs it on a free loopback port with the standard library's threaded
HTTP server. Tests import the ``fake_upstream`` fixture from ``conftest.py`` (module-scoped server, cleared
per test).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator


class FakeOpenAI:
    """Scripted replies per model name; the last scripted reply repeats. Unscripted: echo the user."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []  # each request's Authorization header
        self.headers: list[dict[str, str]] = []  # each request's headers (names in lower case)
        self.queries: list[str] = []  # each request's query string
        self.paths: list[str] = []  # each request's path (/v1/chat/completions, /v1/completions)
        self.lock = threading.Lock()
        self.base = ""

    def script(self, model: str, *replies: dict[str, Any]) -> None:
        self.scripts[model] = list(replies)

    def calls(self, model: str) -> int:
        return sum(1 for r in self.requests if r["model"] == model)

    def next_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.requests.append(body)
            queue = self.scripts.get(body["model"])
            if not queue:
                said = body["messages"][-1]["content"] if "messages" in body else body.get("prompt")
                return {"status": 200, "text": "echo: " + _text(said)}
            return queue.pop(0) if len(queue) > 1 else queue[0]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if p.get("type") == "text")
    return content or ""


def ok(text: str) -> dict[str, Any]:
    return {"status": 200, "text": text}


def cut(text: str) -> dict[str, Any]:
    """A scripted reply cut at the token limit (``finish_reason: "length"``)."""
    return {"status": 200, "text": text, "finish_reason": "length"}


def slow(seconds: float, text: str) -> dict[str, Any]:
    """A scripted reply sent after ``seconds`` of silence (no byte before it: a read timeout fires)."""
    return {"status": 200, "text": text, "delay": seconds}


def tool_call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    """A scripted reply that calls tool ``name`` with ``arguments`` (a JSON string) and has no text."""
    return {"status": 200, "text": "", "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}


def _pieces(text: str) -> list[str]:
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def _logprobs(pieces: list[str], top: int) -> dict[str, Any]:
    def entry(i: int, token: str) -> dict[str, Any]:
        alts = [{"token": f"alt{k}", "logprob": -1.0 - k, "bytes": None} for k in range(top)]
        return {"token": token, "logprob": -0.5 * i, "bytes": list(token.encode()), "top_logprobs": alts}

    return {"content": [entry(i, p) for i, p in enumerate(pieces)], "refusal": None}


def drip(seconds: float, first: str | None = None) -> dict[str, Any]:
    """A 200 that drips for ``seconds`` and never completes: one space of a JSON body, or one SSE comment
    (streamed, after a first piece of text ``first`` when given), every 0.2 s."""
    return {"status": 200, "drip": seconds, "first": first}


def raw_stream(body: str) -> dict[str, Any]:
    """A streamed 200 whose body is ``body`` as it is (an empty stream, a body that is not SSE)."""
    return {"status": 200, "raw_stream": body}


def raw_body(body: bytes) -> dict[str, Any]:
    """A non-streamed 200 whose body is ``body`` as it is (not JSON, not UTF-8, JSON without choices)."""
    return {"status": 200, "raw_body": body}


def fail(status: int, message: str, **headers: str) -> dict[str, Any]:
    return {"status": status, "message": message, "headers": headers}


def make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up first (a slow() reply)
                pass

        def _event(self, payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.auth.append(self.headers.get("Authorization"))
            fake.headers.append({k.lower(): v for k, v in self.headers.items()})
            fake.paths.append(self.path.split("?")[0])
            fake.queries.append(self.path.partition("?")[2])
            reply = fake.next_reply(body)
            model = body["model"]
            if reply.get("delay"):
                time.sleep(reply["delay"])
            if reply["status"] != 200:
                error = {"message": reply["message"], "type": "test_error", "code": reply["status"]}
                self._json(reply["status"], {"error": error}, reply.get("headers"))
                return
            if "drip" in reply:  # a 200 that never finishes: headers, then a byte (or an SSE comment) at a time
                streamed = bool(body.get("stream"))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream" if streamed else "application/json")
                if not streamed:
                    self.send_header("Content-Length", "1000000")
                self.end_headers()
                try:
                    if streamed and reply.get("first"):  # a first piece of text, then the drip
                        piece = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "delta": {"content": reply["first"]}, "finish_reason": None}]}
                        self._event(piece)
                    for _ in range(int(reply["drip"] / 0.2)):
                        self.wfile.write(b": keep-alive\n\n" if streamed else b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:  # the client gave up: what a dripping upstream sees
                    pass
                return
            if "raw_body" in reply:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply["raw_body"])))
                self.end_headers()
                self.wfile.write(reply["raw_body"])
                return
            if "raw_stream" in reply:  # a 200 event stream with exactly this body (``"data: [DONE]\n\n"``, junk)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(reply["raw_stream"].encode())
                return
            path = self.path.split("?")[0]
            if path.rstrip("/").endswith("/completions") and "/chat/" not in path:
                self._text_completion(body, reply)
                return
            text = reply["text"]
            n = body.get("n") or 1
            texts = reply.get("texts") or [text] + [f"{text} ({i + 1})" for i in range(1, n)]
            calls = reply.get("tool_calls")
            top = body.get("top_logprobs") or 0
            words = sum(len(t.split()) for t in texts)
            usage = {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words}
            finish = reply.get("finish_reason") or ("tool_calls" if calls else "stop")
            if not body.get("stream"):
                choices = []
                for i, t in enumerate(texts):
                    message: dict[str, Any] = {"role": "assistant", "content": t or None}
                    if calls:
                        message["tool_calls"] = calls
                    logprobs = _logprobs(_pieces(t), top) if body.get("logprobs") else None
                    choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": logprobs})
                self._json(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
                    "choices": choices, "usage": usage,
                })
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model}
            self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            for piece in _pieces(text):
                logprobs = _logprobs([piece], top) if body.get("logprobs") else None
                self._event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None, "logprobs": logprobs}]})
            for k, call in enumerate(calls or ()):
                head = {"index": k, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
                self._event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]})
                for piece in _pieces(call["function"]["arguments"]):
                    more = {"index": k, "function": {"arguments": piece}}
                    self._event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [more]}, "finish_reason": None}]})
            if reply.get("break_stream"):
                self._event({"error": {"message": reply["break_stream"], "type": "server_error"}})
                return
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event({**base, "choices": [], "usage": usage})
            self._event("[DONE]")

        def _text_completion(self, body: dict[str, Any], reply: dict[str, Any]) -> None:
            """A ``text_completion`` answer, as vLLM's ``/v1/completions`` gives it (one choice, not streamed)."""
            text = reply["text"]
            words = len(text.split())
            self._json(200, {
                "id": "cmpl-test", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": reply.get("finish_reason", "stop"), "logprobs": None}],
                "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words},
            })

    return Handler



@contextlib.contextmanager
def serve_fake() -> Iterator[FakeOpenAI]:
    """A ``FakeOpenAI`` on a free loopback port (``.base`` is its ``/v1`` URL), stopped on exit."""
    fake = FakeOpenAI()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


def cleared(fake: FakeOpenAI) -> FakeOpenAI:
    """``fake`` with no scripts and no recorded requests."""
    with fake.lock:
        fake.scripts.clear()
        fake.requests.clear()
        fake.auth.clear()
        fake.headers.clear()
        fake.queries.clear()
        fake.paths.clear()
    return fake
