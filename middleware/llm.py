"""The ``LLM`` protocol every backend implements, with sync and async twins."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from .types import ChatChunk, ChatRequest, ChatResponse

ModelStages = Sequence[Any]  # Sequence[ModelStage]; kept loose to avoid an import cycle


class LLM(ABC):
    """A chat model. Implement ``complete``; the rest have working defaults.

    Backends that run a local model set ``supports_model_stages = True`` and accept ``model_stages``.
    """

    name: str = "llm"
    supports_model_stages: bool = False

    @abstractmethod
    def complete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse: ...

    def deterministic(self, request: ChatRequest) -> bool:
        """Whether answering ``request`` again (without model stages) is sure to give the same text.

        ``False`` unless the backend knows (a remote model may sample whatever the request says).
        ``alignware eval --repeats`` uses it to generate a deterministic variant only once.
        """
        return False

    async def acomplete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse:
        return await asyncio.to_thread(self.complete, request, model_stages=model_stages)

    def stream(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> Iterator[ChatChunk]:
        """Default: one chunk with the whole text, then the closing chunk."""
        resp = self.complete(request, model_stages=model_stages)
        yield ChatChunk(delta=resp.text, model=resp.model)
        yield ChatChunk(finish_reason=resp.finish_reason, model=resp.model, usage=resp.usage, trace=resp.trace)

    async def astream(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> AsyncIterator[ChatChunk]:
        """Default: runs ``stream`` in a worker thread and hands its chunks over as they come."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        stop = threading.Event()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def work() -> None:
            gen: Iterator[ChatChunk] | None = None
            try:
                gen = self.stream(request, model_stages=model_stages)
                for chunk in gen:
                    if stop.is_set():
                        break
                    put(chunk)
            except BaseException as e:  # handed to the consumer
                put(e)
            finally:
                try:  # a generator: closing it releases the model and its hooks when the consumer stopped early
                    close = getattr(gen, "close", None)
                    if close is not None:
                        close()
                finally:
                    put(done)  # the consumer always hears the end, whatever ``stream`` returned or raised

        threading.Thread(target=work, daemon=True, name="alignware-astream").start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def batch(self, requests: Sequence[ChatRequest], *, model_stages: ModelStages = ()) -> list[ChatResponse]:
        """Default: one after the other."""
        return [self.complete(r, model_stages=model_stages) for r in requests]

    async def abatch(self, requests: Sequence[ChatRequest], *, model_stages: ModelStages = ()) -> list[ChatResponse]:
        return await asyncio.gather(*(self.acomplete(r, model_stages=model_stages) for r in requests))


class FunctionLLM(LLM):
    """Wraps a plain function ``fn(messages: list[dict], **params) -> str``: an existing chat app, a rule.

    Set ``deterministic=True`` when ``fn`` always gives the same answer to the same messages.
    """

    def __init__(self, fn: Callable[..., str], name: str = "function", *, deterministic: bool = False) -> None:
        self.fn = fn
        self.name = name
        self._deterministic = deterministic

    def deterministic(self, request: ChatRequest) -> bool:
        return self._deterministic

    def complete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse:
        if model_stages:
            raise TypeError(f"{self.name} is not a local model: model stages cannot be attached to it")
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]  # what model_dump() gives, cheaper
        text = self.fn(msgs)
        return ChatResponse(text=str(text), model=self.name)


def make_llm(spec: "str | LLM | None" = None, **kwargs: Any) -> LLM:
    """Build a backend from a spec.

    ``None`` or ``"embedded"``: the embedded local model; a path to a folder or ``.gguf`` file: a local
    model; ``"local:PATH"``: same; ``"shared:PATH"`` (or ``"shared:embedded"``): the chat backend of the
    process-wide ``SharedBase`` of that model, whose weights the rewriter, the corrector and adapter stages
    such as RAHF share; ``"openai_compatible/NAME"``, or any model with ``client="openai"``: an
    OpenAI-compatible upstream through the ``openai`` client (``OpenAIBackend``, the lighter path);
    anything else: a litellm model string (``"openai/gpt-4o-mini"``). ``client="litellm"`` forces litellm.
    """
    from pathlib import Path

    if isinstance(spec, LLM):
        return spec
    if spec is not None and spec.startswith("shared:"):
        from .shared_base import SharedBase  # imports local (torch-free here, but a cycle with this module)

        return SharedBase.get(spec.removeprefix("shared:") or None).chat_backend(**kwargs)
    if spec is None or spec in ("embedded", "local"):
        from .local import LocalBackend

        return LocalBackend(**kwargs)
    if spec.startswith("local:") or Path(spec).expanduser().exists():
        from .local import LocalBackend

        return LocalBackend(spec.removeprefix("local:"), **kwargs)
    if spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf"):
        from .errors import InputError

        raise InputError(f"{spec}: no such local model folder or .gguf file")
    client = kwargs.pop("client", None) if isinstance(kwargs.get("client"), str) else None
    if client not in (None, "litellm", "openai"):
        from .errors import InputError

        raise InputError(f"client: {client!r} is not a backend client; use 'litellm' (the default) or 'openai'")
    if client == "openai" or (client is None and spec.startswith("openai_compatible/")):
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(model=spec, **kwargs)
    from .remote import LiteLLMBackend

    return LiteLLMBackend(model=spec, **kwargs)
