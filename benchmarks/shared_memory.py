"""Peak memory of rewriter + corrector + chat model on one shared base vs three separate copies.

Each setting runs in its own subprocess (so their memory does not mix) and reports its peak resident
set size (``ru_maxrss``) after every model in it has done one generation:

- ``single``: one model alone (``LocalBackend`` on the embedded model), one chat answer.
- ``shared``: one ``SharedBase`` with a rewriter adapter, a corrector adapter and ``chat_backend()``:
  a rewrite, a correction and a chat answer.
- ``separate``: three model copies: rewriter (base + its adapter), corrector (base + its adapter) and a
  chat ``LocalBackend``: the same three generations.

The adapters are freshly initialised LoRA adapters (r 16 on q/k/v/o, random weights) saved to a
temporary folder. Goal: shared <= 1.2x single.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/shared_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTION = "How do I keep my houseplants alive?"
ANSWER = "Water them."
MAX_NEW = 16


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def make_adapters(folder: Path) -> None:
    from middleware.sft import init_adapter
    from rewriters.sft_config import SFTConfig

    init_adapter(SFTConfig(kind="rewriter", template="bpo", seed=1), folder / "rewriter", random_init=True)
    init_adapter(SFTConfig(kind="corrector", template="aligner-v1.0", seed=2), folder / "corrector", random_init=True)


def chat_request():
    from middleware.types import ChatRequest

    return ChatRequest.build(QUESTION, temperature=0, max_tokens=MAX_NEW)


def run_single(folder: Path) -> dict:
    from middleware.local import LocalBackend

    chat = LocalBackend(None)
    text = chat.complete(chat_request()).text
    return {"outputs": [text]}


def run_shared(folder: Path) -> dict:
    from middleware.shared_base import SharedBase
    from rewriters.generator import TextGenerator

    shared = SharedBase.get(None)
    rewriter = TextGenerator.from_pretrained(folder / "rewriter")
    corrector = TextGenerator.from_pretrained(folder / "corrector")
    chat = shared.chat_backend()
    assert rewriter.model is corrector.model is shared.model
    outs = [
        rewriter.generate(rewriter.render(prompt=QUESTION), max_new_tokens=MAX_NEW, temperature=0.0)[0],
        chat.complete(chat_request()).text,
        corrector.generate(corrector.render(question=QUESTION, answer=ANSWER), max_new_tokens=MAX_NEW, temperature=0.0)[0],
    ]
    return {"outputs": outs}


def run_separate(folder: Path) -> dict:
    from middleware.local import LocalBackend
    from middleware.models import load_causal_lm
    from middleware.shared_base import SharedBase
    from rewriters.generator import TextGenerator

    gens = []
    for kind in ("rewriter", "corrector"):
        model, tok = load_causal_lm(None)  # a copy of its own
        base = SharedBase(model, tok, base_model="embedded")
        base.add_adapter(kind, folder / kind)
        gens.append(TextGenerator(base, template="bpo" if kind == "rewriter" else "aligner-v1.0", adapter=kind))
    chat = LocalBackend(None)
    rewriter, corrector = gens
    assert rewriter.model is not corrector.model
    outs = [
        rewriter.generate(rewriter.render(prompt=QUESTION), max_new_tokens=MAX_NEW, temperature=0.0)[0],
        chat.complete(chat_request()).text,
        corrector.generate(corrector.render(question=QUESTION, answer=ANSWER), max_new_tokens=MAX_NEW, temperature=0.0)[0],
    ]
    return {"outputs": outs}


SCENARIOS = {"single": run_single, "shared": run_shared, "separate": run_separate}


def child(scenario: str, folder: Path) -> None:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if scenario == "make-adapters":
        make_adapters(folder)
        print(json.dumps({"ok": True}))
        return
    out = SCENARIOS[scenario](folder)
    out["peak_mib"] = peak_mib()
    print("RESULT " + json.dumps(out))


def measure(scenario: str, folder: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", scenario, "--folder", str(folder)],
        capture_output=True, text=True, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{scenario} failed:\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    if scenario == "make-adapters":
        return {}
    raise SystemExit(f"{scenario}: no result in its output:\n{proc.stdout[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=[*SCENARIOS, "make-adapters"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.folder)
        return
    with tempfile.TemporaryDirectory(prefix="alignware-mem-") as tmp:
        folder = Path(tmp)
        measure("make-adapters", folder)
        results = {name: measure(name, folder) for name in ("single", "shared", "separate")}
    single = results["single"]["peak_mib"]
    print("peak resident memory (RSS), each setting in its own process, every model doing one generation")
    print(f"{'setting':<48}{'peak MiB':>10}{'x single':>10}")
    labels = {
        "single": "single model alone (chat)",
        "shared": "shared base: rewriter + corrector adapters + chat",
        "separate": "three separate copies: rewriter, corrector, chat",
    }
    for name in ("single", "shared", "separate"):
        mib = results[name]["peak_mib"]
        print(f"{labels[name]:<48}{mib:>10.0f}{mib / single:>10.2f}")
    ratio = results["shared"]["peak_mib"] / single
    saved = results["separate"]["peak_mib"] - results["shared"]["peak_mib"]
    print(f"\nRESULT: shared base uses {ratio:.2f}x the memory of a single model "
          f"(goal <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'}); three copies use "
          f"{results['separate']['peak_mib'] / single:.2f}x; sharing saves {saved:.0f} MiB")


if __name__ == "__main__":
    main()
