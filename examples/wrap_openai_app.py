"""Wrap an existing ``openai``-client chat app: change its ``base_url``, nothing else.

``ask()`` below stands for your app: it talks to an OpenAI-compatible endpoint with the ``openai``
client. The script asks it once against the upstream directly, then starts ``alignware serve`` (in
process, on a free loopback port) in front of the same upstream with a prompt stage and a response stage,
and asks again with only ``base_url`` changed.

    python examples/wrap_openai_app.py                                        # api.openai.com, $OPENAI_API_KEY
    python examples/wrap_openai_app.py --upstream http://127.0.0.1:8080/v1 --model my-model   # any OpenAI-compatible server

From the shell the same wrap is ``alignware serve --pipeline pipeline.yaml`` with ``llm: openai/MODEL``
and ``llm_options: {api_base: UPSTREAM, api_key: KEY}`` in the file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn  # noqa: E402
from openai import OpenAI  # noqa: E402

from middleware import ChatRequest, ChatResponse, LiteLLMBackend, Message, Pipeline, PromptStage, ResponseStage  # noqa: E402
from middleware.server import create_app  # noqa: E402


def ask(client: OpenAI, model: str, question: str) -> str:
    """The existing chat app: one question, one answer, through the ``openai`` client."""
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], max_tokens=64)
    return reply.choices[0].message.content or ""


class BeConcise(PromptStage):
    """Asks the model for a short answer."""

    def process(self, request: ChatRequest) -> ChatRequest:
        system = Message(role="system", content="Answer in one or two short sentences.")
        return request.model_copy(update={"messages": [system, *request.messages]})


class Tidy(ResponseStage):
    """Trims stray whitespace and makes sure the answer ends with a full stop."""

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        text = response.text.strip()
        return response.model_copy(update={"text": text if text.endswith((".", "!", "?")) else text + "."})


@contextlib.contextmanager
def serving(pipeline: Pipeline) -> Iterator[str]:
    """``create_app(pipeline)`` under uvicorn on a free loopback port; yields its ``/v1`` base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline, model_name="aligned"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="https://api.openai.com/v1", help="the app's OpenAI-compatible endpoint")
    p.add_argument("--model", default="gpt-4o-mini", help="the upstream's model name")
    p.add_argument("--question", default="What is the capital of France?")
    args = p.parse_args()
    key = os.environ.get("OPENAI_API_KEY", "sk-local")

    before = ask(OpenAI(base_url=args.upstream, api_key=key), args.model, args.question)
    print(f"the app, direct:          {before}")

    upstream = LiteLLMBackend(f"openai/{args.model}", api_base=args.upstream, api_key=key)
    with serving(Pipeline(upstream, [BeConcise(), Tidy()])) as base_url:
        after = ask(OpenAI(base_url=base_url, api_key="unused"), "aligned", args.question)  # the one change
    print(f"the app, through alignware: {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
