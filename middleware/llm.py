"""The ``LLM`` protocol every backend implements, with sync and async twins."""

from __future__ import annotations

import asyncio
import inspect
import threading
from abc import ABC, abstractmethod
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from .errors import InputError
from .threads import in_thread
from .types import ChatChunk, ChatRequest, ChatResponse, Message

ModelStages = Sequence[Any]  # Sequence[ModelStage]; kept loose to avoid an import cycle


# The value at which each OpenAI field asks for nothing beyond a plain completion: every backend
# accepts a field at its neutral value (``n: 1``, ``logprobs: false``...). ``user`` and
# ``parallel_tool_calls`` are accepted at any value: an end-user id for the provider's abuse
# monitoring (stages see it as ``metadata["user"]``), and a setting with no effect without tools.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "response_format": ({"type": "text"},),
}
ALWAYS_ACCEPTED = frozenset({"user", "parallel_tool_calls"})
#: The OpenAI fields a request may carry beyond text and sampling (``ChatRequest.openai_fields``).
OPENAI_FIELDS = tuple(NEUTRAL) + tuple(sorted(ALWAYS_ACCEPTED))


def is_neutral(name: str, value: Any) -> bool:
    """Whether OpenAI field ``name`` at ``value`` asks for nothing a plain completion does not do."""
    if name in ALWAYS_ACCEPTED or value is None:
        return True
    for neutral in NEUTRAL.get(name, ()):
        if type(neutral) is bool or type(value) is bool:  # True == 1: ``n: true`` is not ``n: 1``
            if value is neutral:
                return True
        elif value == neutral:
            return True
    return False


def refuse_unsupported(request: ChatRequest, accepts: "frozenset[str]", who: str) -> None:
    """Raise ``InputError`` naming the first part of ``request`` a backend that honours only ``accepts``
    cannot: an OpenAI field (``tools``, ``n``...) away from its neutral value, a non-text content part
    (``messages[i].content[j]``; honoured with ``"content_parts"`` in ``accepts``), or a tool message or
    an assistant's ``tool_calls`` (honoured with ``"tools"``)."""
    fields = request.openai_fields
    if fields:
        for name, value in fields.items():
            if name not in accepts and not is_neutral(name, value):
                raise InputError(f"{name}: {who} cannot honour {name}={value!r}; only a remote model (litellm) can", field=name)
    if "content_parts" in accepts and "tools" in accepts:  # nothing a message holds can be refused
        return
    for i, m in enumerate(request.messages):
        if m.parts is None and m.tool_calls is None and m.tool_call_id is None:
            continue
        if m.parts is not None and "content_parts" not in accepts:
            j, kind = next((j, p.get("type")) for j, p in enumerate(m.parts) if p.get("type") != "text")
            raise InputError(f"messages[{i}].content[{j}]: {who} takes only text, not {kind!r} parts", field=f"messages[{i}].content[{j}]")
        if "tools" not in accepts and (m.tool_calls is not None or m.tool_call_id is not None):
            where = "tool_calls" if m.tool_calls is not None else "role"
            raise InputError(f"messages[{i}].{where}: {who} cannot take tool calls or tool messages", field=f"messages[{i}].{where}")


class LLM(ABC):
    """A chat model. Implement ``complete``; the rest have working defaults.

    Backends that run a local model set ``supports_model_stages = True`` and accept ``model_stages``.
    ``accepts`` names the OpenAI fields (``ChatRequest.openai_fields``: ``tools``, ``n``,
    ``response_format``...) the backend honours, plus ``"content_parts"`` when it takes non-text content
    parts; ``check_request`` refuses the others (unless at their neutral value, such as ``n: 1``).
    """

    name: str = "llm"
    supports_model_stages: bool = False
    accepts: frozenset[str] = frozenset()

    def check_request(self, request: ChatRequest) -> None:
        """Raise ``InputError`` naming the first field of ``request`` this backend cannot honour; the
        pipeline calls it before any stage runs, so nothing is silently dropped."""
        refuse_unsupported(request, self.accepts, f"{type(self).__name__} {self.name!r}")

    @abstractmethod
    def complete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse: ...

    def deterministic(self, request: ChatRequest) -> bool:
        """Whether answering ``request`` again (without model stages) is sure to give the same text.

        ``False`` unless the backend knows (a remote model may sample whatever the request says).
        ``alignware eval --repeats`` uses it to generate a deterministic variant only once.
        """
        return False

    async def acomplete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse:
        return await in_thread(self, self.complete, request, model_stages=model_stages)

    def stream(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> Iterator[ChatChunk]:
        """Default: one chunk with the whole text (and the tool calls and logprobs, where the reply has
        them), then the closing chunk."""
        resp = self.complete(request, model_stages=model_stages)
        if resp.tool_calls is None and resp.logprobs is None:
            yield ChatChunk(delta=resp.text, model=resp.model)
        else:
            calls = None if resp.tool_calls is None else [{"index": i, **c} for i, c in enumerate(resp.tool_calls)]
            yield ChatChunk(delta=resp.text, model=resp.model, tool_calls=calls, logprobs=resp.logprobs)
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


SAMPLING_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed")


class FunctionLLM(LLM):
    """Wraps a plain function ``fn(messages: list[dict], **params) -> str``: an existing chat app, a rule.

    ``messages`` are OpenAI-shaped dicts (``{"role", "content"}``, with ``tool_calls``/``tool_call_id``
    on tool turns). The request's parameters are passed as keyword arguments that ``fn`` accepts, by its
    signature (named parameters, or all of them with ``**kwargs``), and only those the request sets:

    | parameter | ``fn`` takes it | ``fn`` does not |
    | --- | --- | --- |
    | ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed`` | passed | ignored: ``fn`` decides its own sampling |
    | OpenAI fields (``tools``, ``tool_choice``, ``n``, ``response_format``, ``logprobs``, ``top_logprobs``, penalties, ``logit_bias``) | passed | refused: 400 naming the field, unless at its neutral value (``n: 1``...) |
    | ``user`` | passed | ignored (stages see it in ``metadata``) |
    | tool messages, an assistant's ``tool_calls`` | passed in ``messages`` when ``fn`` takes ``tools`` | refused (``messages[i].role`` / ``.tool_calls``) |
    | non-text content parts (images) | refused (``messages[i].content[j]``) | refused |

    ``fn`` returns the answer's text, or a ``ChatResponse`` (to return ``tool_calls``, ``finish_reason``,
    more choices). Set ``deterministic=True`` when ``fn`` always gives the same answer to the same messages.
    """

    def __init__(self, fn: Callable[..., Any], name: str = "function", *, deterministic: bool = False) -> None:
        self.fn = fn
        self.name = name
        self._deterministic = deterministic
        self.takes = _keyword_names(fn)
        known = SAMPLING_PARAMS + OPENAI_FIELDS
        self.accepts = frozenset(known if self.takes is None else self.takes & set(known))

    def deterministic(self, request: ChatRequest) -> bool:
        return self._deterministic

    def params(self, request: ChatRequest) -> dict[str, Any]:
        """The keyword arguments ``fn`` gets for ``request``: what it sets and ``fn`` takes."""
        out: dict[str, Any] = {}
        for name in SAMPLING_PARAMS:
            value = getattr(request, name)
            if value is not None and name in self.accepts:
                out[name] = value
        fields = request.openai_fields
        if fields:
            out.update((k, v) for k, v in fields.items() if k in self.accepts)
        return out

    def complete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse:
        if model_stages:
            raise TypeError(f"{self.name} is not a local model: model stages cannot be attached to it")
        self.check_request(request)
        msgs = [{"role": m.role, "content": m.content} if m.is_plain else _message_dict(m) for m in request.messages]
        out = self.fn(msgs, **self.params(request)) if self.takes != _NONE else self.fn(msgs)
        if isinstance(out, ChatResponse):
            return out if out.model is not None else out.model_copy(update={"model": self.name})
        return ChatResponse(text=str(out), model=self.name)


_NONE: frozenset[str] = frozenset()


def _keyword_names(fn: Callable[..., Any]) -> "frozenset[str] | None":
    """The keyword parameters ``fn`` takes after its first (the messages); ``None`` when it takes ``**kwargs``
    (or its signature cannot be read: then it is called with every parameter the request sets)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    first_positional = params and params[0].kind is not inspect.Parameter.KEYWORD_ONLY
    return frozenset(names[1:] if first_positional else names)


def _message_dict(m: Message) -> dict[str, Any]:
    """A message as ``FunctionLLM`` hands it over: role, text, name and tool fields where set."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None:
        d["name"] = m.name
    if m.tool_calls is not None:
        d["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d


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
