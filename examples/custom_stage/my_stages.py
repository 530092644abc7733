"""Stage classes for ``pipeline.yaml`` beside this file (``type: my_stages:ClassName``).

``alignware`` imports ``my_stages`` as Python would (installed packages, ``PYTHONPATH``); when it is not
found there, it looks in the folder of the config file that names it, so this file needs no
installing and no ``PYTHONPATH``.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

from middleware import ChatRequest, ChatResponse, PromptStage, ResponseStage


class HouseStyle(PromptStage):
    """Adds the house style to the user's message."""

    def __init__(self, style: str = "Answer briefly.", **kw: Any) -> None:
        super().__init__(**kw)  # name, on_error, timeout, skip_if
        self.style = style

    def process(self, request: ChatRequest) -> ChatRequest:
        return request.with_last_user_message(f"{request.last_user_message} {self.style}")


class SignOff(ResponseStage):
    """Appends a sign-off line. Streamed, the answer passes through chunk by chunk and the sign-off
    follows it, so the reply still streams."""

    def __init__(self, line: str = "-- the team", **kw: Any) -> None:
        super().__init__(**kw)
        self.line = line

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": f"{response.text}\n{self.line}"})

    def process_stream(self, request: ChatRequest, chunks: Iterator[str]) -> Iterator[str]:
        yield from chunks
        yield f"\n{self.line}"

    async def aprocess_stream(self, request: ChatRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async for c in chunks:
            yield c
        yield f"\n{self.line}"
