"""``--method dpo`` of ``alignware train rewriter|corrector``: the flags (:func:`add_dpo_args`) and the run
(:func:`run_dpo`): preference examples from the pairs (``build_rewrite_pairs`` / ``build_correction_pairs``),
then ``middleware.dpo.train_dpo``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from middleware.dpo import DPOResult, train_dpo
from middleware.dpo_data import DPOExample
from middleware.dpo_loss import DPO_LOSSES, DPOSettings
from middleware.errors import InputError
from middleware.training import EXIT_INTERRUPTED, EXIT_OK
from middleware.types import PreferencePair

from .correction_pairs import build_correction_pairs
from .preference_pairs import MinGap, PairReport
from .rewrite_pairs import build_rewrite_pairs
from .sft_config import SFTConfig

__all__ = ["DPO_LEARNING_RATE", "add_dpo_args", "run_dpo"]

#: The learning rate of ``--method dpo`` when ``--learning-rate`` is not given.
DPO_LEARNING_RATE = 5e-5


def add_dpo_args(parser: argparse.ArgumentParser, kind: str) -> None:
    """``--method`` and the DPO flags. The rewriter's ``--judge``, ``--target`` and ``--select-max-tokens``
    serve its pair builder too; the corrector gets its own ``--judge``."""
    parser.add_argument("--method", choices=("sft", "dpo"), default="sft",
                        help="sft: supervised fine-tuning on the chosen answers (default); dpo: direct preference optimisation")
    g = parser.add_argument_group("preference optimisation (--method dpo)")
    g.add_argument("--init", default=None, metavar="DIR",
                   help=f"start from this {kind} adapter (e.g. an SFT run) and use it as the reference (default: a fresh "
                        "adapter, reference = the base model)")
    g.add_argument("--beta", type=float, default=DPOSettings.beta, help="pull towards the reference (default %(default)s)")
    g.add_argument("--dpo-loss", choices=DPO_LOSSES, default="sigmoid", help="loss variant (default %(default)s)")
    g.add_argument("--samples", type=int, default=4, metavar="K",
                   help=f"{kind} samples per training row for pairs of its own outputs, with --judge (default %(default)s)")
    g.add_argument("--min-gap", default="1.0",
                   help="reward gap a pair of own samples needs, or 'auto' (twice the measured spread between two "
                        "answers to the same prompt) (default %(default)s)")
    if kind == "corrector":
        g.add_argument("--judge", default=None,
                       help="reward model folder: add pairs of the corrector's own corrections (of the rejected answers), "
                            "ranked by this judge; needs --init (the corrector that samples)")
        g.add_argument("--cache-dir", default=None, help="where sampled corrections and scores are cached")


def _min_gap(text: str) -> MinGap:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--min-gap must be a number or 'auto', got {text!r}") from None


def _examples(args: argparse.Namespace, config: SFTConfig, pairs: list[PreferencePair], kind: str) -> tuple[list[DPOExample], PairReport]:
    progress = not args.quiet and sys.stderr.isatty()
    if kind == "rewriter":
        if not args.judge or not args.init:
            raise InputError("--method dpo for the rewriter builds pairs from its own rewrites: give --init (the rewriter "
                             "that samples, e.g. an SFT run) and --judge (the reward model)")
        return build_rewrite_pairs(
            pairs, args.init, args.target, args.judge, samples=args.samples, min_gap=_min_gap(args.min_gap),
            max_tokens=args.select_max_tokens, seed=config.seed, template=config.template, cache_dir=args.cache_dir,
            progress=progress,
        )
    if args.judge and not args.init:
        raise InputError("--judge adds pairs of the corrector's own corrections: give --init (the corrector that samples)")
    return build_correction_pairs(
        pairs, args.init if args.judge else None, args.judge, samples=args.samples, min_gap=_min_gap(args.min_gap),
        seed=config.seed, template=config.template, cache_dir=args.cache_dir, progress=progress,
    )


def run_dpo(args: argparse.Namespace, argv: Sequence[str], config: SFTConfig, pairs: list[PreferencePair], kind: str) -> int:
    """Build the preference examples, train by DPO, print what happened; the exit status."""
    if not any(a.split("=")[0] in ("--lr", "--learning-rate") for a in argv):
        config = replace(config, learning_rate=DPO_LEARNING_RATE)
    settings = DPOSettings(beta=args.beta, loss=args.dpo_loss)
    settings.validate()
    examples, report = _examples(args, config, pairs, kind)
    print(report.summary())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs_report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    if not examples:
        raise InputError(f"{args.data}: no preference examples (see the report above)")
    result = train_dpo(examples, config, out, settings=settings, init=args.init, resume=args.resume, progress=not args.quiet,
                       device=args.device)
    print(result_line(result))
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def result_line(result: DPOResult) -> str:
    """One line (two when it stopped early) about a finished DPO run."""

    def f(m: dict[str, Any] | None) -> str:
        if not m:
            return "n/a"
        return f"loss {m['eval_loss']:.4f}, accuracy {m['eval_rewards_accuracy']:.3f}, margin {m['eval_rewards_margin']:+.3f}"

    line = (f"trained {result.steps} steps by DPO; held out ({result.held_out} pairs): {f(result.eval_untrained)} -> "
            f"{f(result.eval_final)}; {result.pairs_per_second:.3f} pairs/s; adapter in {result.out_dir}")
    if result.steps < result.total_steps:
        why = "interrupted" if result.interrupted else "stopped"
        line += (f"\n{why} at step {result.steps} of {result.total_steps}: the adapter holds the weights so far; "
                 f"rerun the same command to continue")
    return line
