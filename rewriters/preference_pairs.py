"""Preference pairs for DPO without a teacher: what the rewriter's and the corrector's pair builders share.

A stage model samples several candidate texts per training row (:func:`sample_texts`), a reward model
scores what each candidate leads to (:func:`judge_scores`, cached on disk), and a row gives one (best,
worst) pair when the reward gap clears the gap rule (:func:`resolve_min_gap`, :func:`decide_rows`).
:class:`PairReport` says what became of each row. The builders are ``build_rewrite_pairs``
(:mod:`rewriters.rewrite_pairs`) and ``build_correction_pairs`` (:mod:`rewriters.correction_pairs`).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

from middleware.errors import InputError
from middleware.evaluate import load_judge
from middleware.types import Message

from .answer_cache import TextCache, failure_message, generator_identity, judge_identity, progress_bar
from .generator import TextGenerator
from .stage import Generated, generation_defaults
from .templates import Template, get_template

__all__ = ["Candidate", "MinGap", "PairReport", "PairRow", "Sampler", "check_min_gap", "decide_rows", "drop",
           "fill_candidates", "judge_scores", "resolve_min_gap", "resolve_sampler", "sample_texts"]

#: A number (reward units) or ``"auto"``: ``noise_k`` × the measured spread (see :func:`resolve_min_gap`).
MinGap = Union[float, Literal["auto"]]
#: A stage model: a ``TextGenerator``, an adapter or model folder, or a callable returning its own samples.
Sampler = Union[TextGenerator, Callable[..., Sequence[str]], str, "os.PathLike[str]"]


@dataclass
class Candidate:
    """One sampled text (a rewrite, a correction) and the rewards of what it led to."""

    text: str
    rewards: list[float] = field(default_factory=list)

    @property
    def reward(self) -> float:
        """The mean reward (NaN before it is judged)."""
        return sum(self.rewards) / len(self.rewards) if self.rewards else math.nan


@dataclass
class PairRow:
    """What became of one training row: its candidates with their rewards, the reward of the baseline
    (the plain prompt's answer for the rewriter, the answer left as it is for the corrector), the gap
    between the best and the worst candidate, and whether their pair was kept (else ``reason``)."""

    index: int
    prompt: str
    candidates: list[Candidate] = field(default_factory=list)
    baseline: float | None = None
    gap: float | None = None
    kept: bool = False
    reason: str | None = None

    @property
    def best(self) -> Candidate:
        return max(self.candidates, key=lambda c: c.reward)

    @property
    def worst(self) -> Candidate:
        return min(self.candidates, key=lambda c: c.reward)


@dataclass
class PairReport:
    """What a pair builder did: rows seen, pairs kept, rows dropped for a small gap, for fewer than two
    usable samples, or because a model failed (the first error kept), samples left out as unusable (empty,
    cut off, or failing the stage's safeguard), the gap rule applied and the gaps of the kept pairs.
    ``from_data`` counts the data's own pairs (the corrector's), ``skipped`` the rows that give none."""

    kind: str
    prompts: int = 0
    kept: int = 0
    from_data: int = 0
    skipped: int = 0
    small_gap: int = 0
    too_few: int = 0
    failed: int = 0
    first_error: str | None = None
    unusable: int = 0
    min_gap: float | None = None
    #: ``min_gap="auto"``: the measured spread it was derived from (see :func:`resolve_min_gap`)
    noise: float | None = None
    rows: list[PairRow] = field(default_factory=list)

    @property
    def gaps(self) -> list[float]:
        """The reward gaps of the kept pairs."""
        return [r.gap for r in self.rows if r.kept and r.gap is not None]

    @property
    def mean_gap(self) -> float | None:
        return statistics.fmean(self.gaps) if self.gaps else None

    @property
    def median_gap(self) -> float | None:
        return statistics.median(self.gaps) if self.gaps else None

    def mean_rewards(self) -> dict[str, float] | None:
        """Over the judged rows (kept or not): the mean reward of the baseline, the best and the worst
        candidate; ``None`` when no row was judged."""
        judged = [r for r in self.rows if r.gap is not None]
        if not judged:
            return None
        with_base = [r.baseline for r in judged if r.baseline is not None]
        return {
            "baseline": statistics.fmean(with_base) if with_base else math.nan,
            "best": statistics.fmean(r.best.reward for r in judged),
            "worst": statistics.fmean(r.worst.reward for r in judged),
        }

    def fail(self, message: str) -> None:
        """Count a row a model failed on."""
        self.failed += 1
        if self.first_error is None:
            self.first_error = message

    def summary(self) -> str:
        """One line for people."""
        rule = "n/a" if self.min_gap is None else f"{self.min_gap:.3g}"
        if self.noise is not None:
            rule += f", auto from a spread of {self.noise:.3g}"
        parts = [f"{self.kind} pairs: {self.prompts} rows, {self.kept} pairs kept (gap >= {rule}"]
        if self.gaps:
            parts[0] += f"; mean {self.mean_gap:.3g}, median {self.median_gap:.3g}"
        parts[0] += ")"
        if self.from_data:
            parts.append(f"{self.from_data} from the data")
        parts.append(f"{self.small_gap} dropped for a small gap")
        parts.append(f"{self.too_few} with fewer than two usable samples")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (empty or identical sides)")
        failed = f"{self.failed} failed" + (f" (first: {self.first_error})" if self.first_error else "")
        parts.append(failed)
        parts.append(f"{self.unusable} samples unusable")
        means = self.mean_rewards()
        if means is not None:
            parts.append("mean reward " + " / ".join(f"{k} {v:.3g}" for k, v in means.items()))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(mean_gap=self.mean_gap, median_gap=self.median_gap, mean_rewards=self.mean_rewards())
        return d


# -- sampling ----------------------------------------------------------------------------------------
def resolve_sampler(model: Sampler, *, kind: str, template: "str | Template | None", default: str) -> tuple[Any, Template]:
    """The stage model and the template its sources are rendered with: a folder is loaded as a
    ``TextGenerator`` of ``kind``; a generator brings its own template (``template`` must then name the
    same one); a callable uses ``template`` or ``default``."""
    if isinstance(model, (str, os.PathLike)):
        model = TextGenerator.from_pretrained(model, kind=kind)
    if isinstance(model, TextGenerator) or (hasattr(model, "generate_ex") and hasattr(model, "template")):
        own: Template = model.template
        if template is not None and get_template(template).name != own.name:
            raise InputError(
                f"the {kind} model is prompted with template {own.name!r}, not {get_template(template).name!r}: "
                f"its pairs must use the text it is prompted with"
            )
        return model, own
    if callable(model):
        return model, get_template(template if template is not None else default)
    raise InputError(f"the {kind} must be a TextGenerator, an adapter folder or a callable, got {type(model).__name__}")


def sample_texts(
    model: Any,
    sources: Sequence[str],
    args: Sequence[tuple[str, ...]],
    *,
    samples: int,
    seed: int,
    temperature: float | None,
    top_p: float | None,
    max_new_tokens: int | None,
    batch_size: int,
    cache_dir: Path,
    label: str,
    progress: bool,
    names: Sequence[int] | None = None,
) -> tuple[list[list[Generated]], dict[int, str]]:
    """The samples of each row, and the rows the model failed on (index -> message).

    A generator continues ``sources[i]`` ``samples`` times (seeds ``seed`` … ``seed + samples - 1``, its own
    decoding unless ``temperature`` / ``top_p`` / ``max_new_tokens`` are given), one batched call per seed,
    each sample cached on disk by the model's checksums, the decoding and the seed. A callable is called
    as ``model(*args[i])`` and returns its own samples (a list of strings). Messages name row ``i`` as
    ``names[i]`` (default ``i``)."""
    out: list[list[Generated]] = [[] for _ in sources]
    errors: dict[int, str] = {}
    name = list(names) if names is not None else list(range(len(sources)))
    if not hasattr(model, "generate_ex"):
        for i, a in enumerate(args):
            try:
                texts = model(*a)
            except Exception as e:  # a failing callable loses its row
                errors[i] = f"row {name[i]}: {label} failed: {failure_message(e)}"
                continue
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise InputError(f"row {name[i]}: the {label} callable must return a list of strings, got {texts!r:.80}")
            out[i] = [Generated(t) for t in texts]
        return out, errors
    params = generation_defaults(model.template, model, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    if samples > 1 and params["temperature"] <= 0:
        raise InputError(f"samples={samples} needs a sampling temperature above 0: greedy {label} samples would all be the same")
    ident = generator_identity(model)
    decoding = "|".join(f"{k}={params[k]}" for k in ("temperature", "top_p", "max_new_tokens"))
    bar = progress_bar(len(sources) * samples, f"{label} samples", "sample") if progress and sources else None
    for k in range(samples):
        cache = TextCache(cache_dir, f"samples:{ident}|{decoding}|seed={seed + k}") if ident else None
        got: dict[int, Generated] = {}
        for i, src in enumerate(sources):
            hit = cache.get(src) if cache is not None else None
            if hit is not None:
                obj = json.loads(hit)
                got[i] = Generated(obj["text"], obj["finish_reason"])
        todo = [i for i in range(len(sources)) if i not in got and i not in errors]
        gen_kw = dict(temperature=params["temperature"], top_p=params["top_p"], max_new_tokens=params["max_new_tokens"],
                      seed=seed + k, batch_size=batch_size)
        try:
            fresh = list(zip(todo, model.generate_ex([sources[i] for i in todo], **gen_kw))) if todo else []
        except Exception:  # one bad text fails the call: generate one by one to lose only that row
            fresh = []
            for i in todo:
                try:
                    fresh.append((i, model.generate_ex([sources[i]], **gen_kw)[0]))
                except Exception as e:
                    errors[i] = f"row {name[i]}: {label} failed: {failure_message(e)}"
        for i, g in fresh:
            got[i] = Generated(g.text, g.finish_reason)
            if cache is not None:
                cache.put(sources[i], json.dumps({"text": g.text, "finish_reason": g.finish_reason}, ensure_ascii=False))
        for i, g in got.items():
            out[i].append(g)
        if bar is not None:
            bar.update(len(sources))
    if bar is not None:
        bar.close()
    return out, errors


def fill_candidates(
    report: PairReport,
    samples: Sequence[Sequence[Generated]],
    errors: dict[int, str],
    accept: Callable[[PairRow, Generated], "str | None"],
    what: str,
) -> None:
    """Put each row's distinct usable samples on it as candidates (``report.rows[n]`` has ``samples[n]``;
    ``accept`` gives a sample's text as the stage would use it, or ``None`` when the stage would not use it,
    counted as unusable; repeats of a text are one candidate). A row the sampler failed on (``errors``) or
    with fewer than two candidates is dropped."""
    for n, row in enumerate(report.rows):
        if n in errors:
            drop(row, report, errors[n], failed=True)
            continue
        for g in samples[n]:
            text = accept(row, g)
            if text is None:
                report.unusable += 1
            elif text not in [c.text for c in row.candidates]:
                row.candidates.append(Candidate(text))
        if len(row.candidates) < 2:
            drop(row, report, f"{len(row.candidates)} usable distinct {what} of {len(samples[n])}")


def drop(row: PairRow, report: PairReport, reason: str, *, failed: bool = False) -> None:
    """Leave ``row`` out with ``reason``: counted as failed (a model failed) or as having too few samples."""
    if row.reason is not None:
        return
    row.reason = reason
    if failed:
        report.fail(reason)
    else:
        report.too_few += 1


# -- judging -----------------------------------------------------------------------------------------
def judge_scores(
    judge: Any, items: Sequence[tuple[Sequence[Message], str]], *, cache_dir: Path, progress: bool
) -> tuple[list[float | None], dict[int, str]]:
    """The judge's reward of every ``(conversation, answer)`` item, and the items it failed on (index ->
    message; their scores are ``None``). A saved reward model folder is loaded only when a score is missing
    from the disk cache (keyed by its checksum); a judge object is always asked."""
    ident = judge_identity(judge)
    cache = TextCache(cache_dir, ident) if ident else None
    keys = [json.dumps([[m.model_dump(mode="json") for m in msgs], answer], ensure_ascii=False, sort_keys=True)
            for msgs, answer in items]
    scores: list[float | None] = [None] * len(items)
    if cache is not None:
        for j, key in enumerate(keys):
            hit = cache.get(key)
            scores[j] = float(hit) if hit is not None else None
    todo = [j for j, s in enumerate(scores) if s is None]
    errors: dict[int, str] = {}
    if not todo:
        return scores, errors
    obj = load_judge(judge)
    takes_progress = "progress" in inspect.signature(obj.score_batch).parameters

    def ask(js: list[int]) -> list[float]:
        batch = [(list(items[j][0]), items[j][1]) for j in js]
        got = obj.score_batch(batch, progress=progress) if takes_progress and len(js) > 1 else obj.score_batch(batch)  # type: ignore[call-arg]
        if len(got) != len(js):
            raise ValueError(f"the judge returned {len(got)} scores for {len(js)} answers")
        return [float(s) for s in got]

    try:
        fresh = list(zip(todo, ask(todo)))
    except Exception:  # score one by one to lose only the items the judge fails on
        fresh = []
        for j in todo:
            try:
                fresh.append((j, ask([j])[0]))
            except Exception as e:
                errors[j] = failure_message(e)
    for j, s in fresh:
        if not math.isfinite(s):
            errors[j] = f"the judge gave {s} for an answer"
            continue
        scores[j] = s
        if cache is not None:
            cache.put(keys[j], repr(s))
    return scores, errors


# -- the gap rule ------------------------------------------------------------------------------------
def check_min_gap(min_gap: MinGap, noise_k: float) -> None:
    """``InputError`` unless ``min_gap`` is ``"auto"`` or a finite number >= 0 and ``noise_k`` > 0."""
    if min_gap != "auto" and (isinstance(min_gap, bool) or not isinstance(min_gap, (int, float))
                              or not math.isfinite(min_gap) or min_gap < 0):
        raise InputError(f"min_gap must be a number >= 0 or 'auto', got {min_gap!r}")
    if not (isinstance(noise_k, (int, float)) and math.isfinite(noise_k) and noise_k > 0):
        raise InputError(f"noise_k must be a number above 0, got {noise_k!r}")


def resolve_min_gap(min_gap: MinGap, groups: Sequence[Sequence[float]], noise_k: float) -> tuple[float, float | None]:
    """The gap a pair must reach, and the measured spread behind it (``None`` for a fixed number).

    ``"auto"``: ``noise_k`` × the standard deviation of the reward difference between two answers to the
    same input, measured from ``groups`` (each a list of rewards of answers to one input), over disjoint
    pairs within each group (the root mean square of the differences: their order is arbitrary, so their
    mean is zero). With no pair to measure, no gap is large enough (``inf``)."""
    if min_gap != "auto":
        return float(min_gap), None
    diffs = [g[a] - g[a + 1] for g in groups for a in range(0, len(g) - 1, 2)]
    if not diffs:
        return math.inf, None
    noise = math.sqrt(sum(d * d for d in diffs) / len(diffs))
    return noise_k * noise, noise


def decide_rows(report: PairReport, min_gap: MinGap, noise_k: float, groups: Sequence[Sequence[float]]) -> None:
    """Apply the gap rule (:func:`resolve_min_gap` on ``groups``) to the judged rows of ``report``: keep a
    row's (best, worst) pair when its gap is at least the rule's and above zero (equal rewards teach
    nothing); count the rest. Rows with a ``reason`` are already out."""
    report.min_gap, report.noise = resolve_min_gap(min_gap, groups, noise_k)
    for row in report.rows:
        if row.reason is not None:
            continue
        row.gap = row.best.reward - row.worst.reward
        if row.gap >= report.min_gap and row.gap > 0:
            row.kept = True
            report.kept += 1
        else:
            row.reason = f"reward gap {row.gap:.3g} below {report.min_gap:.3g}"
            report.small_gap += 1
