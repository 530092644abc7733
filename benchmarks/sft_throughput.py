"""Training throughput of ``middleware.sft.train_sft`` against TRL's ``SFTTrainer``, in one run.

Same base model (the embedded SmolLM2-135M-Instruct, float32), same LoRA settings (r, alpha, dropout,
target modules), same data (``../shared/data/bpo_pairs.jsonl``, prompts rendered with the BPO template,
the optimized prompt as the completion, loss on the completion only in both), batch size, max length,
learning rate, number of steps, machine and threads. TRL is run as documented for CPU: bf16 off,
gradient checkpointing off, no evaluation, no saving, no reporting.

The measure is target tokens (the supervised completion tokens, EOS included) per second of training,
timed from the end of one optimizer step to the end of the next (data loading, forward, backward and
update included), skipping the first ``--skip`` steps of each trainer as warm-up, in wall-clock time and
in this process's CPU time (steadier on a machine other jobs share). Total (non-padding) tokens per
second are printed as well.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sft_throughput.py [--steps 8] [--skip 1]

Needs ``pip install trl`` (benchmark only) and the shared data folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bpo_pairs.jsonl"


def load_examples(path: Path) -> list[Any]:
    from middleware.types import load_pairs
    from middleware.sft_data import SFTExample
    from rewriters.templates import get_template

    bpo = get_template("bpo")
    return [SFTExample(bpo.render(prompt=p.question), p.optimized_prompt) for p in load_pairs(path) if p.optimized_prompt]


def clock() -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def rate(times: list[tuple[float, float]], target: list[int], total: list[int], skip: int) -> dict[str, float]:
    """Tokens per second over steps ``skip+1..``; ``times[k]`` is the clock at the end of step k+1.

    ``*_tps`` use wall-clock time; ``*_tpcs`` use the process's CPU time, which other work on a shared
    machine disturbs much less.
    """
    steps = range(max(1, skip), len(times))
    wall = sum(times[k][0] - times[k - 1][0] for k in steps)
    cpu = sum(times[k][1] - times[k - 1][1] for k in steps)
    tgt, tot = sum(target[k] for k in steps), sum(total[k] for k in steps)
    return {"target_tps": tgt / wall, "total_tps": tot / wall, "target_tpcs": tgt / cpu, "total_tpcs": tot / cpu,
            "steps_timed": len(steps), "wall": wall, "cpu": cpu}


def run_alignware(examples: list[Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from middleware.sft import train_sft
    from rewriters.sft_config import SFTConfig

    cfg = SFTConfig(
        base_model=None, template="bpo", kind="rewriter", lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=0.05, target_modules=tuple(args.target_modules), learning_rate=2e-4, epochs=100.0,
        batch_size=args.batch_size, max_length=args.max_length, eval_fraction=0.0, eval_every=10**9,
        save_every=10**9, seed=0, max_steps=args.steps,
    )
    times: list[tuple[float, float]] = []
    target: list[int] = []
    total: list[int] = []

    def on_step(row: dict[str, Any]) -> None:
        times.append(clock())
        target.append(int(row["target_tokens"]))
        total.append(int(row["tokens"]))

    train_sft(examples, cfg, out, resume=False, progress=True, callback=on_step)
    return rate(times, target, total, args.skip)


def run_trl(examples: list[Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from middleware.models import load_causal_lm

    model, tok = load_causal_lm(None)
    tok.padding_side = "right"
    ds = Dataset.from_list([{"prompt": ex.source, "completion": ex.target} for ex in examples])
    cfg = TRLConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=2e-4,
        lr_scheduler_type="linear", warmup_steps=0, max_length=args.max_length, completion_only_loss=True,
        packing=False, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", eval_strategy="no",
        save_strategy="no", logging_steps=max(1, args.steps), dataloader_num_workers=0, seed=0,
        use_cpu=not torch.cuda.is_available(),
    )
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.05,
                      target_modules=list(args.target_modules), bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)

    target: list[int] = []
    total: list[int] = []
    collator = trainer.data_collator

    def counting_collator(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(rows)
        target.append(int((batch["labels"][:, 1:] != -100).sum()))
        total.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    times: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(clock())

    trainer.add_callback(Timer())
    trainer.train()
    return rate(times, target[: len(times)], total[: len(times)], args.skip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer (default 8)")
    ap.add_argument("--skip", type=int, default=1, help="warm-up steps not timed (default 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--target-modules", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj"])
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found: the shared preference data sits beside the checkout (../shared/data)")
    try:
        import trl
    except ImportError:
        sys.exit("TRL is not installed: `.venv/bin/pip install trl torch==2.13.0` (benchmark only)")
    import torch

    examples = load_examples(args.data)
    print(f"data: {len(examples)} BPO pairs from {args.data}; batch {args.batch_size}, max_length {args.max_length}, "
          f"LoRA r={args.lora_r} alpha={args.lora_alpha} on {' '.join(args.target_modules)}; float32; "
          f"{args.steps} steps each ({args.skip} untimed); torch {torch.__version__}, trl {trl.__version__}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="alignware-bench-") as tmp:
        ours = run_alignware(examples, args, Path(tmp) / "alignware")
        theirs = run_trl(examples, args, Path(tmp) / "trl")
    print()
    print(f"{'trainer':<22}{'target tok/s':>14}{'total tok/s':>13}{'target tok/CPU-s':>18}{'total tok/CPU-s':>17}{'steps':>7}")
    for name, r in (("alignware train_sft", ours), ("TRL SFTTrainer", theirs)):
        print(f"{name:<22}{r['target_tps']:>14.1f}{r['total_tps']:>13.1f}{r['target_tpcs']:>18.1f}{r['total_tpcs']:>17.1f}"
              f"{r['steps_timed']:>7}")
    ratio = ours["target_tps"] / theirs["target_tps"]
    cpu_ratio = ours["target_tpcs"] / theirs["target_tpcs"]
    print(f"\nRESULT: train_sft trains at {ratio:.2f}x TRL SFTTrainer's speed in target tokens per wall-clock second "
          f"({ours['target_tps']:.1f} vs {theirs['target_tps']:.1f}) and {cpu_ratio:.2f}x per CPU-second "
          f"({ours['target_tpcs']:.1f} vs {theirs['target_tpcs']:.1f}); goal >= 1.0x: "
          f"{'met' if min(ratio, cpu_ratio) >= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
