"""The BPO prompt rewriter in prompted mode: any chat model rewrites the user's prompt before the LLM
answers it, and a rewrite that fails a safeguard is dropped (the trace says why).

    python examples/rewriter_prompted.py                  # offline: litellm's mock_response stands in
    OPENAI_API_KEY=... python examples/rewriter_prompted.py --model openai/gpt-4o-mini

Without an API key the rewriter and the chat model are litellm mocks, so the example runs anywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from middleware.pipeline import Pipeline  # noqa: E402
from middleware.remote import LiteLLMBackend  # noqa: E402
from rewriters.prompt_rewriter import PromptRewriter  # noqa: E402

PROMPT = "how do vaccines work"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="openai/gpt-4o-mini", help="litellm model for the rewriter and the answer")
    args = p.parse_args(argv)
    live = bool(os.environ.get("OPENAI_API_KEY"))

    def backend(mock: str) -> LiteLLMBackend:
        return LiteLLMBackend(args.model) if live else LiteLLMBackend(args.model, mock_response=mock)

    chat = backend("Vaccines teach your immune system to recognise a germ without making you ill.")
    good = PromptRewriter.prompted(backend("Explain how vaccines work, step by step, in plain language for a non-expert."))
    answering = PromptRewriter.prompted(backend("Sure! Vaccines contain a weakened or inactive part of a germ..."))
    for title, rewriter in (("a good rewrite", good), ("a rewrite that answers instead", answering)):
        reply = Pipeline(chat, [rewriter]).chat(PROMPT)
        print(f"== {title}{'' if live else ' (mocked)'}")
        print(reply.trace_table())
        print(f"answer: {reply.text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
