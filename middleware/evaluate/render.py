"""Drawing an ``EvalReport``: its Markdown (one table of variants and controls with a column group per
judge, the stage counts, the wins per prompt source) and its bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..training import save_figure

if TYPE_CHECKING:  # the report module imports this one
    from .report import EvalReport, JudgeResult, Verdict

_JUDGE_COLUMNS = ("win rate vs plain", "W / T / L", "95% CI", "mean reward gain", "95% CI", "mean reward")
_JUDGE_ALIGN = ("---:", ":---:", ":---:", "---:", ":---:", "---:")


def _interval(ci: tuple[float, float] | None, fmt: str, sep: str) -> str:
    return "-" if ci is None else f"{ci[0]:{fmt}}{sep}{ci[1]:{fmt}}"


def _accuracy(j: JudgeResult) -> str:
    return j.accuracy.describe() if j.accuracy is not None else "accuracy: not measured"


def _judge_cells(v: Verdict) -> list[str]:
    return [f"{v.win_rate:.1%}", f"{v.wins} / {v.ties} / {v.losses}", _interval(v.win_rate_ci, ".0%", "-"),
            f"{v.mean_gain:+.3f}", _interval(v.gain_ci, "+.3f", " to "), f"{v.mean_reward:+.3f}"]


def _head(r: EvalReport) -> str:
    multi = len(r.judges) > 1
    if multi:
        judges = "Judges: " + "; ".join(f"**{j.label}** `{j.name}` ({_accuracy(j)})" for j in r.judges)
        rewards = "mean reward " + ", ".join(f"{j.plain_mean_reward:+.3f} ({j.label})" for j in r.judges)
    else:
        judges = f"Judge: `{r.judge}` ({_accuracy(r.judges[0])})"
        rewards = f"mean reward {r.plain_mean_reward:+.3f}"
    seeds = f"seed {r.seed}" if r.repeats == 1 else f"seeds {r.seed}-{r.seed + r.repeats - 1} (mean of {r.repeats} runs per prompt)"
    sim = ""
    if r.plain_similarity is not None:
        sim = (f", similarity to reference {r.plain_similarity:.3f} ({_interval(r.plain_similarity_ci, '.3f', '-')}, "
               f"{r.n_references} prompts with one)")
    return (f"{judges} · LLM: `{r.llm}` · {r.n_prompts} prompts · {seeds} · plain answer: {rewards}, "
            f"{r.plain_mean_words:.0f} words, {r.plain_refusal_rate:.0%} refusals{sim}, {r.plain_ms_per_prompt:.0f} ms/prompt")


def _variants_table(r: EvalReport) -> list[str]:
    multi = len(r.judges) > 1
    cols = ["variant", "stages"]
    align = ["---", "---"]
    for j in r.judges:
        cols += [f"{j.label}: {c}" if multi else c for c in _JUDGE_COLUMNS]
        align += _JUDGE_ALIGN
    refs = r.plain_similarity is not None
    cols += ["words", "refusals"] + (["similarity to reference", "95% CI"] if refs else []) + ["ms/prompt"]
    align += ["---:", "---:"] + (["---:", ":---:"] if refs else []) + ["---:"]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join(align) + " |"]
    for v in r.variants + r.controls:
        cells = [v.name, ", ".join(v.stages) or "(none)"]
        for j in r.judges:
            cells += _judge_cells(j.verdicts[v.name])
        cells += [f"{v.mean_words:.0f}", f"{v.refusal_rate:.0%}"]
        if refs:
            cells += ["-" if v.similarity is None else f"{v.similarity:.3f}", _interval(v.similarity_ci, ".3f", "-")]
        cells.append(f"{v.ms_per_prompt:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _sources_table(r: EvalReport, judge: int) -> list[str]:
    groups = r.by_source(judge)
    if len(groups) <= 1:
        return []
    shown: list[str] = []  # a chain of one stage is that stage's column already
    for v in r.variants:
        if all(v.stages != r.variant(n).stages for n in shown):
            shown.append(v.name)
    lines = [""] + ([f"Per source, judge **{r.judges[judge].label}**:", ""] if len(r.judges) > 1 else [])
    lines += ["| source | prompts | " + " | ".join(f"{n}: win rate (W / T / L)" for n in shown) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in shown) + " |"]
    for src, g in groups.items():
        cells = []
        for n in shown:
            w, t, l = g[n]
            cells.append(f"{(w + 0.5 * t) / (w + t + l):.0%} ({w} / {t} / {l})")
        lines.append(f"| {src} | {sum(g[shown[0]])} | " + " | ".join(cells) + " |")
    return lines


def markdown(r: EvalReport) -> str:
    """The report as Markdown."""
    lines = [_head(r), "", *_variants_table(r)]
    lines += [
        "",
        "| variant | stage | kind | mean ms | max ms | modified | passed | failed | skipped |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in r.variants:
        for s in v.stage_stats:
            lines.append(
                f"| {v.name} | {s.stage} | {s.kind} | {s.mean_latency_ms:.1f} | {s.max_latency_ms:.1f} | "
                f"{s.modified} | {s.passed} | {s.failed} | {s.skipped} |"
            )
    for j in range(len(r.judges)):
        lines += _sources_table(r, j)
    return "\n".join(lines)


def plot(r: EvalReport, path: str | Path) -> Path:
    """A bar chart: win rate vs plain (50% line) and mean reward gain, per variant, a bar per judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r.variants + r.controls
    names = [v.name for v in rows]
    k = len(r.judges)
    width = 0.8 / k
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) * (1 + 0.3 * (k - 1)) + 4), 4))
    for j, judge in enumerate(r.judges):
        xs = [i + (j - (k - 1) / 2) * width for i in range(len(rows))]
        vs = [judge.verdicts[v.name] for v in rows]
        rates = [100 * v.win_rate for v in vs]
        err = [[x - 100 * v.win_rate_ci[0] for x, v in zip(rates, vs)], [100 * v.win_rate_ci[1] - x for x, v in zip(rates, vs)]]
        label = judge.label if k > 1 else None
        a1.bar(xs, rates, width, yerr=err, capsize=4, label=label,
               color=["tab:gray" if v in r.controls else f"C{j}" for v in rows] if k == 1 else f"C{j}")
        gains = [v.mean_gain for v in vs]
        gerr = [[0.0 if v.gain_ci is None else g - v.gain_ci[0] for g, v in zip(gains, vs)],
                [0.0 if v.gain_ci is None else v.gain_ci[1] - g for g, v in zip(gains, vs)]]
        a2.bar(xs, gains, width, yerr=gerr, capsize=4, label=label,
               color=["tab:green" if g >= 0 else "tab:red" for g in gains] if k == 1 else f"C{j}")
    a1.axhline(50, color="gray", linestyle="--", linewidth=1)
    a1.set_ylim(0, 100)
    a1.set_ylabel("judge win rate vs plain (%)")
    a2.axhline(0, color="gray", linewidth=1)
    a2.set_ylabel("mean reward gain")
    for ax in (a1, a2):
        ax.set_xticks(range(len(rows)), names)
        ax.tick_params(axis="x", rotation=20)
        ax.grid(axis="y", alpha=0.3)
        if k > 1:
            ax.legend(fontsize=8)
    judges = ", ".join(Path(j.name).name for j in r.judges)
    fig.suptitle(f"{r.n_prompts} prompts, judge{'s' if k > 1 else ''} {judges}")
    return save_figure(fig, path)
