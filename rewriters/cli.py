"""Command lines of the text-to-text trainers: ``alignware train rewriter`` (:func:`train_rewriter_main`)
and ``alignware train corrector`` (:func:`train_corrector_main`). Both build their examples from
preference pairs, then train a LoRA adapter with ``middleware.sft.train_sft``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from middleware.errors import InputError
from middleware.sft import SFTResult, train_sft
from middleware.training import EXIT_INTERRUPTED, EXIT_OK, run_train_command, set_threads
from middleware.types import PreferencePair, load_pairs

from .corrector_data import build_corrector_data
from .dpo_cli import add_dpo_args, run_dpo
from .rewriter_data import build_rewriter_data
from .selection import RewardChoice
from .sft_config import SFTConfig, add_train_args, config_from_args

__all__ = ["rewriter_parser", "train_rewriter_main", "corrector_parser", "train_corrector_main"]


# -- alignware train rewriter ------------------------------------------------------------------
def rewriter_parser() -> argparse.ArgumentParser:
    """``alignware train rewriter`` arguments: data, teacher, and the SFT flags."""
    p = _parser(
        "rewriter",
        "Train a BPO prompt rewriter (a LoRA adapter) from preference pairs.",
        "preference pairs (JSONL); rows may carry optimized_prompt",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="model that writes optimized prompts for rows without one (a litellm model string, a local "
        "model folder, or 'embedded'); without it those rows are skipped",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where teacher answers (and --judge's target answers) are cached "
        "(default: <alignware cache>/teacher and <alignware cache>/answers)",
    )
    p.add_argument(
        "--concurrency", "--max-concurrency", dest="concurrency", type=int, default=None, metavar="N",
        help="remote models: teacher calls (default 8) and --judge's target answers (default: batched) sent async, "
        "at most N in flight; a local model batches instead",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--filter-given", action="store_true", help="apply BPO's filters to optimized prompts found in the data too")
    p.add_argument(
        "--judge",
        default=None,
        help="reward model folder: keep only the rewrites that raise the reward of the target model's answer "
        "(both answers generated, judged against the original prompt); every judged row goes to OUT/selection.jsonl",
    )
    p.add_argument("--target", default="embedded", help="the model the rewriter will serve, for --judge (default: embedded)")
    p.add_argument("--select-max-tokens", type=int, default=128, help="answer length for --judge (default 128)")
    p.add_argument("--select-margin", type=float, default=0.0, help="reward gain a rewrite needs to be kept (default 0)")
    p.add_argument(
        "--select-samples", type=int, default=1, metavar="K",
        help="answers per side for --judge, compared by mean reward (default 1; more than 1 samples at --select-temperature)",
    )
    p.add_argument(
        "--select-temperature", type=float, default=None,
        help="the target's sampling temperature for --judge (default: greedy with 1 sample, 0.7 with more)",
    )
    p.add_argument("--data-only", action="store_true", help="build the training examples, write them to OUT/rewriter_data.jsonl, and stop")
    add_dpo_args(p, "rewriter")
    add_train_args(p)
    return p


def train_rewriter_main(argv: Sequence[str]) -> int:
    """``alignware train rewriter --data PAIRS --out DIR [--teacher MODEL] [SFT flags]``: the exit status
    (the policy every train verb shares, ``middleware.training.run_train_command``)."""
    return run_train_command(lambda: _train_rewriter(argv))


def _train_rewriter(argv: Sequence[str]) -> int:
    args, config, pairs = _parse(rewriter_parser(), argv, "rewriter")
    set_threads(args.threads)  # --judge generates answers before training starts
    if args.method == "dpo":
        if args.teacher or args.data_only:
            raise InputError("--teacher and --data-only belong to --method sft; --method dpo builds pairs from the rewriter's own rewrites")
        return run_dpo(args, argv, config, pairs, "rewriter")
    choices: list[RewardChoice] = []
    examples, report = build_rewriter_data(
        pairs,
        args.teacher,
        cache_dir=args.cache_dir,
        concurrency=args.concurrency,
        progress=not args.quiet and sys.stderr.isatty(),
        filter_given=args.filter_given,
        template=config.template,
        judge=args.judge,
        target=args.target,
        select_max_tokens=args.select_max_tokens,
        select_margin=args.select_margin,
        select_samples=args.select_samples,
        select_temperature=args.select_temperature if args.select_temperature is not None or args.select_samples == 1 else 0.7,
        choices_out=choices,
    )
    print(report.summary())
    out = Path(args.out)
    if choices:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "selection.jsonl").open("w", encoding="utf-8") as f:
            for c in choices:
                f.write(json.dumps(dict(asdict(c), gain=c.gain), ensure_ascii=False) + "\n")
    if not examples:
        raise InputError(f"{args.data}: no training examples (see the report above)")
    if args.data_only:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "rewriter_data.jsonl").open("w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps({"source": ex.source, "target": ex.target}, ensure_ascii=False) + "\n")
        print(f"wrote {len(examples)} examples to {out / 'rewriter_data.jsonl'}")
        return EXIT_OK
    result = train_sft(examples, config, out, resume=args.resume, progress=not args.quiet, device=args.device)
    return _finished(result)


# -- both -----------------------------------------------------------------------------------------
def _parser(kind: str, description: str, data_help: str) -> argparse.ArgumentParser:
    """The parser of ``alignware train <kind>`` with its ``--data`` and ``--out`` arguments."""
    p = argparse.ArgumentParser(prog=f"alignware train {kind}", description=description)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help="output folder for the adapter and its checkpoints")
    return p


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str], kind: str) -> tuple[argparse.Namespace, SFTConfig, list[PreferencePair]]:
    """The parsed arguments, the SFT settings they give for ``kind``, and the ``--data`` pairs (``--limit``)."""
    args = parser.parse_args(list(argv))
    return args, config_from_args(args, kind=kind), load_pairs(args.data, limit=args.limit)


def _finished(result: SFTResult) -> int:
    """Print the line about a finished SFT run; the exit status (130 when it was interrupted)."""
    print(_result_line(result))
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _result_line(result: SFTResult) -> str:
    """One line about a finished SFT run."""

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    speed = ""
    if result.train_seconds:
        speed = (
            f"; {result.tokens_per_second:.1f} target tok/s ({result.total_tokens_per_second:.1f} tok/s in all) "
            f"over {result.train_seconds:.0f} s of training"
        )
    line = (
        f"trained {result.steps} steps; held-out loss {f(result.eval_loss_untrained)} -> {f(result.eval_loss_final)}"
        f"{speed}; adapter in {result.out_dir}"
    )
    if result.steps < result.total_steps:
        why = "interrupted" if result.interrupted else "stopped"
        line += (
            f"\n{why} at step {result.steps} of {result.total_steps}: the adapter holds the weights so far; "
            f"rerun the same command to continue"
        )
    return line


# -- alignware train corrector -----------------------------------------------------------------
def corrector_parser() -> argparse.ArgumentParser:
    """``alignware train corrector`` arguments: data and the SFT flags."""
    p = _parser("corrector", "Train an Aligner response corrector (a LoRA adapter) from preference pairs.", "preference pairs (JSONL)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument(
        "--no-identity-warmup", dest="identity_warmup", action="store_false",
        help="skip the identity warm-up phase (answer = chosen -> chosen) before the correction phase",
    )
    add_dpo_args(p, "corrector")
    add_train_args(p)
    return p


def train_corrector_main(argv: Sequence[str]) -> int:
    """``alignware train corrector --data PAIRS --out DIR [SFT flags]``: the exit status (the policy every
    train verb shares, ``middleware.training.run_train_command``)."""
    return run_train_command(lambda: _train_corrector(argv))


def _train_corrector(argv: Sequence[str]) -> int:
    args, config, pairs = _parse(corrector_parser(), argv, "corrector")
    if args.method == "dpo":
        set_threads(args.threads)
        return run_dpo(args, argv, config, pairs, "corrector")
    examples, warmup = build_corrector_data(pairs, identity_warmup=args.identity_warmup, template=config.template)
    if not examples:
        raise InputError(f"{args.data}: no training examples (every pair has an empty chosen answer)")
    print(f"{len(pairs)} pairs: {len(examples)} correction examples, {len(warmup)} identity warm-up examples")
    set_threads(args.threads)
    result = train_sft(
        examples, config, Path(args.out), warmup_examples=warmup or None, resume=args.resume, progress=not args.quiet,
        device=args.device,
    )
    return _finished(result)
