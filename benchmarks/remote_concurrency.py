"""``alignware eval`` against a served model that is the bottleneck: wall time at several ``--concurrency``.

A loopback OpenAI-compatible upstream (:class:`DelayedUpstream`, raw asyncio streams, keep-alive) answers
every chat completion after ``--delay`` seconds (default 50 ms) with an echo of the last user message, and
counts the requests in flight at once. ``evaluate_pipeline`` runs ``--prompts`` prompts (default 1,000)
through a pipeline with no stages on a ``LiteLLMBackend`` pointed at it, with a judge that only measures
length (a plain object with ``score_batch``) and no controls, so one generation pass per run; once per
concurrency (default 1, 8, 32, 128), all in one process. It prints each run's wall time (the whole
``evaluate_pipeline`` call, after one warm-up run), prompts/s, speed-up over the first level, the generation
phase's milliseconds per prompt, the most requests the upstream saw in flight, and errors (a failed prompt
fails the run). The client is ``OpenAIBackend`` (``--client litellm``: ``LiteLLMBackend``, several times
the CPU per request).
Goal: at least 20x the serial rate at concurrency 32, no errors.

Run: ``python benchmarks/remote_concurrency.py [--prompts 1000] [--delay 0.05] [--levels 1 8 32 128]``.
The upstream runs in a child process (``--serve``: prints ``READY <port>``), so its work does not share the
client's interpreter lock; tests start it in a thread of their own process instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from fast_upstream import read_request  # noqa: E402

#: a last user message containing this marker gets a 400 (not retried): one failing prompt among many
FAIL_MARK = "[fail]"


def echo(text: str) -> str:
    return "echo: " + text


class DelayedUpstream:
    """An OpenAI-compatible ``/chat/completions`` upstream answering after ``delay`` seconds.

    ``reply(text)`` makes the answer from the last user message (default: ``echo: TEXT``); a message with
    ``FAIL_MARK`` gets a 400. ``in_flight`` / ``peak`` count the requests being answered at once, ``requests``
    all of them. ``GET /stats`` returns ``{"requests", "peak"}`` and resets ``peak``.
    """

    def __init__(self, delay: float = 0.05, reply: Callable[[str], str] = echo) -> None:
        self.delay = delay
        self.reply = reply
        self.in_flight = self.peak = self.requests = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()  # open connections, cancelled by ``stop``

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _answer(self, body: bytes) -> tuple[int, bytes]:
        req = json.loads(body)
        said = req["messages"][-1]["content"]
        said = said if isinstance(said, str) else "\n".join(p.get("text", "") for p in said)
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if FAIL_MARK in said:
            return 400, json.dumps({"error": {"message": "refused by the test upstream", "type": "invalid_request_error"}}).encode()
        text = self.reply(said)
        words = len(text.split())
        return 200, json.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": req.get("model", "m"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words},
        }).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one keep-alive connection until the client closes it."""
        sock = writer.get_extra_info("socket")
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                if sock is not None and hasattr(socket, "TCP_QUICKACK"):
                    # acknowledge at once: the client's small writes are not held back by a delayed ACK
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                request = await read_request(reader)
                if request is None:
                    return
                head, body = request
                path = head.split(b" ", 2)[1]
                if head.startswith(b"GET ") and path.startswith(b"/stats"):
                    status, data = 200, json.dumps({"requests": self.requests, "peak": self.peak}).encode()
                    self.peak = 0
                elif head.startswith(b"POST ") and path.endswith(b"/chat/completions"):
                    status, data = await self._answer(body)
                else:
                    status, data = 404, b'{"error": {"message": "not found"}}'
                reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}[status]
                writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, reason, len(data), data))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> "DelayedUpstream":
        """Serve from a daemon thread of this process (its own event loop); returns once listening."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        threading.Thread(target=loop.run_forever, daemon=True, name="delayed-upstream").start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for t in list(self._handlers):
                t.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def __enter__(self) -> "DelayedUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class LengthJudge:
    """A cheap judge: longer answers score higher."""

    def score_batch(self, items: Sequence[tuple[Any, str]]) -> list[float]:
        return [float(len(r)) for _, r in items]


def _stats(port: int) -> dict[str, int]:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()


def _serve(delay: float) -> None:
    async def main() -> None:
        up = DelayedUpstream(delay)
        await up._start()
        print(f"READY {up.port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run(prompts: int, delay: float, levels: list[int], client: str = "openai") -> list[dict[str, Any]]:
    from middleware.evaluate import evaluate_pipeline
    from middleware.pipeline import Pipeline
    from middleware.openai_backend import OpenAIBackend
    from middleware.remote import LiteLLMBackend

    child = subprocess.Popen([sys.executable, __file__, "--serve", "--delay", str(delay)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline().split()[1])
        backend = OpenAIBackend if client == "openai" else LiteLLMBackend
        llm = backend("openai/bench-model", api_base=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0)
        pipe = Pipeline(llm, [])
        texts = [f"question {i}: what is {i} plus {i}?" for i in range(prompts)]
        # warm-up (imports, the client, its connections): not counted in any level
        evaluate_pipeline(pipe, texts[:20], LengthJudge(), per_stage=False, control=False, progress=False, concurrency=8)
        rows = []
        serial: float | None = None
        for n in levels:
            _stats(port)  # resets the peak
            t0 = time.perf_counter()
            error, gen_ms = None, float("nan")
            try:
                report = evaluate_pipeline(pipe, texts, LengthJudge(), per_stage=False, control=False, progress=False, concurrency=n)
                gen_ms = report.plain_ms_per_prompt
                answers = [s["answers"]["plain"]["text"] for s in report.samples]
                wrong = sum(a != echo(t) for a, t in zip(answers, texts))
                if wrong:
                    error = f"{wrong} answers out of order or wrong"
            except Exception as e:  # a failed prompt fails the run: reported, the next level still runs
                error = f"{type(e).__name__}: {str(e)[:200]}"
            wall = time.perf_counter() - t0
            serial = wall if serial is None else serial
            row = {"concurrency": n, "prompts": prompts, "wall_s": round(wall, 3), "prompts_per_s": round(prompts / wall, 1),
                   "speedup": round(serial / wall, 1), "generation_ms_per_prompt": round(gen_ms, 2),
                   "peak_in_flight": _stats(port)["peak"], "error": error}
            rows.append(row)
            print(f"concurrency {n:>4}: {wall:7.2f} s  {prompts / wall:8.1f} prompts/s  {serial / wall:5.1f}x serial  "
                  f"generation {gen_ms:6.2f} ms/prompt  peak in flight {row['peak_in_flight']:>4}  errors: {error or 'none'}", flush=True)
        return rows
    finally:
        child.terminate()
        child.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=1000)
    p.add_argument("--delay", type=float, default=0.05, help="the upstream's answer time in seconds (default 0.05)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrency levels; the first is the baseline")
    p.add_argument("--client", choices=["openai", "litellm"], default="openai",
                   help="the backend: OpenAIBackend (openai client) or LiteLLMBackend (litellm.acompletion); default %(default)s")
    p.add_argument("--serve", action="store_true", help="only run the upstream (prints READY <port>)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args()
    if args.serve:
        _serve(args.delay)
        return
    print(f"{args.prompts} eval prompts, upstream answers after {args.delay * 1000:.0f} ms, client {args.client}", flush=True)
    rows = run(args.prompts, args.delay, args.levels, args.client)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
