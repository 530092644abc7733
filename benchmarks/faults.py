"""Fault injection through the server: every request ends with the upstream's answer or a clear error,
within its deadline; none hangs, none is lost or answered twice, none is an empty or wrong success.

A loopback upstream answers each attempt correctly or, with probability ``--fault-rate``, with one of
the faults below (chosen at random per attempt, so a retry may meet another one). ``alignware serve``'s
app (``LiteLLMBackend``, or with ``--client openai`` ``OpenAIBackend``; ``timeout`` and ``max_retries`` as
given) runs under uvicorn on loopback; async httpx clients send ``--requests`` requests, ``--concurrency`` at a
time, every other one streamed, each with a client deadline. Then the figures: requests, faults injected by kind, answers, errors by status or kind,
and the four counts that must be 0 (hung, lost, duplicated, empty-or-wrong success).

Faults: 429 with and without ``Retry-After``, 500, 503, a slow drip (a byte or an SSE comment every 0.2 s),
a stall (no answer at all), a dropped connection, a truncated stream (some events, then the connection
closes), an empty stream (only ``[DONE]``), a body that is not JSON, bytes that are not UTF-8.

Usage: python benchmarks/faults.py [--requests 1000] [--fault-rate 0.3] [--concurrency 20] [--seed 0]
       [--client litellm|openai]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import collections
import json
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from middleware import Pipeline  # noqa: E402
from middleware.config import load_pipeline  # noqa: E402
from middleware.server import create_app  # noqa: E402

TEXT = "Paris is the capital of France."
FAULTS = ["429", "429-retry-after", "500", "503", "drip", "stall", "drop", "truncated", "empty", "not-json", "not-utf8"]


class FaultyUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that fails on purpose (see the module's docstring)."""

    rng = random.Random(0)
    rate = 0.3
    lock = threading.Lock()
    injected: collections.Counter[str] = collections.Counter()
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _events(self, events: list[str], done: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for e in events + (["[DONE]"] if done else []):
            self.wfile.write(f"data: {e}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        stream = bool(body.get("stream"))
        with self.lock:
            fault = self.rng.choice(FAULTS) if self.rng.random() < self.rate else None
            if fault == "truncated" and not stream:
                fault = "drop"
            if fault:
                self.injected[fault] += 1
        base = {"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        pieces = [json.dumps({**base, "choices": [{"index": 0, "delta": {"content": TEXT[i:i + 6]}, "finish_reason": None}]})
                  for i in range(0, len(TEXT), 6)]
        finish = json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        error = lambda code: json.dumps({"error": {"message": f"injected {code}", "type": "fault", "code": code}}).encode()  # noqa: E731
        if fault in ("429", "429-retry-after", "500", "503"):
            code = int(fault[:3])
            self._send(code, error(code), **({"Retry-After": "0.1"} if fault == "429-retry-after" else {}))
        elif fault == "drip":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b": drip\n\n" if stream else b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            self.close_connection = True
        elif fault == "stall":
            time.sleep(10)
            self.close_connection = True
        elif fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif fault == "truncated":
            self._events(pieces[:2], done=False)
            self.connection.shutdown(socket.SHUT_RDWR)
        elif fault == "empty":
            self._events([]) if stream else self._send(200, b"{}")
        elif fault == "not-json":
            self._events(["{not json"]) if stream else self._send(200, b"{not json")
        elif fault == "not-utf8":
            if stream:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"data: \xff\xfe{\n\ndata: [DONE]\n\n")
                self.close_connection = True
            else:
                self._send(200, b'{"choices": "\xff\xfe"}')
        elif stream:
            self._events(pieces + [finish])
        else:
            reply = {"id": "chatcmpl-f", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}
            self._send(200, json.dumps(reply).encode())


def _serve_in_thread(server: uvicorn.Server) -> threading.Thread:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise SystemExit("the server did not start")
    return thread


class _Refused(Exception):
    """A clear error answer (an HTTP error status, or an error event in a stream)."""


async def _one(client: httpx.AsyncClient, url: str, i: int, deadline: float) -> tuple[str, str]:
    """(outcome, detail): outcome is answer, error, hung, empty-success or wrong-success."""
    stream = i % 2 == 1
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": f"request {i}"}]}

    async def ask() -> str:
        if not stream:
            r = await client.post(url, json=body)
            if r.status_code != 200:
                raise _Refused(f"HTTP {r.status_code} {r.json()['error']['type']}")
            return str(r.json()["choices"][0]["message"]["content"] or "")
        parts: list[str] = []
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                raise _Refused(f"HTTP {r.status_code} {r.json()['error']['type']}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise _Refused(f"stream error event ({event['error'].get('type')})")
                for choice in event.get("choices", []):
                    parts.append(choice.get("delta", {}).get("content") or "")
        return "".join(parts)

    try:
        text = await asyncio.wait_for(ask(), deadline)
    except _Refused as e:
        return "error", str(e)
    except asyncio.TimeoutError:
        return "hung", f"no end within {deadline:g}s"
    if not text:
        return "empty-success", ""
    return ("answer", "") if text == TEXT else ("wrong-success", text[:40])


async def _run(url: str, n: int, concurrency: int, deadline: float) -> list[tuple[int, str, str]]:
    results: list[tuple[int, str, str]] = []
    queue = list(range(n))
    async with httpx.AsyncClient(timeout=deadline + 5, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                outcome, detail = await _one(client, url, i, deadline)
                results.append((i, outcome, detail))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--fault-rate", type=float, default=0.3)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--timeout", type=float, default=1.0, help="the backend's timeout per attempt (s)")
    p.add_argument("--max-retries", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", choices=["litellm", "openai"], default="litellm",
                   help="the backend: LiteLLMBackend (litellm) or OpenAIBackend (the openai client's requests on aiohttp)")
    args = p.parse_args()
    FaultyUpstream.rng = random.Random(args.seed)
    FaultyUpstream.rate = args.fault_rate

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), FaultyUpstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    options = {"api_base": f"http://127.0.0.1:{upstream.server_address[1]}/v1", "api_key": "sk-faults",
               "timeout": args.timeout, "max_retries": args.max_retries, "backoff_initial": 0.05, "backoff_max": 0.5,
               "client": args.client}
    pipe = load_pipeline({"llm": "openai/faulty", "llm_options": options, "stages": [{"type": "identity_prompt"}, {"type": "identity_response"}]})
    assert isinstance(pipe, Pipeline)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(pipe), host="127.0.0.1", port=port, log_level="critical"))
    thread = _serve_in_thread(server)
    # the longest a request may take: every attempt timing out, plus the backoffs, plus slack
    deadline = (args.max_retries + 1) * (args.timeout + 0.5) + 5
    t0 = time.perf_counter()
    try:
        results = asyncio.run(_run(f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, args.concurrency, deadline))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        upstream.shutdown()
    elapsed = time.perf_counter() - t0

    outcomes = collections.Counter(o for _, o, _ in results)
    errors = collections.Counter(d for _, o, d in results if o == "error")
    ids = collections.Counter(i for i, _, _ in results)
    lost = args.requests - len(ids)
    duplicated = sum(c - 1 for c in ids.values() if c > 1)
    print(f"{args.requests} requests (half streamed), {args.concurrency} at a time, in {elapsed:.1f} s; "
          f"backend {args.client}, timeout {args.timeout:g}s, max_retries {args.max_retries}; client deadline {deadline:g}s")
    attempts = sum(FaultyUpstream.injected.values())
    print(f"faults injected: {attempts} ({', '.join(f'{k} {v}' for k, v in sorted(FaultyUpstream.injected.items()))})")
    print(f"answers: {outcomes['answer']}; errors: {outcomes['error']} "
          f"({', '.join(f'{k}: {v}' for k, v in errors.most_common())})")
    bad = {"hung": outcomes["hung"], "lost": lost, "duplicated": duplicated,
           "empty-success": outcomes["empty-success"], "wrong-success": outcomes["wrong-success"]}
    print("must be 0: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
    for i, o, d in results:
        if o in ("hung", "wrong-success"):
            print(f"  request {i}: {o} {d}")
    ok = not any(bad.values())
    print("goal (every request answered or a clear error within its deadline): " + ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
