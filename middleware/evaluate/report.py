"""``EvalReport``: the results of an evaluation per variant, and their renderings (Markdown, JSON, plot)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..training import save_figure
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
    #: Share of the answers that are refusals (``middleware.evaluate.refusals.is_refusal``), every repeat counted.
    refusal_rate: float = 0.0


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
    #: Share of the plain answers that are refusals.
    plain_refusal_rate: float = 0.0

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
                score = outcome(smp["answers"][v.name]["reward"] - plain, self.epsilon)
                w, t, l = group.get(v.name, (0, 0, 0))
                group[v.name] = (w + (score == 1.0), t + (score == 0.5), l + (score == 0.0))
        return dict(sorted(out.items()))

    def to_markdown(self) -> str:
        lines = [
            f"Judge: `{self.judge}` · LLM: `{self.llm}` · {self.n_prompts} prompts · "
            f"{'seed ' + str(self.seed) if self.repeats == 1 else f'seeds {self.seed}-{self.seed + self.repeats - 1} (mean of {self.repeats} runs per prompt)'} · "
            f"plain answer: mean reward {self.plain_mean_reward:+.3f}, {self.plain_mean_words:.0f} words, "
            f"{self.plain_refusal_rate:.0%} refusals, {self.plain_ms_per_prompt:.0f} ms/prompt",
            "",
            "| variant | stages | win rate vs plain | W / T / L | 95% CI | mean reward gain | 95% CI | mean reward | words | refusals | ms/prompt |",
            "| --- | --- | ---: | :---: | :---: | ---: | :---: | ---: | ---: | ---: | ---: |",
        ]
        for v in self.variants + self.controls:
            lines.append(
                f"| {v.name} | {', '.join(v.stages) or '(none)'} | {v.win_rate:.1%} | {v.wins} / {v.ties} / {v.losses} | "
                f"{v.win_rate_ci[0]:.0%}-{v.win_rate_ci[1]:.0%} | {v.mean_gain:+.3f} | "
                f"{'-' if v.gain_ci is None else f'{v.gain_ci[0]:+.3f} to {v.gain_ci[1]:+.3f}'} | "
                f"{v.mean_reward:+.3f} | {v.mean_words:.0f} | {v.refusal_rate:.0%} | {v.ms_per_prompt:.0f} |"
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
