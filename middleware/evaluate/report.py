"""``EvalReport``: the results of an evaluation per variant and judge, and their renderings (Markdown,
JSON, plot; the Markdown and the plot are drawn by ``render``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .judges import JudgeAccuracy
from .render import markdown, plot
from .stats import outcome

PLAIN = "plain"
CHAIN = "pipeline"


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
class Verdict:
    """One judge's verdict on one variant against the plain answer (ties: equal answers, or mean rewards
    within the report's ``epsilon``)."""

    wins: int
    ties: int
    losses: int
    win_rate: float
    mean_gain: float
    mean_reward: float
    #: 95% confidence interval of ``win_rate`` over the prompts (:func:`win_rate_interval`).
    win_rate_ci: tuple[float, float] = (0.0, 1.0)
    #: 95% confidence interval of ``mean_gain`` over the prompts (normal approximation); ``None`` for one prompt.
    #: It uses the size of each gain, so it can separate a stage from the plain answer sooner than the win rate.
    gain_ci: tuple[float, float] | None = None

    def verdict(self) -> "Verdict":
        """The verdict alone (of a ``VariantResult``: its first judge's)."""
        return Verdict(**{f.name: getattr(self, f.name) for f in fields(Verdict)})


@dataclass(kw_only=True)
class VariantResult(Verdict):
    """One variant (a stage alone, the whole chain, or a control) against the plain answer: the first
    judge's verdict, and what does not depend on the judge."""

    name: str
    stages: list[str]
    n: int
    ms_per_prompt: float
    stage_stats: list[StageStats] = field(default_factory=list)
    mean_words: float = 0.0
    #: Share of the answers that are refusals (``middleware.evaluate.refusals.is_refusal``), every repeat counted.
    refusal_rate: float = 0.0
    #: Mean similarity to the prompts' reference answers (``similarity.ReferenceSimilarity``) over the prompts
    #: that have one, and its 95% interval; ``None`` without references.
    similarity: float | None = None
    similarity_ci: tuple[float, float] | None = None


@dataclass
class JudgeResult:
    """One judge's verdicts on every variant and control (by name, in the report's order), its mean reward
    of the plain answers and its pairwise accuracy (``None``: not measured)."""

    name: str
    label: str
    plain_mean_reward: float
    verdicts: dict[str, Verdict]
    accuracy: JudgeAccuracy | None = None


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
    #: Baselines judged like the variants (``controls``): ``control: first sentence`` keeps each plain answer's
    #: first sentence (a judge that rewards brevity gives it a win rate for free; a stage that shortens answers
    #: should beat it before its own win rate means much); ``control: safety suffix`` is the plain LLM's answer
    #: to the prompt with a fixed safety instruction appended (the baseline a prompt rewriter has to beat).
    controls: list[VariantResult] = field(default_factory=list)
    #: Runs per prompt and variant (seeds ``seed`` … ``seed+repeats-1``); wins compare the mean rewards.
    repeats: int = 1
    #: Share of the plain answers that are refusals.
    plain_refusal_rate: float = 0.0
    #: Every judge's verdicts, the first one's being those of ``variants`` and ``controls`` (``judge``).
    judges: list[JudgeResult] = field(default_factory=list)
    #: Prompts with a reference answer, and the plain answers' mean similarity to it (with its 95% interval).
    n_references: int = 0
    plain_similarity: float | None = None
    plain_similarity_ci: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.judges:  # a report built by hand: its one judge's verdicts are the rows'
            verdicts = {v.name: v.verdict() for v in self.variants + self.controls}
            self.judges = [JudgeResult(self.judge, Path(self.judge).name or self.judge, self.plain_mean_reward, verdicts)]

    def judge_index(self, judge: int | str) -> int:
        """The position of a judge given by position, label or name."""
        if isinstance(judge, int):
            if not 0 <= judge < len(self.judges):
                raise KeyError(f"no judge {judge}; the report has {len(self.judges)}")
            return judge
        for j, r in enumerate(self.judges):
            if judge in (r.label, r.name):
                return j
        raise KeyError(f"no judge {judge!r}; have {[r.label for r in self.judges]}")

    def verdict(self, variant: str, judge: int | str = 0) -> Verdict:
        """A judge's verdict on a variant or control (the first judge by default)."""
        verdicts = self.judges[self.judge_index(judge)].verdicts
        if variant not in verdicts:
            raise KeyError(f"no variant {variant!r}; have {list(verdicts)}")
        return verdicts[variant]

    def sample_reward(self, entry: dict[str, Any], judge: int = 0) -> float:
        """A sample's answer's (mean) reward under a judge: ``reward`` for the first, ``rewards[label]`` else."""
        return float(entry["reward"]) if judge == 0 else float(entry["rewards"][self.judges[judge].label])

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; have {[v.name for v in self.variants]}")

    def to_dict(self) -> dict[str, Any]:
        """The report's fields, plus ``by_source``: ``{source: {variant: {"wins", "ties", "losses"}}}`` (the
        first judge's; with several judges each judge's block has its own)."""
        d = asdict(self)

        def groups(j: int) -> dict[str, Any]:
            return {src: {v: dict(zip(("wins", "ties", "losses"), wtl)) for v, wtl in g.items()} for src, g in self.by_source(j).items()}

        d["by_source"] = groups(0)
        if len(self.judges) > 1:
            for j, block in enumerate(d["judges"]):
                block["by_source"] = groups(j)
        return d

    def by_source(self, judge: int | str = 0) -> dict[str, dict[str, tuple[int, int, int]]]:
        """Wins, ties and losses against the plain answer per prompt source (a row's ``source``, such as
        ``vicuna_eval/coding``) and variant, under a judge (the first by default): where a stage helps and
        where it hurts. Prompts without a source are grouped under ``"(none)"``; the mean rewards per
        prompt decide, as in the totals."""
        j = self.judge_index(judge)
        out: dict[str, dict[str, tuple[int, int, int]]] = {}
        for smp in self.samples:
            group = out.setdefault(str(smp.get("source") or "(none)"), {})
            plain = self.sample_reward(smp["answers"][PLAIN], j)
            for v in self.variants:
                score = outcome(self.sample_reward(smp["answers"][v.name], j) - plain, self.epsilon)
                w, t, l = group.get(v.name, (0, 0, 0))
                group[v.name] = (w + (score == 1.0), t + (score == 0.5), l + (score == 0.0))
        return dict(sorted(out.items()))

    def to_markdown(self) -> str:
        """The report as Markdown: the variants' table (a column group per judge), stage counts, sources."""
        return markdown(self)

    def plot(self, path: str | Path) -> Path:
        """A bar chart: win rate vs plain (50% line) and mean reward gain, per variant and judge."""
        return plot(self, path)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "report.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        paths["markdown"].write_text(self.to_markdown() + "\n", encoding="utf-8")
        self.plot(paths["png"])
        return paths
