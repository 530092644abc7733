"""Training throughput of ``middleware.dpo.train_dpo`` against TRL's ``DPOTrainer``, in one run.

Same base model (the embedded SmolLM2-135M-Instruct, float32), same LoRA settings (r, alpha, target
modules; dropout 0 on both, since ``DPOTrainer`` switches dropout off by default), same pairs (the first
``steps × batch`` pairs of ``../shared/data/hh_harmless.jsonl``, as corrector examples: the Aligner template
on the question and the rejected answer as the prompt, the chosen and the rejected answer as the two
completions), β 0.1, sigmoid loss, batch size, max length, learning rate, steps, machine and threads.
Both use the base with the adapter switched off as the reference. TRL runs as documented for CPU: bf16
off, gradient checkpointing off, no evaluation, no saving, no reporting.

The measure is pairs per second of training, reference included: ``train_dpo`` computes the reference
log-probabilities of every pair once before its first step, ``DPOTrainer`` (its default,
``precompute_ref_log_probs=False``) in every step. Both run one epoch over the same pairs, so both do the
same reference work; ours is charged its reference pass per pair. Step times are taken from the end of one
optimizer step to the end of the next, skipping the first ``--skip`` steps, in wall-clock time and in this
process's CPU time (steadier on a shared machine).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dpo_throughput.py [--steps 6] [--skip 1]

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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless.jsonl"


def load_examples(path: Path, n: int) -> list[Any]:
    from middleware.dpo_data import DPOExample
    from middleware.types import load_pairs
    from rewriters.templates import get_template

    aligner = get_template("aligner-v1.0")
    out = []
    for p in load_pairs(path):
        if p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected:
            out.append(DPOExample(aligner.render(question=p.question, answer=p.rejected), p.chosen, p.rejected))
        if len(out) == n:
            break
    return out


def clock() -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def step_rate(times: list[tuple[float, float]], pairs: list[int], skip: int) -> dict[str, float]:
    """Pairs, wall and CPU seconds over steps ``skip+1..``; ``times[k]`` is the clock at the end of step k+1."""
    steps = range(max(1, skip), len(times))
    return {"pairs": sum(pairs[k] for k in steps), "wall": sum(times[k][0] - times[k - 1][0] for k in steps),
            "cpu": sum(times[k][1] - times[k - 1][1] for k in steps), "steps_timed": len(steps)}


def run_alignware(examples: list[Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from middleware.dpo import train_dpo
    from middleware.dpo_loss import DPOSettings
    from rewriters.sft_config import SFTConfig

    cfg = SFTConfig(
        base_model=None, template="aligner-v1.0", kind="corrector", lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=0.0, target_modules=tuple(args.target_modules), learning_rate=5e-5, epochs=1.0,
        batch_size=args.batch_size, max_length=args.max_length, eval_fraction=0.0, eval_every=10**9,
        save_every=10**9, seed=0, max_steps=args.steps,
    )
    times: list[tuple[float, float]] = []
    pairs: list[int] = []

    def on_step(row: dict[str, Any]) -> None:
        times.append(clock())
        pairs.append(args.batch_size)

    ref: dict[str, float] = {}
    import middleware.dpo as dpo

    real = dpo.reference_logps

    def timed_reference(*a: Any, **k: Any) -> Any:
        w, c = clock()
        result = real(*a, **k)
        ref["wall"], ref["cpu"] = time.perf_counter() - w, time.process_time() - c
        return result

    dpo.reference_logps = timed_reference  # type: ignore[assignment]
    try:
        train_dpo(examples, cfg, out, settings=DPOSettings(beta=0.1), resume=False, progress=True, callback=on_step)
    finally:
        dpo.reference_logps = real  # type: ignore[assignment]
    r = step_rate(times, pairs, args.skip)
    share = r["pairs"] / len(examples)  # the timed pairs' share of the reference pass
    r["wall"] += ref["wall"] * share
    r["cpu"] += ref["cpu"] * share
    return r


def run_trl(examples: list[Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from middleware.models import load_causal_lm

    model, tok = load_causal_lm(None)
    tok.padding_side = "right"
    ds = Dataset.from_list([{"prompt": ex.source, "chosen": ex.chosen, "rejected": ex.rejected} for ex in examples])
    cfg = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=5e-5,
        lr_scheduler_type="linear", warmup_steps=0, max_length=args.max_length, beta=0.1, loss_type=["sigmoid"],
        bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", eval_strategy="no",
        save_strategy="no", logging_steps=max(1, args.steps), dataloader_num_workers=0, seed=0,
        use_cpu=not torch.cuda.is_available(),
    )
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                      target_modules=list(args.target_modules), bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    times: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(clock())

    trainer.add_callback(Timer())
    kept = len(trainer.train_dataset)  # type: ignore[arg-type]
    if kept < len(examples):
        print(f"TRL kept {kept} of {len(examples)} pairs (it drops pairs whose prompt fills --max-length)")
    trainer.train()
    return step_rate(times, [args.batch_size] * len(times), args.skip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per trainer, one epoch (default 6)")
    ap.add_argument("--skip", type=int, default=1, help="warm-up steps not timed (default 1)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=384)
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

    examples = load_examples(args.data, args.steps * args.batch_size)
    print(f"data: {len(examples)} HH pairs from {args.data} as corrector examples; batch {args.batch_size}, max_length "
          f"{args.max_length}, LoRA r={args.lora_r} alpha={args.lora_alpha} on {' '.join(args.target_modules)}; "
          f"float32; {args.steps} steps each ({args.skip} untimed); torch {torch.__version__}, trl {trl.__version__}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="alignware-bench-") as tmp:
        ours = run_alignware(examples, args, Path(tmp) / "alignware")
        theirs = run_trl(examples, args, Path(tmp) / "trl")
    print()
    print(f"{'trainer':<22}{'pairs/s':>10}{'pairs/CPU-s':>14}{'steps':>7}")
    for name, r in (("alignware train_dpo", ours), ("TRL DPOTrainer", theirs)):
        print(f"{name:<22}{r['pairs'] / r['wall']:>10.3f}{r['pairs'] / r['cpu']:>14.3f}{r['steps_timed']:>7}")
    ratio = (ours["pairs"] / ours["wall"]) / (theirs["pairs"] / theirs["wall"])
    cpu_ratio = (ours["pairs"] / ours["cpu"]) / (theirs["pairs"] / theirs["cpu"])
    print(f"\nRESULT: train_dpo trains at {ratio:.2f}x TRL DPOTrainer's speed in pairs per wall-clock second and "
          f"{cpu_ratio:.2f}x per CPU-second (reference passes included); goal >= 1.0x: "
          f"{'met' if min(ratio, cpu_ratio) >= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
