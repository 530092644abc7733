"""Build pipelines in code: around the embedded local model, and around a litellm model string.

    python examples/quickstart.py                 # embedded SmolLM2-135M-Instruct + a litellm model
    python examples/quickstart.py --model PATH    # a local model folder or .gguf file instead

The litellm part calls the real provider when its API key is set (e.g. OPENAI_API_KEY); otherwise it
uses litellm's ``mock_response`` so the example runs offline.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from middleware import ChatRequest, ChatResponse, LiteLLMBackend, LocalBackend, Message, Pipeline, PromptStage, ResponseStage
from middleware.stages import is_title_request


class BeConcise(PromptStage):
    """Adds a system message asking for a short, direct answer (a one-line prompt stage)."""

    def process(self, request: ChatRequest) -> ChatRequest:
        system = Message(role="system", content="Answer in one or two short sentences.")
        return request.model_copy(update={"messages": [system, *request.messages]})


class StripWhitespace(ResponseStage):
    """Trims stray whitespace from the reply."""

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": response.text.strip()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local model folder or .gguf (default: the embedded model)")
    parser.add_argument("--remote", default="openai/gpt-4o-mini", help="a litellm model string")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    stages = [BeConcise(skip_if=is_title_request), StripWhitespace()]

    # 1. Around the embedded local model (or --model).
    local = Pipeline(LocalBackend(args.model), stages, defaults={"max_tokens": args.max_tokens})
    reply = local.chat("What is the capital of France?")
    print(f"[{local.llm.name}] {reply.text}\n{reply.trace_table()}\n")

    # 2. Around a litellm model string: the same stages, any provider litellm knows.
    kwargs: dict[str, Any] = {} if os.environ.get("OPENAI_API_KEY") else {"mock_response": "Paris is the capital of France."}
    remote = Pipeline(LiteLLMBackend(args.remote, **kwargs), stages, defaults={"max_tokens": args.max_tokens})
    reply = remote.chat("What is the capital of France?")
    print(f"[{args.remote}{' (mocked)' if kwargs else ''}] {reply.text}\n{reply.trace_table()}")


if __name__ == "__main__":
    main()
