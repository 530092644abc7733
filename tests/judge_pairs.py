"""Preference pairs and reward-model settings the judge tests share (a tiny random model)."""

from __future__ import annotations

from pathlib import Path

from judge import RewardConfig
from middleware.types import PreferencePair

QUESTIONS = ["What is the capital of France?", "How can I help you today?", "Please improve this prompt.", "Hello! What is the quick fox?"]


def toy_pairs(n: int = 16) -> list[PreferencePair]:
    """Separable pairs: the chosen answer is always the helpful sentence, the rejected one a refusal."""
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i % 3)}]
        if i % 4 == 3:
            prompt = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello! How can I help?"}] + prompt
        out.append(
            PreferencePair(
                prompt=prompt,
                chosen="Here is a helpful and harmless answer: Paris is the capital of France.",
                rejected="I cannot help with that.",
            )
        )
    return out


def cfg(tiny: Path, **kw) -> RewardConfig:
    return RewardConfig(backbone=str(tiny), max_length=64, **kw)
