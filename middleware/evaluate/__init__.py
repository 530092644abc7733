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

Modules: ``run`` (generating the variants' answers), ``scoring`` (judging them against the plain answer,
``rejudge``), ``stats`` (win rates, ties and confidence intervals), ``report`` (``EvalReport``: Markdown,
JSON and the plot), ``judges`` (loading a judge, pairwise accuracy), ``cli`` (``alignware eval``).
"""

from .judges import Judge, JudgeLike, judge_name, load_judge, pair_margins, pairwise_accuracy
from .report import CHAIN, PLAIN, EvalReport, StageStats, VariantResult
from .run import PipelineLike, PromptsLike, decode_threads, evaluate_pipeline
from .scoring import CONTROL, first_sentence, rejudge
from .stats import DEFAULT_EPSILON, mean_interval, win_rate_interval

__all__ = [
    "CHAIN",
    "CONTROL",
    "DEFAULT_EPSILON",
    "EvalReport",
    "Judge",
    "JudgeLike",
    "PLAIN",
    "PipelineLike",
    "PromptsLike",
    "StageStats",
    "VariantResult",
    "decode_threads",
    "evaluate_pipeline",
    "first_sentence",
    "judge_name",
    "load_judge",
    "mean_interval",
    "pair_margins",
    "pairwise_accuracy",
    "rejudge",
    "win_rate_interval",
]
