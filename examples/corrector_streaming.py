"""Time to first token of the response corrector: buffer vs chunked streaming.

An upstream model streams an answer word by word (simulated here, ``--delay`` seconds per word, as a
remote LLM would); a ``ResponseCorrector`` sits behind it in a pipeline. In ``buffer`` mode nothing can
be shown before the whole answer has arrived and been corrected; in ``chunked`` mode the first corrected
sentence group is shown as soon as it is complete. Both modes end with the same text as the
non-streamed correction (greedy decoding), which the script checks.

    python examples/corrector_streaming.py                       # the embedded model, untrained corrector
    python examples/corrector_streaming.py --adapter runs/corrector
    python examples/corrector_streaming.py --model PATH --max-new-tokens 16

The corrector here is the base model prompted with the Aligner template (or ``--adapter``, a corrector
trained with ``alignware train corrector``); the timings do not depend on how good its corrections are.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from middleware.llm import LLM  # noqa: E402
from middleware.pipeline import Pipeline  # noqa: E402
from middleware.types import ChatChunk, ChatRequest, ChatResponse  # noqa: E402
from rewriters.generator import TextGenerator  # noqa: E402
from rewriters.response_corrector import ResponseCorrector  # noqa: E402

QUESTION = "How can I keep my houseplants healthy?"
ANSWER = (
    "Water them when the top of the soil feels dry, not on a fixed schedule. "
    "Most houseplants like bright, indirect light, so keep them near a window but out of harsh sun. "
    "Use a pot with drainage holes, because standing water rots the roots. "
    "Feed them a diluted fertiliser once a month in spring and summer. "
    "Wipe dust off the leaves now and then so they can breathe and take in light."
)


class SlowStreamingLLM(LLM):
    """Streams a fixed answer word by word, ``delay`` seconds per word: a stand-in for a remote model."""

    name = "slow-upstream"

    def __init__(self, text: str, delay: float) -> None:
        self.text, self.delay = text, delay

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        time.sleep(self.delay * len(self.text.split()))
        return ChatResponse(text=self.text, model=self.name)

    def stream(self, request: ChatRequest, *, model_stages: Any = ()) -> Iterator[ChatChunk]:
        words = self.text.split(" ")
        for i, w in enumerate(words):
            time.sleep(self.delay)
            yield ChatChunk(delta=w + (" " if i < len(words) - 1 else ""), model=self.name)
        yield ChatChunk(finish_reason="stop", model=self.name)


def measure(pipe: Pipeline, question: str) -> dict[str, Any]:
    """Stream one answer through ``pipe``; return time to first token, total time, pieces and text."""
    t0 = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    for chunk in pipe.stream(question):
        if chunk.delta:
            if first is None:
                first = time.perf_counter() - t0
            pieces.append(chunk.delta)
    return {"ttft": first, "total": time.perf_counter() - t0, "pieces": len(pieces), "text": "".join(pieces)}


def run(generator: Any, *, delay: float, max_new_tokens: int, question: str = QUESTION, answer: str = ANSWER) -> dict[str, dict[str, Any]]:
    """Measure both streaming modes with ``generator`` as the corrector; also the non-streamed result."""
    results: dict[str, dict[str, Any]] = {}
    for mode in ("buffer", "chunked"):
        corrector = ResponseCorrector(generator, streaming=mode, temperature=0.0, max_new_tokens=max_new_tokens)
        streamed = measure(Pipeline(SlowStreamingLLM(answer, delay), [corrector]), question)
        plain = Pipeline(SlowStreamingLLM(answer, 0.0), [corrector]).chat(question)
        streamed["same_as_non_streamed"] = streamed["text"] == plain.text
        results[mode] = streamed
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="base model folder or .gguf (default: the embedded model)")
    p.add_argument("--adapter", default=None, help="a corrector adapter trained with `alignware train corrector`")
    p.add_argument("--delay", type=float, default=0.05, help="seconds per upstream word (default 0.05)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="correction length limit (default 256)")
    args = p.parse_args(argv)

    if args.adapter:
        gen = TextGenerator.from_pretrained(args.adapter, base=args.model, kind="corrector")
    else:
        gen = TextGenerator.untrained(args.model, template="aligner-v1.0", kind="corrector")
    results = run(gen, delay=args.delay, max_new_tokens=args.max_new_tokens)
    words = len(ANSWER.split())
    print(f"upstream: {words} words at {args.delay * 1000:.0f} ms each ({words * args.delay:.2f} s in all)")
    print(f"{'mode':8}  {'TTFT s':>7}  {'total s':>7}  {'pieces':>6}  same text as non-streamed")
    for mode, r in results.items():
        ttft = f"{r['ttft']:.2f}" if r["ttft"] is not None else "-"
        print(f"{mode:8}  {ttft:>7}  {r['total']:7.2f}  {r['pieces']:6d}  {r['same_as_non_streamed']}")
    return 0 if all(r["same_as_non_streamed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
