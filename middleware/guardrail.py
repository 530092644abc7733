"""A LiteLLM proxy guardrail that runs a pipeline's stages around whatever model the proxy calls.

The proxy's ``config.yaml`` names the class and a pipeline file::

    guardrails:
      - guardrail_name: alignware
        litellm_params:
          guardrail: middleware.guardrail.AlignwareGuardrail
          mode: [pre_call, post_call]
          default_on: true
          pipeline: pipeline.yaml     # or $ALIGNWARE_PIPELINE; relative paths: from the proxy's working folder
          trace: true                 # put the stage trace on replies (off by default: it holds the texts)

Before the call the prompt stages rewrite the request's messages (the upstream sees the rewritten
prompt); after it the response stages correct the reply, whole (``post_call``) or streamed piece by piece
through each stage's ``aprocess_stream``. The pipeline file's ``llm`` is not used: the proxy's model answers.
Model stages cannot run here (they act inside a local model) and are refused at start-up.

With ``trace: true`` the trace (one ``StageTrace`` dict per stage, prompt stages first) is the reply's
``alignware_trace`` field, or the ``alignware_trace`` field of the streamed chunk that carries the
``finish_reason``. A stage that fails passes its input through and says so in the trace.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks
from litellm.types.utils import Delta, ModelResponse, ModelResponseStream, StreamingChoices

from .config import PipelineConfig
from .errors import InputError
from .stages import ModelStage, PromptStage, ResponseStage, Stage
from .types import ChatRequest, ChatResponse, Message, StageTrace

__all__ = ["AlignwareGuardrail", "ENV_PIPELINE"]

log = logging.getLogger("alignware")

ENV_PIPELINE = "ALIGNWARE_PIPELINE"
_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed")
_STATE = "alignware"  # key under the request's metadata: the rewritten request and the prompt stages' trace
_CHAT_CALLS = frozenset({"completion", "acompletion"})


def _load_stages(pipeline: "str | Path | None") -> list[Stage]:
    source = pipeline or os.environ.get(ENV_PIPELINE)
    if not source:
        raise InputError(f"alignware guardrail: set `pipeline: path.yaml` in its litellm_params, or ${ENV_PIPELINE}")
    cfg = PipelineConfig.load(source)
    stages = cfg.build_stages()
    model_stages = [s.name for s in stages if isinstance(s, ModelStage)]
    if model_stages:
        raise InputError(
            f"{cfg.source}: model stages ({', '.join(model_stages)}) act inside a local model's layers; "
            "a proxy guardrail only sees requests and replies, so it can run prompt and response stages only"
        )
    return stages


def _message_text(message: dict[str, Any]) -> str | None:
    """The text the stages saw of a message as sent (``None`` when it cannot be read)."""
    try:
        return Message.model_validate(message).content
    except ValueError:
        return None


def _write_back(original: list[Any], rewritten: Sequence[Message]) -> list[Any]:
    """The request's messages with the stages' texts; each message keeps its other keys (``name``,
    ``tool_calls``...) where the stages left the roles in place."""
    out: list[Any] = []
    for i, msg in enumerate(rewritten):
        old = original[i] if i < len(original) and isinstance(original[i], dict) else None
        if old is not None and old.get("role") == msg.role:
            if old.get("content") == msg.content or _message_text(old) == msg.content:  # unchanged: as sent
                out.append(old)
            else:  # content parts (images...) keep their place; the text parts become the stages' text
                out.append({**old, "content": msg.parts if msg.parts is not None else msg.content})
        else:
            out.append({"role": msg.role, "content": msg.content})
    return out


def _metadata(data: dict[str, Any]) -> dict[str, Any]:
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = data["metadata"] = {}
    return meta


def _text_of(chunk: Any) -> str:
    choices = getattr(chunk, "choices", None) or []
    if not choices or getattr(choices[0], "delta", None) is None:
        return ""
    return choices[0].delta.content or ""


def _finish_of(chunk: Any) -> str | None:
    choices = getattr(chunk, "choices", None) or []
    return choices[0].finish_reason if choices else None


class AlignwareGuardrail(CustomGuardrail):
    """Runs the prompt stages of a pipeline file before the proxy's call and its response stages after.

    Args:
        pipeline: a pipeline YAML/JSON file (default: ``$ALIGNWARE_PIPELINE``); its ``stages`` are used.
        trace: put the stages' trace on each reply as ``alignware_trace``.
        **kwargs: the proxy's guardrail settings (``guardrail_name``, ``event_hook``, ``default_on``).
    """

    def __init__(self, pipeline: "str | Path | None" = None, trace: bool = False, **kwargs: Any) -> None:
        stages = _load_stages(pipeline)
        self.prompt_stages = [s for s in stages if isinstance(s, PromptStage)]
        self.response_stages = [s for s in stages if isinstance(s, ResponseStage)]
        self.trace = bool(trace)
        kwargs.setdefault("supported_event_hooks", [GuardrailEventHooks.pre_call, GuardrailEventHooks.post_call])
        super().__init__(**kwargs)

    # -- the request ----------------------------------------------------------------------
    @staticmethod
    def _request(data: dict[str, Any]) -> ChatRequest:
        params = {k: data[k] for k in _PARAMS if data.get(k) is not None}
        return ChatRequest.build(data.get("messages") or [], model=data.get("model"), **params)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> Any:
        """Rewrite the request's messages with the prompt stages; keep their trace for the reply."""
        if str(call_type) not in _CHAT_CALLS or not self.should_run_guardrail(data=data, event_type=GuardrailEventHooks.pre_call):
            return data
        traces: list[StageTrace] = []
        try:
            request = self._request(data)
        except (InputError, ValueError) as e:  # content the stages cannot read (images, audio): passed on untouched
            log.info("alignware guardrail: request passed on unchanged: %s", e)
            _metadata(data)[_STATE] = {"trace": [], "skipped": str(e)}
            return data
        for stage in self.prompt_stages:
            request, t = await stage.arun(request)
            traces.append(t)
        if self.prompt_stages:
            data["messages"] = _write_back(data["messages"], request.messages)
        _metadata(data)[_STATE] = {"trace": traces}
        return data

    def _prompt_trace(self, data: dict[str, Any]) -> list[StageTrace]:
        state = (data.get("metadata") or {}).get(_STATE) or {}
        return list(state.get("trace") or [])

    def _publish(self, target: Any, traces: list[StageTrace]) -> None:
        if self.trace:
            setattr(target, "alignware_trace", [t.model_dump() for t in traces])

    # -- a whole reply --------------------------------------------------------------------
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        """Correct each text choice of a chat completion with the response stages."""
        if not isinstance(response, ModelResponse) or not self.should_run_guardrail(data=data, event_type=GuardrailEventHooks.post_call):
            return response
        traces = self._prompt_trace(data)
        try:
            request = self._request(data)
        except (InputError, ValueError):
            return response
        for i, choice in enumerate(response.choices):
            message = getattr(choice, "message", None)
            if message is None or not isinstance(message.content, str):
                continue  # a tool call or refusal without text: nothing for the stages to read
            reply = ChatResponse(text=message.content, finish_reason=choice.finish_reason or "stop")
            for stage in self.response_stages:
                reply, t = await stage.arun(request, reply)
                if i == 0:
                    traces.append(t)
            message.content = reply.text
        self._publish(response, traces)
        return response

    # -- a streamed reply -----------------------------------------------------------------
    async def async_post_call_streaming_iterator_hook(  # type: ignore[override]
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> AsyncIterator[Any]:
        """Pass the streamed text through each response stage's ``aprocess_stream`` as it arrives.

        Chunks without text (the role, tool calls) keep their place before the next text; the closing
        chunks (``finish_reason``, usage) follow the stages' last words and the first of them carries the trace.
        """
        wanted = self.response_stages or self.trace  # without either, the stream passes through as it came
        if not wanted or not self.should_run_guardrail(data=request_data, event_type=GuardrailEventHooks.post_call):
            async for item in response:
                yield item
            return
        try:
            request = self._request(request_data)
        except (InputError, ValueError):
            async for item in response:
                yield item
            return
        traces = self._prompt_trace(request_data)
        held: list[Any] = []  # chunks without text, in arrival order
        template: list[Any] = []

        async def upstream() -> AsyncIterator[str]:
            async for chunk in response:
                text = _text_of(chunk)
                if not text:
                    held.append(chunk)
                    continue
                if not template:
                    template.append(chunk)
                if _finish_of(chunk) is not None:  # text and finish together: the finish waits for the stages
                    closing = copy.deepcopy(chunk)
                    closing.choices[0].delta = Delta(content=None)
                    held.append(closing)
                yield text

        pieces: AsyncIterator[str] = upstream()
        for stage in self.response_stages:
            pieces = stage.arun_stream(request, pieces, traces)
        async for piece in pieces:
            for chunk in self._take(held, closing=False):
                yield chunk
            yield self._piece(template[0] if template else None, piece)
        closing_chunks = self._take(held, closing=True)
        for chunk in closing_chunks:
            if _finish_of(chunk) is not None:
                self._publish(chunk, traces)
                break
        else:
            if closing_chunks:
                self._publish(closing_chunks[-1], traces)
        for chunk in closing_chunks:
            yield chunk

    @staticmethod
    def _take(held: list[Any], *, closing: bool) -> list[Any]:
        """Remove and return the held chunks that may go out now: before more text only those that are
        not closing (no ``finish_reason``, no usage); at the end, all."""
        if closing:
            out, held[:] = list(held), []
            return out
        out = []
        for chunk in list(held):
            if _finish_of(chunk) is not None or getattr(chunk, "usage", None) is not None:
                break
            out.append(chunk)
            held.remove(chunk)
        return out

    @staticmethod
    def _piece(template: Any, text: str) -> ModelResponseStream:
        """A text chunk shaped like the upstream's (same id, model, created)."""
        if template is None:
            return ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(content=text))])
        return ModelResponseStream(
            id=template.id, created=template.created, model=template.model,
            choices=[StreamingChoices(index=0, delta=Delta(content=text), finish_reason=None)],
        )
