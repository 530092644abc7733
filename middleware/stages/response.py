"""``ResponseStage``: a stage that acts on the reply after the LLM, whole, in batches or streamed."""

from __future__ import annotations

from time import perf_counter
from typing import Any, AsyncIterator, Iterator, Sequence

from ..threads import in_thread
from ..types import ChatRequest, ChatResponse, StageTrace
from . import streaming
from .base import Stage, current_notes, verdict_of
from .batch import run_batch


class ResponseStage(Stage):
    """Acts on the reply after the LLM. Override ``process``; streaming defaults to buffering."""

    kind = "response"

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        raise NotImplementedError

    async def aprocess(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return await in_thread(self, self.process, request, response)

    def process_stream(self, request: ChatRequest, chunks: Iterator[str]) -> Iterator[str]:
        """Streaming hook. Default (``buffer``): collect the whole answer, then yield the corrected one.

        A stage that only implements ``process`` must see the whole answer before it can change it, so a
        streamed reply through it reaches the client in one piece once the upstream has finished. To keep
        streaming, override this (and ``aprocess_stream``) to yield pieces as they come: a stage that
        only watches yields each chunk unchanged; one that edits locally may hold back what it still needs
        (a sentence, a line)."""
        text = "".join(chunks)
        yield self.process(request, ChatResponse(text=text)).text

    async def aprocess_stream(self, request: ChatRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        text = "".join([c async for c in chunks])
        yield (await self.aprocess(request, ChatResponse(text=text))).text

    def run(self, request: ChatRequest, response: ChatResponse) -> tuple[ChatResponse, StageTrace]:
        """Apply the stage with its policy; never loses the reply unless ``on_error="raise"``."""
        if self.skip_if is not None:
            skipped = self._skipped(request)
            if skipped is not None:
                return response, skipped
        notes: list[str] = []
        token = current_notes.set(notes)
        t0 = perf_counter()
        try:  # inline without a timeout; a worker thread with one
            out = self.process(request, response) if self.timeout is None else self._call(self.process, request, response)
            if type(out) is not ChatResponse:
                out = self._check(out)
        except Exception as e:
            return response, self._failed(e, t0, response.text)
        finally:
            current_notes.reset(token)
        if out is response and not notes:  # the usual no-op: no comparison, no verdict to work out
            text = response.text
            return out, StageTrace.of(self.name, self.kind, "passed", (perf_counter() - t0) * 1000.0, text, text)
        return out, self._done(response, out, perf_counter() - t0, notes)

    async def arun(self, request: ChatRequest, response: ChatResponse) -> tuple[ChatResponse, StageTrace]:
        skipped = self._skipped(request)
        if skipped is not None:
            return response, skipped
        notes: list[str] = []
        token = current_notes.set(notes)
        t0 = perf_counter()
        try:
            out = self._check(await self._acall(self.aprocess(request, response)))
        except Exception as e:
            return response, self._failed(e, t0, response.text)
        finally:
            current_notes.reset(token)
        return out, self._done(response, out, perf_counter() - t0, notes)

    def _check(self, out: Any) -> ChatResponse:
        if type(out) is ChatResponse:  # the usual case, without pydantic's isinstance check
            return out
        if isinstance(out, str):
            raise TypeError("process() returned str, expected ChatResponse (use response.model_copy(update={'text': ...}))")
        if not isinstance(out, ChatResponse):
            raise TypeError(f"process() returned {type(out).__name__}, expected ChatResponse")
        return out

    def _done(self, response: ChatResponse, out: ChatResponse, latency_s: float, notes: list[str]) -> StageTrace:
        before, after = response.text, out.text
        verdict, reason = verdict_of(after != before, notes)
        return StageTrace.of(self.name, self.kind, verdict, latency_s * 1000.0, before, after, reason)

    # -- batches ------------------------------------------------------------------------
    def process_batch(self, requests: list[ChatRequest], responses: list[ChatResponse]) -> list[ChatResponse]:
        """Optional: process many replies at once (one batched generation). Return one reply per input,
        in order; ``note()`` about reply ``i`` inside ``with batch_item(i):``. Stages that do not override
        it process a batch one reply at a time."""
        raise NotImplementedError

    def run_batch(
        self, requests: Sequence[ChatRequest], responses: Sequence[ChatResponse]
    ) -> list[tuple[ChatResponse, StageTrace]]:
        """``run`` for many replies: one ``process_batch`` call where the stage has one, else ``run`` each.

        With ``process_batch``, an error fails the whole batch: every reply passes through unchanged
        with a ``failed`` trace (or ``StageError`` is raised when ``on_error="raise"``). The stage's
        ``timeout`` applies to the one ``process_batch`` call.
        """
        if len(requests) != len(responses):
            raise ValueError(f"{len(requests)} requests but {len(responses)} responses")
        if len(requests) < 2 or type(self).process_batch is ResponseStage.process_batch:
            return [self.run(q, r) for q, r in zip(requests, responses)]
        return run_batch(
            self,
            requests,
            responses,
            lambda todo: self.process_batch([requests[i] for i in todo], [responses[i] for i in todo]),
            self._check,
            lambda r: r.text,
            self._done,
        )

    # -- streaming ----------------------------------------------------------------------
    def run_stream(self, request: ChatRequest, upstream: Iterator[str], traces: list[StageTrace]) -> Iterator[str]:
        """Apply ``process_stream`` with the failure policy; appends this stage's trace when done.

        On failure before anything was yielded, the whole original answer passes through; after a
        partial output, the part of the original answer the stage had not read yet follows it (what it
        had read but not answered for is gone: a stage that streams piece by piece should pass a
        failing piece through itself, as the chunked ``ResponseCorrector`` does). ``timeout`` counts the stage's own
        time over the whole stream, not the time it waits for upstream chunks. An error raised by the
        upstream itself (the LLM's stream broke) is not the stage's failure: it propagates.
        """
        return streaming.run_stream(self, request, upstream, traces)

    def arun_stream(
        self, request: ChatRequest, upstream: AsyncIterator[str], traces: list[StageTrace]
    ) -> AsyncIterator[str]:
        """Async twin of :meth:`run_stream` over ``aprocess_stream``."""
        return streaming.arun_stream(self, request, upstream, traces)


class IdentityResponseStage(ResponseStage):
    """A response stage that returns the reply unchanged."""

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response

    async def aprocess(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response  # nothing blocks: no worker thread

    def process_stream(self, request: ChatRequest, chunks: Iterator[str]) -> Iterator[str]:
        """Each chunk as it arrives: a streamed reply stays streamed."""
        yield from chunks

    async def aprocess_stream(self, request: ChatRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async for c in chunks:
            yield c

    def deterministic(self) -> bool:
        return self.timeout is None
