"""A response stage for the LiteLLM proxy example: replaces whole words, streamed word by word.

``ReplaceWords`` stands in for a trained response corrector: small, deterministic, and able to stream
(each word is passed on as soon as the space after it arrives), so the example shows the guardrail
correcting a streamed reply without holding it back. In a pipeline file::

    - type: stages:ReplaceWords      # this file, found through PYTHONPATH
      replace: {colour: color}
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator, Iterator

from middleware import ChatRequest, ChatResponse, ResponseStage

_WORD = re.compile(r"\w+")


class ReplaceWords(ResponseStage):
    """Replaces each whole word found in ``replace`` (a mapping of word to replacement)."""

    def __init__(self, replace: dict[str, str], **kw: Any) -> None:
        if not isinstance(replace, dict) or not replace:
            raise ValueError("replace: expected a non-empty mapping of word to replacement")
        super().__init__(**kw)
        self.replace = {str(k): str(v) for k, v in replace.items()}

    def fix(self, text: str) -> str:
        """``text`` with every listed whole word replaced."""
        return _WORD.sub(lambda m: self.replace.get(m.group(0), m.group(0)), text)

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": self.fix(response.text)})

    def _split(self, held: str) -> tuple[str, str]:
        """What can be passed on now (up to the last space) and what must wait for the rest of its word."""
        cut = max(held.rfind(" "), held.rfind("\n")) + 1
        return self.fix(held[:cut]), held[cut:]

    def process_stream(self, request: ChatRequest, chunks: Iterator[str]) -> Iterator[str]:
        held = ""
        for piece in chunks:
            ready, held = self._split(held + piece)
            if ready:
                yield ready
        if held:
            yield self.fix(held)

    async def aprocess_stream(self, request: ChatRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        held = ""
        async for piece in chunks:
            ready, held = self._split(held + piece)
            if ready:
                yield ready
        if held:
            yield self.fix(held)
