"""CPU time of one request inside the server process, without sockets on the client side: the ASGI app of
``alignware serve`` (``OpenAIBackend``, the no-op ``identity_prompt`` and ``identity_response`` stages) and the
pass-through proxy of ``floor_proxy.py``, each called as an ASGI app in this process, both in front of the same
loopback upstream (``fast_upstream.py``, its own process). Arms interleaved in rounds, rotating which goes
first; the figure is this process's CPU time per request (median over rounds), non-streamed and streamed, and
the ratio of the two arms. What ``benchmarks/server.py`` measures end to end, without uvicorn's HTTP
parsing and the client: the server's own code against the least a proxy has to do.

Usage: python benchmarks/server_inprocess.py [--rounds 30] [--requests 50] [--profile stream|plain]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from floor_proxy import close as close_floor  # noqa: E402
from floor_proxy import make_app as floor_app  # noqa: E402
from server import start_upstream  # noqa: E402

from middleware.config import PipelineConfig  # noqa: E402
from middleware.server import create_app  # noqa: E402

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def alignware_app(upstream: str) -> App:
    cfg = PipelineConfig.load({"llm": "openai_compatible/bench-model", "llm_options": {"api_base": upstream, "api_key": "sk-bench"},
                               "stages": [{"type": "identity_prompt"}, {"type": "identity_response"}]})
    return create_app(cfg.build(cfg.build_llm()))  # type: ignore[no-any-return]


def body(stream: bool) -> bytes:
    out: dict[str, Any] = {"model": "bench-model", "messages": MESSAGES}
    if stream:
        out.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(out).encode()


async def call(app: App, data: bytes) -> bytes:
    """One POST /v1/chat/completions through ``app``; its response body (the status must be 200)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(data)).encode())]}
    sent = False
    done = asyncio.Event()
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        await done.wait()  # as uvicorn: answered once the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    if out[0].get("status") != 200:
        raise RuntimeError(f"HTTP {out[0].get('status')}: {out[1:]}")
    return b"".join(m.get("body", b"") for m in out[1:])


async def measure(apps: dict[str, App], rounds: int, requests: int) -> dict[str, dict[str, list[float]]]:
    cpu: dict[str, dict[str, list[float]]] = {name: {"plain": [], "stream": []} for name in apps}
    names = list(apps)
    for name in names:  # warm-up, and a check that both answer the same text
        for stream in (False, True):
            for _ in range(20):
                await call(apps[name], body(stream))
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            for kind, stream in (("plain", False), ("stream", True)):
                data = body(stream)
                c0 = time.process_time()
                for _ in range(requests):
                    await call(apps[name], data)
                cpu[name][kind].append((time.process_time() - c0) / requests)
    return cpu


async def main_async(args: argparse.Namespace, upstream: str) -> None:
    try:
        await run(args, upstream)
    finally:
        await close_floor()


async def run(args: argparse.Namespace, upstream: str) -> None:
    apps = {"floor": floor_app(upstream), "alignware": alignware_app(upstream)}
    plain = {name: await call(app, body(False)) for name, app in apps.items()}
    texts = {name: json.loads(b)["choices"][0]["message"]["content"] for name, b in plain.items()}
    assert texts["floor"] == texts["alignware"], texts
    if args.profile:
        prof = cProfile.Profile(time.process_time)
        data = body(args.profile == "stream")
        prof.enable()
        for _ in range(args.rounds * args.requests):
            await call(apps["alignware"], data)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    cpu = await measure(apps, args.rounds, args.requests)
    load = f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
    print(f"{args.rounds} rounds of {args.requests} requests per arm and kind, arms interleaved{load}")
    print(f"{'':12s} {'floor':>10s} {'alignware':>10s} {'ratio':>7s}   (CPU ms per request in this process, medians)")
    for kind in ("plain", "stream"):
        f, a = statistics.median(cpu["floor"][kind]) * 1e3, statistics.median(cpu["alignware"][kind]) * 1e3
        print(f"{kind:12s} {f:10.3f} {a:10.3f} {a / f:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=50, help="requests per arm, kind and round")
    parser.add_argument("--profile", choices=("plain", "stream"), help="profile the alignware app instead (CPU time)")
    args = parser.parse_args()
    upstream, base = start_upstream()
    try:
        asyncio.run(main_async(args, base))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
