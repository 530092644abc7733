"""Reward-model training throughput: alignware's trainer vs TRL's ``RewardTrainer``.

Both train the same backbone (float32, same trainable weights: LoRA on the same modules of the same
blocks, plus the scalar head), on the same pairs tokenized once by alignware (so both see identical token
ids, truncated to the same ``--max-length``), with the same batch size and learning rate, one epoch each, on
this machine. Throughput is pairs per second of optimizer-step time (forward, backward, update), summed over
the steps of each trainer. The CPU is shared, so the two trainers alternate for ``--rounds`` rounds and the
medians are compared.

    .venv/bin/pip install trl            # benchmark-only dependency (the `bench` extra)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reward_throughput.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "hh_harmless.jsonl"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED), help="preference pairs (default: ../shared/data/hh_harmless.jsonl)")
    p.add_argument("--pairs", type=int, default=48, help="pairs per trainer and round (one epoch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--backbone", default="embedded")
    p.add_argument("--layers", type=int, default=None, help="keep the first N blocks (both trainers)")
    p.add_argument("--train-layers", type=int, default=4, help="LoRA on the top N blocks (both trainers)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def ours(pairs, args, rm_cfg) -> float:
    from judge import TrainConfig, train_reward_model

    with tempfile.TemporaryDirectory() as d:
        res = train_reward_model(
            pairs,
            d,
            rm_cfg,
            TrainConfig(epochs=1, batch_size=args.batch_size, learning_rate=args.lr, head_lr=args.lr, eval_fraction=0.0, save_every=10**6, seed=args.seed, warmup_ratio=0.0),
            progress=False,
        )
    return float(res.metrics["pairs_per_second"])


def trl_run(encoded, args, rm_cfg) -> float:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import RewardConfig as TRLConfig
    from trl import RewardTrainer

    from middleware.models import resolve_model_path
    from judge.model import _linear_names, _truncate_layers
    from middleware.models import decoder_layers_path

    folder = resolve_model_path(None if args.backbone == "embedded" else args.backbone)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    hf_logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    base = model.base_model
    if args.layers:
        _truncate_layers(base, args.layers)
    blocks, path = decoder_layers_path(base)
    n = len(blocks)
    top = min(args.train_layers or n, n)
    peft_cfg = LoraConfig(
        r=rm_cfg.lora_r,
        lora_alpha=rm_cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules=_linear_names(blocks),
        layers_to_transform=list(range(n - top, n)),
        layers_pattern=path.rsplit(".", 1)[-1],
        modules_to_save=["score"],
        task_type="SEQ_CLS",
    )
    data = Dataset.from_dict(
        {"chosen_ids": [e.prompt + e.chosen for e in encoded], "rejected_ids": [e.prompt + e.rejected for e in encoded]}
    )

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.total, self.t0, self.steps = 0.0, 0.0, 0

        def on_step_begin(self, a, s, c, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):  # noqa: ANN001
            self.total += time.perf_counter() - self.t0
            self.steps += 1

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as d:
        cfg = TRLConfig(
            output_dir=d,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            max_length=args.max_length,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=10**6,
            dataloader_num_workers=0,
            use_cpu=True,
            disable_tqdm=True,
            seed=args.seed,
        )
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=peft_cfg, callbacks=[timer])
        trainer.train()
    if timer.steps != -(-len(encoded) // args.batch_size):
        raise RuntimeError(f"TRL ran {timer.steps} steps, expected {-(-len(encoded) // args.batch_size)} (pairs filtered?)")
    return len(encoded) / timer.total


def main() -> int:
    import torch

    from middleware.types import load_pairs
    from judge import RewardConfig, RewardModel

    args = parse()
    data = Path(args.data)
    if not data.is_file():
        print(f"{data} not found: the shared preference data sits beside the checkout; pass --data FILE", file=sys.stderr)
        return 2
    try:
        import trl  # noqa: F401
    except ImportError:
        print("TRL is not installed: .venv/bin/pip install trl (benchmark-only dependency)", file=sys.stderr)
        return 2
    pairs = load_pairs(data, limit=args.pairs)
    rm_cfg = RewardConfig(backbone=args.backbone, max_length=args.max_length, layers=args.layers, train="lora", train_layers=args.train_layers, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    encoded = RewardModel.create(rm_cfg).encode_pairs(pairs)
    toks = sum(len(e.prompt) + len(e.chosen) + len(e.prompt) + len(e.rejected) for e in encoded) / len(encoded)
    print(
        f"{len(pairs)} pairs from {data.name}, batch {args.batch_size}, max_length {args.max_length}, float32, "
        f"backbone {args.backbone} ({args.layers or 'all'} blocks, LoRA r={args.lora_r} on the top {args.train_layers}), "
        f"{toks:.0f} tokens per pair (chosen + rejected), torch threads {torch.get_num_threads()}",
        flush=True,
    )
    a, b = [], []
    for r in range(args.rounds):
        a.append(ours(pairs, args, rm_cfg))
        print(f"round {r + 1}: alignware {a[-1]:.3f} pairs/s", flush=True)
        b.append(trl_run(encoded, args, rm_cfg))
        print(f"round {r + 1}: TRL RewardTrainer {b[-1]:.3f} pairs/s", flush=True)
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"RESULT: alignware {ma:.3f} pairs/s vs TRL RewardTrainer {mb:.3f} pairs/s -> {ma / mb:.2f}x (median of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
