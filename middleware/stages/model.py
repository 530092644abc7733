"""``ModelStage``: a stage that acts inside a local model while it generates, and ``attached``, which
installs model stages with their failure policy for one generation."""

from __future__ import annotations

import contextlib
import time
from typing import Any, ContextManager, Iterator, Sequence

from ..types import ChatRequest, StageTrace
from .base import Stage


class ModelStage(Stage):
    """Acts inside a local model while it generates. ``attach(model)`` returns a context manager
    that installs hooks on entry and removes them on exit (also when generation raises)."""

    kind = "model"

    def attach(self, model: Any) -> ContextManager[Any]:
        raise NotImplementedError

    def describe(self) -> str:
        """What the stage does to the model, for the trace's detail column (default: ``"attached"``)."""
        return "attached"


@contextlib.contextmanager
def attached(stages: Sequence[ModelStage], model: Any, request: ChatRequest, traces: list[StageTrace]) -> Iterator[None]:
    """Install every model stage on ``model`` for the duration of the block, with each stage's policy.

    A stage whose ``attach`` raises is left out (trace ``failed``) unless it is set to raise. All hooks
    are removed on exit, whatever happened inside.
    """
    with contextlib.ExitStack() as stack:
        for st in stages:
            skipped = st._skipped(request)
            if skipped is not None:
                traces.append(skipped)
                continue
            t0 = time.perf_counter()
            try:
                stack.enter_context(st.attach(model))
            except Exception as e:
                traces.append(st._failed(e, t0, None))
                continue
            traces.append(st._trace("modified", time.perf_counter() - t0, reason=st.describe()))
        yield
