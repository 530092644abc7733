"""litellm's replies read as ours: a completion's choices (text, tool calls, logprobs), a stream's
chunks, usage; and closing a stream's connection. ``LiteLLMBackend`` (``middleware.remote``) uses them."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from .types import ChatChunk, ChatResponse, Usage, new_reply_id


_ABSENT = object()


def field(obj: Any, name: str) -> Any:
    """``obj.name`` for a provider object (pydantic model, dict or plain object), ``None`` when absent.

    litellm's reply objects keep some fields in pydantic's extras and raise inside ``__getattr__`` for
    absent ones; reading ``__dict__`` and the extras first costs a fraction of ``getattr(obj, name, None)``.
    """
    if isinstance(obj, dict):
        return obj.get(name)
    if isinstance(obj, BaseModel):  # its fields are in __dict__, the rest in the extras
        value = obj.__dict__.get(name, _ABSENT)
        if value is not _ABSENT:
            return value
        extra = obj.__pydantic_extra__
        return extra.get(name) if extra else None
    return getattr(obj, name, None)


def reply_from_litellm(raw: Any, model_name: str) -> ChatResponse | None:
    """A litellm completion as a ``ChatResponse`` (the first choice; the others in ``more_choices``);
    ``None`` when it has no choices. ``model_name`` stands in for a model the reply does not name."""
    choices = field(raw, "choices")
    if not choices:
        return None
    provider_id = field(raw, "id")
    created = field(raw, "created")
    model = field(raw, "model")
    # the provider's id, so a reply can be traced in its logs
    reply_id = provider_id if isinstance(provider_id, str) and provider_id else new_reply_id()
    created = created if type(created) is int else int(time.time())
    model = model if isinstance(model, str) and model else model_name
    usage = _usage(field(raw, "usage")) or Usage.of(0, 0, 0)
    replies = []
    for choice in choices:
        message = field(choice, "message")
        text = field(message, "content") if message is not None else None
        finish = field(choice, "finish_reason")
        reply = ChatResponse.of(
            id=reply_id, created=created, model=model, usage=usage,
            text=text if isinstance(text, str) else "",
            finish_reason=finish if isinstance(finish, str) and finish else "stop",
        )
        tool_calls, logprobs = choice_extras(choice, message)
        if tool_calls is not None or logprobs is not None:
            reply = reply.model_copy(update={"tool_calls": tool_calls, "logprobs": logprobs})
        replies.append(reply)
    if len(replies) == 1:
        return replies[0]
    return replies[0].model_copy(update={"more_choices": replies[1:]})


def _usage(raw: Any) -> Usage | None:
    if raw is None:
        return None
    prompt = field(raw, "prompt_tokens")
    completion = field(raw, "completion_tokens")
    total = field(raw, "total_tokens")
    prompt = prompt if type(prompt) is int else 0
    completion = completion if type(completion) is int else 0
    total = total if type(total) is int and total else prompt + completion
    return Usage.of(prompt, completion, total)


def close_stream(stream: Any) -> None:
    """Release a sync litellm stream's connection (best effort)."""
    for obj in (stream, getattr(stream, "completion_stream", None)):
        close = getattr(obj, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                pass
            return


async def aclose_stream(stream: Any) -> None:
    """Release an async litellm stream's connection (best effort)."""
    aclose = getattr(stream, "aclose", None)
    if callable(aclose):
        try:
            await aclose()
        except Exception:
            pass


def _text_only(chunk: dict[str, Any]) -> bool:
    """Whether an event's JSON has one choice whose delta is text only: no finish reason, usage, tool calls or
    logprobs (``StreamState.take`` reads any other event field by field)."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or chunk.get("usage") is not None:
        return False
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") or choice.get("logprobs"):
        return False
    delta = choice.get("delta")
    return type(delta) is dict and not delta.get("tool_calls")


class EmptyStreamError(ConnectionError):
    """A streamed reply that ended before any event that counts (text, a tool call, a finish reason): an
    empty body, only ``[DONE]``, or a body that is not server-sent events. Retried like a dropped connection."""


class StreamState:
    """What a stream has told us so far: model, finish reason, usage."""

    __slots__ = ("model", "finish_reason", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def take(self, chunk: Any) -> ChatChunk | None:
        """Record a raw chunk's metadata (a litellm object, or an event's JSON as a dict); return what it
        carries for the client (text, tool-call deltas, logprobs) as a ``ChatChunk``, or ``None`` when it
        carries none of them."""
        if type(chunk) is dict and _text_only(chunk):  # the usual event of a stream, read in one pass
            model = chunk.get("model")
            if model:
                self.model = model
            content = chunk["choices"][0]["delta"].get("content")
            return ChatChunk.piece(content, self.model) if content else None
        model = field(chunk, "model")
        if model:
            self.model = model
        usage = field(chunk, "usage")
        if usage is not None:
            self.usage = _usage(usage)
        choices = field(chunk, "choices")
        if not choices:
            return None
        choice = choices[0]
        finish = field(choice, "finish_reason")
        if finish:
            self.finish_reason = finish
        delta = field(choice, "delta")
        content = field(delta, "content") if delta is not None else None
        tool_calls, logprobs = chunk_extras(choice, delta)
        if tool_calls is None and logprobs is None:
            return ChatChunk.piece(content, self.model) if content else None
        return ChatChunk(delta=content or "", model=self.model, tool_calls=tool_calls, logprobs=logprobs)

    def check_started(self) -> None:
        """Called when a stream ended before its first piece (text, tool call, logprobs): raise
        ``EmptyStreamError`` unless the upstream gave a finish reason that explains an empty answer
        (``length``, ``content_filter``...). A bare ``stop`` does not: litellm makes one up for a stream
        that carried no event at all."""
        if self.finish_reason in (None, "stop"):
            raise EmptyStreamError("the stream ended without a single event (an empty body, only [DONE], or not server-sent events)")

    def closing(self) -> ChatChunk:
        return ChatChunk(finish_reason=self.finish_reason or "stop", usage=self.usage, model=self.model)


def _plain(obj: Any) -> Any:
    """A provider object (pydantic, dict) as plain JSON data, without ``None`` values."""
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(exclude_none=True)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


_TOOL_CALL_KEYS = ("index", "id", "type", "function")


def _tool_calls(raw: Any) -> list[dict[str, Any]] | None:
    if not raw:
        return None
    calls = []
    for call in raw:
        plain = _plain(call)
        if isinstance(plain, dict):
            call_dict = {k: plain[k] for k in _TOOL_CALL_KEYS if k in plain}
            function = call_dict.get("function")
            if isinstance(function, dict):
                call_dict["function"] = {k: function[k] for k in ("name", "arguments") if k in function}
            calls.append(call_dict)
    return calls or None


def choice_extras(choice: Any, message: Any) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """A litellm reply choice's tool calls and logprobs in OpenAI's shape (``None`` where absent)."""
    tool_calls = _tool_calls(field(message, "tool_calls")) if message is not None else None
    logprobs = _plain(field(choice, "logprobs"))
    return tool_calls, logprobs if isinstance(logprobs, dict) and logprobs else None


def chunk_extras(choice: Any, delta: Any) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """A litellm stream chunk's tool-call deltas and logprobs in OpenAI's shape (``None`` where absent)."""
    return choice_extras(choice, delta)
