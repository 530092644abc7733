"""Running an evaluation: the plain answer, each stage alone, the whole chain and the safety-suffix
control generated for every prompt (with repeats and seeds), then handed to the scoring."""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from ..concurrency import concurrency_for, run_bounded
from ..config import PipelineConfig
from ..errors import AlignwareError, InputError
from ..llm import LLM
from ..pipeline import Pipeline
from ..stages import Stage
from ..types import ChatResponse, Message, MessagesLike, PreferencePair, PromptRecord, StageTrace, load_prompts, to_messages
from .controls import SAFETY_CONTROL, safety_suffix_stage
from .judges import JudgeLike, load_panel
from .report import CHAIN, PLAIN, EvalReport, StageStats
from .scoring import judge_answers
from .stats import DEFAULT_EPSILON

VERDICTS = ("modified", "passed", "failed", "skipped")
PipelineLike = Union[Pipeline, PipelineConfig, dict, str, Path]
PromptsLike = Union[str, Path, Sequence[Union[PromptRecord, PreferencePair, MessagesLike]]]


def _reference(row: Any) -> str | None:
    """A row's reference answer: a prompt row's ``reference``, a preference pair's (else its ``chosen``)."""
    if isinstance(row, PreferencePair):
        return row.reference if row.reference is not None else row.chosen
    return row.reference if isinstance(row, PromptRecord) else None


def _prompt_list(prompts: PromptsLike, limit: int | None) -> tuple[list[list[Message]], list[str | None], list[str | None]]:
    """The conversations to answer, each one's ``source`` and its reference answer (``None`` where the
    row has none)."""
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if isinstance(prompts, (str, Path)):
        rows: Sequence[Any] = load_prompts(prompts, limit=limit)
        if not rows:
            raise InputError(f"{prompts}: no prompts")
    else:
        rows = list(prompts)[:limit] if limit is not None else list(prompts)
    out, sources, references = [], [], []
    for i, r in enumerate(rows):
        msgs = r.prompt if isinstance(r, (PromptRecord, PreferencePair)) else to_messages(r)
        if not msgs or msgs[-1].role != "user":
            raise InputError(f"prompts[{i}]: the last message must be the user's")
        out.append(list(msgs))
        sources.append(getattr(r, "source", None))
        references.append(_reference(r))
    return out, sources, references


def _parts(config: PipelineLike, llm: LLM | None) -> tuple[LLM, list[Stage], dict[str, Any], str]:
    """(llm, stages, defaults, description) of a pipeline, a config object, a dict or a config file."""
    if isinstance(config, Pipeline):
        return (llm or config.llm), list(config.stages), dict(config.defaults), repr(config)
    cfg = PipelineConfig.load(config)
    return (llm or cfg.build_llm()), cfg.build_stages(), dict(cfg.defaults), cfg.source or "config"


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
    pipe: Pipeline, msgs: list[list[Message]], params: dict[str, Any], seed: int, threads: int = 1,
    concurrency: int | None = None,
) -> tuple[list[ChatResponse], float]:
    """One run of a variant: every request and the global RNGs seeded with ``seed``. With ``concurrency``
    (a remote LLM), each prompt goes through the pipeline's async path, at most that many in flight."""
    _seed_all(seed)
    t0 = time.perf_counter()
    if concurrency is not None:
        return _run_concurrently(pipe, msgs, params, seed, concurrency), time.perf_counter() - t0
    with decode_threads(threads):
        out = pipe.batch(msgs, **params, seed=seed)
    return out, time.perf_counter() - t0


def _run_concurrently(
    pipe: Pipeline, msgs: list[list[Message]], params: dict[str, Any], seed: int, concurrency: int
) -> list[ChatResponse]:
    """Every prompt through ``Pipeline.achat``, at most ``concurrency`` in flight, answers in prompt order.
    A report needs every answer: failed prompts raise one error that names each of them."""
    out = run_bounded([functools.partial(pipe.achat, m, **params, seed=seed) for m in msgs], concurrency)
    failed = [(i, r) for i, r in enumerate(out) if isinstance(r, Exception)]
    if failed:
        listed = "; ".join(f"prompts[{i}]: {type(e).__name__}: {e}" for i, e in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise AlignwareError(f"{len(failed)} of {len(msgs)} prompts failed: {listed}{more}") from failed[0][1]
    return [r for r in out if isinstance(r, ChatResponse)]


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


def _variant_names(stages: Sequence[Stage]) -> list[str]:
    """Each stage's variant name: its own, made unique with ``#2``, ``#3``... (and never ``plain`` or ``pipeline``)."""
    names: list[str] = []
    for st in stages:
        base, k = st.name, 2
        name = base
        while name in names or name in (PLAIN, CHAIN):
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def _generate(
    the_llm: LLM, variants: list[tuple[str, list[Stage]]], generated: list[tuple[str, list[Stage]]],
    defaults: Any, msgs: list[Any], params: dict[str, Any], *, seed: int, repeats: int, threads: int,
    concurrency: "int | None", progress: bool,
) -> tuple[dict[str, list[list[ChatResponse]]], dict[str, float]]:
    """Every variant's answers, ``answers[variant][k][i]`` (repeat k's response to prompt i), and its seconds.
    A variant with the same stages as an earlier one reuses its answers; one that cannot change between
    seeds (greedy stages, greedy local decoding) and the safety control are generated once."""
    from tqdm.auto import tqdm

    answers: dict[str, list[list[ChatResponse]]] = {}
    wall: dict[str, float] = {}
    bar = tqdm(generated, desc="generating", unit="variant", disable=not progress)
    for name, sts in bar:
        bar.set_postfix_str(name)
        same = next((n for n, s in variants if n in answers and [id(x) for x in s] == [id(x) for x in sts]), None)
        if same is not None:
            answers[name], wall[name] = answers[same], wall[same]
            continue
        pipe = Pipeline(the_llm, sts, defaults=defaults)
        answers[name], wall[name] = [], 0.0
        once = name == SAFETY_CONTROL or (
            repeats > 1
            and all(st.deterministic() for st in sts)
            and all(the_llm.deterministic(pipe._request(m, {**params, "seed": seed})) for m in msgs)
        )
        for k in range(1 if once else repeats):
            out, secs = _run_variant(pipe, msgs, params, seed + k, threads, concurrency)
            answers[name].append(out)
            wall[name] += secs
    bar.close()
    return answers, wall


def evaluate_pipeline(
    config: PipelineLike,
    prompts: PromptsLike,
    judge: "JudgeLike | Sequence[JudgeLike]",
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
    judge_pairs: "str | Path | Sequence[PreferencePair] | None" = None,
    concurrency: int | None = None,
) -> EvalReport:
    """Judge each stage alone and the whole chain against the plain answer, under one judge or several.

    Args:
        config: a ``Pipeline``, a ``PipelineConfig``, a config dict, or a YAML/JSON config file.
        prompts: a prompts file (prompt-only or pair rows), or a list of prompts (strings, message lists,
            ``PromptRecord``s or ``PreferencePair``s). A row's ``reference`` (a pair's ``chosen`` where it
            has none) is the reference answer the report measures similarity to.
        judge: a reward model folder, or any object with ``score_batch([(prompt, response), ...])``, or a list
            of them: every judge scores the same answers (generated once), and the report gives each one's
            verdicts (``EvalReport.judges``); the first one's are the rows' own (``variants``, ``controls``).
        judge_pairs: labelled preference pairs (a file or a list) to measure each judge's pairwise accuracy
            on; without them a judge shows the held-out accuracy its training recorded, if any.
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
        control: also judge the two controls (``controls``): ``first sentence`` (each plain answer cut to its
            first sentence; no generation), which shows how much a judge rewards mere brevity, and ``safety
            suffix`` (the plain LLM answering the prompt with ``SAFETY_SENTENCE`` appended; generated once per
            prompt with the first seed, whatever ``repeats``), the baseline a prompt rewriter has to beat.
        threads: torch CPU threads while generating. 1 (the default) suits small batches and a machine
            other jobs share; on an idle machine, large batches run faster with one thread per core.
        concurrency: for a remote LLM, send the prompts through the pipeline's async path with at most this
            many in flight (answers keep the prompts' order; identical to the batched run for a
            deterministic upstream). A local model batches instead and ignores it. A failed prompt raises
            an error naming it, as in the batched run.
    """
    the_llm, stages, defaults, desc = _parts(config, llm)
    msgs, sources, references = _prompt_list(prompts, limit)
    if not msgs:
        raise InputError("no prompts to evaluate")
    if repeats < 1:
        raise InputError(f"repeats must be 1 or more, got {repeats!r}")
    panel = load_panel(judge, judge_pairs, progress=progress)
    params: dict[str, Any] = {}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens

    limit_n = concurrency_for(the_llm, concurrency, "evaluate_pipeline")
    names = _variant_names(stages)
    variants: list[tuple[str, list[Stage]]] = [(PLAIN, [])]
    if per_stage:
        variants += [(n, [s]) for n, s in zip(names, stages)]
    variants.append((CHAIN, list(stages)))
    # the safety-suffix control: the plain LLM on the suffixed prompt, one run whatever ``repeats``
    generated = variants + ([(SAFETY_CONTROL, [safety_suffix_stage()])] if control else [])

    answers, wall = _generate(the_llm, variants, generated, defaults, msgs, params,
                              seed=seed, repeats=repeats, threads=threads, concurrency=limit_n, progress=progress)
    # per variant: the runs it made (1 or ``repeats``), and its answers to every repeat
    made = {name: len(runs) for name, runs in answers.items()}
    answers = {name: runs * (repeats // len(runs)) for name, runs in answers.items()}

    return judge_answers(
        panel,
        msgs,
        {name: [[run[i].text for run in answers[name]] for i in range(len(msgs))] for name, _ in generated},
        [
            dict(
                name=name,
                stages=[names[stages.index(s)] if s in stages else s.name for s in sts],
                ms_per_prompt=1000.0 * wall[name] / (len(msgs) * made[name]),
                stage_stats=_stage_stats([r for run in answers[name] for r in run], sts),
            )
            for name, sts in variants[1:]
        ],
        {name: [[[_trace_row(t) for t in run[i].trace] for run in answers[name]] for i in range(len(msgs))] for name, _ in generated},
        epsilon=epsilon,
        control=control,
        progress=progress,
        sources=sources,
        references=references,
        control_ms={SAFETY_CONTROL: 1000.0 * wall[SAFETY_CONTROL] / len(msgs)} if control else None,
        head=dict(
            plain_ms_per_prompt=1000.0 * wall[PLAIN] / (len(msgs) * made[PLAIN]),
            seed=seed,
            repeats=repeats,
            llm=getattr(the_llm, "name", type(the_llm).__name__),
            pipeline=desc,
        ),
    )
