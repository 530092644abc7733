"""``alignware train reward``: train a reward model on preference pairs from the command line.

The flags every ``alignware train ...`` verb shares and the exit codes are those of
``middleware.training`` (``add_training_flags``, ``run_train_command``).
"""

from __future__ import annotations

import argparse
import sys

from middleware.training import EXIT_INTERRUPTED, EXIT_OK, add_training_flags, flag_values, run_train_command, set_threads
from middleware.types import load_pairs

from .config import PLOT_FILE, RewardConfig, TrainConfig
from .train import train_reward_model


def _parser() -> argparse.ArgumentParser:
    d, t = RewardConfig(), TrainConfig()
    p = argparse.ArgumentParser(
        prog="alignware train reward",
        description="Train a reward model on preference pairs (Bradley–Terry loss). Rerunning the same command "
        "resumes from the newest good checkpoint in --out.",
    )
    p.add_argument("--data", required=True, nargs="+", metavar="FILE",
                   help="preference pairs (JSONL: prompt, chosen, rejected); several files are trained on together")
    p.add_argument("--out", required=True, help="run folder: checkpoints, the final model, metrics.json, training.png")
    p.add_argument("--eval-data", help="held-out pairs (default: --eval-fraction of --data)")
    p.add_argument("--limit", type=int, help="use only the first N pairs of each --data file")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="leave out rows that are not valid pairs (e.g. a chosen answer that is JSON true), and say how many")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default=d.backbone, help="'embedded', a model folder or a .gguf file (default %(default)s)")
    m.add_argument("--max-length", type=int, default=d.max_length, help="tokens per prompt+response (default %(default)s)")
    m.add_argument("--layers", type=int, help="keep only the first N transformer blocks")
    m.add_argument("--train", choices=["lora", "full", "head"], default=d.train, help="what to train (default %(default)s)")
    m.add_argument("--train-layers", type=int, help="adapt only the top N blocks (default: all)")
    m.add_argument("--lora-r", type=int, default=d.lora_r)
    m.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    m.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    o = p.add_argument_group("training")
    add_training_flags(
        o, epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, eval_fraction=t.eval_fraction,
        eval_every=t.eval_every, save_every=t.save_every, keep_checkpoints=t.keep_checkpoints, seed=t.seed, unit="pairs",
        learning_rate_help="learning rate (default: 2e-4 lora, 5e-5 full, 1e-3 head)",
        eval_every_help="evaluate every N steps (default: with each checkpoint)",
        max_steps_help="total steps (overrides --epochs)", device=True,
    )
    o.add_argument("--head-lr", type=float, help="learning rate of the head (default: max(learning rate, 1e-3))")
    o.add_argument("--weight-decay", type=float, default=t.weight_decay)
    o.add_argument("--warmup-ratio", type=float, default=t.warmup_ratio)
    o.add_argument("--no-bucket", action="store_true", help="do not group pairs of similar length")
    o.add_argument("--no-share-prompt", action="store_true", help="encode the prompt separately for each answer")
    o.add_argument("--stop-after", type=int, help="stop after N steps in total (rerun to continue)")
    return p


def _configs(args: argparse.Namespace) -> tuple[RewardConfig, TrainConfig]:
    """The model and training settings the flags give (each flag named like its config field)."""
    mcfg = RewardConfig(**flag_values(RewardConfig, args))
    tcfg = TrainConfig(
        **flag_values(TrainConfig, args, skip=("eval_fraction",)),
        eval_fraction=0.0 if args.eval_data else args.eval_fraction,
        bucket=not args.no_bucket,
        share_prompt=not args.no_share_prompt,
    )
    return mcfg, tcfg


def _train(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    mcfg, tcfg = _configs(args)
    skipped: list[str] | None = [] if args.skip_bad_rows else None
    pairs = [p for path in args.data for p in load_pairs(path, limit=args.limit, skipped=skipped)]
    if skipped:
        print(f"skipped {len(skipped)} bad rows (first: {skipped[0]})", file=sys.stderr)
    res = train_reward_model(
        pairs, args.out, mcfg, tcfg, eval_pairs=args.eval_data, resume=args.resume, progress=not args.quiet, device=args.device
    )
    m = res.metrics
    acc = f"{m['eval_acc']:.3f}" if m.get("eval_acc") is not None else "n/a"
    pps = f"{m['pairs_per_second']:.2f}" if m.get("pairs_per_second") else "n/a"
    if res.finished:
        feat = f" (head only; backbone features took {m['feature_seconds_this_run']:.0f} s)" if m.get("feature_seconds_this_run") else ""
        print(f"done: {res.steps} steps, held-out pairwise accuracy {acc} on {m['n_eval']} pairs, {pps} pairs/s{feat}")
        print(f"model: {res.out_dir}  (RewardModel.load({str(res.out_dir)!r}))  plot: {res.out_dir / PLOT_FILE}")
    elif res.interrupted:
        print(f"interrupted after {res.steps} of {res.total_steps} steps (held-out accuracy {acc}): the last finished step "
              "is saved; rerun the same command to resume")
        return EXIT_INTERRUPTED
    else:
        print(f"stopped after {res.steps} of {res.total_steps} steps (held-out accuracy {acc}); rerun the same command to resume")
    return EXIT_OK


def train_main(argv: list[str] | None = None) -> int:
    """``alignware train reward ...``: returns the process exit status (see ``run_train_command``)."""
    args = _parser().parse_args(argv)
    return run_train_command(lambda: _train(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(train_main())
