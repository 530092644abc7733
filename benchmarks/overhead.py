"""How much time a Pipeline adds over calling litellm directly, per call.

Both sides get the same mocked reply from litellm (``mock_response``), so the difference is the
pipeline's own work: request validation, three no-op stages with their traces, the LiteLLMBackend
(mapping, retry policy) and the reply. The arms are interleaved round by round (rotating which goes
first) after a warm-up; the headline is the median over rounds of (pipeline - direct) wall time, which
stays meaningful on a shared machine, printed beside the plain medians and calling-thread CPU time.
"Our code alone" times the same pipeline around an LLM that costs nothing: the floor of the overhead,
measured warm (calls back to back) and cold (one call per round, between the litellm calls, as in the
arms above: litellm's ~5 ms of work and its logging leave our code out of the CPU caches).
Two arms are information only: litellm called directly with the timeout and max_retries=0 the backend
passes (what a user calling litellm directly with a timeout pays), and that cold free-LLM pipeline.
"Per no-op stage" times a pipeline around that free LLM with no stages and with ``--stages`` no-op stages
(prompt and response stages in turn), interleaved round by round in one run: the median of the paired
differences, divided by the number of stages, is what one stage that does nothing costs.

Usage: python benchmarks/overhead.py [--iterations N] [--warmup N] [--stages N] [--no-drain] [--profile]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import argparse
import cProfile
import concurrent.futures
import gc
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import litellm  # noqa: E402

from middleware.llm import LLM, FunctionLLM  # noqa: E402
from middleware.pipeline import Pipeline  # noqa: E402
from middleware.remote import LiteLLMBackend  # noqa: E402
from middleware.stages import PromptStage, ResponseStage  # noqa: E402
from middleware.types import ChatRequest, ChatResponse  # noqa: E402

MODEL = "openai/gpt-4o-mini"
REPLY = "Paris is the capital of France. It has been since the tenth century."
QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": QUESTION}]
TARGET_US = 100.0  # goal: added per call over direct litellm, three no-op stages
STAGE_TARGET_US = 5.0  # goal: per no-op stage


class NoopPrompt(PromptStage):
    """Returns the request it was given."""

    def process(self, request: ChatRequest) -> ChatRequest:
        return request


class NoopResponse(ResponseStage):
    """Returns the reply it was given."""

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response


def make_pipeline(llm: LLM) -> Pipeline:
    return Pipeline(llm, stages=[NoopPrompt(name="noop-1"), NoopPrompt(name="noop-2"), NoopResponse(name="noop-3")])


def noop_stages(n: int) -> list[PromptStage | ResponseStage]:
    """``n`` no-op stages, prompt and response stages in turn."""
    return [NoopPrompt(name=f"noop-{i + 1}") if i % 2 == 0 else NoopResponse(name=f"noop-{i + 1}") for i in range(n)]


def per_stage_us(n_stages: int, rounds: int = 300, calls: int = 40) -> tuple[float, float, float]:
    """Pipelines around a free LLM with 0 and ``n_stages`` no-op stages, timed in interleaved rounds of
    ``calls`` calls (rotating which goes first). Returns µs per call of each (medians over rounds) and
    the median of the paired differences divided by ``n_stages``: the cost of one no-op stage."""
    free = FunctionLLM(lambda messages: REPLY)
    arms = [Pipeline(free), Pipeline(free, stages=noop_stages(n_stages))]
    times: list[list[float]] = [[], []]
    clock = time.perf_counter
    for pipe in arms:  # warm-up
        for _ in range(calls):
            pipe.chat(QUESTION)
    gc.collect()
    for r in range(rounds):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            chat = arms[k].chat
            t0 = clock()
            for _ in range(calls):
                chat(QUESTION)
            times[k].append((clock() - t0) / calls)
    return median_us(times[0]), median_us(times[1]), paired_median_us(times[1], times[0]) / n_stages


def direct() -> str:
    return litellm.completion(model=MODEL, messages=MESSAGES, mock_response=REPLY).choices[0].message.content


def direct_same_kwargs(backend: LiteLLMBackend) -> Callable[[], object]:
    """litellm called directly with the timeout and max_retries=0 the backend passes it."""
    timeout = backend.timeout
    return lambda: litellm.completion(model=MODEL, messages=MESSAGES, mock_response=REPLY, timeout=timeout, max_retries=0)


def _logging_drain() -> Callable[[], None]:
    """A function that waits for litellm's background success-logging of the calls made so far.

    litellm hands each completed call to a logging thread pool. That work competes for the GIL with
    whatever runs next, so without draining it, one call's logging lands in the next call's timing.
    Draining between calls (outside the timed region) charges neither side for the other's logging.
    """
    try:
        from litellm.litellm_core_utils.thread_pool_executor import executor
    except ImportError:  # another litellm layout: wait a little instead
        return lambda: time.sleep(0.005)
    pending: list[concurrent.futures.Future[object]] = []
    submit = executor.submit

    def recording_submit(fn: Callable[..., object], /, *args: object, **kwargs: object) -> concurrent.futures.Future[object]:
        future = submit(fn, *args, **kwargs)
        pending.append(future)
        return future

    executor.submit = recording_submit  # type: ignore[method-assign,assignment]

    def drain() -> None:
        concurrent.futures.wait(pending)
        pending.clear()

    return drain


def interleaved(
    arms: dict[str, Callable[[], object]], iterations: int, warmup: int, drain: Callable[[], None]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time every arm once per round, rotating which goes first.

    Returns wall-clock and calling-thread CPU seconds per call, per arm, round by round.
    """
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
            drain()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    clock, cpu_clock = time.perf_counter, time.thread_time
    gc.collect()
    for i in range(iterations):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            fn = arms[name]
            c0 = cpu_clock()
            t0 = clock()
            fn()
            t1 = clock()
            c1 = cpu_clock()
            wall[name].append(t1 - t0)
            cpu[name].append(c1 - c0)
            drain()
    return wall, cpu


def median_us(xs: list[float]) -> float:
    return statistics.median(xs) * 1e6


def paired_median_us(a: list[float], b: list[float]) -> float:
    """Median over rounds of (a - b): robust to rounds where the machine was busy elsewhere."""
    return statistics.median(x - y for x, y in zip(a, b)) * 1e6


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Best of five runs of ``n`` calls, µs per call."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def own_code_us(n: int = 3000) -> tuple[float, float]:
    """µs per call of our code alone: (pipeline with a free LLM, pipeline + LiteLLMBackend around an
    instant litellm that hands back a ready reply)."""
    bare = make_pipeline(FunctionLLM(lambda messages: REPLY))
    ready = litellm.completion(model=MODEL, messages=MESSAGES, mock_response=REPLY)
    real = litellm.completion
    litellm.completion = lambda **kwargs: ready  # type: ignore[assignment]
    try:
        instant = make_pipeline(LiteLLMBackend(MODEL))
        return per_call_us(lambda: bare.chat(QUESTION), n), per_call_us(lambda: instant.chat(QUESTION), n)
    finally:
        litellm.completion = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--stages", type=int, default=12, help="no-op stages in the per-stage measurement")
    parser.add_argument("--no-drain", action="store_true", help="do not wait for litellm's background logging between calls")
    parser.add_argument("--profile", action="store_true", help="profile the pipeline path and print the top entries")
    args = parser.parse_args()

    drain = (lambda: None) if args.no_drain else _logging_drain()
    backend = LiteLLMBackend(MODEL, mock_response=REPLY)
    pipe = make_pipeline(backend)
    request = ChatRequest.build(QUESTION)
    assert pipe.chat(QUESTION).text == direct() == backend.complete(request).text == REPLY

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            pipe.chat(QUESTION)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)

    empty = Pipeline(backend)
    bare = make_pipeline(FunctionLLM(lambda messages: REPLY))
    arms: dict[str, Callable[[], object]] = {
        "direct": direct,
        "direct_kw": direct_same_kwargs(backend),
        "backend": lambda: backend.complete(request),
        "empty": lambda: empty.chat(QUESTION),
        "pipeline": lambda: pipe.chat(QUESTION),
        "cold": lambda: bare.chat(QUESTION),
    }
    wall, cpu = interleaved(arms, args.iterations, args.warmup, drain)
    bare_us, instant_us = own_code_us()
    none_us, many_us, stage_us = per_stage_us(args.stages)

    load = f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
    print(f"{args.iterations} rounds, the {len(arms)} arms interleaved in rotating order, after {args.warmup} warm-up rounds{load}")
    print(f"litellm's background logging {'NOT drained' if args.no_drain else 'drained between calls, outside the timing'}")
    print(f"{'':46s} {'wall median':>12s} {'added':>9s} {'paired':>9s} {'cpu median':>11s} {'paired':>9s}")
    labels = {
        "direct": "direct litellm.completion(mock_response)",
        "direct_kw": "  same + timeout, max_retries=0 (information)",
        "backend": "LiteLLMBackend.complete(ChatRequest)",
        "empty": "Pipeline(no stages, LiteLLMBackend).chat",
        "pipeline": "Pipeline(3 no-op stages, LiteLLMBackend).chat",
    }
    for name, label in labels.items():
        w, c = median_us(wall[name]), median_us(cpu[name])
        added = w - median_us(wall["direct"])
        pw, pc = paired_median_us(wall[name], wall["direct"]), paired_median_us(cpu[name], cpu["direct"])
        print(f"{label:46s} {w:10.1f}µs {added:+8.1f} {pw:+8.1f} {c:9.1f}µs {pc:+8.1f}")
    print(f"our code alone, warm (back to back): pipeline around a free LLM {bare_us:.1f} µs; "
          f"pipeline + LiteLLMBackend around an instant litellm {instant_us:.1f} µs")
    print(f"our code alone, cold (one call per round, between the litellm calls): pipeline around a free LLM "
          f"{median_us(wall['cold']):.1f} µs wall, {median_us(cpu['cold']):.1f} µs cpu (medians)")
    print(f"direct litellm with the backend's timeout and max_retries=0: "
          f"{paired_median_us(wall['direct_kw'], wall['direct']):+.1f} µs over the plain direct call (information; "
          f"the goal stays against the plain call); pipeline over it {paired_median_us(wall['pipeline'], wall['direct_kw']):.1f} µs")

    direct_us, pipe_us = median_us(wall["direct"]), median_us(wall["pipeline"])
    overhead = paired_median_us(wall["pipeline"], wall["direct"])
    verdict = "met" if overhead < TARGET_US else "NOT met"
    per_stage = (paired_median_us(wall["pipeline"], wall["direct"]) - paired_median_us(wall["empty"], wall["direct"])) / 3
    print(f"of which: backend {paired_median_us(wall['backend'], wall['direct']):.1f} µs, pipeline without stages "
          f"{paired_median_us(wall['empty'], wall['backend']):.1f} µs more, each no-op stage about {per_stage:.1f} µs")
    print(f"per no-op stage: pipeline around a free LLM {none_us:.1f} µs with no stages, {many_us:.1f} µs with "
          f"{args.stages} no-op stages (interleaved): {stage_us:.2f} µs per stage")
    print(f"overhead: {overhead:.1f} µs per call ({pipe_us / direct_us:.2f}x direct litellm)")
    print(f"goal < {TARGET_US:.0f} µs added per call, 3 no-op stages (median of paired wall-clock differences): {verdict}")
    stage_verdict = "met" if stage_us <= STAGE_TARGET_US else "NOT met"
    print(f"goal <= {STAGE_TARGET_US:.0f} µs per no-op stage (median of paired differences / {args.stages}): {stage_verdict}")


if __name__ == "__main__":
    main()
