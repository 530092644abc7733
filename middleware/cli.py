"""The ``alignware`` command line.

    alignware chat "question"            one answer (add --trace for the per-stage table)
    alignware chat                       interactive chat (/reset, /trace, /exit)
    alignware demo                       the main job on the embedded model
    alignware serve --pipeline CONFIG    an OpenAI-compatible server (/v1/chat/completions)
    alignware train reward|rewriter|corrector --data PAIRS --out DIR
    alignware train steering --method vector|rahf|recontrol --data PAIRS --out DIR
    alignware steer search --vector DIR --prompts FILE --judge DIR
    alignware eval --pipeline CONFIG --prompts FILE --judge DIR
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any, Callable, Sequence

from . import __version__
from .config import PipelineConfig
from .errors import AlignwareError
from .llm import make_llm
from .pipeline import Pipeline
from .types import format_trace

# command -> "module:function"; each function takes argv and returns an exit code
COMMANDS: dict[str, str] = {
    "demo": "middleware.demo:main",
    "eval": "middleware.evaluate.cli:main",
    "serve": "middleware.server:serve_main",
    "train reward": "judge.cli:train_main",
    "train rewriter": "rewriters.cli:train_rewriter_main",
    "train corrector": "rewriters.cli:train_corrector_main",
    "train steering": "steering.cli:train_main",
    "steer search": "steering.cli:search_main",
}
# two-word commands: the group and what its usage message asks for
GROUPS: dict[str, str] = {"train": "what to train", "steer": "what to do"}


def _load(target: str) -> Callable[[list[str]], int]:
    mod, _, fn = target.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise AlignwareError(f"this command is not available in this installation ({target}: {e})") from None


CHAT_MAX_TOKENS = 256  # `alignware chat` answers without --max-tokens or a pipeline default

def _usage() -> str:
    return (__doc__ or "").strip() + "\n"


def build_chat_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignware chat", description="Chat with a model through a pipeline.")
    p.add_argument("question", nargs="?", help="ask one question and exit; without it, chat interactively")
    p.add_argument("--model", default=None, help="litellm model string (e.g. openai/gpt-4o-mini) or a local model folder/.gguf file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--pipeline", default=None, help="a pipeline YAML/JSON file (its llm is replaced by --model when given)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--max-tokens", type=int, default=None, help=f"default: the pipeline file's defaults, else {CHAT_MAX_TOKENS}")
    p.add_argument("--temperature", type=float, default=None, help="default: greedy for local models")
    p.add_argument("--trace", action="store_true", help="print the per-stage trace table after each answer")
    p.add_argument("--no-stream", action="store_true", help="print the answer when it is complete")
    return p


def _build_pipeline(args: argparse.Namespace) -> Pipeline:
    if args.pipeline:
        cfg = PipelineConfig.load(args.pipeline)
        llm = make_llm(args.model) if args.model else cfg.build_llm()
        pipe = cfg.build(llm)
    else:
        pipe = Pipeline(make_llm(args.model))
    pipe.defaults.setdefault("max_tokens", CHAT_MAX_TOKENS)
    return pipe


def _answer(pipe, messages: list[dict], args: argparse.Namespace, out: Any = None) -> str:
    out = out or sys.stdout  # looked up per call: a default bound at import would keep an old stdout
    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.no_stream:
        resp = pipe.chat(messages, **params)
        out.write(resp.text + "\n")
        text, trace = resp.text, resp.trace
    else:
        parts, trace = [], []
        for chunk in pipe.stream(messages, **params):
            if chunk.delta:
                out.write(chunk.delta)
                out.flush()
                parts.append(chunk.delta)
            if chunk.trace is not None:
                trace = chunk.trace
        out.write("\n")
        text = "".join(parts)
    if args.trace:
        out.write(format_trace(trace) + "\n")
    out.flush()
    return text


def chat_main(argv: Sequence[str]) -> int:
    args = build_chat_parser().parse_args(list(argv))
    pipe = _build_pipeline(args)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    if args.question is not None:
        _answer(pipe, history + [{"role": "user", "content": args.question}], args)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"alignware chat with {pipe.llm.name} — /reset clears the history, /trace toggles the trace, /exit quits")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        if line == "/trace":
            args.trace = not args.trace
            print(f"trace {'on' if args.trace else 'off'}")
            continue
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": _answer(pipe, history, args)})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("ALIGNWARE_LOG", "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline-friendly: no cost-map download
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0
    if argv[0] in ("--version", "version"):
        print(f"alignware {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "chat":
            return chat_main(rest)
        if cmd in GROUPS:
            if not rest or rest[0].startswith("-"):
                kinds = ", ".join(k.split()[1] for k in COMMANDS if k.startswith(cmd + " "))
                sys.stderr.write(f"alignware {cmd}: say {GROUPS[cmd]}: {kinds}\n")
                return 2
            key = f"{cmd} {rest[0]}"
            if key not in COMMANDS:
                sys.stderr.write(f"alignware {cmd}: unknown target {rest[0]!r}\n")
                return 2
            return int(_load(COMMANDS[key])(rest[1:]) or 0)
        if cmd in COMMANDS:
            return int(_load(COMMANDS[cmd])(rest) or 0)
        sys.stderr.write(f"alignware: unknown command {cmd!r}\n\n{_usage()}")
        return 2
    except AlignwareError as e:
        sys.stderr.write(f"alignware {cmd}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
