"""CPU per request of ``OpenAIBackend``'s async transport against the ``openai`` client's own, side by side.

Both arms send the same chat-completion request to a fast loopback upstream (``fast_upstream.py``, a child
process) and read the JSON answer: ``sdk`` is ``openai.AsyncOpenAI`` on its own aiohttp transport
(``DefaultAioHttpClient``; ``client.post`` with the raw response, as ``OpenAIBackend`` used it), ``aio`` is
``middleware.aio_transport.AioUpstream`` (the same client's URL and headers, sent on aiohttp directly). One
client: rounds of ``--calls`` calls per arm, arms alternating which goes first; the median over rounds of the
calling thread's CPU time per call. Then ``--requests`` requests with 32 in flight per arm: CPU per request and
wall time. Everything in one run, in one event loop.

Usage: python benchmarks/openai_transport.py [--rounds 20] [--calls 100] [--requests 2000]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from middleware.aio_transport import AioUpstream  # noqa: E402
from middleware.openai_backend import _Response  # noqa: E402

BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 64}
PATH = "/chat/completions"


async def measure(base: str, rounds: int, calls: int, requests: int) -> None:
    sdk = openai.AsyncOpenAI(base_url=base, api_key="sk-bench", max_retries=0, timeout=30,
                             http_client=openai.DefaultAioHttpClient(timeout=30))
    aio = AioUpstream(openai.AsyncOpenAI(base_url=base, api_key="sk-bench", max_retries=0, timeout=30), PATH, 30.0)

    async def via_sdk() -> Any:
        return json.loads((await sdk.post(PATH, body=BODY, cast_to=_Response)).content)

    async def via_aio() -> Any:
        return json.loads(await aio.post(BODY, {}))

    arms: dict[str, Callable[[], Awaitable[Any]]] = {"sdk": via_sdk, "aio": via_aio}
    for fn in arms.values():  # warm-up: connections, imports
        for _ in range(100):
            assert (await fn())["choices"][0]["message"]["content"]
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            c0 = time.thread_time()
            for _ in range(calls):
                await arms[name]()
            cpu[name].append((time.thread_time() - c0) / calls * 1e3)
    print(f"one client, {rounds} rounds of {calls} calls per arm: CPU per request, median over rounds")
    for name in arms:
        print(f"  {name}: {statistics.median(cpu[name]):.3f} ms")
    print(f"  ratio sdk/aio: {statistics.median(cpu['sdk']) / statistics.median(cpu['aio']):.2f}x")
    print(f"{requests} requests, 32 in flight:")
    for name, fn in arms.items():
        gate = asyncio.Semaphore(32)

        async def one(fn: Callable[[], Awaitable[Any]] = fn) -> None:
            async with gate:
                await fn()

        c0, t0 = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        print(f"  {name}: {(time.thread_time() - c0) / requests * 1e3:.3f} ms CPU per request, wall {time.perf_counter() - t0:.2f} s")
    await sdk.close()
    await aio.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()
    child = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "fast_upstream.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline().split()[1])
        asyncio.run(measure(f"http://127.0.0.1:{port}/v1", args.rounds, args.calls, args.requests))
    finally:
        child.terminate()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
