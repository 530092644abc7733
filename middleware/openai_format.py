"""OpenAI's chat-completions wire format, both ways.

Into the pipeline: ``request_from_openai`` maps a request body to a ``ChatRequest``. Out to a client:
``completion_body`` (a reply as a ``chat.completion``) and ``sse_events`` (a streamed reply as
``chat.completion.chunk`` events). Out to litellm: ``wire_messages`` (messages as OpenAI dicts, tool fields and
non-text parts intact); litellm's replies are read back by ``middleware.remote_replies``.

What becomes of each field of a request, per backend (*honoured*: the backend does it itself;
*forwarded*: passed on to the provider through litellm; *refused*: a 400 in OpenAI's error shape whose
``param`` names the field; a field at its neutral value, such as ``n: 1`` or ``logprobs: false``, is
always accepted). Stages see and may rewrite only text: prompt stages the last user message's text,
response stages the text of each choice; a choice with only tool calls passes them untouched.

| field | ``LiteLLMBackend`` (remote) | ``LocalBackend`` (local model) | ``FunctionLLM`` |
| --- | --- | --- | --- |
| ``messages``: text, or text parts (joined with a newline: ``"Name a\\ncolour."``) | forwarded | honoured | honoured |
| ``developer`` messages | forwarded (litellm sends them as ``system``) | honoured as ``system`` | passed to the function |
| ``tool`` messages, an assistant's ``tool_calls`` (``content: null``) | forwarded intact | refused (``messages[i].role`` / ``.tool_calls``) | passed when the function takes ``tools``, else refused |
| non-text content parts (images, audio, files) | forwarded as sent | refused (``messages[i].content[j]``) | refused (``messages[i].content[j]``) |
| ``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``, ``stop``, ``seed`` | forwarded | honoured | passed when the function takes them, else ignored |
| ``tools``, ``tool_choice``, ``parallel_tool_calls`` | forwarded; ``tool_calls`` come back (streamed as deltas) | refused (``parallel_tool_calls`` ignored) | passed when taken, else refused |
| ``n`` | forwarded; every choice comes back, each through the response stages; refused with ``stream: true`` | refused | passed when taken, else refused |
| ``response_format`` | forwarded (the SDK's ``.parse()`` works) | refused | passed when taken, else refused |
| ``logprobs``, ``top_logprobs`` | forwarded; they come back (streamed per chunk; after the text when a response stage rewrote it) | refused | passed when taken, else refused |
| ``frequency_penalty``, ``presence_penalty``, ``logit_bias`` | forwarded | refused | passed when taken, else refused |
| ``user`` | forwarded (litellm sends it to models of OpenAI's catalogue only); ``metadata["user"]`` for stages | ``metadata["user"]`` | passed when taken; ``metadata["user"]`` |
| ``metadata`` | ``ChatRequest.metadata``, for stages | same | same |
| ``stream``, ``stream_options.include_usage`` | honoured by the server | same | same |
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, AsyncIterator, Callable, Sequence

from .errors import InputError
from .llm import OPENAI_FIELDS
from .types import ChatChunk, ChatRequest, ChatResponse, Message

GEN_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed")
ErrorFor = Callable[[BaseException], "tuple[int, dict[str, Any]]"]


def unpaired_surrogate(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].content``, ``stop[1]``) of the first string in ``value`` that holds an
    unpaired UTF-16 surrogate (JSON lets a client send ``"\\ud800"``; no provider can take it), or ``None``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            key = str(k).encode("utf-8", "backslashreplace").decode("utf-8")  # the path itself must be text
            where = f"{path}.{key}" if path else key
            found = unpaired_surrogate(k, where) or unpaired_surrogate(v, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = unpaired_surrogate(v, f"{path}[{i}]")
            if found:
                return found
    return None


def object_field(body: dict[str, Any], name: str) -> dict[str, Any]:
    """``body[name]`` when it is an object, ``{}`` when absent; ``InputError`` otherwise."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{name}: must be an object, got {type(value).__name__}", field=name)
    return value


def _check_type(name: str, value: Any, types: tuple[type, ...], what: str) -> None:
    if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
        raise InputError(f"{name}: must be {what}, got {type(value).__name__}", field=name)


def _openai_fields(body: dict[str, Any]) -> dict[str, Any] | None:
    """The forwarded OpenAI fields the body sets, with their types checked; ``None`` when none."""
    fields = {k: body[k] for k in OPENAI_FIELDS if body.get(k) is not None}
    if not fields:
        return None
    if "n" in fields:
        _check_type("n", fields["n"], (int,), "an integer")
        if not 1 <= fields["n"] <= 128:
            raise InputError(f"n: must be between 1 and 128, got {fields['n']}", field="n")
    if "top_logprobs" in fields:
        _check_type("top_logprobs", fields["top_logprobs"], (int,), "an integer")
        if not 0 <= fields["top_logprobs"] <= 20:
            raise InputError(f"top_logprobs: must be between 0 and 20, got {fields['top_logprobs']}", field="top_logprobs")
    for name in ("logprobs", "parallel_tool_calls"):
        if name in fields:
            _check_type(name, fields[name], (bool,), "true or false")
    for name in ("frequency_penalty", "presence_penalty"):
        if name in fields:
            _check_type(name, fields[name], (int, float), "a number")
            if not -2 <= fields[name] <= 2:
                raise InputError(f"{name}: must be between -2 and 2, got {fields[name]}", field=name)
    for name in ("logit_bias", "response_format"):
        if name in fields:
            _check_type(name, fields[name], (dict,), "an object")
    if "tools" in fields:
        _check_type("tools", fields["tools"], (list,), "an array of tools")
        for i, tool in enumerate(fields["tools"]):
            if not isinstance(tool, dict):
                raise InputError(f"tools[{i}]: must be an object, got {type(tool).__name__}", field=f"tools[{i}]")
    if "tool_choice" in fields:
        _check_type("tool_choice", fields["tool_choice"], (str, dict), "a string or an object")
    if "user" in fields:
        _check_type("user", fields["user"], (str,), "a string")
    return fields


def request_from_openai(body: dict[str, Any]) -> ChatRequest:
    """Map an OpenAI chat-completions body to a ``ChatRequest``; ``InputError`` names the bad field
    (in its message and its ``field``). The module docstring's table says what becomes of each field."""
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    if "messages" not in body:
        raise InputError("messages: field required", field="messages")
    if not isinstance(body["messages"], (str, list)):
        raise InputError(f"messages: must be an array of messages, got {type(body['messages']).__name__}", field="messages")
    object_field(body, "stream_options")
    params: dict[str, Any] = {k: body[k] for k in GEN_PARAMS if body.get(k) is not None}
    from_completion_tokens = body.get("max_completion_tokens") is not None and "max_tokens" not in params
    if from_completion_tokens:
        params["max_tokens"] = body["max_completion_tokens"]
    metadata = dict(object_field(body, "metadata"))
    fields = _openai_fields(body)
    if fields is not None:
        if body.get("stream") and fields.get("n", 1) != 1:
            raise InputError("n: a streamed reply carries one choice; ask for n > 1 without stream", field="n")
        if fields.get("user"):
            metadata["user"] = fields["user"]
        params["openai_fields"] = fields
    try:
        return ChatRequest.build(body["messages"], model=body.get("model"), metadata=metadata, **params)
    except InputError as e:
        if e.field == "max_tokens" and from_completion_tokens:
            raise InputError(str(e), field="max_completion_tokens") from None
        raise


# -- replies to the client -----------------------------------------------------------------
def _message(choice: ChatResponse) -> dict[str, Any]:
    if choice.tool_calls:
        return {"role": "assistant", "content": choice.text or None, "tool_calls": choice.tool_calls}
    return {"role": "assistant", "content": choice.text}


def completion_body(resp: ChatResponse, model: str, *, trace: bool = True) -> dict[str, Any]:
    """A reply as OpenAI's ``chat.completion`` object (every choice, tool calls, logprobs), with the
    trace in ``alignware_trace`` when ``trace``."""
    body = {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": model,
        "choices": [
            {"index": i, "message": _message(c), "finish_reason": c.finish_reason, "logprobs": c.logprobs}
            for i, c in enumerate(resp.choices)
        ],
        "usage": resp.usage.model_dump(),
    }
    if trace:
        body["alignware_trace"] = [t.model_dump() for t in resp.trace]
    return body


async def sse_events(
    chunks: AsyncIterator[ChatChunk], first: ChatChunk | None, model: str, include_usage: bool, error_for: ErrorFor,
    *, trace: bool = True,
) -> AsyncIterator[str]:
    """The events of one streamed completion: ``first`` (already fetched) and the rest of ``chunks``;
    tool-call deltas and logprobs are passed on in OpenAI's shape; with ``trace``, the event that carries
    ``finish_reason`` carries ``alignware_trace`` too.

    An exception once streaming has begun becomes one ``data: {"error": ...}`` event (typed as
    ``error_for`` maps it); ``data: [DONE]`` always ends the stream. Closing ``chunks`` is the caller's job.
    """
    cid = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())

    def data(obj: dict[str, Any]) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    def event(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, **extra: Any) -> str:
        return data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}], **extra})

    try:
        yield event({"role": "assistant", "content": ""})
        chunk = first
        while chunk is not None:
            if chunk.tool_calls is not None:
                delta: dict[str, Any] = {"tool_calls": chunk.tool_calls}
                if chunk.delta:
                    delta["content"] = chunk.delta
                yield event(delta, logprobs=chunk.logprobs)
            elif chunk.delta or chunk.logprobs is not None:
                yield event({"content": chunk.delta}, logprobs=chunk.logprobs)
            if chunk.finish_reason is not None:
                if trace:
                    yield event({}, chunk.finish_reason, alignware_trace=[t.model_dump() for t in chunk.trace or []])
                else:
                    yield event({}, chunk.finish_reason)
                if include_usage and chunk.usage is not None:
                    yield data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": [], "usage": chunk.usage.model_dump()})
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                chunk = None
    except Exception as e:
        _, error = error_for(e)
        yield data({"error": error})
    yield "data: [DONE]\n\n"


# -- requests to litellm ----------------------------------------------------------------------
def wire_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as OpenAI dicts for an upstream: text (or the content parts, when one is not text),
    ``name``, an assistant's ``tool_calls`` (with ``content: null`` when it has no text), a tool
    message's ``tool_call_id``."""
    out = []
    for m in messages:
        if m.parts is None and m.tool_calls is None and m.tool_call_id is None and m.name is None:
            out.append({"role": m.role, "content": m.content})
            continue
        d: dict[str, Any] = {"role": m.role, "content": m.parts if m.parts is not None else m.content}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_calls is not None:
            d["tool_calls"] = m.tool_calls
            if not m.content and m.parts is None:
                d["content"] = None
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out
