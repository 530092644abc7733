"""The ways to stream from an OpenAI-compatible upstream, side by side, in one process: what each costs.

Against the fast loopback upstream (``fast_upstream.py``, its own process), one streamed request at a
time, arms interleaved in rotating rounds: raw httpx (the floor: an HTTP client in Python), ``LiteLLMBackend``
(``litellm.acompletion``), ``litellm.acompletion`` with one shared ``openai.AsyncOpenAI`` as its ``client``,
and ``OpenAIBackend``. Wall time and this process's CPU time per request (litellm's background logging
threads included: they are part of what a request costs), medians over rounds. ``--light`` first turns
off what litellm lets one turn off (its logging, streaming logging, token counter, message logging,
end-user cost tracking, callbacks); ``--httpx`` makes litellm use httpx instead of aiohttp.

Usage: python benchmarks/backend_paths.py [--rounds 15] [--calls 10] [--light] [--httpx]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import httpx
import litellm
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from middleware.openai_backend import OpenAIBackend  # noqa: E402
from middleware.remote import LiteLLMBackend  # noqa: E402
from middleware.types import ChatRequest  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def lighten_litellm() -> None:
    """Every switch litellm offers that should make a call cheaper."""
    litellm.logging = False
    litellm.disable_streaming_logging = True
    litellm.disable_token_counter = True
    litellm.turn_off_message_logging = True
    litellm.disable_end_user_cost_tracking = True
    litellm.success_callback = []
    litellm.callbacks = []


async def compare(up: str, rounds: int, calls: int, label: str) -> None:
    shared = openai.AsyncOpenAI(base_url=up, api_key="sk-bench", max_retries=0)
    raw_client = httpx.AsyncClient()
    lite = LiteLLMBackend("openai/bench-model", api_base=up, api_key="sk-bench")
    light = OpenAIBackend("openai_compatible/bench-model", api_base=up, api_key="sk-bench")
    request = ChatRequest.build(MESSAGES)

    async def raw_httpx() -> None:
        body = {"model": "bench-model", "messages": MESSAGES, "stream": True}
        async with raw_client.stream("POST", up + "/chat/completions", json=body) as r:
            async for _ in r.aiter_lines():
                pass

    async def litellm_backend() -> None:
        async for _ in lite.astream(request):
            pass

    async def litellm_shared_client() -> None:
        stream = await litellm.acompletion(model="openai/bench-model", messages=MESSAGES, api_base=up, api_key="sk-bench",
                                           stream=True, client=shared, max_retries=0)
        async for _ in stream:
            pass

    async def openai_backend() -> None:
        async for _ in light.astream(request):
            pass

    arms: list[Callable[[], Awaitable[None]]] = [raw_httpx, litellm_backend, litellm_shared_client, openai_backend]
    for arm in arms:
        for _ in range(2 * calls):
            await arm()
    wall: dict[str, list[float]] = {a.__name__: [] for a in arms}
    cpu: dict[str, list[float]] = {a.__name__: [] for a in arms}
    for i in range(rounds):
        k = i % len(arms)
        for arm in arms[k:] + arms[:k]:
            await asyncio.sleep(0.05)  # the previous arm's background work ends outside this one's timing
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                await arm()
            await asyncio.sleep(0)
            wall[arm.__name__].append((time.perf_counter() - t0) / calls)
            cpu[arm.__name__].append((time.process_time() - c0) / calls)
    load = f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
    print(f"litellm {label}: {rounds} rounds x {calls} streamed requests per arm{load}")
    for name in wall:
        print(f"  {name:22s} wall {statistics.median(wall[name]) * 1e3:7.2f} ms   CPU {statistics.median(cpu[name]) * 1e3:7.2f} ms per request")
    await raw_client.aclose()
    await shared.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--light", action="store_true", help="turn off litellm's logging and cost tracking first")
    parser.add_argument("--httpx", action="store_true", help="litellm on httpx instead of aiohttp")
    args = parser.parse_args()
    if args.light:
        lighten_litellm()
    if args.httpx:
        litellm.disable_aiohttp_transport = True
    label = ", ".join(n for n, on in (("lightened", args.light), ("on httpx", args.httpx)) if on) or "as installed"
    upstream = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "fast_upstream.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert upstream.stdout is not None
        up = f"http://127.0.0.1:{int(upstream.stdout.readline().split()[1])}/v1"
        asyncio.run(compare(up, args.rounds, args.calls, label))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
