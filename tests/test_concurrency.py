"""``concurrency=N`` of ``evaluate_pipeline``, ``select_by_reward`` and the teacher step of
``build_rewriter_data``, against a loopback upstream that answers after a delay and counts the requests in
flight: never more than N at once, answers in the serial run's order, one failing prompt reported alone."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import logging
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.remote_concurrency import FAIL_MARK, DelayedUpstream, echo  # noqa: E402
from middleware.concurrency import concurrency_for, run_bounded  # noqa: E402
from middleware.errors import AlignwareError, InputError  # noqa: E402
from middleware.evaluate import evaluate_pipeline  # noqa: E402
from middleware.local import LocalBackend  # noqa: E402
from middleware.pipeline import Pipeline  # noqa: E402
from middleware.remote import LiteLLMBackend  # noqa: E402
from middleware.types import PreferencePair  # noqa: E402
from rewriters.rewriter_data import build_rewriter_data  # noqa: E402
from rewriters.selection import select_by_reward  # noqa: E402
from text_stage_fakes import WordJudge  # noqa: E402

PROMPTS = [f"question {i}: how far is {i} from {2 * i}?" for i in range(24)]


def _teacher_reply(text: str) -> str:
    """A teacher's answer in BPO's format, or the echo for anything else (a target's answer)."""
    m = re.search(r'instruction: "(.*?)"', text)
    if m is None:
        return echo(text)
    return f"Detailed Comparison Result: the good one is precise.\nOptimized Instruction: Explain in detail {m.group(1)}, step by step. [END]"


@pytest.fixture(scope="module")
def upstream() -> Iterator[DelayedUpstream]:
    with DelayedUpstream(delay=0.05, reply=_teacher_reply) as up:
        yield up


def _llm(up: DelayedUpstream) -> LiteLLMBackend:
    return LiteLLMBackend("openai/served", api_base=up.base, api_key="sk-test", max_retries=0)


def _plain_answers(report: object) -> list[str]:
    return [s["answers"]["plain"]["text"] for s in report.samples]  # type: ignore[attr-defined]


def test_eval_keeps_n_in_flight_and_the_serial_answers(upstream: DelayedUpstream) -> None:
    pipe = Pipeline(_llm(upstream), [])
    serial = evaluate_pipeline(pipe, PROMPTS, WordJudge(), per_stage=False, control=False, progress=False)
    upstream.peak = 0
    concurrent = evaluate_pipeline(pipe, PROMPTS, WordJudge(), per_stage=False, control=False, progress=False, concurrency=4)
    assert 2 <= upstream.peak <= 4
    assert _plain_answers(concurrent) == _plain_answers(serial) == [echo(p) for p in PROMPTS]
    assert [s["answers"]["plain"]["reward"] for s in concurrent.samples] == [s["answers"]["plain"]["reward"] for s in serial.samples]


def test_eval_names_the_failed_prompt(upstream: DelayedUpstream) -> None:
    prompts = list(PROMPTS)
    prompts[5] += " " + FAIL_MARK
    with pytest.raises(AlignwareError, match=r"1 of 24 prompts failed: prompts\[5\]"):
        evaluate_pipeline(Pipeline(_llm(upstream), []), prompts, WordJudge(), per_stage=False, control=False,
                          progress=False, concurrency=8)


def test_run_bounded_keeps_order_and_failures_in_place() -> None:
    import asyncio

    async def job(i: int) -> int:
        await asyncio.sleep(0.001 * (10 - i))  # later jobs finish first
        if i == 3:
            raise ValueError("three")
        return i * i

    out = run_bounded([lambda i=i: job(i) for i in range(10)], 4)  # type: ignore[misc]
    assert [o if isinstance(o, int) else str(o) for o in out] == [0, 1, 4, "three", 16, 25, 36, 49, 64, 81]
    with pytest.raises(InputError, match="concurrency must be at least 1"):
        run_bounded([lambda: job(0)], 0)


def _rows(n: int) -> tuple[list[PreferencePair], dict[int, str]]:
    rows = [PreferencePair(prompt=f"how do tides work near island {i}", chosen="a", rejected="b") for i in range(n)]
    return rows, {i: f"Explain in detail how ocean tides work near island {i}." for i in range(n)}


def test_selection_bounded_in_order_and_one_failure(upstream: DelayedUpstream, tmp_path: Path) -> None:
    rows, rewrites = _rows(10)
    rewrites[4] += " " + FAIL_MARK
    serial = select_by_reward(rows, rewrites, _llm(upstream), WordJudge(), cache_dir=tmp_path / "a", progress=False)
    upstream.peak = 0
    concurrent = select_by_reward(rows, rewrites, _llm(upstream), WordJudge(), cache_dir=tmp_path / "b", progress=False,
                                  concurrency=3)
    assert 2 <= upstream.peak <= 3
    assert [(c.answer, c.rewritten_answer, c.kept) for c in concurrent if c.error is None] == \
           [(c.answer, c.rewritten_answer, c.kept) for c in serial if c.error is None]
    failed = [c for c in concurrent if c.error is not None]
    assert [c.index for c in failed] == [4] and "row 4: target failed" in str(failed[0].error)
    assert [c.answer for c in concurrent if c.error is None] == [echo(rows[i].question) for i in range(10) if i != 4]


def test_teacher_step_bounded_with_one_failed_row(upstream: DelayedUpstream, tmp_path: Path) -> None:
    rows = [PreferencePair(prompt=f"how do tides work near island {i}", chosen="They follow the moon.", rejected="No idea.")
            for i in range(12)]
    rows[7] = PreferencePair(prompt=f"how do tides work {FAIL_MARK}", chosen="They follow the moon.", rejected="No idea.")
    upstream.peak = 0
    examples, report = build_rewriter_data(rows, _llm(upstream), cache_dir=tmp_path / "c", progress=False, concurrency=5)
    assert 2 <= upstream.peak <= 5
    assert report.teacher_calls == 12 and report.teacher_failures == 1
    assert len(report.failures) == 1 and report.failures[0].startswith("row 7: teacher call failed")
    assert [e.target for e in examples] == [f"Explain in detail how do tides work near island {i}, step by step."
                                            for i in range(12) if i != 7]
    serial, _ = build_rewriter_data(rows, _llm(upstream), cache_dir=tmp_path / "d", progress=False, concurrency=1)
    assert serial == examples


def test_a_local_model_ignores_concurrency(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    local = LocalBackend(str(tiny_model_dir))
    with caplog.at_level(logging.WARNING, logger="alignware"):
        assert concurrency_for(local, 8, "test_local") is None
        assert concurrency_for(local, 8, "test_local") is None
    said = [r.getMessage() for r in caplog.records if "concurrency=8 ignored" in r.getMessage()]
    assert len(said) == 1 and "local model" in said[0]
    assert concurrency_for(local, None, "test_local") is None
    with pytest.raises(InputError, match="at least 1"):
        concurrency_for(local, 0, "test_local")


def test_command_lines_take_concurrency(capsys: pytest.CaptureFixture[str]) -> None:
    from middleware.evaluate.cli import main as eval_main
    from rewriters.cli import rewriter_parser

    assert eval_main(["--pipeline", "p.yaml", "--prompts", "q.jsonl", "--judge", "j", "--concurrency", "0"]) == 2
    assert "--concurrency must be 1 or more" in capsys.readouterr().err
    assert eval_main(["--rejudge", "r.json", "--judge", "j", "--concurrency", "8"]) == 2
    assert "--concurrency only apply when answers are generated" in capsys.readouterr().err
    base = ["--data", "pairs.jsonl", "--out", "runs/r"]
    assert rewriter_parser().parse_args(base + ["--concurrency", "16"]).concurrency == 16
    assert rewriter_parser().parse_args(base + ["--max-concurrency", "3"]).concurrency == 3  # the former name
    assert rewriter_parser().parse_args(base).concurrency is None
