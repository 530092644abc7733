"""A litellm custom provider: ``litellm.completion(model="alignware/NAME", ...)`` runs the pipeline NAME.

Register a pipeline under a name, then call it through litellm like any other model, streamed or not,
sync or async::

    from middleware.litellm_provider import register
    register("support", "pipelines/support.yaml")      # a file, a PipelineConfig, a dict or a Pipeline
    reply = litellm.completion(model="alignware/support", messages=[{"role": "user", "content": "Hi"}])
    reply.choices[0].message.content                    # the pipeline's answer
    reply.alignware_trace                               # one dict per stage (also in reply._hidden_params)

``register`` adds the provider to ``litellm.custom_provider_map`` (once). Without code, pipelines can be
named in the environment: ``ALIGNWARE_PIPELINES="support=pipelines/support.yaml;faq=faq.yaml"`` is read
the first time a name is not registered (then ``middleware.litellm_provider.install()`` is the only
call needed). To put a pipeline's stages around the models of a LiteLLM *proxy*, use the guardrail in
``middleware.guardrail`` instead.

The trace: non-streamed, ``response.alignware_trace`` (a list of ``StageTrace`` dicts, the same as
``alignware serve``'s ``alignware_trace`` field) and ``response._hidden_params["alignware_trace"]``;
streamed, the chunk just before the closing one carries it as ``chunk.alignware_trace`` and in
``chunk.choices[0].delta.provider_specific_fields["alignware_trace"]``.

Generation parameters passed on: ``temperature``, ``top_p``, ``max_tokens`` (or
``max_completion_tokens``), ``stop``, ``seed``; ``user`` and ``metadata`` go to the request's metadata.
Anything else (``tools``, ``response_format``, ``n``, ...) is refused with a 400 naming the field: the
pipeline's stages work on text and its request carries only these.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import litellm
from litellm import CustomLLM
from litellm.llms.custom_llm import CustomLLMError
from litellm.types.utils import GenericStreamingChunk, ModelResponse

from .config import PipelineConfig
from .errors import BackendError, InputError
from .pipeline import Pipeline
from .error_status import error_for
from .types import ChatChunk, ChatRequest, ChatResponse, StageTrace, Usage

__all__ = ["PROVIDER", "AlignwareLLM", "handler", "install", "pipeline_for", "register", "unregister"]

PROVIDER = "alignware"
ENV_PIPELINES = "ALIGNWARE_PIPELINES"

_PASSED = ("temperature", "top_p", "max_tokens", "stop", "seed")
_IGNORED = frozenset({"stream", "stream_options", "max_retries", "user", "metadata", "max_completion_tokens"})

_pipelines: dict[str, Pipeline] = {}
_lock = threading.Lock()


def _build(pipeline: "Pipeline | PipelineConfig | str | Path | dict[str, Any]") -> Pipeline:
    if isinstance(pipeline, Pipeline):
        return pipeline
    return PipelineConfig.load(pipeline).build()


def register(name: str, pipeline: "Pipeline | PipelineConfig | str | Path | dict[str, Any]") -> Pipeline:
    """Make ``pipeline`` answer ``model="alignware/NAME"``; returns the built ``Pipeline``.

    ``pipeline``: a ``Pipeline``, a ``PipelineConfig``, a dict or a YAML/JSON file path (built now, so a
    bad file fails here, naming file and field). Registering a name again replaces its pipeline.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise InputError(f"pipeline name must be a non-empty string without '/', got {name!r}")
    built = _build(pipeline)
    with _lock:
        _pipelines[name] = built
    install()
    return built


def unregister(name: str) -> None:
    """Forget the pipeline registered as ``name`` (no error if there is none)."""
    with _lock:
        _pipelines.pop(name, None)


def _from_environment(name: str) -> Pipeline | None:
    """The pipeline ``name`` from ``$ALIGNWARE_PIPELINES`` (``name=path;name=path``), built and kept."""
    spec = os.environ.get(ENV_PIPELINES, "")
    for entry in filter(None, (e.strip() for e in spec.replace("\n", ";").split(";"))):
        key, sep, path = entry.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise InputError(f"${ENV_PIPELINES}: entry {entry!r} is not NAME=PATH")
        if key.strip() == name:
            return register(name, path.strip())
    return None


def pipeline_for(name: str) -> Pipeline:
    """The pipeline that answers ``alignware/NAME``; ``InputError`` when none is registered."""
    with _lock:
        found = _pipelines.get(name)
    if found is None:
        found = _from_environment(name)
    if found is None:
        known = ", ".join(sorted(_pipelines)) or "none"
        raise InputError(
            f"model: no alignware pipeline named {name!r} (registered: {known}); register one with "
            f"middleware.litellm_provider.register(name, pipeline) or ${ENV_PIPELINES}=name=path.yaml",
            field="model",
        )
    return found


def _request(messages: list[Any], optional_params: dict[str, Any]) -> ChatRequest:
    refused = sorted(k for k, v in optional_params.items() if v is not None and k not in _PASSED and k not in _IGNORED)
    if refused:
        raise InputError(
            f"{refused[0]}: not supported by alignware pipelines (their stages see and pass on text only; "
            f"supported: {', '.join(_PASSED)})",
            field=refused[0],
        )
    params = {k: optional_params[k] for k in _PASSED if optional_params.get(k) is not None}
    if "max_tokens" not in params and optional_params.get("max_completion_tokens") is not None:
        params["max_tokens"] = optional_params["max_completion_tokens"]
    metadata = dict(optional_params.get("metadata") or {})
    if optional_params.get("user"):
        metadata["user"] = optional_params["user"]
    return ChatRequest.build(messages, metadata=metadata, **params)


def _error(exc: Exception) -> CustomLLMError:
    """The status and message ``alignware serve`` would answer (``error_for``): ``InputError`` → 400,
    ``BackendError`` → 429, 504 or 502 (the upstream's own status for a 4xx about the request), anything
    else → 500. In-process the caller is the operator, so an upstream error keeps its whole message (the
    server leaves out what the upstream said about its own key or model)."""
    status, error = error_for(exc)
    return CustomLLMError(status, str(exc) if isinstance(exc, BackendError) else error["message"])


def trace_dicts(trace: "list[StageTrace] | None") -> list[dict[str, Any]]:
    """The trace as JSON-ready dicts, as ``alignware serve`` sends it."""
    return [t.model_dump() for t in trace or []]


def _fill(model_response: ModelResponse, reply: ChatResponse, name: str) -> ModelResponse:
    model_response.choices[0].message.content = reply.text  # type: ignore[union-attr]
    model_response.choices[0].finish_reason = reply.finish_reason  # type: ignore[assignment]
    model_response.model = f"{PROVIDER}/{name}"
    setattr(model_response, "usage", litellm.Usage(**reply.usage.model_dump()))
    trace = trace_dicts(reply.trace)
    setattr(model_response, "alignware_trace", trace)
    model_response._hidden_params["alignware_trace"] = trace
    return model_response


def _generic(chunk: ChatChunk) -> GenericStreamingChunk:
    """A pipeline chunk as litellm's provider-neutral streaming chunk; the closing one carries the trace."""
    if chunk.finish_reason is None:
        return {"text": chunk.delta, "is_finished": False, "finish_reason": "", "usage": None, "index": 0}
    usage: Usage = chunk.usage or Usage()
    return {
        "text": chunk.delta,
        "is_finished": True,
        "finish_reason": chunk.finish_reason,
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens},
        "index": 0,
        "provider_specific_fields": {"alignware_trace": trace_dicts(chunk.trace)},
    }


class AlignwareLLM(CustomLLM):
    """litellm's handler for ``alignware/NAME`` models: runs the registered pipeline NAME."""

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        try:
            reply = pipeline_for(model).chat(_request(messages, kwargs["optional_params"]))
        except Exception as e:
            raise _error(e) from e
        return _fill(kwargs["model_response"], reply, model)

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        try:
            reply = await pipeline_for(model).achat(_request(messages, kwargs["optional_params"]))
        except Exception as e:
            raise _error(e) from e
        return _fill(kwargs["model_response"], reply, model)

    def streaming(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:  # type: ignore[override]
        try:
            chunks = pipeline_for(model).stream(_request(messages, kwargs["optional_params"]))
            for chunk in chunks:
                yield _generic(chunk)
        except Exception as e:
            raise _error(e) from e

    async def astreaming(self, model: str, messages: list, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:  # type: ignore[override]
        try:
            async for chunk in pipeline_for(model).astream(_request(messages, kwargs["optional_params"])):
                yield _generic(chunk)
        except Exception as e:
            raise _error(e) from e


handler = AlignwareLLM()
"""The provider instance that ``install`` adds to ``litellm.custom_provider_map``."""


def install() -> AlignwareLLM:
    """Add the ``alignware`` provider to ``litellm.custom_provider_map`` unless it is there already."""
    with _lock:
        if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
            litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": handler})
    return handler
