"""The rewriter's training data: examples from the data, a teacher mocked at the litellm boundary with its
disk cache, and reward selection inside ``build_rewriter_data``."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

from pathlib import Path
from typing import Any

import pytest

from middleware.errors import InputError
from middleware.llm import LLM, FunctionLLM
from middleware.types import ChatRequest, ChatResponse, PreferencePair
from rewriters.rewriter_data import build_rewriter_data
from text_stage_fakes import BPO_PUBLISHED, OPTIMIZED, PROMPT, TEACHER_OK, WordJudge, detail_app
from text_stage_fakes import selection_pairs as _selection_pairs


def test_training_sources_use_the_published_template() -> None:
    pair = PreferencePair(prompt=PROMPT, chosen="good", rejected="bad", optimized_prompt="Explain photosynthesis in plants.")
    examples, report = build_rewriter_data([pair], progress=False)
    assert [(e.source, e.target) for e in examples] == [(BPO_PUBLISHED.format(PROMPT), "Explain photosynthesis in plants.")]
    assert report.kept == report.from_data == 1


# -- data building with a teacher mocked at the litellm boundary ----------------------------------------
def _pairs() -> list[PreferencePair]:
    chosen = "Vaccines show the immune system a harmless piece of a germ so it learns to recognise it later."
    return [
        PreferencePair(prompt="how do vaccines work", chosen=chosen, rejected="They just do.",
                       optimized_prompt="Explain how vaccines work."),                                  # given
        PreferencePair(prompt="how do vaccines work exactly", chosen=chosen, rejected="No idea."),       # teacher: kept
        PreferencePair(prompt="vaccines?", chosen=chosen, rejected="Yes."),                              # length_ratio
        PreferencePair(prompt=OPTIMIZED, chosen=chosen, rejected="Hmm."),                                # unchanged
        PreferencePair(prompt="tell me how vaccines train the immune system", rejected="Magic.",
                       chosen="Explain in detail how vaccines train the immune system, with one example of it."),  # leaked
        PreferencePair(prompt="teacher fails on this one", chosen="ok", rejected="no"),                 # failure
        PreferencePair(prompt="teacher answers nonsense here", chosen="ok", rejected="no"),             # unparseable
    ]


class Router(LLM):
    """A teacher made of real ``LiteLLMBackend``s with ``mock_response``, picked by the row's instruction."""

    def __init__(self) -> None:
        from middleware.remote import LiteLLMBackend

        kw = {"max_retries": 0, "backoff_initial": 0.0}
        self.name = self.model = "openai/teacher-x"
        self.ok = LiteLLMBackend("openai/teacher-x", mock_response=TEACHER_OK, **kw)
        self.down = LiteLLMBackend("openai/teacher-x", mock_response="litellm.RateLimitError", **kw)
        self.nonsense = LiteLLMBackend("openai/teacher-x", mock_response="I would rather not.", **kw)

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        text = request.messages[-1].content
        if "teacher fails" in text:
            return self.down.complete(request)
        if "nonsense" in text:
            return self.nonsense.complete(request)
        return self.ok.complete(request)


@pytest.fixture
def litellm_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call that reaches ``litellm.completion`` or ``litellm.acompletion`` (which still answer with their mock)."""
    import litellm

    calls: list[dict[str, Any]] = []
    real, areal = litellm.completion, litellm.acompletion

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    async def acounting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await areal(*args, **kwargs)

    monkeypatch.setattr(litellm, "completion", counting)
    monkeypatch.setattr(litellm, "acompletion", acounting)
    return calls


def test_build_rewriter_data_with_teacher_filters_failures_and_cache(tmp_path: Path, litellm_calls: list) -> None:
    pairs = _pairs()
    examples, report = build_rewriter_data(pairs, Router(), cache_dir=tmp_path / "cache", max_concurrency=3, progress=False)
    assert [e.target for e in examples] == ["Explain how vaccines work.", OPTIMIZED]
    assert examples[1].source == BPO_PUBLISHED.format("how do vaccines work exactly")
    assert report.total == 7 and report.kept == 2 and report.from_data == 1 and report.from_teacher == 1
    assert dict(report.filtered) == {"length_ratio": 1, "unchanged": 1, "leaked_answer": 1}
    assert report.teacher_failures == 2 and report.teacher_calls == 6 and report.cache_hits == 0
    assert any("row 5" in f and "rate limit" in f for f in report.failures)
    assert any("row 6" in f and "unusable" in f for f in report.failures)
    assert len(litellm_calls) == 6 and all(c["model"] == "openai/teacher-x" for c in litellm_calls)
    assert "teacher: 6 calls, 0 cached, 2 failed" in report.summary()

    # second run: the good answers come from the disk cache; only the failed rows are asked again
    litellm_calls.clear()
    examples2, report2 = build_rewriter_data(pairs, Router(), cache_dir=tmp_path / "cache", progress=False)
    assert examples2 == examples
    assert report2.cache_hits == 4 and report2.teacher_calls == 2 and len(litellm_calls) == 2


def test_second_run_makes_no_teacher_calls(tmp_path: Path, litellm_calls: list) -> None:
    from middleware.remote import LiteLLMBackend

    pairs = [p for p in _pairs() if "teacher" not in p.question]
    teacher = LiteLLMBackend("openai/x", mock_response=TEACHER_OK, max_retries=0)
    first, r1 = build_rewriter_data(pairs, teacher, cache_dir=tmp_path, progress=False)
    assert r1.teacher_calls == len(litellm_calls) == 4 and r1.teacher_failures == 0
    litellm_calls.clear()
    second, r2 = build_rewriter_data(pairs, teacher, cache_dir=tmp_path, progress=False)
    assert litellm_calls == [] and r2.teacher_calls == 0 and r2.cache_hits == 4
    assert second == first
    # another teacher model does not reuse those answers
    other = LiteLLMBackend("openai/y", mock_response=TEACHER_OK, max_retries=0)
    _, r3 = build_rewriter_data(pairs, other, cache_dir=tmp_path, progress=False)
    assert r3.teacher_calls == 4 and r3.cache_hits == 0
    # nor do the same model behind another endpoint, or other teacher decoding settings
    elsewhere = LiteLLMBackend("openai/x", mock_response=TEACHER_OK, max_retries=0, api_base="http://127.0.0.1:9/v1")
    assert build_rewriter_data(pairs, elsewhere, cache_dir=tmp_path, progress=False)[1].cache_hits == 0
    cooler = build_rewriter_data(pairs, teacher, cache_dir=tmp_path, teacher_temperature=0.0, progress=False)[1]
    assert cooler.teacher_calls == 4 and cooler.cache_hits == 0


def test_teacher_cache_tells_functions_apart_and_survives_damaged_files(tmp_path: Path) -> None:
    pairs = [p for p in _pairs() if "teacher" not in p.question]

    def teacher_a(messages: Any) -> str:
        return TEACHER_OK

    def teacher_b(messages: Any) -> str:
        return TEACHER_OK

    _, first = build_rewriter_data(pairs, FunctionLLM(teacher_a), cache_dir=tmp_path, progress=False)
    _, again = build_rewriter_data(pairs, FunctionLLM(teacher_a), cache_dir=tmp_path, progress=False)
    _, other = build_rewriter_data(pairs, FunctionLLM(teacher_b), cache_dir=tmp_path, progress=False)
    assert (first.teacher_calls, again.cache_hits, other.cache_hits, other.teacher_calls) == (4, 4, 0, 4)
    for f in tmp_path.rglob("*.json"):
        f.write_text("null")  # valid JSON, not an entry: a miss, asked again
    _, damaged = build_rewriter_data(pairs, FunctionLLM(teacher_a), cache_dir=tmp_path, progress=False)
    assert damaged.teacher_calls == 4 and damaged.cache_hits == 0 and damaged.teacher_failures == 0


def test_without_teacher_rows_lacking_a_target_are_counted() -> None:
    examples, report = build_rewriter_data(_pairs(), None, progress=False)
    assert len(examples) == 1 and report.no_target == 6 and report.teacher_calls == 0


def test_bad_rows_are_reported_with_their_index() -> None:
    with pytest.raises(InputError, match=r"pairs\[1\]"):
        build_rewriter_data([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "x"}], progress=False)


# -- with reward selection ---------------------------------------------------------------------------------
def test_build_rewriter_data_with_a_judge_drops_rewrites_without_gain(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    choices: list = []
    examples, report = build_rewriter_data(
        pairs, judge=WordJudge(), target=detail_app([]), cache_dir=tmp_path / "teacher", progress=False, choices_out=choices,
    )
    assert [e.target for e in examples] == [pairs[0].optimized_prompt, pairs[2].optimized_prompt]
    assert report.kept == 2 and report.selection_judged == 3 and report.selection_dropped == 1
    assert report.selection_mean_gain == pytest.approx(4.0) and len(choices) == 3
    assert "3 rewrites judged" in report.summary() and "1 dropped (no gain)" in report.summary()


def test_teacher_and_target_answers_go_to_their_own_default_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNWARE_CACHE", str(tmp_path))
    pairs = [PreferencePair(prompt="how do vaccines work exactly", chosen="They train the immune system.", rejected="No idea.")]
    examples, report = build_rewriter_data(
        pairs, FunctionLLM(lambda msgs: TEACHER_OK, name="teacher"), judge=WordJudge(), target=detail_app([]), progress=False,
    )
    assert report.from_teacher == 1 and report.selection_judged == 1 and [e.target for e in examples] == [OPTIMIZED]
    assert len(list((tmp_path / "teacher").rglob("*.json"))) == 1
    assert len(list((tmp_path / "answers").rglob("*.json"))) == 2


def test_a_target_failure_drops_only_that_row(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    app = detail_app([])

    def flaky(msgs: list[dict[str, str]]) -> str:
        if "tides" in msgs[-1]["content"]:
            raise ConnectionError("target unreachable")
        return app.fn(msgs)

    examples, report = build_rewriter_data(
        pairs, judge=WordJudge(), target=FunctionLLM(flaky, name="flaky"), cache_dir=tmp_path, progress=False
    )
    assert [e.target for e in examples] == [pairs[0].optimized_prompt, pairs[2].optimized_prompt]
    assert report.selection_judged == 2 and report.selection_failures == 1 and report.selection_dropped == 0
    assert report.failures == ["row 1: target failed: ConnectionError: target unreachable"]
    assert "1 dropped (target failed)" in report.summary()
