"""Scoring the answers: each distinct (prompt, answer) judged once by every judge, every variant and
control compared with the plain answer, refusals counted and similarity to reference answers measured, the
report built; ``rejudge`` does it again for an earlier report."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..errors import AlignwareError, InputError
from ..types import Message, PreferencePair, to_messages
from .controls import CONTROL, SAFETY_CONTROL, first_sentence
from .judges import Judge, JudgeLike, PanelJudge, load_panel
from .refusals import refusal_rate
from .report import PLAIN, EvalReport, JudgeResult, StageStats, VariantResult, Verdict
from .similarity import ReferenceSimilarity
from .stats import DEFAULT_EPSILON, mean_interval, outcome, win_rate_interval

__all__ = ["CONTROL", "SAFETY_CONTROL", "first_sentence", "judge_answers", "rejudge"]

Answers = list[list[str]]  # [prompt i][repeat k]
Rewards = list[list[float]]


def _words(text: str) -> int:
    return len(text.split())


def _verdict(texts: Answers, rewards: Rewards, plain_texts: Answers, plain_rewards: Rewards, epsilon: float) -> Verdict:
    """Wins, ties and losses of ``texts`` against the plain answers. Each prompt holds the answers of every
    repeat; the mean rewards decide, and equal answers (every repeat) or mean rewards within ``epsilon`` tie."""
    n = len(texts)
    gains, scores = [], []
    for t, r, pt, pr in zip(texts, rewards, plain_texts, plain_rewards):
        d = 0.0 if t == pt else sum(r) / len(r) - sum(pr) / len(pr)
        gains.append(d)
        scores.append(0.5 if t == pt else outcome(d, epsilon))
    wins, ties, losses = scores.count(1.0), scores.count(0.5), scores.count(0.0)
    return Verdict(
        wins=wins, ties=ties, losses=losses, win_rate=(wins + 0.5 * ties) / n, mean_gain=sum(gains) / n,
        mean_reward=sum(sum(r) / len(r) for r in rewards) / n, win_rate_ci=win_rate_interval(scores), gain_ci=mean_interval(gains),
    )


def _rewards(reward: dict[tuple[int, str], float], answers: Answers) -> Rewards:
    return [[reward[(i, t)] for t in ts] for i, ts in enumerate(answers)]


class _Similarity:
    """Mean similarity of each prompt's answers to its reference (prompts without one left out)."""

    def __init__(self, references: Sequence[str | None]) -> None:
        self.measure = ReferenceSimilarity(references) if any(r is not None for r in references) else None
        self.n = sum(r is not None for r in references)

    def per_prompt(self, i: int, answers: list[str]) -> float | None:
        if self.measure is None or not self.measure.has_reference(i):
            return None
        return sum(self.measure(i, t) for t in answers) / len(answers)

    def summary(self, texts: Answers) -> tuple[float | None, tuple[float, float] | None]:
        values = [x for i, ts in enumerate(texts) if (x := self.per_prompt(i, ts)) is not None]
        if not values:
            return None, None
        return sum(values) / len(values), mean_interval(values)


def _score_all(judge: Judge, items: list[tuple[list[dict[str, str]], str]], progress: bool) -> list[float]:
    if "progress" in inspect.signature(judge.score_batch).parameters:
        scores = judge.score_batch(items, progress=progress)  # type: ignore[call-arg]
    else:
        scores = judge.score_batch(items)
    if len(scores) != len(items):
        raise AlignwareError(f"the judge returned {len(scores)} scores for {len(items)} answers")
    return [float(x) for x in scores]


def _samples(
    msgs: list[list[Message]], texts: dict[str, Answers], traces: dict[str, list[list[list[dict[str, Any]]]]],
    rewards: list[dict[tuple[int, str], float]], panel: list[PanelJudge], sim: _Similarity,
    sources: Sequence[str | None], references: Sequence[str | None], repeats: int,
) -> list[dict[str, Any]]:
    """The report's samples: per prompt, every variant's (first run's) answer, trace, mean reward (the first
    judge's; ``rewards`` by judge label with several), similarity to the reference, and with repeats every run."""
    out = []
    for i, m in enumerate(msgs):
        row: dict[str, Any] = {"prompt": [x.model_dump() for x in m], "answers": {}}
        if i < len(sources) and sources[i] is not None:
            row["source"] = sources[i]
        if i < len(references) and references[i] is not None:
            row["reference"] = references[i]
        for name, answers in texts.items():
            by_judge = [[rw[(i, t)] for t in answers[i]] for rw in rewards]
            entry: dict[str, Any] = {"text": answers[i][0], "reward": sum(by_judge[0]) / len(by_judge[0]), "trace": traces[name][i][0]}
            if len(panel) > 1:
                entry["rewards"] = {pj.label: sum(rs) / len(rs) for pj, rs in zip(panel, by_judge)}
            similarity = sim.per_prompt(i, answers[i])
            if similarity is not None:
                entry["similarity"] = similarity
            if repeats > 1 and name != SAFETY_CONTROL:  # the safety-suffix control is generated once
                entry["runs"] = []
                for k, (t, tr) in enumerate(zip(answers[i], traces[name][i])):
                    run: dict[str, Any] = {"text": t, "reward": by_judge[0][k], "trace": tr}
                    if len(panel) > 1:
                        run["rewards"] = {pj.label: rs[k] for pj, rs in zip(panel, by_judge)}
                    entry["runs"].append(run)
            row["answers"][name] = entry
        out.append(row)
    return out


def judge_answers(
    judges: "JudgeLike | Sequence[JudgeLike] | Sequence[PanelJudge]",
    msgs: list[list[Message]],
    texts: dict[str, Answers],
    rows: list[dict[str, Any]],
    traces: dict[str, list[list[list[dict[str, Any]]]]],
    *,
    epsilon: float,
    control: bool,
    progress: bool,
    head: dict[str, Any],
    sources: Sequence[str | None] = (),
    references: Sequence[str | None] = (),
    control_ms: dict[str, float] | None = None,
) -> EvalReport:
    """Score the answers (``texts[variant][i][k]``: prompt i, repeat k; ``PLAIN`` among the variants, and
    ``SAFETY_CONTROL`` when that control was generated) with every judge and build the report.

    ``judges``: one judge (a folder or an object with ``score_batch``), several, or a panel from
    ``load_panel``. ``rows`` holds, per compared variant in order, its ``name``, ``stages``,
    ``ms_per_prompt`` and ``stage_stats``; ``head`` the report's descriptive fields; ``sources`` and
    ``references`` each prompt's source and reference answer (``None`` where it has none); ``control_ms``
    the generation time per prompt of a generated control. Each distinct (prompt, answer) is scored once per
    judge.
    """
    panel = list(judges) if isinstance(judges, (list, tuple)) and all(isinstance(j, PanelJudge) for j in judges) else load_panel(judges)  # type: ignore[arg-type]
    texts = dict(texts)
    if control:
        texts[CONTROL] = [[first_sentence(t) for t in ts] for ts in texts[PLAIN]]
    keys: dict[tuple[int, str], int] = {}
    items: list[tuple[list[dict[str, str]], str]] = []
    for answers in texts.values():
        for i, ts in enumerate(answers):
            for t in ts:
                if (i, t) not in keys:
                    keys[(i, t)] = len(items)
                    items.append(([m.model_dump() for m in msgs[i]], t))
    rewards = []
    for pj in panel:
        scores = _score_all(pj.judge, items, progress)
        rewards.append({k: scores[j] for k, j in keys.items()})

    n = len(msgs)
    plain_texts = texts[PLAIN]
    compared: list[tuple[str, list[str], float, list[StageStats]]] = [(r["name"], r["stages"], r["ms_per_prompt"], r["stage_stats"]) for r in rows]
    controls: list[tuple[str, list[str], float, list[StageStats]]] = [
        (c, [], (control_ms or {}).get(c, 0.0), []) for c in (CONTROL, SAFETY_CONTROL) if c in texts]
    judged: list[JudgeResult] = []
    for pj, rw in zip(panel, rewards):
        plain_r = _rewards(rw, plain_texts)
        verdicts = {name: _verdict(texts[name], _rewards(rw, texts[name]), plain_texts, plain_r, epsilon) for name, *_ in compared + controls}
        judged.append(JudgeResult(pj.name, pj.label, sum(sum(r) / len(r) for r in plain_r) / n, verdicts, pj.accuracy))
    sim = _Similarity(references)

    def result(name: str, stages: list[str], ms: float, stats: list[StageStats]) -> VariantResult:
        similarity, similarity_ci = sim.summary(texts[name])
        return VariantResult(
            **asdict(judged[0].verdicts[name]), name=name, stages=stages, n=n, ms_per_prompt=ms, stage_stats=stats,
            mean_words=sum(_words(x) for t in texts[name] for x in t) / sum(len(t) for t in texts[name]),
            refusal_rate=refusal_rate(x for t in texts[name] for x in t), similarity=similarity, similarity_ci=similarity_ci,
        )

    plain_sim, plain_sim_ci = sim.summary(plain_texts)
    repeats = head.get("repeats", 1)
    return EvalReport(
        variants=[result(*c) for c in compared],
        plain_mean_reward=judged[0].plain_mean_reward,
        plain_mean_words=sum(_words(t) for ts in plain_texts for t in ts) / sum(len(ts) for ts in plain_texts),
        plain_refusal_rate=refusal_rate(t for ts in plain_texts for t in ts),
        controls=[result(*c) for c in controls],
        n_prompts=n,
        epsilon=epsilon,
        samples=_samples(msgs, {k: v for k, v in texts.items() if k != CONTROL}, traces, rewards, panel, sim, sources, references, repeats),
        judge=panel[0].name,
        judges=judged,
        n_references=sim.n,
        plain_similarity=plain_sim,
        plain_similarity_ci=plain_sim_ci,
        **head,
    )


def _load_report(report: "str | Path | EvalReport | dict[str, Any]") -> dict[str, Any]:
    if isinstance(report, EvalReport):
        return report.to_dict()
    if isinstance(report, dict):
        return report
    try:
        data = json.loads(Path(report).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{report}: no such report (write one with alignware eval --out DIR)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{report}: not a readable JSON report: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{report}: not an alignware eval report (a JSON {type(data).__name__}, not an object)")
    return data


def rejudge(
    report: "str | Path | EvalReport | dict[str, Any]",
    judge: "JudgeLike | Sequence[JudgeLike]",
    *,
    epsilon: float | None = None,
    progress: bool = False,
    judge_pairs: "str | Path | Sequence[PreferencePair] | None" = None,
) -> EvalReport:
    """Score the answers of an earlier ``evaluate_pipeline`` report with other judges, without generating
    again: a second opinion costs only the scoring. Latencies and stage counts are kept from the report.

    Args:
        report: a ``report.json`` written by ``EvalReport.write`` (of any version: one without the
            safety-suffix control or references is rejudged without them), its dict, or an ``EvalReport``.
        judge: a reward model folder or any object with ``score_batch``, or a list of them.
        epsilon: tie threshold (default: the report's).
        judge_pairs: labelled pairs to measure each judge's pairwise accuracy on (see ``load_panel``).
    """
    where = str(report) if isinstance(report, (str, Path)) else "report"
    data = _load_report(report)
    try:
        samples = data["samples"]
        rows = [
            dict(name=v["name"], stages=list(v["stages"]), ms_per_prompt=float(v["ms_per_prompt"]),
                 stage_stats=[StageStats(**st) for st in v["stage_stats"]])
            for v in data["variants"]
        ]
        if not samples:
            raise InputError(f"{where}: the report holds no samples to judge")
        names = [PLAIN] + [r["name"] for r in rows] + ([SAFETY_CONTROL] if SAFETY_CONTROL in samples[0]["answers"] else [])
        msgs: list[list[Message]] = []
        sources: list[str | None] = []
        references: list[str | None] = []
        texts: dict[str, Answers] = {name: [] for name in names}
        traces: dict[str, list[list[list[dict[str, Any]]]]] = {name: [] for name in names}
        repeats = int(data.get("repeats", 1))
        for i, smp in enumerate(samples):
            msgs.append(to_messages(smp["prompt"]))
            sources.append(smp.get("source"))
            references.append(smp.get("reference"))
            for name in names:
                if name not in smp["answers"]:
                    raise InputError(f"{where}: samples[{i}].answers: no answer of variant {name!r}")
                a = smp["answers"][name]
                # the safety-suffix control was generated once: its one answer stands for every repeat
                runs = a["runs"] if repeats > 1 and name != SAFETY_CONTROL else [a] * repeats
                if len(runs) != repeats:
                    raise InputError(f"{where}: samples[{i}].answers.{name}: {len(runs)} runs, the report says repeats={repeats}")
                texts[name].append([r["text"] for r in runs])
                traces[name].append([r.get("trace", []) for r in runs])
        head = {k: data[k] for k in ("plain_ms_per_prompt", "seed", "llm", "pipeline")}
        head["repeats"] = repeats
        control_ms = {c["name"]: float(c.get("ms_per_prompt", 0.0)) for c in data.get("controls", [])}
    except KeyError as e:
        raise InputError(f"{where}: not an alignware eval report (missing field {e})") from None
    return judge_answers(
        load_panel(judge, judge_pairs, progress=progress),
        msgs,
        texts,
        rows,
        traces,
        epsilon=data.get("epsilon", DEFAULT_EPSILON) if epsilon is None else epsilon,
        control=bool(data.get("controls")),
        progress=progress,
        head=head,
        sources=sources,
        references=references,
        control_ms=control_ms,
    )
