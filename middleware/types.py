"""The data that flows through a pipeline: OpenAI-shaped pydantic models."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from .errors import InputError

_M = TypeVar("_M", bound=BaseModel)
Role = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
Verdict = Literal["passed", "modified", "skipped", "failed"]
StageKind = Literal["prompt", "model", "response"]

_ids = random.Random()  # private generator, seeded from the OS: reply ids stay unique whatever the app seeds


def new_reply_id() -> str:
    """A fresh OpenAI-style completion id (``chatcmpl-`` and 24 hex digits)."""
    return f"chatcmpl-{_ids.getrandbits(96):024x}"


class _FieldError(ValueError):
    """A bad value inside a message, with its path in the message (``content[1]``, ``tool_call_id``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def _split_content(content: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """A message's ``content`` as (text, parts). A string is the text; a list of OpenAI content parts
    gives the text of its text parts joined with a newline (``[{"type": "text", "text": "Name a"},
    {"type": "text", "text": "colour."}]`` is ``"Name a\ncolour."``), and the parts themselves when one
    is not text (an image, audio, a file): a backend that cannot take those refuses the request."""
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):
        texts = []
        other = False
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str) or not kind:
                raise _FieldError(f"content[{i}]", f"content part {i} must be an object with a 'type'")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise _FieldError(f"content[{i}]", f"content part {i} is of type 'text' but its 'text' is not a string")
                texts.append(part["text"])
            else:
                other = True
        return "\n".join(texts), (list(content) if other else None)
    raise ValueError(f"content must be a string or a list of content parts, got {type(content).__name__}")


class Message(BaseModel):
    """One chat message.

    ``content`` is the message's text: what stages read and rewrite. The other fields carry the rest of
    an OpenAI message so that it reaches a backend that can take it intact: ``name``, an assistant's
    ``tool_calls`` (its ``content`` may then be ``null``, read as ``""``), a ``tool`` message's
    ``tool_call_id``, and ``parts``, the content parts as sent when one of them is not text (images...).
    ``model_dump()`` leaves out those that are unset, so a plain message dumps as ``{"role", "content"}``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Role
    content: str
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    parts: list[dict[str, Any]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _split_parts(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("content"), list):
            text, parts = _split_content(data["content"])
            data = {**data, "content": text, "parts": parts}
        return data

    @field_validator("role", mode="before")
    @classmethod
    def _check_role(cls, v: Any) -> Any:
        if v not in ROLES:
            raise ValueError(f"unknown role {v!r}; expected one of {', '.join(ROLES)}")
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, v: Any) -> str:
        if v is None:
            return ""
        return _split_content(v)[0]

    @model_validator(mode="after")
    def _check_tool_fields(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise _FieldError("tool_call_id", "a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls is not None and self.role != "assistant":
            raise _FieldError("tool_calls", "only an assistant message can carry tool_calls")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        for k in _MESSAGE_OPTIONAL:
            if out.get(k) is None:
                out.pop(k, None)
        return out

    @property
    def is_plain(self) -> bool:
        """Whether the message is only a role and text (no name, tool fields or non-text parts)."""
        return self.parts is None and self.tool_calls is None and self.tool_call_id is None and self.name is None

    def with_text(self, text: str) -> "Message":
        """A copy whose text is ``text``; other fields kept. With non-text ``parts``, the text parts
        become one text part holding ``text``, where the first one was (first, if there was none)."""
        if self.parts is None:
            return self.model_copy(update={"content": text})
        parts: list[dict[str, Any]] = []
        placed = False
        for p in self.parts:
            if p.get("type") == "text":
                if not placed:
                    parts.append({"type": "text", "text": text})
                    placed = True
            else:
                parts.append(p)
        if not placed:
            parts.insert(0, {"type": "text", "text": text})
        return self.model_copy(update={"content": text, "parts": parts})


_MESSAGE_OPTIONAL = ("name", "tool_calls", "tool_call_id", "parts")


MessagesLike = Union[str, Sequence[Union[Message, dict]]]


def to_messages(messages: MessagesLike) -> list[Message]:
    """Turn a string (one user turn) or a list of dicts/messages into validated ``Message``s."""
    if isinstance(messages, str):
        return [Message(role="user", content=messages)]
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
            continue
        try:
            out.append(Message.model_validate(m))
        except ValidationError as e:
            loc = _error_field(e)
            raise InputError(f"messages[{i}]: {_first_error(e)}", field=f"messages[{i}]" + (f".{loc}" if loc else "")) from None
    return out


def _error_field(e: ValidationError) -> str | None:
    """The location of the first error as a field path: ``messages[0].role``, ``temperature``."""
    err = e.errors()[0]
    loc = [p for p in err["loc"] if p != "content"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, _FieldError):  # a value inside a message: name it (``messages[0].content[1]``)
        path = f"{path}.{inner.path}" if path else inner.path
    elif "content" in err["loc"]:
        path = f"{path}.content" if path else "content"
    return path or None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


class ChatRequest(BaseModel):
    """A chat request: messages, generation parameters and free-form metadata."""

    model_config = ConfigDict(extra="ignore")

    messages: list[Message]
    model: str | None = None
    # None: the backend's default (greedy for local models); NaN and infinities (which JSON parsers accept
    # as NaN, Infinity or 1e400) are refused
    temperature: float | None = Field(default=None, allow_inf_nan=False)
    top_p: float | None = Field(default=None, allow_inf_nan=False)
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    # OpenAI fields beyond text and sampling (tools, tool_choice, n, response_format, logprobs, penalties,
    # logit_bias, user...), as the client sent them: forwarded to a backend that takes them, refused
    # (``InputError`` naming the field) by one that cannot. ``None`` when there are none (the usual case).
    openai_fields: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)  # last: the fast build adds it after the defaults

    @field_validator("messages", mode="before")
    @classmethod
    def _check_messages(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [{"role": "user", "content": v}]
        if not v:
            raise ValueError("messages is empty: a request needs at least one message")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("max_tokens must be at least 1")
        return v

    @classmethod
    def build(cls, messages: "MessagesLike | ChatRequest", **params: Any) -> "ChatRequest":
        """Validate ``messages`` (or copy a request) and apply ``params``; raise ``InputError``."""
        if isinstance(messages, ChatRequest):
            return messages.model_copy(update=params) if params else messages
        if type(messages) is str and not params:  # one user turn, nothing to check: the per-call hot path
            message = _trusted(Message, {"role": "user", "content": messages, **_MESSAGE_DEFAULTS}, _MESSAGE_FIELDS)
            values = {"messages": [message], **_REQUEST_DEFAULTS, **{n: make() for n, make in _REQUEST_FACTORIES.items()}}
            return _trusted(cls, values, _MESSAGES_FIELD)
        try:
            return cls(messages=to_messages(messages), **params)
        except ValidationError as e:
            raise InputError(f"bad request: {_first_error(e)}", field=_error_field(e)) from None

    @property
    def last_user_index(self) -> int:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "user":
                return i
        raise InputError("the request has no user message")

    @property
    def last_user_message(self) -> str:
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "user":  # the usual case, without the search
            return last.content
        return self.messages[self.last_user_index].content

    def with_last_user_message(self, content: str) -> "ChatRequest":
        """A copy whose last user message is ``content``; history kept."""
        i = self.last_user_index
        msgs = list(self.messages)
        old = msgs[i]
        msgs[i] = Message(role="user", content=content) if old.is_plain else old.with_text(content)
        return self.model_copy(update={"messages": msgs})

    def field(self, name: str, default: Any = None) -> Any:
        """The OpenAI field ``name`` as the client sent it (``request.field("tools")``), else ``default``."""
        fields = self.openai_fields
        return default if fields is None else fields.get(name, default)


class Usage(BaseModel):
    """Token counts of one reply."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, total_tokens: int) -> "Usage":
        """Counts a backend has checked: validation is skipped when all three are ints (the per-call
        hot path), done otherwise."""
        if type(prompt_tokens) is int and type(completion_tokens) is int and type(total_tokens) is int:
            values = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total_tokens}
            return _trusted(cls, values, _USAGE_FIELDS)
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=total_tokens)


_USAGE_FIELDS = frozenset(("prompt_tokens", "completion_tokens", "total_tokens"))


_MESSAGE_FIELDS = frozenset(("role", "content"))
_MESSAGE_DEFAULTS: dict[str, Any] = {n: None for n in _MESSAGE_OPTIONAL}
assert set(Message.model_fields) == _MESSAGE_FIELDS | _MESSAGE_DEFAULTS.keys()  # the fast build sets every field
_MESSAGES_FIELD = frozenset(("messages",))
# the defaults of every ChatRequest field but ``messages``, read off the model so the fast build cannot drift from it
_REQUEST_DEFAULTS: dict[str, Any] = {
    n: f.default for n, f in ChatRequest.model_fields.items() if n != "messages" and f.default_factory is None
}
_REQUEST_FACTORIES: dict[str, Any] = {
    n: f.default_factory for n, f in ChatRequest.model_fields.items() if n != "messages" and f.default_factory is not None
}


class StageTrace(BaseModel):
    """What one stage did to one request."""

    stage: str
    kind: StageKind
    verdict: Verdict
    latency_ms: float = 0.0
    before: str | None = None
    after: str | None = None
    reason: str | None = None
    choice: int | None = None  # which choice of an n > 1 reply a response stage acted on

    @classmethod
    def of(
        cls,
        stage: Any,
        kind: StageKind,
        verdict: Verdict,
        latency_ms: float,
        before: str | None = None,
        after: str | None = None,
        reason: str | None = None,
    ) -> "StageTrace":
        """A trace built by the stage machinery (``kind`` and ``verdict`` are its own literals):
        validation is skipped when the other values already have their fields' types (the per-stage
        hot path), done otherwise."""
        if (
            type(stage) is str
            and type(latency_ms) is float
            and (before is None or type(before) is str)
            and (after is None or type(after) is str)
            and (reason is None or type(reason) is str)
        ):
            values = {
                "stage": stage, "kind": kind, "verdict": verdict, "latency_ms": latency_ms,
                "before": before, "after": after, "reason": reason, "choice": None,
            }
            return _trusted(cls, values, _TRACE_FIELDS)
        return cls(stage=stage, kind=kind, verdict=verdict, latency_ms=latency_ms, before=before, after=after, reason=reason)


_TRACE_FIELDS = frozenset(("stage", "kind", "verdict", "latency_ms", "before", "after", "reason"))
_new = object.__new__
_set = object.__setattr__


def _trusted(cls: type[_M], values: dict[str, Any], fields_set: frozenset[str]) -> _M:
    """An instance of ``cls`` holding ``values`` (every field, each already of its type) without
    validation: what ``model_construct`` does, for the hot paths, at a fraction of its cost."""
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(fields_set))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


class ChatResponse(BaseModel):
    """A reply, with the trace of every stage it went through.

    ``text`` is what response stages read and rewrite. ``tool_calls`` (OpenAI's shape) and ``logprobs``
    (OpenAI's ``choices[i].logprobs``) come from a backend that returns them, as it returned them: the
    logprobs are those of the tokens the model generated, before any response stage rewrote the text. For a
    request with ``n > 1`` this reply is the first choice and ``more_choices`` holds the others, each a
    ``ChatResponse`` of its own (text, finish reason, tool calls, logprobs; usage counts the whole call).
    """

    id: str = Field(default_factory=new_reply_id)
    created: int = Field(default_factory=lambda: int(time.time()))
    text: str
    finish_reason: Literal["stop", "length"] | str = "stop"
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    trace: list[StageTrace] = Field(default_factory=list)
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None
    more_choices: list["ChatResponse"] | None = None

    @classmethod
    def of(cls, *, id: str, created: int, text: str, finish_reason: str, model: str | None, usage: Usage) -> "ChatResponse":
        """A reply built by a backend from values it checked: validation is skipped when every value
        already has its field's type (the per-call hot path), done otherwise."""
        if (
            type(id) is str
            and type(created) is int
            and type(text) is str
            and type(finish_reason) is str
            and (model is None or type(model) is str)
            and type(usage) is Usage
        ):
            values = {
                "id": id, "created": created, "text": text, "finish_reason": finish_reason, "model": model, "usage": usage,
                "trace": [], "tool_calls": None, "logprobs": None, "more_choices": None,
            }
            return _trusted(cls, values, _REPLY_FIELDS)
        return cls(id=id, created=created, text=text, finish_reason=finish_reason, model=model, usage=usage)

    def with_trace(self, trace: list[StageTrace]) -> "ChatResponse":
        """A copy of this reply carrying ``trace`` (``model_copy(update={"trace": trace})``, cheaper)."""
        copy = _new(type(self))
        _set(copy, "__dict__", {**self.__dict__, "trace": trace})
        _set(copy, "__pydantic_fields_set__", self.__pydantic_fields_set__ | {"trace"})
        _set(copy, "__pydantic_extra__", None if self.__pydantic_extra__ is None else dict(self.__pydantic_extra__))
        _set(copy, "__pydantic_private__", None if self.__pydantic_private__ is None else dict(self.__pydantic_private__))
        return copy

    @property
    def choices(self) -> list["ChatResponse"]:
        """Every choice of the reply in order: this one, then ``more_choices``."""
        return [self] if not self.more_choices else [self, *self.more_choices]

    def trace_table(self) -> str:
        """The trace as a fixed-width text table."""
        return format_trace(self.trace)


_REPLY_FIELDS = frozenset(("id", "created", "text", "finish_reason", "model", "usage"))


class ChatChunk(BaseModel):
    """One piece of a streamed reply. The last chunk has ``finish_reason`` and the trace."""

    delta: str = ""
    finish_reason: str | None = None
    model: str | None = None
    usage: Usage | None = None
    trace: list[StageTrace] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # tool-call deltas in OpenAI's streamed shape (with ``index``)
    logprobs: dict[str, Any] | None = None  # the logprobs of this piece, in OpenAI's shape

    @classmethod
    def piece(cls, delta: str, model: str | None) -> "ChatChunk":
        """A chunk of text only (the per-chunk hot path of a stream): validation is skipped when ``delta``
        is a str and ``model`` a str or ``None``, done otherwise."""
        if type(delta) is str and (model is None or type(model) is str):
            values = {"delta": delta, "finish_reason": None, "model": model, "usage": None, "trace": None,
                      "tool_calls": None, "logprobs": None}
            return _trusted(cls, values, _PIECE_FIELDS)
        return cls(delta=delta, model=model)


_PIECE_FIELDS = frozenset(("delta", "model"))


def format_trace(trace: Iterable[StageTrace], width: int = 60) -> str:
    rows = [("stage", "kind", "verdict", "ms", "detail")]
    for t in trace:
        if t.reason:
            detail = t.reason
        elif t.verdict == "modified" and t.after is not None:
            detail = f"-> {t.after!r}"
        else:
            detail = ""
        detail = detail.replace("\n", " ")
        if len(detail) > width:
            detail = detail[: width - 1] + "…"
        rows.append((t.stage, t.kind, t.verdict, f"{t.latency_ms:.1f}", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


class PreferencePair(BaseModel):
    """One preference example (see the data format in README.md)."""

    model_config = ConfigDict(extra="ignore")

    prompt: list[Message]
    chosen: str
    rejected: str
    optimized_prompt: str | None = None
    critique: str | None = None
    reference: str | None = None
    source: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [{"role": "user", "content": v}]
        if not v:
            raise ValueError("prompt is empty")
        return v

    @model_validator(mode="after")
    def _last_is_user(self) -> "PreferencePair":
        if self.prompt[-1].role != "user":
            raise ValueError("the last message of prompt must be the user's")
        return self

    @property
    def question(self) -> str:
        """The last user message."""
        return self.prompt[-1].content


class PromptRecord(BaseModel):
    """A prompt-only row (evaluation sets): prompt, optional reference answer (a preference pair row's
    ``chosen`` where it has no ``reference``)."""

    model_config = ConfigDict(extra="ignore")

    prompt: list[Message]
    reference: str | None = None
    source: str | None = None

    _prompt = field_validator("prompt", mode="before")(PreferencePair._prompt.__func__)  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _chosen_as_reference(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("reference") is None and isinstance(data.get("chosen"), str):
            return {**data, "reference": data["chosen"]}
        return data

    @model_validator(mode="after")
    def _last_is_user(self) -> "PromptRecord":
        if self.prompt[-1].role != "user":
            raise ValueError("the last message of prompt must be the user's")
        return self


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: is a directory, not a JSONL file" if path.is_dir() else f"{path}: not a regular file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None


def _load(path: "str | os.PathLike[str]", model: type[BaseModel], limit: int | None, skipped: list[str] | None = None) -> list[Any]:
    path = Path(path)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    rows = []
    for lineno, obj in _iter_jsonl(path):
        problem = f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}" if not isinstance(obj, dict) else None
        if problem is None:
            try:
                rows.append(model.model_validate(obj))
            except ValidationError as e:
                problem = f"{path}:{lineno}: {_first_error(e)}"
        if problem is not None:
            if skipped is None:
                raise InputError(problem)
            skipped.append(problem)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def load_pairs(path: "str | os.PathLike[str]", limit: int | None = None, *, skipped: list[str] | None = None) -> list[PreferencePair]:
    """Read preference pairs from a JSONL file.

    Raises ``InputError`` naming ``file:line: field: problem`` for the first bad row; with a ``skipped``
    list, bad rows (valid JSON that is not a pair, e.g. a ``chosen`` that is ``true``) are left out and
    their problems appended to it instead (a line that is not JSON still raises).
    """
    return _load(path, PreferencePair, limit, skipped)


def load_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    """Read prompt rows (``prompt`` and optional ``reference``) from a JSONL file."""
    return _load(path, PromptRecord, limit)


def save_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(p.model_dump_json(exclude_none=True) + "\n")
