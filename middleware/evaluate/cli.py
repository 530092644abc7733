"""``alignware eval``: judge a pipeline's stages, rejudge an earlier report, or measure a judge's
pairwise accuracy, from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import AlignwareError, CheckpointError, InputError
from .judges import accuracy, pair_margins
from .run import evaluate_pipeline
from .scoring import rejudge
from .stats import DEFAULT_EPSILON


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alignware eval",
        description="Judge a pipeline's stages against the plain answer with one or more reward models, or measure "
        "reward models' accuracy on labelled pairs (--pairs without --pipeline).",
    )
    p.add_argument("--pipeline", help="pipeline config (YAML/JSON)")
    p.add_argument("--prompts", help="prompts (JSONL: prompt-only rows or preference pairs)")
    p.add_argument("--judge", required=True, action="append",
                   help="reward model folder (alignware train reward --out DIR); give it again for more judges: "
                   "each scores the same answers and gets its own columns")
    p.add_argument("--judge-pairs", metavar="FILE",
                   help="labelled pairs (e.g. a held-out split): each judge's pairwise accuracy on them goes next to its "
                   "win rates (default: the held-out accuracy its training recorded, if any)")
    p.add_argument("--pairs", help="labelled pairs: report each judge's pairwise accuracy (no pipeline)")
    p.add_argument("--rejudge", metavar="REPORT", help="score the answers of an earlier report.json with --judge (no generation)")
    p.add_argument("--limit", type=int, help="use the first N prompts / pairs")
    p.add_argument("--seed", type=int, default=None, help="generation seed (default 0)")
    p.add_argument("--repeats", type=int, default=None, metavar="K",
                   help="run each variant K times per prompt (seeds SEED..SEED+K-1) and compare mean rewards (default 1)")
    p.add_argument("--max-tokens", type=int, help="answer length (default: the config's defaults)")
    p.add_argument("--epsilon", type=float, default=None,
                   help=f"rewards closer than this tie (default {DEFAULT_EPSILON:g}; with --rejudge the report's; with --pairs 0)")
    p.add_argument("--no-per-stage", action="store_true", help="only the whole chain, not each stage alone")
    p.add_argument("--no-control", action="store_true", help="leave out the control rows (first sentence; safety suffix, which costs one generation per prompt)")
    p.add_argument("--out", default="runs/eval", help="where to write report.json/.md/.png (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while generating (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="remote LLMs: send each variant's prompts async, at most N in flight (a local model batches instead)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _pairwise(args: argparse.Namespace) -> int:
    """``--pairs`` without a pipeline: each judge's pairwise accuracy, printed and written to
    ``pairwise.json`` (one judge: its fields; several: ``{"judges": [...]}``)."""
    epsilon = args.epsilon or 0.0
    rows = []
    for judge in args.judge:
        margins = pair_margins(judge, args.pairs, limit=args.limit, progress=not args.quiet)
        acc = accuracy(margins, epsilon)
        rows.append({"judge": judge, "pairs": args.pairs, "n": len(margins), "accuracy": acc,
                     "mean_margin": sum(margins) / len(margins), "epsilon": epsilon})
        print(f"pairwise accuracy of {judge} on {args.pairs}: {acc:.3f} ({len(margins)} pairs, mean margin {rows[-1]['mean_margin']:+.3f})")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        out = rows[0] if len(rows) == 1 else {"judges": rows}
        (Path(args.out) / "pairwise.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``alignware eval ...``: returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads must be 1 or more, got {args.threads}", file=sys.stderr)
        return 2
    if args.concurrency is not None and args.concurrency < 1:
        print(f"error: --concurrency must be 1 or more, got {args.concurrency}", file=sys.stderr)
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
                          "--no-per-stage": args.no_per_stage or None, "--no-control": args.no_control or None,
                          "--concurrency": args.concurrency}
            given = [flag for flag, value in generation.items() if value is not None]
            if given:
                print(f"error: --rejudge scores the report's answers as they are; {', '.join(given)} "
                      "only apply when answers are generated", file=sys.stderr)
                return 2
            report = rejudge(args.rejudge, args.judge, epsilon=args.epsilon, progress=not args.quiet, judge_pairs=args.judge_pairs)
            print(report.to_markdown())
            paths = report.write(args.out)
            print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['png']}")
            return 0
        if args.pipeline is None:
            if not args.pairs:
                print("error: give --pipeline CONFIG --prompts FILE, or --pairs FILE for pairwise accuracy", file=sys.stderr)
                return 2
            if args.judge_pairs:
                print("error: --judge-pairs goes with a report; --pairs alone measures the judges' accuracy", file=sys.stderr)
                return 2
            return _pairwise(args)
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
            judge_pairs=args.judge_pairs,
            concurrency=args.concurrency,
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
