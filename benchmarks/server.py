"""How much latency ``alignware serve`` adds over calling the same upstream directly, one client and 100.

Three kinds of process, so that no two share a GIL: a fast loopback upstream (``fast_upstream.py``: fixed
chat-completion JSON and SSE, tens of µs per request), one real ``alignware serve`` process per backend
(``serve_main`` with a pipeline file: the no-op ``identity_prompt`` and ``identity_response`` stages,
which answer async calls without a worker thread and pass a stream on piece by piece), and this client (httpx async; the
``openai`` client for one streamed arm). Arms: the upstream directly, ``floor`` (``floor_proxy.py``: a
pass-through proxy on the same uvicorn, no parsing and no pipeline: what one more hop through a Python server
costs on this machine, which no Python server goes below; ``--no-floor`` leaves it out), and the server with
each backend (``litellm``: ``LiteLLMBackend``; ``openai``: ``OpenAIBackend``).

One client: each round calls every arm once (rotating which goes first), non-streamed (total time) and
streamed (time to first token, time to the last); "added" is the median (and p99) over rounds of the
paired difference server − direct, which stays meaningful on a shared, noisy machine. Under load:
``--clients`` concurrent streaming clients for ``--load-seconds``, arms in turn, ``--load-rounds`` times;
errors, p50/p99 of the whole request and requests/s per arm. All of it in one run.

Usage: python benchmarks/server.py [--rounds 300] [--warmup 30] [--clients 100] [--load-seconds 3]
       [--load-rounds 2] [--backends litellm,openai] [--no-floor] [--profile DIR]
``--profile DIR`` runs each server under cProfile and writes DIR/server-BACKEND.prof (its figures are then
not the plain server's). ``--serve CONFIG PORT`` is the server process itself (used by the benchmark).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GOAL_MS = 1.0
BACKENDS = {"litellm": "openai/bench-model", "openai": "openai_compatible/bench-model"}
FLOOR = "floor"  # the arm of floor_proxy.py: a pass-through proxy, the least one more hop through Python adds


# -- processes ------------------------------------------------------------------------------------
def _start(cmd: list[str], log: Path | None = None) -> subprocess.Popen[str]:
    """Start ``cmd`` in the repository root; its stderr (uvicorn's log) goes to ``log`` (else nowhere)."""
    stderr = log.open("w") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))})


def start_upstream() -> tuple[subprocess.Popen[str], str]:
    proc = _start([sys.executable, str(ROOT / "benchmarks" / "fast_upstream.py")])
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(backend: str, upstream: str, workdir: Path, profile: Path | None) -> tuple[subprocess.Popen[str], str]:
    """``alignware serve --pipeline CONFIG`` (its own process) in front of ``upstream``; for ``floor``, the
    pass-through proxy of ``floor_proxy.py``."""
    port = _free_port()
    log = Path(tempfile.gettempdir()) / f"alignware-bench-server-{backend}.log"
    if backend == FLOOR:
        proc = _start([sys.executable, str(ROOT / "benchmarks" / "floor_proxy.py"), upstream, str(port)], log)
    else:
        config = workdir / f"pipeline-{backend}.json"
        config.write_text(json.dumps({
            "llm": BACKENDS[backend],
            "llm_options": {"api_base": upstream, "api_key": "sk-bench"},
            "stages": [{"type": "identity_prompt"}, {"type": "identity_response"}],  # no-ops; both stream, no threads
        }))
        prof = ["-m", "cProfile", "-o", str(profile / f"server-{backend}.prof")] if profile else []
        proc = _start([sys.executable, *prof, str(Path(__file__).resolve()), "--serve", str(config), str(port)], log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {backend} server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base + "/v1"
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the {backend} server did not start")


def serve(config: str, port: str) -> None:
    """The server process: exactly what ``alignware serve --pipeline CONFIG --port PORT`` runs."""
    from middleware.server import serve_main

    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # graceful: profiles get written
    serve_main(["--pipeline", config, "--port", port])


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0 for the upstream-only arm."""
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def rss_mb(pid: int | None) -> float:
    """A process's resident memory in MiB (0 for the upstream-only arm)."""
    return 0.0 if pid is None else psutil.Process(pid).memory_info().rss / 2**20


# -- one request ----------------------------------------------------------------------------------
def body(stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "bench-model", "messages": MESSAGES}
    if stream:
        out.update(stream=True, stream_options={"include_usage": True})
    return out


async def plain(client: httpx.AsyncClient, base: str) -> float:
    t0 = time.perf_counter()
    r = await client.post(base + "/chat/completions", json=body(False))
    text = r.json()["choices"][0]["message"]["content"]
    t1 = time.perf_counter()
    if r.status_code != 200 or not text:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return t1 - t0


async def streamed(client: httpx.AsyncClient, base: str) -> tuple[float, float]:
    """(time to the first text delta, time to ``[DONE]``); raises unless the text arrived whole."""
    t0 = time.perf_counter()
    first = 0.0
    pieces: list[str] = []
    done = False
    async with client.stream("POST", base + "/chat/completions", json=body(True)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    first = first or time.perf_counter()
                    pieces.append(content)
    t1 = time.perf_counter()
    if not done or not pieces:
        raise RuntimeError("the stream ended without text or [DONE]")
    return first - t0, t1 - t0


async def sdk_streamed(client: Any) -> float:
    """The ``openai`` client, streamed: time to the last chunk."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(model="bench-model", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    if not text:
        raise RuntimeError("no text")
    return time.perf_counter() - t0


# -- one client, interleaved ----------------------------------------------------------------------
async def one_client(bases: dict[str, str], pids: dict[str, int | None], rounds: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    import openai

    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
    clients = {name: httpx.AsyncClient(limits=limits, timeout=30) for name in bases}
    sdks = {name: openai.AsyncOpenAI(base_url=base, api_key="sk-bench", max_retries=0) for name, base in bases.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"plain": [], "ttft": [], "last": [], "sdk": []} for n in bases}
    names = list(bases)
    cpu0: dict[str, float] = {}
    for i in range(warmup + rounds):
        if i == warmup:
            cpu0 = {name: cpu_s(pids[name]) for name in names}
        k = i % len(names)
        for name in names[k:] + names[:k]:
            client, base = clients[name], bases[name]
            p = await plain(client, base)
            ttft, last = await streamed(client, base)
            s = await sdk_streamed(sdks[name])
            if i >= warmup:
                for key, value in (("plain", p), ("ttft", ttft), ("last", last), ("sdk", s)):
                    times[name][key].append(value)
    for name in names:  # the server's own CPU per request: 3 requests per round, a figure the noise barely moves
        times[name]["cpu"] = [(cpu_s(pids[name]) - cpu0[name]) / (3 * rounds)]
    for c in clients.values():
        await c.aclose()
    for sdk in sdks.values():
        await sdk.close()
    return times


# -- many clients ---------------------------------------------------------------------------------
async def load(base: str, clients: int, seconds: float) -> tuple[list[float], dict[str, int], float]:
    """``clients`` streaming clients back to back for ``seconds``: latencies, errors by kind, elapsed."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    async with client.stream("POST", base + "/chat/completions", json=body(True)) as r:
                        lines = [line async for line in r.aiter_lines() if line]
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}")
                    if not lines or lines[-1] != "data: [DONE]" or any(line.startswith('data: {"error"') for line in lines):
                        raise RuntimeError("broken stream")
                    latencies.append(time.perf_counter() - t0)
                except Exception as e:
                    kind = type(e).__name__ + (f": {e}" if isinstance(e, RuntimeError) else "")
                    errors[kind] = errors.get(kind, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, errors, time.perf_counter() - t0


async def many_clients(bases: dict[str, str], pids: dict[str, int | None], clients: int, seconds: float,
                       rounds: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {n: {"lat": [], "errors": {}, "done": 0, "elapsed": 0.0, "cpu": 0.0, "rss": []} for n in bases}
    names = list(bases)
    if rounds < 1:
        return {}
    await load(bases[names[0]], clients, 0.5)  # warm-up: connections, the servers' first requests
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            c0, m0 = cpu_s(pids[name]), rss_mb(pids[name])
            lat, errors, elapsed = await load(bases[name], clients, seconds)
            o = out[name]
            o["cpu"] += cpu_s(pids[name]) - c0
            o["rss"].append((m0, rss_mb(pids[name])))
            o["lat"] += lat
            o["done"] += len(lat)
            o["elapsed"] += elapsed
            for kind, n in errors.items():
                o["errors"][kind] = o["errors"].get(kind, 0) + n
    return out


# -- report ---------------------------------------------------------------------------------------
def ms(x: float) -> str:
    return f"{x * 1e3:8.2f}"


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98] if len(xs) >= 2 else xs[0]


def paired(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def report(times: dict[str, dict[str, list[float]]], loaded: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    load_avg = f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
    print(f"one client: {args.rounds} rounds, arms interleaved in rotating order after {args.warmup} warm-up rounds{load_avg}")
    labels = {"plain": "non-streamed, total", "ttft": "streamed, first token", "last": "streamed, last token",
              "sdk": "openai client, streamed, last"}
    print(f"{'':34s} {'arm':8s} {'median':>8s} {'p99':>8s} | added: {'median':>8s} {'p99':>8s}  (ms)")
    verdicts: dict[str, bool] = {}
    for key, label in labels.items():
        for name, t in times.items():
            xs = t[key]
            line = f"{label:34s} {name:8s} {ms(statistics.median(xs))} {ms(p99(xs))} |"
            if name != "direct":
                d = paired(xs, times["direct"][key])
                med = statistics.median(d)
                line += f"        {ms(med)} {ms(p99(d))}"
                if key in ("plain", "ttft", "last") and name != FLOOR:
                    verdicts[name] = verdicts.get(name, True) and med * 1e3 <= GOAL_MS
            print(line)
    for name, t in times.items():
        if name != "direct":
            print(f"server CPU per request (one client; plain, streamed, openai client), {name}: {t['cpu'][0] * 1e3:.2f} ms")
    if not loaded:
        print("\nno load rounds (--load-rounds 0)")
    else:
        print(f"\n{args.clients} concurrent streaming clients, {args.load_seconds:g} s per arm, {args.load_rounds} rounds "
              f"(arms in rotating order); one client process drives them all")
        print(f"{'arm':8s} {'requests':>9s} {'errors':>7s} {'req/s':>8s} {'p50':>8s} {'p99':>8s} | added p50  server CPU/request (ms), RSS before->after each round")
    for name, o in loaded.items():
        lat, errs = o["lat"], sum(o["errors"].values())
        if not lat:
            print(f"{name:8s} {0:9d} {errs:7d}  (no request succeeded) {o['errors']}")
            if name != FLOOR:
                verdicts[name] = False
            continue
        added = "" if name == "direct" else ms(statistics.median(lat) - statistics.median(loaded["direct"]["lat"]))
        cpu = "" if name == "direct" else (f"  {ms(o['cpu'] / o['done'])}   RSS MiB "
                                           + ", ".join(f"{a:.0f}->{b:.0f}" for a, b in o["rss"]))
        print(f"{name:8s} {o['done']:9d} {errs:7d} {o['done'] / o['elapsed']:8.1f} {ms(statistics.median(lat))} {ms(p99(lat))} | {added:>9s}{cpu}"
              + (f"  errors: {o['errors']} (server log: {tempfile.gettempdir()}/alignware-bench-server-{name}.log)" if errs else ""))
        if name not in ("direct", FLOOR) and errs:
            verdicts[name] = False
    for name, ok in verdicts.items():
        print(f"goal (<= {GOAL_MS:g} ms median added, non-streamed and streamed; zero errors under load), "
              f"{name} backend: {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--load-seconds", type=float, default=3.0)
    parser.add_argument("--load-rounds", type=int, default=2)
    parser.add_argument("--backends", default="litellm,openai", help="comma-separated: litellm, openai")
    parser.add_argument("--no-floor", action="store_true", help="leave out the floor arm (floor_proxy.py)")
    parser.add_argument("--profile", type=Path, default=None, help="run the servers under cProfile, stats into this folder")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - BACKENDS.keys()
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; known: {', '.join(BACKENDS)}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        upstream, upstream_base = start_upstream()
        procs.append(upstream)
        bases = {"direct": upstream_base}
        pids: dict[str, int | None] = {"direct": None}
        with tempfile.TemporaryDirectory() as tmp:
            for b in ([] if args.no_floor else [FLOOR]) + backends:
                proc, base = start_server(b, upstream_base, Path(tmp), args.profile)
                procs.append(proc)
                bases[b] = base
                pids[b] = proc.pid
            times = asyncio.run(one_client(bases, pids, args.rounds, args.warmup))
            loaded = asyncio.run(many_clients(bases, pids, args.clients, args.load_seconds, args.load_rounds))
        report(times, loaded, args)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
