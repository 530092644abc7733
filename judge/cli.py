"""``alignware train reward``: train a reward model on preference pairs from the command line."""

from __future__ import annotations

import argparse
import sys

from middleware.errors import CheckpointError, InputError
from middleware.training import set_threads
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
    p.add_argument("--data", required=True, help="preference pairs (JSONL: prompt, chosen, rejected)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, the final model, metrics.json, training.png")
    p.add_argument("--eval-data", help="held-out pairs (default: --eval-fraction of --data)")
    p.add_argument("--eval-fraction", type=float, default=t.eval_fraction, help="share of --data held out (default %(default)s)")
    p.add_argument("--limit", type=int, help="use only the first N pairs of --data")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default=d.backbone, help="'embedded', a model folder or a .gguf file (default %(default)s)")
    m.add_argument("--max-length", type=int, default=d.max_length, help="tokens per prompt+response (default %(default)s)")
    m.add_argument("--layers", type=int, help="keep only the first N transformer blocks")
    m.add_argument("--train", choices=["lora", "full", "head"], default=d.train, help="what to train (default %(default)s)")
    m.add_argument("--train-layers", type=int, help="adapt only the top N blocks (default: all)")
    m.add_argument("--lora-r", type=int, default=d.lora_r)
    m.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    m.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=float, default=t.epochs, help="default %(default)s")
    o.add_argument("--max-steps", type=int, help="total steps (overrides --epochs)")
    o.add_argument("--batch-size", type=int, default=t.batch_size, help="pairs per step (default %(default)s)")
    o.add_argument("--lr", type=float, help="learning rate (default: 2e-4 lora, 5e-5 full, 1e-3 head)")
    o.add_argument("--head-lr", type=float, help="learning rate of the head (default: max(lr, 1e-3))")
    o.add_argument("--weight-decay", type=float, default=t.weight_decay)
    o.add_argument("--warmup-ratio", type=float, default=t.warmup_ratio)
    o.add_argument("--seed", type=int, default=t.seed)
    o.add_argument("--no-bucket", action="store_true", help="do not group pairs of similar length")
    o.add_argument("--no-share-prompt", action="store_true", help="encode the prompt separately for each answer")
    r = p.add_argument_group("checkpoints")
    r.add_argument("--save-every", type=int, default=t.save_every, help="checkpoint every N steps (default %(default)s)")
    r.add_argument("--eval-every", type=int, help="evaluate every N steps (default: with each checkpoint)")
    r.add_argument("--keep", type=int, default=t.keep, help="checkpoints to keep (default %(default)s)")
    r.add_argument("--stop-after", type=int, help="stop after N steps in total (rerun to continue)")
    r.add_argument("--fresh", action="store_true", help="start over: remove the earlier run's checkpoints and final model from --out first")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def train_main(argv: list[str] | None = None) -> int:
    """``alignware train reward ...``: returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        set_threads(args.threads)
        mcfg = RewardConfig(
            backbone=args.backbone,
            max_length=args.max_length,
            layers=args.layers,
            train=args.train,
            train_layers=args.train_layers,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
        )
        tcfg = TrainConfig(
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            head_lr=args.head_lr,
            weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio,
            eval_fraction=0.0 if args.eval_data else args.eval_fraction,
            eval_every=args.eval_every,
            save_every=args.save_every,
            keep=args.keep,
            seed=args.seed,
            bucket=not args.no_bucket,
            share_prompt=not args.no_share_prompt,
            stop_after=args.stop_after,
        )
        pairs = load_pairs(args.data, limit=args.limit)
        res = train_reward_model(
            pairs, args.out, mcfg, tcfg, eval_pairs=args.eval_data, resume=not args.fresh, progress=not args.quiet, device=args.device
        )
    except (InputError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InputError) else 1
    m = res.metrics
    acc = f"{m['eval_acc']:.3f}" if m.get("eval_acc") is not None else "n/a"
    pps = f"{m['pairs_per_second']:.2f}" if m.get("pairs_per_second") else "n/a"
    if res.finished:
        feat = f" (head only; backbone features took {m['feature_seconds_this_run']:.0f} s)" if m.get("feature_seconds_this_run") else ""
        print(f"done: {res.steps} steps, held-out pairwise accuracy {acc} on {m['n_eval']} pairs, {pps} pairs/s{feat}")
        print(f"model: {res.out_dir}  (RewardModel.load({str(res.out_dir)!r}))  plot: {res.out_dir / PLOT_FILE}")
    else:
        print(f"stopped after {res.steps} of {res.total_steps} steps (held-out accuracy {acc}); rerun the same command to resume")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(train_main())
