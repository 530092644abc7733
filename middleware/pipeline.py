"""``Pipeline``: prompt stages → LLM (+ model stages) → response stages, with a trace per stage."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, AsyncIterator, Iterator, Sequence

from .choices import after_text, apeek, arun_response_stages, needs_choices, passthrough, peek, run_response_stages, skipped
from .errors import InputError
from .llm import LLM, make_llm
from .stages import ModelStage, PromptStage, ResponseStage, Stage
from .types import ChatChunk, ChatRequest, ChatResponse, MessagesLike, StageTrace


DEFAULT_KEYS = ("model", "temperature", "top_p", "max_tokens", "stop", "seed")


def check_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    """Validate a pipeline's generation defaults as a request would; ``InputError`` names the key."""
    if not isinstance(defaults, dict):
        raise InputError(f"defaults: expected a mapping of generation parameters, got {type(defaults).__name__}")
    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise InputError(f"defaults: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(DEFAULT_KEYS)}")
    try:
        checked = ChatRequest.build("-", **defaults)
    except InputError as e:
        raise InputError(f"defaults: {str(e).removeprefix('bad request: ')}") from None
    return {k: getattr(checked, k) for k in defaults}


class Pipeline:
    """A chain of stages around one LLM.

    Args:
        llm: an ``LLM`` backend, a litellm model string, a local model path, or ``None`` for the
            embedded SmolLM2-135M-Instruct.
        stages: ``PromptStage``s, ``ModelStage``s and ``ResponseStage``s in any order; each kind runs
            at its place (prompt stages before the LLM, model stages inside it, response stages after),
            in the order given.
        defaults: generation parameters applied to every request that does not set them.

    Example::

        pipe = Pipeline("openai/gpt-4o-mini", stages=[PromptRewriter.prompted(...)])
        reply = pipe.chat("How do I stay focused?")
        print(reply.text); print(reply.trace_table())
    """

    def __init__(self, llm: "LLM | str | None" = None, stages: Sequence[Stage] = (), *, defaults: dict[str, Any] | None = None) -> None:
        self.llm = make_llm(llm)
        self.stages = list(stages)
        self.defaults = check_defaults(defaults or {})
        for i, st in enumerate(self.stages):
            if not isinstance(st, Stage):
                raise InputError(f"stages[{i}] is a {type(st).__name__}, not a PromptStage, ModelStage or ResponseStage")
        self.prompt_stages = [s for s in self.stages if isinstance(s, PromptStage)]
        self.model_stages = [s for s in self.stages if isinstance(s, ModelStage)]
        self.response_stages = [s for s in self.stages if isinstance(s, ResponseStage)]
        if self.model_stages and not self.llm.supports_model_stages:
            names = ", ".join(s.name for s in self.model_stages)
            raise InputError(
                f"model stages ({names}) act inside the model's layers while it generates, so they need a model run in "
                f"this process (a local model folder, a .gguf file or the embedded model); {type(self.llm).__name__} "
                f"{self.llm.name!r} is reached over an API, whose layers no stage can reach"
            )

    def __repr__(self) -> str:
        return f"Pipeline(llm={self.llm.name!r}, stages={[s.name for s in self.stages]})"

    def _request(self, messages: "MessagesLike | ChatRequest", params: dict[str, Any]) -> ChatRequest:
        req = ChatRequest.build(messages, **params)
        if self.defaults:
            unset = {k: v for k, v in self.defaults.items() if getattr(req, k, None) is None}
            if unset:
                req = req.model_copy(update=unset)
        self.llm.check_request(req)  # a field the backend cannot honour is refused before any stage runs
        return req

    def _stream_request(self, messages: "MessagesLike | ChatRequest", params: dict[str, Any]) -> ChatRequest:
        req = self._request(messages, params)
        n = req.field("n")
        if n is not None and n != 1:
            raise InputError("n: a streamed reply carries one choice; ask for n > 1 without streaming", field="n")
        return req

    def _kw(self) -> dict[str, Any]:
        return {"model_stages": self.model_stages} if self.model_stages else {}

    # -- one request --------------------------------------------------------------------
    def chat(self, messages: "MessagesLike | ChatRequest", **params: Any) -> ChatResponse:
        """Answer one conversation (a string is one user message)."""
        request = self._request(messages, params)
        traces: list[StageTrace] = []
        for st in self.prompt_stages:
            request, t = st.run(request)
            traces.append(t)
        response = self.llm.complete(request, **self._kw())
        traces.extend(response.trace)
        response = run_response_stages(self.response_stages, request, response, traces)
        return response.with_trace(traces)

    async def achat(self, messages: "MessagesLike | ChatRequest", **params: Any) -> ChatResponse:
        request = self._request(messages, params)
        traces: list[StageTrace] = []
        for st in self.prompt_stages:
            request, t = await st.arun(request)
            traces.append(t)
        response = await self.llm.acomplete(request, **self._kw())
        traces.extend(response.trace)
        response = await arun_response_stages(self.response_stages, request, response, traces)
        return response.with_trace(traces)

    # -- streaming ----------------------------------------------------------------------
    def stream(self, messages: "MessagesLike | ChatRequest", **params: Any) -> Iterator[ChatChunk]:
        """Yield ``ChatChunk``s; the last one carries ``finish_reason``, usage and the whole trace.

        Response stages act on the text; a reply that starts with tool calls passes them untouched
        (``choices``), and the tool-call deltas and logprobs of one with text follow its text."""
        request = self._stream_request(messages, params)
        traces: list[StageTrace] = []
        for st in self.prompt_stages:
            request, t = st.run(request)
            traces.append(t)
        end: dict[str, Any] = {}

        def source() -> Iterator[ChatChunk]:
            for ch in self.llm.stream(request, **self._kw()):
                if ch.trace:
                    traces.extend(ch.trace)
                if ch.finish_reason is not None:
                    end.update(finish_reason=ch.finish_reason, usage=ch.usage, model=ch.model)
                yield ch

        chunks: Iterator[ChatChunk] = source()
        stages = self.response_stages
        if stages:
            seen, tools_first = peek(chunks)
            chunks = itertools.chain(seen, chunks)
            if tools_first:
                traces.extend(skipped(stages))
                stages = []
        if not stages:
            for ch in chunks:
                out = passthrough(ch)
                if out is not None:
                    yield out
        else:
            held: list[ChatChunk] = []

            def text() -> Iterator[str]:
                for ch in chunks:
                    if ch.tool_calls is not None or ch.logprobs is not None:
                        held.append(ch)
                    if ch.delta:
                        yield ch.delta

            pieces: Iterator[str] = text()
            for rs in stages:
                pieces = rs.run_stream(request, pieces, traces)
            for piece in pieces:
                if piece:
                    yield ChatChunk.piece(piece, end.get("model"))
            yield from after_text(held, end.get("model"))
        yield ChatChunk(finish_reason=end.get("finish_reason", "stop"), usage=end.get("usage"), model=end.get("model"), trace=traces)

    async def astream(self, messages: "MessagesLike | ChatRequest", **params: Any) -> AsyncIterator[ChatChunk]:
        request = self._stream_request(messages, params)
        traces: list[StageTrace] = []
        for st in self.prompt_stages:
            request, t = await st.arun(request)
            traces.append(t)
        end: dict[str, Any] = {}

        async def source() -> AsyncIterator[ChatChunk]:
            async for ch in self.llm.astream(request, **self._kw()):
                if ch.trace:
                    traces.extend(ch.trace)
                if ch.finish_reason is not None:
                    end.update(finish_reason=ch.finish_reason, usage=ch.usage, model=ch.model)
                yield ch

        upstream = source()
        seen: list[ChatChunk] = []
        stages = self.response_stages
        if stages:
            seen, tools_first = await apeek(upstream)
            if tools_first:
                traces.extend(skipped(stages))
                stages = []

        async def chunks() -> AsyncIterator[ChatChunk]:
            for ch in seen:
                yield ch
            async for ch in upstream:
                yield ch

        if not stages:
            async for ch in chunks():
                out = passthrough(ch)
                if out is not None:
                    yield out
        else:
            held: list[ChatChunk] = []

            async def text() -> AsyncIterator[str]:
                async for ch in chunks():
                    if ch.tool_calls is not None or ch.logprobs is not None:
                        held.append(ch)
                    if ch.delta:
                        yield ch.delta

            pieces: AsyncIterator[str] = text()
            for rs in stages:
                pieces = rs.arun_stream(request, pieces, traces)
            async for piece in pieces:
                if piece:
                    yield ChatChunk.piece(piece, end.get("model"))
            for extra in after_text(held, end.get("model")):
                yield extra
        yield ChatChunk(finish_reason=end.get("finish_reason", "stop"), usage=end.get("usage"), model=end.get("model"), trace=traces)

    # -- many requests ------------------------------------------------------------------
    def batch(self, conversations: Sequence["MessagesLike | ChatRequest"], **params: Any) -> list[ChatResponse]:
        """Answer many conversations. The LLM sees them as one batch (local models pad and batch), and
        so does each stage that implements ``process_batch`` (the model-mode rewriter and corrector);
        the others process them one by one."""
        requests = [self._request(c, params) for c in conversations]
        traces: list[list[StageTrace]] = [[] for _ in requests]
        for st in self.prompt_stages:
            for i, (r, t) in enumerate(st.run_batch(requests)):
                requests[i] = r
                traces[i].append(t)
        responses = list(self.llm.batch(requests, **self._kw()))
        for tr, resp in zip(traces, responses):
            tr.extend(resp.trace)
        if any(needs_choices(r) for r in responses):  # several choices or tool calls: one reply at a time
            responses = [run_response_stages(self.response_stages, q, r, tr) for q, r, tr in zip(requests, responses, traces)]
            return [resp.with_trace(tr) for resp, tr in zip(responses, traces)]
        for rs in self.response_stages:
            for i, (corrected, t) in enumerate(rs.run_batch(requests, responses)):
                responses[i] = corrected
                traces[i].append(t)
        return [resp.with_trace(tr) for resp, tr in zip(responses, traces)]

    async def abatch(self, conversations: Sequence["MessagesLike | ChatRequest"], **params: Any) -> list[ChatResponse]:
        return list(await asyncio.gather(*(self.achat(c, **params) for c in conversations)))
