"""A pipeline in code around a plain Python function, served as an OpenAI-compatible API.

``FunctionLLM`` wraps any ``fn(messages) -> str`` (here a canned help-desk bot; in practice your own
model call or an existing chat function). ``create_app`` turns the pipeline into the same FastAPI app
``alignware serve`` runs.

    python examples/serve_function_llm.py                 # serve on http://127.0.0.1:8000/v1 until Ctrl-C
    python examples/serve_function_llm.py --check         # start, ask once with the openai client, stop

Then, from any OpenAI client: ``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn  # noqa: E402

from middleware import ChatRequest, ChatResponse, FunctionLLM, Pipeline, PromptStage, ResponseStage  # noqa: E402
from middleware.server import create_app  # noqa: E402


def helpdesk(messages: list[dict[str, Any]]) -> str:
    """The wrapped function: answers from a tiny FAQ."""
    question = messages[-1]["content"].lower()
    if "password" in question:
        return "  Open Settings, choose Security, then Reset password  "
    return "  Please contact support@example.com  "


class StripEmails(PromptStage):
    """Keeps e-mail addresses the user typed out of what the function sees."""

    def process(self, request: ChatRequest) -> ChatRequest:
        words = ["[email]" if "@" in w else w for w in request.last_user_message.split()]
        return request.with_last_user_message(" ".join(words))


class Polish(ResponseStage):
    """Trims the answer and ends it with a full stop. Streamed, it passes text on as it comes, holding
    back only trailing whitespace (which it may still have to trim), so the reply keeps streaming."""

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        text = response.text.strip()
        return response.model_copy(update={"text": text if text.endswith((".", "!", "?")) else text + "."})

    def process_stream(self, request: ChatRequest, chunks: Iterator[str]) -> Iterator[str]:
        held, last = "", ""
        for chunk in chunks:
            text = held + chunk if last else (held + chunk).lstrip()
            body = text.rstrip()
            held = text[len(body):]
            if body:
                last = body[-1]
                yield body
        if last not in (".", "!", "?"):
            yield "."


def build_app() -> Any:
    pipeline = Pipeline(FunctionLLM(helpdesk, name="helpdesk"), [StripEmails(), Polish()])
    return create_app(pipeline, model_name="helpdesk")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--check", action="store_true", help="ask once through the openai client, then stop")
    args = p.parse_args()
    config = uvicorn.Config(build_app(), host=args.host, port=args.port, log_level="warning")
    if not args.check:
        uvicorn.Server(config).run()
        return 0
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        client = OpenAI(base_url=f"http://{args.host}:{args.port}/v1", api_key="unused")
        question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "I am ann@example.com and forgot my password"}]
        reply = client.chat.completions.create(model="helpdesk", messages=question, extra_headers={"X-Alignware-Trace": "1"})
        print(f"answer: {reply.choices[0].message.content}")
        for t in (reply.model_extra or {}).get("alignware_trace", []):
            print(f"  {t['stage']:12} {t['verdict']:9} {t['latency_ms']:.2f} ms")
        streamed = client.chat.completions.create(model="helpdesk", messages=question, stream=True)
        print("streamed: " + "".join(c.choices[0].delta.content or "" for c in streamed if c.choices))
    finally:
        server.should_exit = True
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
