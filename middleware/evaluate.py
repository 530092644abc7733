"""Evaluation harness: does each stage make answers better, by a reward-model judge?

For every prompt it generates the plain answer (the pipeline's LLM, no stages), the answer with each stage
alone, and the answer through the whole chain; the judge scores each answer against the original prompt.
Per variant it reports the judge's win rate against the plain answer (ties count half: equal texts, or
rewards within ``epsilon``) with its 95% confidence interval over the prompts, the mean reward gain, the
latency of each stage (from the traces) and how often each stage modified, passed, failed or skipped.

One answer per prompt is a noisy measurement: a single changed word in a prompt can move a judge's reward by
more than a good rewrite gains. ``repeats=K`` (``--repeats K``) runs every variant K times per prompt with
seeds ``seed`` … ``seed+K-1`` and compares the mean rewards per prompt; sampling stages (and a sampling LLM,
``defaults: {temperature: ...}``) then give K different answers to average.

Python::

    report = evaluate_pipeline("pipeline.yaml", "prompts.jsonl", "runs/rm", limit=20, seed=0)
    print(report.to_markdown()); report.write("runs/eval")
    pairwise_accuracy("runs/rm", "pairs.jsonl")

Command line::

    alignware eval --pipeline CONFIG --prompts FILE --judge DIR [--limit N] [--seed S] [--repeats K] [--out DIR]
    alignware eval --judge DIR --pairs FILE [--limit N] [--out DIR]
    alignware eval --rejudge runs/eval/report.json --judge OTHER_DIR --out DIR   # same answers, another judge
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence, Union, runtime_checkable

from .errors import AlignwareError, CheckpointError, InputError
from .llm import LLM
from .pipeline import Pipeline
from .stages import Stage
from .types import ChatResponse, Message, MessagesLike, PreferencePair, PromptRecord, StageTrace, load_pairs, load_prompts, to_messages

if TYPE_CHECKING:  # pragma: no cover
    from .config import PipelineConfig

VERDICTS = ("modified", "passed", "failed", "skipped")
PLAIN = "plain"
CHAIN = "pipeline"
DEFAULT_EPSILON = 1e-4  # rewards closer than this tie


@runtime_checkable
class Judge(Protocol):
    """Anything that scores (prompt, response) items; ``steering.reward.RewardModel`` is one."""

    def score_batch(self, items: Sequence[tuple[Any, str]]) -> list[float]: ...


JudgeLike = Union[Judge, str, Path]
PipelineLike = Union[Pipeline, "PipelineConfig", dict, str, Path]
PromptsLike = Union[str, Path, Sequence[Union[PromptRecord, PreferencePair, MessagesLike]]]


def load_judge(judge: JudgeLike) -> Judge:
    """A judge object, or a reward model folder loaded with ``RewardModel.load`` (``CheckpointError``)."""
    if isinstance(judge, (str, Path)):
        from steering.reward import RewardModel

        return RewardModel.load(judge)
    if not hasattr(judge, "score_batch"):
        raise InputError(f"judge must be a reward model folder or have score_batch(items), got {type(judge).__name__}")
    return judge


def judge_name(judge: JudgeLike) -> str:
    """How a report names its judge: the folder, or the judge object's class."""
    return str(judge) if isinstance(judge, (str, Path)) else type(judge).__name__


def _prompt_list(prompts: PromptsLike, limit: int | None) -> tuple[list[list[Message]], list[str | None]]:
    """The conversations to answer, and each one's ``source`` (``None`` where the row has none)."""
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if isinstance(prompts, (str, Path)):
        rows: Sequence[Any] = load_prompts(prompts, limit=limit)
        if not rows:
            raise InputError(f"{prompts}: no prompts")
    else:
        rows = list(prompts)[:limit] if limit is not None else list(prompts)
    out, sources = [], []
    for i, r in enumerate(rows):
        msgs = r.prompt if isinstance(r, (PromptRecord, PreferencePair)) else to_messages(r)
        if not msgs or msgs[-1].role != "user":
            raise InputError(f"prompts[{i}]: the last message must be the user's")
        out.append(list(msgs))
        sources.append(getattr(r, "source", None))
    return out, sources


def _parts(config: PipelineLike, llm: LLM | None) -> tuple[LLM, list[Stage], dict[str, Any], str]:
    """(llm, stages, defaults, description) of a pipeline, a config object, a dict or a config file."""
    if isinstance(config, Pipeline):
        return (llm or config.llm), list(config.stages), dict(config.defaults), repr(config)
    from .config import PipelineConfig

    cfg = PipelineConfig.load(config)
    return (llm or cfg.build_llm()), cfg.build_stages(), dict(cfg.defaults), cfg.source or "config"


# -- results ----------------------------------------------------------------------------------
@dataclass
class StageStats:
    """What one stage did within one variant."""

    stage: str
    kind: str
    mean_latency_ms: float
    max_latency_ms: float
    modified: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class VariantResult:
    """One variant (a stage alone, or the whole chain) against the plain answer."""

    name: str
    stages: list[str]
    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float
    mean_gain: float
    mean_reward: float
    ms_per_prompt: float
    stage_stats: list[StageStats] = field(default_factory=list)
    mean_words: float = 0.0
    #: 95% confidence interval of ``win_rate`` over the prompts (:func:`win_rate_interval`).
    win_rate_ci: tuple[float, float] = (0.0, 1.0)
    #: 95% confidence interval of ``mean_gain`` over the prompts (normal approximation); ``None`` for one prompt.
    #: It uses the size of each gain, so it can separate a stage from the plain answer sooner than the win rate.
    gain_ci: tuple[float, float] | None = None


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float] | None:
    """The confidence interval of a mean: mean ± z × the standard error (sample standard deviation / √n);
    ``None`` for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    se = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1) / n)
    return (m - z * se, m + z * se)


def win_rate_interval(scores: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """The confidence interval of the win rate, the mean of per-prompt scores (1 win, 0.5 tie, 0 loss).

    Normal approximation (mean ± z × sample standard deviation / √n) after adding one win and one loss,
    as the Agresti–Coull interval does for a proportion: a few prompts with the same outcome (2 wins of
    2) do not give a zero-width interval, and with many prompts the added pair hardly matters. Clipped
    to [0, 1]; ``(0, 1)`` with no scores."""
    if not scores:
        return (0.0, 1.0)
    ci = mean_interval([*scores, 1.0, 0.0], z)
    assert ci is not None
    return (max(0.0, ci[0]), min(1.0, ci[1]))


@dataclass
class EvalReport:
    """Results of ``evaluate_pipeline``: per-variant rows, the plain baseline and every sample."""

    variants: list[VariantResult]
    plain_mean_reward: float
    plain_ms_per_prompt: float
    n_prompts: int
    seed: int
    epsilon: float
    llm: str
    pipeline: str
    judge: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    plain_mean_words: float = 0.0
    #: Baselines computed from the plain answers without generating: ``first sentence`` keeps each plain
    #: answer's first sentence. A judge that rewards brevity gives it a win rate for free; a stage that
    #: shortens answers should beat it before its own win rate means much.
    controls: list[VariantResult] = field(default_factory=list)
    #: Runs per prompt and variant (seeds ``seed`` … ``seed+repeats-1``); wins compare the mean rewards.
    repeats: int = 1

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; have {[v.name for v in self.variants]}")

    def to_dict(self) -> dict[str, Any]:
        """The report's fields, plus ``by_source``: ``{source: {variant: {"wins", "ties", "losses"}}}``."""
        d = asdict(self)
        d["by_source"] = {src: {v: dict(zip(("wins", "ties", "losses"), wtl)) for v, wtl in g.items()} for src, g in self.by_source().items()}
        return d

    def by_source(self) -> dict[str, dict[str, tuple[int, int, int]]]:
        """Wins, ties and losses against the plain answer per prompt source (a row's ``source``, such as
        ``vicuna_eval/coding``) and variant: where a stage helps and where it hurts. Prompts without a
        source are grouped under ``"(none)"``; the mean rewards per prompt decide, as in the totals."""
        out: dict[str, dict[str, tuple[int, int, int]]] = {}
        for smp in self.samples:
            group = out.setdefault(str(smp.get("source") or "(none)"), {})
            plain = smp["answers"][PLAIN]["reward"]
            for v in self.variants:
                score = _score(smp["answers"][v.name]["reward"] - plain, self.epsilon)
                w, t, l = group.get(v.name, (0, 0, 0))
                group[v.name] = (w + (score == 1.0), t + (score == 0.5), l + (score == 0.0))
        return dict(sorted(out.items()))

    def to_markdown(self) -> str:
        lines = [
            f"Judge: `{self.judge}` · LLM: `{self.llm}` · {self.n_prompts} prompts · "
            f"{'seed ' + str(self.seed) if self.repeats == 1 else f'seeds {self.seed}-{self.seed + self.repeats - 1} (mean of {self.repeats} runs per prompt)'} · "
            f"plain answer: mean reward {self.plain_mean_reward:+.3f}, {self.plain_mean_words:.0f} words, "
            f"{self.plain_ms_per_prompt:.0f} ms/prompt",
            "",
            "| variant | stages | win rate vs plain | W / T / L | 95% CI | mean reward gain | 95% CI | mean reward | words | ms/prompt |",
            "| --- | --- | ---: | :---: | :---: | ---: | :---: | ---: | ---: | ---: |",
        ]
        for v in self.variants + self.controls:
            lines.append(
                f"| {v.name} | {', '.join(v.stages) or '(none)'} | {v.win_rate:.1%} | {v.wins} / {v.ties} / {v.losses} | "
                f"{v.win_rate_ci[0]:.0%}-{v.win_rate_ci[1]:.0%} | {v.mean_gain:+.3f} | "
                f"{'-' if v.gain_ci is None else f'{v.gain_ci[0]:+.3f} to {v.gain_ci[1]:+.3f}'} | "
                f"{v.mean_reward:+.3f} | {v.mean_words:.0f} | {v.ms_per_prompt:.0f} |"
            )
        lines += [
            "",
            "| variant | stage | kind | mean ms | max ms | modified | passed | failed | skipped |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in self.variants:
            for s in v.stage_stats:
                lines.append(
                    f"| {v.name} | {s.stage} | {s.kind} | {s.mean_latency_ms:.1f} | {s.max_latency_ms:.1f} | "
                    f"{s.modified} | {s.passed} | {s.failed} | {s.skipped} |"
                )
        groups = self.by_source()
        if len(groups) > 1:
            shown: list[str] = []  # a chain of one stage is that stage's column already
            for v in self.variants:
                if all(v.stages != self.variant(n).stages for n in shown):
                    shown.append(v.name)
            lines += ["", "| source | prompts | " + " | ".join(f"{n}: win rate (W / T / L)" for n in shown) + " |",
                      "| --- | ---: | " + " | ".join("---:" for _ in shown) + " |"]
            for src, g in groups.items():
                cells = []
                for n in shown:
                    w, t, l = g[n]
                    cells.append(f"{(w + 0.5 * t) / (w + t + l):.0%} ({w} / {t} / {l})")
                lines.append(f"| {src} | {sum(g[shown[0]])} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """A bar chart: win rate vs plain (50% line) and mean reward gain, per variant."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.variants + self.controls
        names = [v.name for v in rows]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) + 4), 4))
        rates = [100 * v.win_rate for v in rows]
        err = [[r - 100 * v.win_rate_ci[0] for r, v in zip(rates, rows)], [100 * v.win_rate_ci[1] - r for r, v in zip(rates, rows)]]
        a1.bar(names, rates, yerr=err, capsize=4, color=["tab:gray" if v in self.controls else "tab:blue" for v in rows])
        a1.axhline(50, color="gray", linestyle="--", linewidth=1)
        a1.set_ylim(0, 100)
        a1.set_ylabel("judge win rate vs plain (%)")
        gains = [v.mean_gain for v in rows]
        gerr = [[0.0 if v.gain_ci is None else g - v.gain_ci[0] for g, v in zip(gains, rows)],
                [0.0 if v.gain_ci is None else v.gain_ci[1] - g for g, v in zip(gains, rows)]]
        a2.bar(names, gains, yerr=gerr, capsize=4, color=["tab:green" if g >= 0 else "tab:red" for g in gains])
        a2.axhline(0, color="gray", linewidth=1)
        a2.set_ylabel("mean reward gain")
        for ax in (a1, a2):
            ax.tick_params(axis="x", rotation=20)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{self.n_prompts} prompts, judge {Path(self.judge).name}")
        from .training import save_figure

        return save_figure(fig, path)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "report.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        paths["markdown"].write_text(self.to_markdown() + "\n", encoding="utf-8")
        self.plot(paths["png"])
        return paths


# -- running ----------------------------------------------------------------------------------
@contextlib.contextmanager
def decode_threads(n: int = 1) -> Iterator[None]:
    """Run local generation with ``n`` torch threads on CPU. Token-by-token decoding runs tiny kernels:
    one thread avoids oversubscribing a CPU that other processes share (measured 3-9x faster than two
    threads for SmolLM2-135M on a busy 2-core machine)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _run_variant(
    pipe: Pipeline, msgs: list[list[Message]], params: dict[str, Any], seed: int, threads: int = 1
) -> tuple[list[ChatResponse], float]:
    """One run of a variant: every request and the global RNGs seeded with ``seed``."""
    _seed_all(seed)
    t0 = time.perf_counter()
    with decode_threads(threads):
        out = pipe.batch(msgs, **params, seed=seed)
    return out, time.perf_counter() - t0


CONTROL = "control: first sentence"
_FIRST_SENTENCE = re.compile(r"\s*(.+?[.!?])(?=\s|$)", re.DOTALL)


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to the first ``.``, ``!`` or ``?`` followed by a space or the end);
    the whole text when it has no such end."""
    m = _FIRST_SENTENCE.match(text)
    return m.group(1) if m else text


def _words(text: str) -> int:
    return len(text.split())


def _score(gain: float, epsilon: float) -> float:
    """A prompt's outcome against the plain answer: 1 a win, 0.5 a tie (within ``epsilon``), 0 a loss."""
    return 0.5 if abs(gain) <= epsilon else 1.0 if gain > 0 else 0.0


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
        scores.append(0.5 if t == pt else _score(d, epsilon))
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
    )


def _trace_row(t: StageTrace) -> dict[str, Any]:
    """A trace entry for the report: what a prompt stage made of the prompt is kept (it explains the
    answer); a response stage's before/after are the answers already in the report."""
    row = t.model_dump(exclude={"before", "after"})
    if t.kind == "prompt" and t.verdict == "modified" and t.after is not None:
        row["rewritten_prompt"] = t.after
    return row


def _stage_stats(responses: Sequence[ChatResponse], stages: Sequence[Stage]) -> list[StageStats]:
    by_name: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    for r in responses:
        for t in r.trace:
            by_name.setdefault(t.stage, []).append(t)
            kinds[t.stage] = t.kind
    order = [s.name for s in stages] + [n for n in by_name if n not in {s.name for s in stages}]
    out = []
    for name in dict.fromkeys(order):
        ts = by_name.get(name, [])
        counts = Counter(t.verdict for t in ts)
        lat = [t.latency_ms for t in ts]
        out.append(
            StageStats(
                stage=name,
                kind=kinds.get(name, next((s.kind for s in stages if s.name == name), "?")),
                mean_latency_ms=sum(lat) / len(lat) if lat else 0.0,
                max_latency_ms=max(lat) if lat else 0.0,
                failures=sorted({t.reason or "" for t in ts if t.verdict == "failed"})[:5],
                **{v: counts.get(v, 0) for v in VERDICTS},
            )
        )
    return out


def evaluate_pipeline(
    config: PipelineLike,
    prompts: PromptsLike,
    judge: JudgeLike,
    *,
    limit: int | None = None,
    seed: int = 0,
    max_tokens: int | None = None,
    epsilon: float = DEFAULT_EPSILON,
    llm: LLM | None = None,
    per_stage: bool = True,
    progress: bool = True,
    threads: int = 1,
    control: bool = True,
    repeats: int = 1,
) -> EvalReport:
    """Judge each stage alone and the whole chain against the plain answer.

    Args:
        config: a ``Pipeline``, a ``PipelineConfig``, a config dict, or a YAML/JSON config file.
        prompts: a prompts file (prompt-only or pair rows), or a list of prompts (strings, message lists,
            ``PromptRecord``s or ``PreferencePair``s).
        judge: a reward model folder, or any object with ``score_batch([(prompt, response), ...])``.
        limit: use the first N prompts.
        seed: seeds every request (``ChatRequest.seed``) and the global RNGs before each variant.
        repeats: run every variant this many times per prompt (seeds ``seed`` … ``seed+repeats-1``) and
            compare mean rewards: less noise from sampling stages or a sampling LLM, ``repeats`` × the cost.
            Stage counts then add up over the repeats. A variant whose LLM and stages all report themselves
            deterministic (``LLM.deterministic``, ``Stage.deterministic``: greedy decoding of a local model, a
            greedy rewriter) is generated once and used for every run; its stage counts are then repeated too.
        max_tokens: answer length (default: the pipeline's defaults, else the backend's).
        epsilon: rewards closer than this count as a tie.
        llm: use this LLM instead of the config's (the plain answer comes from it too).
        per_stage: also run each stage alone (otherwise only the whole chain).
        control: also judge the ``first sentence`` control (each plain answer cut to its first sentence;
            no generation), which shows how much a judge rewards mere brevity.
        threads: torch CPU threads while generating. 1 (the default) suits small batches and a machine
            other jobs share; on an idle machine, large batches run faster with one thread per core.
    """
    from tqdm.auto import tqdm

    the_llm, stages, defaults, desc = _parts(config, llm)
    judge_obj = load_judge(judge)
    msgs, sources = _prompt_list(prompts, limit)
    if not msgs:
        raise InputError("no prompts to evaluate")
    if repeats < 1:
        raise InputError(f"repeats must be 1 or more, got {repeats!r}")
    params: dict[str, Any] = {}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens

    names: list[str] = []
    for st in stages:
        base, k = st.name, 2
        name = base
        while name in names or name in (PLAIN, CHAIN):
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    variants: list[tuple[str, list[Stage]]] = [(PLAIN, [])]
    if per_stage:
        variants += [(n, [s]) for n, s in zip(names, stages)]
    variants.append((CHAIN, list(stages)))

    # answers[variant][k][i]: repeat k's response to prompt i
    answers: dict[str, list[list[ChatResponse]]] = {}
    wall: dict[str, float] = {}
    bar = tqdm(variants, desc="generating", unit="variant", disable=not progress)
    for name, sts in bar:
        bar.set_postfix_str(name)
        same = next((n for n, s in variants if n in answers and [id(x) for x in s] == [id(x) for x in sts]), None)
        if same is not None:
            answers[name], wall[name] = answers[same], wall[same]
            continue
        pipe = Pipeline(the_llm, sts, defaults=defaults)
        answers[name], wall[name] = [], 0.0
        # a variant that cannot change between seeds (greedy stages, greedy local decoding) is generated once
        once = (
            repeats > 1
            and all(st.deterministic() for st in sts)
            and all(the_llm.deterministic(pipe._request(m, {**params, "seed": seed})) for m in msgs)
        )
        for k in range(1 if once else repeats):
            out, secs = _run_variant(pipe, msgs, params, seed + k, threads)
            answers[name].append(out)
            wall[name] += secs
    bar.close()
    # per variant: the runs it made (1 or ``repeats``), and its answers to every repeat
    made = {name: len(runs) for name, runs in answers.items()}
    answers = {name: runs * (repeats // len(runs)) for name, runs in answers.items()}

    return _judge(
        judge_obj,
        msgs,
        {name: [[run[i].text for run in answers[name]] for i in range(len(msgs))] for name, _ in variants},
        [
            dict(
                name=name,
                stages=[names[stages.index(s)] if s in stages else s.name for s in sts],
                ms_per_prompt=1000.0 * wall[name] / (len(msgs) * made[name]),
                stage_stats=_stage_stats([r for run in answers[name] for r in run], sts),
            )
            for name, sts in variants[1:]
        ],
        {name: [[[_trace_row(t) for t in run[i].trace] for run in answers[name]] for i in range(len(msgs))] for name, _ in variants},
        epsilon=epsilon,
        control=control,
        progress=progress,
        sources=sources,
        head=dict(
            plain_ms_per_prompt=1000.0 * wall[PLAIN] / (len(msgs) * made[PLAIN]),
            seed=seed,
            repeats=repeats,
            llm=getattr(the_llm, "name", type(the_llm).__name__),
            pipeline=desc,
            judge=judge_name(judge),
        ),
    )


def _judge(
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
    return _judge(
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


def pair_margins(judge: JudgeLike, pairs: "str | Path | Sequence[PreferencePair]", *, limit: int | None = None, batch_size: int = 16, progress: bool = False) -> list[float]:
    """``reward(chosen) − reward(rejected)`` for each pair."""
    judge_obj = load_judge(judge)
    rows = load_pairs(pairs, limit=limit) if isinstance(pairs, (str, Path)) else list(pairs)[:limit] if limit else list(pairs)
    if not rows:
        raise InputError(f"{pairs if isinstance(pairs, (str, Path)) else 'pairs'}: no preference pairs")
    if hasattr(judge_obj, "pair_margins"):
        return list(judge_obj.pair_margins(rows, batch_size=batch_size, progress=progress))  # type: ignore[attr-defined]
    items = [(p.prompt, p.chosen) for p in rows] + [(p.prompt, p.rejected) for p in rows]
    s = judge_obj.score_batch(items)
    return [s[i] - s[i + len(rows)] for i in range(len(rows))]


def pairwise_accuracy(
    judge: JudgeLike,
    pairs: "str | Path | Sequence[PreferencePair]",
    *,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    epsilon: float = 0.0,
) -> float:
    """Share of labelled pairs where the judge scores ``chosen`` above ``rejected``; margins within
    ``epsilon`` of zero are ties and count half."""
    return _accuracy(pair_margins(judge, pairs, limit=limit, batch_size=batch_size, progress=progress), epsilon)


def _accuracy(margins: Sequence[float], epsilon: float) -> float:
    return sum(1.0 if x > epsilon else 0.0 if x < -epsilon else 0.5 for x in margins) / len(margins)


# -- command line -----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alignware eval",
        description="Judge a pipeline's stages against the plain answer with a reward model, or measure a "
        "reward model's accuracy on labelled pairs (--pairs without --pipeline).",
    )
    p.add_argument("--pipeline", help="pipeline config (YAML/JSON)")
    p.add_argument("--prompts", help="prompts (JSONL: prompt-only rows or preference pairs)")
    p.add_argument("--judge", required=True, help="reward model folder (alignware train reward --out DIR)")
    p.add_argument("--pairs", help="labelled pairs: report the judge's pairwise accuracy")
    p.add_argument("--rejudge", metavar="REPORT", help="score the answers of an earlier report.json with --judge (no generation)")
    p.add_argument("--limit", type=int, help="use the first N prompts / pairs")
    p.add_argument("--seed", type=int, default=None, help="generation seed (default 0)")
    p.add_argument("--repeats", type=int, default=None, metavar="K",
                   help="run each variant K times per prompt (seeds SEED..SEED+K-1) and compare mean rewards (default 1)")
    p.add_argument("--max-tokens", type=int, help="answer length (default: the config's defaults)")
    p.add_argument("--epsilon", type=float, default=None,
                   help=f"rewards closer than this tie (default {DEFAULT_EPSILON:g}; with --rejudge the report's; with --pairs 0)")
    p.add_argument("--no-per-stage", action="store_true", help="only the whole chain, not each stage alone")
    p.add_argument("--no-control", action="store_true", help="leave out the first-sentence control row")
    p.add_argument("--out", default="runs/eval", help="where to write report.json/.md/.png (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while generating (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """``alignware eval ...``: returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads must be 1 or more, got {args.threads}", file=sys.stderr)
        return 2
    if args.repeats is not None and args.repeats < 1:
        print(f"error: --repeats must be 1 or more, got {args.repeats}", file=sys.stderr)
        return 2
    if args.epsilon is not None and args.epsilon < 0:
        print(f"error: --epsilon must be 0 or more, got {args.epsilon}", file=sys.stderr)
        return 2
    try:
        if args.rejudge:
            if args.pipeline or args.prompts or args.pairs:
                print("error: --rejudge takes the answers from the report: leave out --pipeline, --prompts and --pairs", file=sys.stderr)
                return 2
            generation = {"--limit": args.limit, "--seed": args.seed, "--repeats": args.repeats, "--max-tokens": args.max_tokens,
                          "--no-per-stage": args.no_per_stage or None, "--no-control": args.no_control or None}
            given = [flag for flag, value in generation.items() if value is not None]
            if given:
                print(f"error: --rejudge scores the report's answers as they are; {', '.join(given)} "
                      "only apply when answers are generated", file=sys.stderr)
                return 2
            report = rejudge(args.rejudge, args.judge, epsilon=args.epsilon, progress=not args.quiet)
            print(report.to_markdown())
            paths = report.write(args.out)
            print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['png']}")
            return 0
        if args.pipeline is None:
            if not args.pairs:
                print("error: give --pipeline CONFIG --prompts FILE, or --pairs FILE for pairwise accuracy", file=sys.stderr)
                return 2
            margins = pair_margins(args.judge, args.pairs, limit=args.limit, progress=not args.quiet)
            epsilon = args.epsilon or 0.0
            acc = _accuracy(margins, epsilon)
            out = {"judge": args.judge, "pairs": args.pairs, "n": len(margins), "accuracy": acc,
                   "mean_margin": sum(margins) / len(margins), "epsilon": epsilon}
            print(f"pairwise accuracy of {args.judge} on {args.pairs}: {acc:.3f} ({len(margins)} pairs, mean margin {out['mean_margin']:+.3f})")
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "pairwise.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
            return 0
        prompts = args.prompts or args.pairs
        if not prompts:
            print("error: --pipeline needs --prompts FILE", file=sys.stderr)
            return 2
        report = evaluate_pipeline(
            args.pipeline,
            prompts,
            args.judge,
            limit=args.limit,
            seed=0 if args.seed is None else args.seed,
            max_tokens=args.max_tokens,
            epsilon=DEFAULT_EPSILON if args.epsilon is None else args.epsilon,
            per_stage=not args.no_per_stage,
            progress=not args.quiet,
            threads=args.threads,
            control=not args.no_control,
            repeats=args.repeats or 1,
        )
    except (InputError, CheckpointError, AlignwareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InputError) else 1
    print(report.to_markdown())
    paths = report.write(args.out)
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['png']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
