"""Prompts, judges, stages and a tiny reward-model fixture shared by the evaluation tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from middleware.stages import PromptStage, ResponseStage
from middleware.types import ChatRequest, ChatResponse
from judge import RewardConfig, RewardModel


PROMPTS = ["What is the capital of France?", "How can I help you today?", "Please improve this prompt.", "Hello!"]


@pytest.fixture(scope="module")
def judge_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) reward model on the tiny backbone, saved as a folder."""
    rm = RewardModel.create(RewardConfig(backbone=str(tiny_model_dir), max_length=64, train="head"))
    return rm.save(tmp_path_factory.mktemp("judge"))


def echo(messages: list[dict]) -> str:
    return "You asked: " + messages[-1]["content"]


class LengthJudge:
    """A transparent judge: longer answers are better."""

    def score_batch(self, items):
        return [float(len(r)) for _, r in items]


class ShortJudge:
    """The opposite of LengthJudge: shorter answers are better."""

    def score_batch(self, items):
        return [-float(len(r)) for _, r in items]


class Longer(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": response.text + " Here is more detail."})


class Broken(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        raise RuntimeError("model unavailable")


class Noisy(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": response.text + "!" * random.randint(0, 5)})


class Coin(PromptStage):
    """A sampling prompt stage: per request, from the request's seed, it either adds a plea for detail or not."""

    def process(self, request: ChatRequest) -> ChatRequest:
        if random.Random(f"{request.seed}/{request.last_user_message}").random() < 0.5:
            return request.with_last_user_message(request.last_user_message + " Please answer in detail.")
        return request


def table_cell(markdown: str, row: str, column: str) -> str:
    """The cell of a report's first table (the variants') in the row named ``row`` and the column headed ``column``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant | stages |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[header.index(column)]
    raise KeyError(f"no row {row!r} in the variants' table")


def recording_llm(received: list[str], answer=None):
    """A FunctionLLM that records the last user message of every request it answers (``answer`` makes the
    reply from it; by default the echo)."""
    from middleware.llm import FunctionLLM

    def fn(messages: list[dict]) -> str:
        received.append(messages[-1]["content"])
        return answer(messages[-1]["content"]) if answer else echo(messages)

    return FunctionLLM(fn)
