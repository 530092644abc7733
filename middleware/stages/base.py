"""``Stage``: the settings every stage shares, and its failure policy and trace.

A stage has one job. Its failure policy defaults to fail-open: a stage that raises or times out
passes its input through unchanged and its trace entry says ``failed`` with the reason. Set
``on_error="raise"`` to raise ``StageError`` instead. ``note()`` lets a stage say why (the trace's reason).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from typing import Any, Callable, ClassVar, Literal

from ..errors import InputError, StageError
from ..threads import submit
from ..types import ChatRequest, StageKind, StageTrace, Verdict

OnError = Literal["pass", "raise"]
SkipIf = Callable[[ChatRequest], bool]

#: The notes of the stage running now (``None`` outside a stage).
current_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("alignware_notes", default=None)


def note(reason: str) -> None:
    """Called from inside a stage: record why it did what it did (shown in the trace)."""
    holder = current_notes.get()
    if holder is not None:
        holder.append(reason)


def failure_reason(exc: BaseException) -> str:
    """An exception as a trace's reason: ``timed out``, or ``Type: message``."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_title_request(request: ChatRequest) -> bool:
    """``skip_if`` helper: chat apps' background requests (titles, tags, follow-up suggestions)."""
    text = request.messages[-1].content.lower() if request.messages else ""
    if request.metadata.get("task") in {"title", "tags", "follow_up", "autocomplete"}:
        return True
    markers = ("generate a concise", "title for the", "### task:", "generate 1-3 broad tags", "suggest 3-5 relevant follow-up")
    return any(m in text for m in markers)


def user_text(request: ChatRequest) -> str:
    """The last user message for a trace; empty when the request has none (the stage then fails on
    its own terms and the request passes through)."""
    messages = request.messages
    if messages and messages[-1].role == "user":  # the usual case, without the search
        return messages[-1].content
    try:
        return request.last_user_message
    except InputError:
        return ""


def verdict_of(changed: bool, notes: list[str]) -> tuple[Verdict, str | None]:
    """A finished stage's verdict and reason: ``modified`` or ``passed``, its notes joined."""
    return ("modified" if changed else "passed"), ("; ".join(notes) if notes else None)


class Stage:
    """Common settings of every stage.

    Args:
        name: shown in traces (default: the class name).
        on_error: ``"pass"`` (default) passes the input through on error; ``"raise"`` raises ``StageError``.
        timeout: seconds; a stage that takes longer counts as failed (``None``: no limit). When
            streaming, the stage's own time over the whole answer, not its wait for upstream chunks.
        skip_if: a predicate on the request; when true the stage is skipped.
    """

    kind: ClassVar[StageKind]
    name: str
    on_error: OnError = "pass"
    timeout: float | None = None
    skip_if: SkipIf | None = None

    def __init__(
        self,
        *,
        name: str | None = None,
        on_error: OnError = "pass",
        timeout: float | None = None,
        skip_if: SkipIf | None = None,
    ) -> None:
        if on_error not in ("pass", "raise"):
            raise ValueError(f"on_error must be 'pass' or 'raise', got {on_error!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        if skip_if is not None and not callable(skip_if):
            raise ValueError(f"skip_if must be a function of the request (such as middleware.is_title_request), got {skip_if!r}")
        self.name = name or type(self).__name__
        self.on_error = on_error
        self.timeout = timeout
        self.skip_if = skip_if

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- shared machinery -------------------------------------------------------------
    def deterministic(self) -> bool:
        """Whether the stage gives the same output whenever it gets the same input (no sampling, no
        timeout that may cut one run and not the next). ``False`` unless a stage knows;
        ``alignware eval --repeats`` runs a variant whose stages and LLM are all deterministic only once."""
        return False

    def _skipped(self, request: ChatRequest) -> StageTrace | None:
        if self.skip_if is None:
            return None
        try:
            skip = bool(self.skip_if(request))
        except Exception as e:  # a broken predicate must not lose the request
            return self._trace("failed", 0.0, reason=f"skip_if raised {failure_reason(e)}")
        return self._trace("skipped", 0.0, reason="skip_if matched") if skip else None

    def _trace(
        self, verdict: Verdict, latency_s: float, *, before: str | None = None, after: str | None = None, reason: str | None = None
    ) -> StageTrace:
        return StageTrace.of(self.name, self.kind, verdict, latency_s * 1000.0, before, after, reason)

    def _failed(self, exc: BaseException, t0: float, before: str | None) -> StageTrace:
        reason = failure_reason(exc)
        if self.timeout is not None and reason == "timed out":
            reason = f"timed out after {self.timeout:g}s"
        if self.on_error == "raise":
            raise StageError(self.name, reason) from exc
        return self._trace("failed", time.perf_counter() - t0, before=before, after=before, reason=reason)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.timeout is None:
            return fn(*args)
        return submit(self, fn, *args).result(timeout=self.timeout)

    async def _acall(self, coro: Any) -> Any:
        if self.timeout is None:
            return await coro
        return await asyncio.wait_for(coro, self.timeout)
