"""Train a small prompt rewriter (BPO style) and put it in front of a model.

The data is preference pairs in the project's JSONL format. Rows that carry an ``optimized_prompt`` (the
format of the published BPO data, and of ``examples/rewriter_pairs.jsonl`` here) are used as they are;
for rows without one, pass ``--teacher MODEL`` and a teacher LLM writes the better prompt from the
pair's chosen and rejected answers (BPO's procedure). The rewriter is a LoRA adapter on a small base
model (default: the embedded SmolLM2-135M-Instruct); the adapter folder it writes is what
``PromptRewriter.from_pretrained`` and ``type: prompt_rewriter`` in a pipeline config load.

    python examples/train_rewriter.py --out runs/example_rewriter     # 40 steps: a few minutes on a CPU
    python examples/train_rewriter.py --data ../shared/data/bpo_pairs.jsonl --epochs 2 --out runs/rewriter

The same run from the command line: ``alignware train rewriter --data PAIRS --out DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from middleware import FunctionLLM, Pipeline  # noqa: E402
from middleware.sft import train_sft  # noqa: E402
from rewriters import PromptRewriter  # noqa: E402
from rewriters.rewriter_data import build_rewriter_data  # noqa: E402
from rewriters.sft_config import SFTConfig  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE / "rewriter_pairs.jsonl"), help="preference pairs (JSONL)")
    p.add_argument("--out", default="runs/example_rewriter", help="where the adapter goes")
    p.add_argument("--base-model", default=None, help="base model folder (default: the embedded model)")
    p.add_argument("--teacher", default=None, help="LLM that writes better prompts for rows without one")
    p.add_argument("--epochs", type=float, default=10.0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens the trained rewriter may write")
    args = p.parse_args()

    # 1. preference pairs -> (prompt, better prompt) examples
    examples, report = build_rewriter_data(args.data, args.teacher, progress=False)
    print(report.summary())

    # 2. a LoRA adapter trained on them (checkpoints under OUT/checkpoints; a rerun resumes)
    config = SFTConfig(
        kind="rewriter", template="bpo", base_model=args.base_model, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=4, max_length=256, learning_rate=5e-4, eval_fraction=0.2, eval_every=10, save_every=10,
    )
    result = train_sft(examples, config, args.out, progress=sys.stderr.isatty())
    print(f"adapter in {result.out_dir}: {result.steps} steps, held-out loss "
          f"{result.eval_loss_untrained:.3f} -> {result.eval_loss_final:.3f}")

    # 3. the trained rewriter in front of a model; here a function that shows what it was asked
    rewriter = PromptRewriter.from_pretrained(result.out_dir, max_new_tokens=args.max_tokens)
    target = FunctionLLM(lambda messages: f"(the model was asked: {messages[-1]['content']!r})", name="show-prompt")
    pipeline = Pipeline(target, stages=[rewriter])
    reply = pipeline.chat("tips for a job interview")
    print(reply.text)
    print(reply.trace_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
