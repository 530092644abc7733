"""Generation speed with each steering method against plain decoding, side by side in one run.

Every arm answers the same prompts greedily through ``LocalBackend.complete`` on the embedded model
(SmolLM2-135M-Instruct); the arms take turns prompt by prompt, round after round, so that the
machine's load falls on all of them alike. Tokens per second = generated tokens / wall time, summed
over the rounds; each arm's ratio is against the plain arm of the same run.

Arms:
- ``plain``: the model alone.
- ``vector``: a steering vector on the middle half of the blocks (random directions: the cost does not
  depend on what a direction says). Goal: >= 0.98x.
- ``rahf merged``: a RAHF result merged into the weights (a fresh LoRA with random weights, merged:
  the same architecture, so the same cost as plain by construction; measured, not assumed). Goal: 1.00x.
- ``rahf adapter``: the same LoRA switched on per call through ``SharedBase`` (reported).
- ``recontrol``: value-guided editing of the last hidden state with an untrained value network, at the
  editor's default steps. Goal: >= 0.6x.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/steering_cost.py [--rounds 3] [--max-tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Give me two tips for staying focused while studying.",
    "What is a healthy snack I can take to work?",
    "Explain what a rainbow is to a child.",
    "Write a short note thanking a colleague for their help.",
]

Arm = Callable[[Any], Any]  # request -> ChatResponse


def arms(folder: Path, names: list[str]) -> dict[str, Arm]:
    import torch

    from middleware.local import LocalBackend
    from middleware.models import decoder_layers, load_causal_lm

    model, tok = load_causal_lm(None)
    plain = LocalBackend(model_obj=model, tokenizer=tok)
    out: dict[str, Arm] = {"plain": lambda r: plain.complete(r)}
    n = len(decoder_layers(model))
    if "vector" in names:
        from steering import SteeringStage, SteeringVector

        gen = torch.Generator().manual_seed(0)
        hidden = model.config.hidden_size
        layers = list(range(n // 4, 3 * n // 4))
        vector = SteeringVector({i: torch.randn(hidden, generator=gen) for i in layers}, layers=layers)
        stage = SteeringStage(vector, 0.01)
        out["vector"] = lambda r: plain.complete(r, model_stages=[stage])
    if "rahf" in names:
        out.update(rahf_arms(folder, model, tok, n))
    if "recontrol" in names:
        from steering import ValueGuidedEditor
        from steering.value import ReControlConfig, ValueNet

        cfg = ReControlConfig()
        torch.manual_seed(0)
        value = ValueNet(model.config.hidden_size, cfg.width, cfg.depth)  # untrained: the cost does not depend on V
        editor = ValueGuidedEditor(value, steps=cfg.steps, step_size=cfg.step_size, max_edit_norm=cfg.max_edit_norm)
        out["recontrol"] = lambda r: plain.complete(r, model_stages=[editor])
    return out


def rahf_arms(folder: Path, model: Any, tok: Any, n: int) -> dict[str, Arm]:
    """A random LoRA on the blocks RAHF adapts by default, saved as a RAHF adapter and merged into a copy."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from middleware.local import LocalBackend
    from middleware.sft import save_adapter
    from middleware.shared_base import SharedBase
    from steering import RAHF
    from steering.rahf import default_layers

    layers = list(range(0, max(default_layers(n)) + 1))
    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                                 layers_to_transform=layers, init_lora_weights=False))
    save_adapter(peft_model, folder / "adapter", {"format": 1, "kind": "rahf", "base_model": "embedded"})
    peft_model.merge_and_unload().save_pretrained(folder / "merged")  # type: ignore[operator]
    tok.save_pretrained(folder / "merged")
    merged = LocalBackend(str(folder / "merged"))
    chat = SharedBase.get(None).chat_backend()
    stage = RAHF(folder / "adapter")
    return {"rahf merged": lambda r: merged.complete(r), "rahf adapter": lambda r: chat.complete(r, model_stages=[stage])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arms", nargs="+", default=["vector", "rahf", "recontrol"], help="arms besides plain")
    args = p.parse_args(argv)

    import torch

    from middleware.types import ChatRequest

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = arms(Path(tmp), args.arms)
        requests = [ChatRequest.build(q, max_tokens=args.max_tokens) for q in PROMPTS]
        for run in runs.values():  # warm-up: first-call costs out of the timings
            run(requests[0])
        tokens = {k: 0 for k in runs}
        seconds = {k: 0.0 for k in runs}
        for _ in range(args.rounds):
            for req in requests:
                for name, run in runs.items():
                    t0 = time.perf_counter()
                    resp = run(req)
                    seconds[name] += time.perf_counter() - t0
                    tokens[name] += resp.usage.completion_tokens
    base = tokens["plain"] / seconds["plain"]
    print(f"{args.rounds} rounds x {len(PROMPTS)} prompts, up to {args.max_tokens} tokens, {args.threads} thread(s), {torch.get_num_threads()} torch threads")
    print(f"{'arm':<14} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs plain':>9}")
    for name in runs:
        rate = tokens[name] / seconds[name]
        print(f"{name:<14} {tokens[name]:>7} {seconds[name]:>8.2f} {rate:>9.1f} {rate / base:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
