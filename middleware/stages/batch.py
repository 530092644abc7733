"""The batch runner: a stage's failure policy around one ``process_batch`` call, and ``batch_item``
(whose ``note()`` calls inside a batch are about which request)."""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Callable, Iterator, Sequence

from ..types import ChatRequest, StageTrace
from .base import Stage, current_notes

_batch_notes: contextvars.ContextVar[list[list[str]] | None] = contextvars.ContextVar("alignware_batch_notes", default=None)


@contextlib.contextmanager
def batch_item(index: int) -> Iterator[None]:
    """Inside ``process_batch``: ``note()`` calls in this block are about request ``index`` of the batch."""
    batch = _batch_notes.get()
    if batch is None:
        yield
        return
    token = current_notes.set(batch[index])
    try:
        yield
    finally:
        current_notes.reset(token)


def run_batch(
    stage: Stage,
    requests: Sequence[ChatRequest],
    inputs: Sequence[Any],
    call: Callable[[list[int]], Any],
    check: Callable[[Any], Any],
    describe: Callable[[Any], str],
    done: Callable[[Any, Any, float, list[str]], StageTrace],
) -> list[tuple[Any, StageTrace]]:
    """The failure policy of ``stage`` around one ``process_batch`` call over the requests not skipped.

    ``inputs[i]`` is what passes through for request ``i`` when the stage is skipped or fails. Each
    request gets its own trace; the latency is the batch's wall time shared equally.
    """
    results: list[tuple[Any, StageTrace] | None] = [None] * len(requests)
    todo: list[int] = []
    for i, r in enumerate(requests):
        skipped = stage._skipped(r)
        if skipped is not None:
            results[i] = (inputs[i], skipped)
        else:
            todo.append(i)
    if todo:
        notes: list[list[str]] = [[] for _ in todo]
        token = _batch_notes.set(notes)
        t0 = time.perf_counter()
        try:
            outs = stage._call(call, todo)
            if not isinstance(outs, (list, tuple)) or len(outs) != len(todo):
                got = f"{len(outs)} results" if isinstance(outs, (list, tuple)) else type(outs).__name__
                raise TypeError(f"process_batch() returned {got} for {len(todo)} requests")
            outs = [check(o) for o in outs]
        except Exception as e:
            share = (time.perf_counter() - t0) / len(todo)
            for i in todo:
                trace = stage._failed(e, time.perf_counter() - share, describe(inputs[i]))  # raises if on_error="raise"
                results[i] = (inputs[i], trace)
            return results  # type: ignore[return-value]
        finally:
            _batch_notes.reset(token)
        share = (time.perf_counter() - t0) / len(todo)
        for j, i in enumerate(todo):
            results[i] = (outs[j], done(inputs[i], outs[j], share, notes[j]))
    return results  # type: ignore[return-value]
