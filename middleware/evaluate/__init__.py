"""Evaluation harness: does each stage make answers better, by a reward-model judge?

For every prompt it generates the plain answer (the pipeline's LLM, no stages), the answer with each stage
alone, and the answer through the whole chain; the judge scores each answer against the original prompt.
Per variant it reports the judge's win rate against the plain answer (ties count half: equal texts, or
rewards within ``epsilon``) with its 95% confidence interval over the prompts, the mean reward gain, the
latency of each stage (from the traces) and how often each stage modified, passed, failed or skipped.
Several judges score the same answers, each in its own columns, with its pairwise accuracy next to them.
Every variant also gets its refusal rate and, where prompts carry a reference answer, its mean similarity
to it; two control rows (``controls``: the first sentence of the plain answer, and the plain LLM asked with
a fixed safety sentence appended) show what a judge gives for nothing.

One answer per prompt is a noisy measurement: a single changed word in a prompt can move a judge's reward by
more than a good rewrite gains. ``repeats=K`` (``--repeats K``) runs every variant K times per prompt with
seeds ``seed`` … ``seed+K-1`` and compares the mean rewards per prompt; sampling stages (and a sampling LLM,
``defaults: {temperature: ...}``) then give K different answers to average.

Python::

    report = evaluate_pipeline("pipeline.yaml", "prompts.jsonl", "runs/rm", limit=20, seed=0)
    print(report.to_markdown()); report.write("runs/eval")
    pairwise_accuracy("runs/rm", "pairs.jsonl")

Command line::

    alignware eval --pipeline CONFIG --prompts FILE --judge DIR [--judge DIR2] [--judge-pairs FILE] [--limit N]
                   [--seed S] [--repeats K] [--out DIR]
    alignware eval --judge DIR --pairs FILE [--limit N] [--out DIR]
    alignware eval --rejudge runs/eval/report.json --judge OTHER_DIR --out DIR   # same answers, another judge

Modules: ``run`` (generating the variants' answers), ``scoring`` (judging them against the plain answer,
``judge_answers``, ``rejudge``), ``controls`` (the two control rows), ``refusals`` (the refusal test),
``similarity`` (similarity to reference answers), ``stats`` (win rates, ties and confidence intervals),
``report`` (``EvalReport``), ``render`` (its Markdown and plot), ``judges`` (loading judges, pairwise
accuracy), ``cli`` (``alignware eval``).
"""

from .controls import CONTROL, SAFETY_CONTROL, SAFETY_SENTENCE, first_sentence
from .judges import Judge, JudgeAccuracy, JudgeLike, judge_name, load_judge, load_panel, pair_margins, pairwise_accuracy
from .report import CHAIN, PLAIN, EvalReport, JudgeResult, StageStats, VariantResult, Verdict
from .run import PipelineLike, PromptsLike, decode_threads, evaluate_pipeline
from .scoring import judge_answers, rejudge
from .similarity import ReferenceSimilarity
from .stats import DEFAULT_EPSILON, mean_interval, win_rate_interval

__all__ = [
    "CHAIN",
    "CONTROL",
    "DEFAULT_EPSILON",
    "EvalReport",
    "Judge",
    "JudgeAccuracy",
    "JudgeLike",
    "JudgeResult",
    "PLAIN",
    "PipelineLike",
    "PromptsLike",
    "ReferenceSimilarity",
    "SAFETY_CONTROL",
    "SAFETY_SENTENCE",
    "StageStats",
    "VariantResult",
    "Verdict",
    "decode_threads",
    "evaluate_pipeline",
    "first_sentence",
    "judge_answers",
    "judge_name",
    "load_judge",
    "load_panel",
    "mean_interval",
    "pair_margins",
    "pairwise_accuracy",
    "rejudge",
    "win_rate_interval",
]
