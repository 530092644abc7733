"""litellm's replies read as ours: a completion's choices (text, tool calls, logprobs), a stream's
chunks, usage; and closing a stream's connection. ``LiteLLMBackend`` (``middleware.remote``) uses them."""

from __future__ import annotations

import time
from typing import Any

from .types import ChatChunk, ChatResponse, Usage, new_reply_id


def reply_from_litellm(raw: Any, model_name: str) -> ChatResponse | None:
    """A litellm completion as a ``ChatResponse`` (the first choice; the others in ``more_choices``);
    ``None`` when it has no choices. ``model_name`` stands in for a model the reply does not name."""
    choices = getattr(raw, "choices", None)
    if not choices:
        return None
    provider_id = getattr(raw, "id", None)
    created = getattr(raw, "created", None)
    model = getattr(raw, "model", None)
    common: dict[str, Any] = dict(
        # the provider's id, so a reply can be traced in its logs
        id=provider_id if isinstance(provider_id, str) and provider_id else new_reply_id(),
        created=created if isinstance(created, int) else int(time.time()),
        model=model if isinstance(model, str) and model else model_name,
        usage=_usage(getattr(raw, "usage", None)) or Usage(),
    )
    replies = []
    for choice in choices:
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else None
        finish = getattr(choice, "finish_reason", None)
        reply = ChatResponse.of(
            text=text if isinstance(text, str) else "",
            finish_reason=finish if isinstance(finish, str) and finish else "stop",
            **common,
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
    get = raw.get if isinstance(raw, dict) else lambda k: getattr(raw, k, None)
    prompt = get("prompt_tokens")
    completion = get("completion_tokens")
    prompt = prompt if isinstance(prompt, int) else 0
    completion = completion if isinstance(completion, int) else 0
    total = get("total_tokens")
    total = total if isinstance(total, int) and total else prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


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


class StreamState:
    """What a stream has told us so far: model, finish reason, usage."""

    __slots__ = ("model", "finish_reason", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def take(self, chunk: Any) -> ChatChunk | None:
        """Record a raw litellm chunk's metadata; return what it carries for the client (text, tool-call
        deltas, logprobs) as a ``ChatChunk``, or ``None`` when it carries none of them."""
        if getattr(chunk, "model", None):
            self.model = chunk.model
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = _usage(usage)
        choices = getattr(chunk, "choices", None)
        if not choices:
            return None
        choice = choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = getattr(choice, "delta", None)
        content = getattr(delta, "content", None) if delta is not None else None
        tool_calls, logprobs = chunk_extras(choice, delta)
        if tool_calls is None and logprobs is None:
            return ChatChunk(delta=content, model=self.model) if content else None
        return ChatChunk(delta=content or "", model=self.model, tool_calls=tool_calls, logprobs=logprobs)

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
    tool_calls = _tool_calls(getattr(message, "tool_calls", None)) if message is not None else None
    logprobs = _plain(getattr(choice, "logprobs", None))
    return tool_calls, logprobs if isinstance(logprobs, dict) and logprobs else None


def chunk_extras(choice: Any, delta: Any) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """A litellm stream chunk's tool-call deltas and logprobs in OpenAI's shape (``None`` where absent)."""
    return choice_extras(choice, delta)
