"""``PromptStage``: a stage that acts on the request before the LLM, one at a time or in batches."""

from __future__ import annotations

from time import perf_counter
from typing import Any, Sequence

from ..threads import in_thread
from ..types import ChatRequest, StageTrace
from .base import Stage, current_notes, user_text, verdict_of
from .batch import run_batch


class PromptStage(Stage):
    """Acts on the request before the LLM. Override ``process`` (and ``aprocess`` if it has a native async path)."""

    kind = "prompt"

    def process(self, request: ChatRequest) -> ChatRequest:
        raise NotImplementedError

    async def aprocess(self, request: ChatRequest) -> ChatRequest:
        return await in_thread(self, self.process, request)

    def run(self, request: ChatRequest) -> tuple[ChatRequest, StageTrace]:
        """Apply the stage with its policy; never loses the request unless ``on_error="raise"``."""
        if self.skip_if is not None:
            skipped = self._skipped(request)
            if skipped is not None:
                return request, skipped
        before = user_text(request)
        notes: list[str] = []
        token = current_notes.set(notes)
        t0 = perf_counter()
        try:  # inline without a timeout; a worker thread with one
            out = self.process(request) if self.timeout is None else self._call(self.process, request)
            if type(out) is not ChatRequest:
                out = self._check(out)
        except Exception as e:
            return request, self._failed(e, t0, before)
        finally:
            current_notes.reset(token)
        if out is request and not notes:  # the usual no-op: no comparison, no verdict to work out
            return out, StageTrace.of(self.name, self.kind, "passed", (perf_counter() - t0) * 1000.0, before, before)
        return out, self._done(request, out, perf_counter() - t0, before, notes)

    async def arun(self, request: ChatRequest) -> tuple[ChatRequest, StageTrace]:
        skipped = self._skipped(request)
        if skipped is not None:
            return request, skipped
        before = user_text(request)
        notes: list[str] = []
        token = current_notes.set(notes)
        t0 = perf_counter()
        try:
            out = self._check(await self._acall(self.aprocess(request)))
        except Exception as e:
            return request, self._failed(e, t0, before)
        finally:
            current_notes.reset(token)
        return out, self._done(request, out, perf_counter() - t0, before, notes)

    def _check(self, out: Any) -> ChatRequest:
        if type(out) is ChatRequest:  # the usual case, without pydantic's isinstance check
            return out
        if not isinstance(out, ChatRequest):
            raise TypeError(f"process() returned {type(out).__name__}, expected ChatRequest")
        return out

    def _done(self, request: ChatRequest, out: ChatRequest, latency_s: float, before: str, notes: list[str]) -> StageTrace:
        same = out is request
        verdict, reason = verdict_of(not same and out != request, notes)
        after = before if same else user_text(out)
        return StageTrace.of(self.name, self.kind, verdict, latency_s * 1000.0, before, after, reason)

    # -- batches ------------------------------------------------------------------------
    def process_batch(self, requests: list[ChatRequest]) -> list[ChatRequest]:
        """Optional: process many requests at once (one batched generation). Return one request per
        input, in order; ``note()`` about request ``i`` inside ``with batch_item(i):``. Stages that do
        not override it process a batch one request at a time."""
        raise NotImplementedError

    def run_batch(self, requests: Sequence[ChatRequest]) -> list[tuple[ChatRequest, StageTrace]]:
        """``run`` for many requests: one ``process_batch`` call where the stage has one, else ``run`` each.

        With ``process_batch``, an error fails the whole batch: every request passes through unchanged
        with a ``failed`` trace (or ``StageError`` is raised when ``on_error="raise"``). The stage's
        ``timeout`` applies to the one ``process_batch`` call.
        """
        if len(requests) < 2 or type(self).process_batch is PromptStage.process_batch:
            return [self.run(r) for r in requests]
        return run_batch(
            self,
            requests,
            requests,
            lambda todo: self.process_batch([requests[i] for i in todo]),
            self._check,
            user_text,
            lambda r, out, latency, notes: self._done(r, out, latency, user_text(r), notes),
        )


class IdentityPromptStage(PromptStage):
    """A prompt stage that returns the request unchanged (baselines, benchmarks, placeholders)."""

    def process(self, request: ChatRequest) -> ChatRequest:
        return request

    async def aprocess(self, request: ChatRequest) -> ChatRequest:
        return request  # nothing blocks: no worker thread

    def deterministic(self) -> bool:
        return self.timeout is None


class AppendToPrompt(PromptStage):
    """Appends a fixed ``text`` to the last user message (joined by ``separator``).

    The simplest prompt intervention, kept as a control for trained stages: e.g. ``text="Please answer in
    a safe, ethical and responsible way."`` is the safety-sentence baseline every in-model method has to beat.
    In a config: ``{type: append_to_prompt, text: "..."}``.
    """

    def __init__(self, text: str, *, separator: str = " ", **kw: Any) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string")
        super().__init__(**kw)
        self.text = text
        self.separator = separator

    def process(self, request: ChatRequest) -> ChatRequest:
        return request.with_last_user_message(request.last_user_message + self.separator + self.text)

    def deterministic(self) -> bool:
        return self.timeout is None

