"""Scoring the answers: each distinct (prompt, answer) judged once, every variant compared with the plain
answer and the first-sentence control, the report built; ``rejudge`` does it again for an earlier report."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import AlignwareError, InputError
from ..types import Message, to_messages
from .judges import Judge, JudgeLike, judge_name, load_judge
from .refusals import refusal_rate
from .report import PLAIN, EvalReport, StageStats, VariantResult
from .stats import DEFAULT_EPSILON, mean_interval, outcome, win_rate_interval


CONTROL = "control: first sentence"
_FIRST_SENTENCE = re.compile(r"\s*(.+?[.!?])(?=\s|$)", re.DOTALL)


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to the first ``.``, ``!`` or ``?`` followed by a space or the end);
    the whole text when it has no such end."""
    m = _FIRST_SENTENCE.match(text)
    return m.group(1) if m else text


def _words(text: str) -> int:
    return len(text.split())


def _compare(
    name: str,
    stages: list[str],
    texts: list[list[str]],
    rewards: list[list[float]],
    plain_texts: list[list[str]],
    plain_rewards: list[list[float]],
    epsilon: float,
    *,
    ms_per_prompt: float = 0.0,
    stage_stats: list[StageStats] | None = None,
) -> VariantResult:
    """Wins, ties and losses of ``texts`` against the plain answers. Each prompt holds the answers of every
    repeat; the mean rewards decide, and equal answers (every repeat) or mean rewards within ``epsilon`` tie."""
    n = len(texts)
    gains, scores = [], []
    for t, r, pt, pr in zip(texts, rewards, plain_texts, plain_rewards):
        d = 0.0 if t == pt else sum(r) / len(r) - sum(pr) / len(pr)
        gains.append(d)
        scores.append(0.5 if t == pt else outcome(d, epsilon))
    wins, ties, losses = scores.count(1.0), scores.count(0.5), scores.count(0.0)
    return VariantResult(
        name=name,
        stages=stages,
        n=n,
        wins=wins,
        ties=ties,
        losses=losses,
        win_rate=(wins + 0.5 * ties) / n,
        mean_gain=sum(gains) / n,
        mean_reward=sum(sum(r) / len(r) for r in rewards) / n,
        ms_per_prompt=ms_per_prompt,
        stage_stats=stage_stats or [],
        mean_words=sum(_words(x) for t in texts for x in t) / sum(len(t) for t in texts),
        win_rate_ci=win_rate_interval(scores),
        gain_ci=mean_interval(gains),
        refusal_rate=refusal_rate(x for t in texts for x in t),
    )


def judge_answers(
    judge: Judge,
    msgs: list[list[Message]],
    texts: dict[str, list[list[str]]],
    rows: list[dict[str, Any]],
    traces: dict[str, list[list[list[dict[str, Any]]]]],
    *,
    epsilon: float,
    control: bool,
    progress: bool,
    head: dict[str, Any],
    sources: Sequence[str | None] = (),
) -> EvalReport:
    """Score the answers (``texts[variant][i][k]``: prompt i, repeat k; ``PLAIN`` among the variants) and
    build the report.

    ``rows`` holds, per compared variant in order, its ``name``, ``stages``, ``ms_per_prompt`` and
    ``stage_stats``; ``head`` the report's descriptive fields; ``sources`` each prompt's source (kept in the
    samples). Each distinct (prompt, answer) is scored once.
    """
    firsts = [[first_sentence(t) for t in ts] for ts in texts[PLAIN]] if control else []
    keys: dict[tuple[int, str], int] = {}
    items: list[tuple[list[dict[str, str]], str]] = []
    for answers in [*texts.values(), firsts]:
        for i, ts in enumerate(answers):
            for t in ts:
                if (i, t) not in keys:
                    keys[(i, t)] = len(items)
                    items.append(([m.model_dump() for m in msgs[i]], t))
    if "progress" in inspect.signature(judge.score_batch).parameters:
        scores = judge.score_batch(items, progress=progress)  # type: ignore[call-arg]
    else:
        scores = judge.score_batch(items)
    if len(scores) != len(items):
        raise AlignwareError(f"the judge returned {len(scores)} scores for {len(items)} answers")
    reward = {k: float(scores[j]) for k, j in keys.items()}

    def rewards(answers: list[list[str]]) -> list[list[float]]:
        return [[reward[(i, t)] for t in ts] for i, ts in enumerate(answers)]

    plain_texts = texts[PLAIN]
    plain_r = rewards(plain_texts)
    n = len(msgs)
    results = [_compare(r["name"], r["stages"], texts[r["name"]], rewards(texts[r["name"]]), plain_texts, plain_r, epsilon,
                        ms_per_prompt=r["ms_per_prompt"], stage_stats=r["stage_stats"]) for r in rows]
    controls = [_compare(CONTROL, [], firsts, rewards(firsts), plain_texts, plain_r, epsilon)] if control else []
    repeats = head.get("repeats", 1)
    samples = []
    for i, m in enumerate(msgs):
        row: dict[str, Any] = {"prompt": [x.model_dump() for x in m], "answers": {}}
        if i < len(sources) and sources[i] is not None:
            row["source"] = sources[i]
        for name, answers in texts.items():
            rs = [reward[(i, t)] for t in answers[i]]
            # the first run's answer and trace; with repeats, the mean reward and every run
            entry: dict[str, Any] = {"text": answers[i][0], "reward": sum(rs) / len(rs), "trace": traces[name][i][0]}
            if repeats > 1:
                entry["runs"] = [{"text": t, "reward": r, "trace": tr} for t, r, tr in zip(answers[i], rs, traces[name][i])]
            row["answers"][name] = entry
        samples.append(row)
    return EvalReport(
        variants=results,
        plain_mean_reward=sum(sum(r) / len(r) for r in plain_r) / n,
        plain_mean_words=sum(_words(t) for ts in plain_texts for t in ts) / sum(len(ts) for ts in plain_texts),
        plain_refusal_rate=refusal_rate(t for ts in plain_texts for t in ts),
        controls=controls,
        n_prompts=n,
        epsilon=epsilon,
        samples=samples,
        **head,
    )


def rejudge(report: "str | Path | EvalReport | dict[str, Any]", judge: JudgeLike, *, epsilon: float | None = None, progress: bool = False) -> EvalReport:
    """Score the answers of an earlier ``evaluate_pipeline`` report with another judge, without generating
    again: a second opinion costs only the scoring. Latencies and stage counts are kept from the report.

    Args:
        report: a ``report.json`` written by ``EvalReport.write``, its dict, or an ``EvalReport``.
        judge: a reward model folder, or any object with ``score_batch``.
        epsilon: tie threshold (default: the report's).
    """
    where = str(report) if isinstance(report, (str, Path)) else "report"
    if isinstance(report, EvalReport):
        data = report.to_dict()
    elif isinstance(report, dict):
        data = report
    else:
        try:
            data = json.loads(Path(report).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{report}: no such report (write one with alignware eval --out DIR)") from None
        except (OSError, ValueError) as e:
            raise InputError(f"{report}: not a readable JSON report: {e}") from None
    try:
        samples = data["samples"]
        rows = [
            dict(name=v["name"], stages=list(v["stages"]), ms_per_prompt=float(v["ms_per_prompt"]),
                 stage_stats=[StageStats(**st) for st in v["stage_stats"]])
            for v in data["variants"]
        ]
        names = [PLAIN] + [r["name"] for r in rows]
        if not samples:
            raise InputError(f"{where}: the report holds no samples to judge")
        msgs: list[list[Message]] = []
        sources: list[str | None] = []
        texts: dict[str, list[list[str]]] = {name: [] for name in names}
        traces: dict[str, list[list[list[dict[str, Any]]]]] = {name: [] for name in names}
        repeats = int(data.get("repeats", 1))
        for i, smp in enumerate(samples):
            msgs.append(to_messages(smp["prompt"]))
            sources.append(smp.get("source"))
            for name in names:
                if name not in smp["answers"]:
                    raise InputError(f"{where}: samples[{i}].answers: no answer of variant {name!r}")
                a = smp["answers"][name]
                runs = a["runs"] if repeats > 1 else [a]
                if len(runs) != repeats:
                    raise InputError(f"{where}: samples[{i}].answers.{name}: {len(runs)} runs, the report says repeats={repeats}")
                texts[name].append([r["text"] for r in runs])
                traces[name].append([r.get("trace", []) for r in runs])
        head = {k: data[k] for k in ("plain_ms_per_prompt", "seed", "llm", "pipeline")}
        head["repeats"] = repeats
    except KeyError as e:
        raise InputError(f"{where}: not an alignware eval report (missing field {e})") from None
    head["judge"] = judge_name(judge)
    return judge_answers(
        load_judge(judge),
        msgs,
        texts,
        rows,
        traces,
        epsilon=data.get("epsilon", DEFAULT_EPSILON) if epsilon is None else epsilon,
        control=bool(data.get("controls")),
        progress=progress,
        head=head,
        sources=sources,
    )
