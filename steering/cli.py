"""Command lines of the steering methods: ``alignware train steering --method vector|rahf|recontrol`` and
``alignware steer search``.

Every method reads the same preference pairs and holds out ``--eval-fraction`` of them (the dev split:
the search's prompts for a vector, the held-out loss of the others), loads the base model once, and
writes its folder under ``--out`` with a manifest naming the base model and the layers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from middleware.errors import InputError
from middleware.training import EXIT_INTERRUPTED, EXIT_OK, flag_values, run_train_command, save_figure, set_threads, split_holdout
from middleware.types import PreferencePair, load_pairs, load_prompts

__all__ = ["search_main", "search_parser", "train_main", "train_parser"]

METHODS = ("vector", "rahf", "recontrol")


def _layers(spec: str | None) -> list[int] | None:
    """``"8-20"`` or ``"8,10,12"`` as block indices (``None``: the method's default)."""
    if spec is None:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise InputError(f"--layers {spec!r}: expected 'first-last' or a comma-separated list, e.g. 8-20 or 8,12,16") from None
    return out


def _search_flags(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--judge", default=None, help="reward model folder that scores the answers (alignware train reward)")
    p.add_argument("--layer-ranges", nargs="+", default=None, metavar="A-B",
                   help="layer ranges to try (default: the vector's default layers and each half of them)")
    p.add_argument("--coefficients", nargs="+", type=float, default=None,
                   help="coefficients per layer to try (default: 0.5, 1, 2 and 4 times the vector's own)")
    p.add_argument("--benign", default=None,
                   help="prompts that should be answered, not refused (JSONL, prompt rows or pairs): a cell that refuses "
                   "them more often than the plain model by more than --max-refusal-increase cannot be the default")
    p.add_argument("--benign-limit", type=int, default=32, help="benign prompts used (default %(default)s)")
    p.add_argument("--max-refusal-increase", type=float, default=0.05, help="refusal-rate bound on the benign prompts (default %(default)s)")
    p.add_argument("--search-max-tokens", type=int, default=64, help="answer length in the search (default %(default)s)")


def train_parser() -> argparse.ArgumentParser:
    """``alignware train steering`` arguments: the shared ones, then one group per method."""
    p = argparse.ArgumentParser(
        prog="alignware train steering",
        description="Train a steering stage (a steering vector, RAHF or RE-Control) from preference pairs.",
    )
    p.add_argument("--method", required=True, choices=METHODS, help="which steering method to train")
    p.add_argument("--data", required=True, help="preference pairs (JSONL: prompt, chosen, rejected)")
    p.add_argument("--out", required=True, help="output folder (the stage loads from it: {type: steering_vector|rahf|recontrol, path: OUT})")
    p.add_argument("--base", default="embedded", help="'embedded', a model folder or a .gguf file (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--layers", default=None, help="decoder blocks to act on, e.g. 8-20 or 8,12,16 (default: the method's)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of the pairs held out (default %(default)s)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per prompt+answer (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per forward pass (vector: default 8) or per training step (default: the method's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    t = p.add_argument_group("training (rahf, recontrol; default: the method's)")
    t.add_argument("--epochs", type=float, default=None, help="passes over the training data, fractions allowed")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in all")
    t.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=None, help="peak learning rate")
    t.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    t.add_argument("--keep-checkpoints", type=int, default=None, help="checkpoints kept")
    t.add_argument("--fresh", dest="resume", action="store_false",
                   help="start over: remove the earlier run's checkpoints from --out first (default: resume from the newest good one)")
    h = p.add_argument_group("RAHF (--method rahf)")
    h.add_argument("--variant", default=None, choices=("scit", "dual"),
                   help="one LoRA taught good and bad answers under two instructions (scit, default), or two LoRAs on chosen and rejected (dual)")
    h.add_argument("--alpha", type=float, default=None, help="how far along the activation difference the targets lie (default 5)")
    h.add_argument("--answers", default=None, choices=("both", "chosen"), help="answers the states are read on (default both)")
    h.add_argument("--lora-r", type=int, default=None, help="LoRA rank of every LoRA (default 8)")
    h.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default 16)")
    h.add_argument("--sft-learning-rate", type=float, default=None, help="learning rate of the instruction-tuning LoRA(s) (default 2e-4)")
    h.add_argument("--sft-epochs", type=float, default=None, help="epochs of the instruction-tuning LoRA(s) (default 1)")
    h.add_argument("--sft-max-steps", type=int, default=None, help="a cap on the instruction-tuning steps")
    r = p.add_argument_group("RE-Control (--method recontrol; needs --judge)")
    r.add_argument("--samples-per-prompt", type=int, default=None, help="answers sampled per training prompt (default 4)")
    r.add_argument("--max-new-tokens", type=int, default=None, help="answer length when sampling (default 128)")
    r.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0.8)")
    r.add_argument("--width", type=int, default=None, help="value network width (default 512)")
    r.add_argument("--depth", type=int, default=None, help="value network hidden layers (default 2)")
    r.add_argument("--steps", type=int, default=None, help="editor default: gradient steps per token (default 4)")
    r.add_argument("--step-size", type=float, default=None, help="editor default: step size (default 2.0)")
    r.add_argument("--max-edit-norm", type=float, default=None, help="editor default: cap on the edit's norm (default 8.0)")
    v = p.add_argument_group("vector (--method vector)")
    v.add_argument("--vector-method", default="pca_diff", choices=("pca_diff", "mean_diff"),
                   help="direction from the per-pair differences: their first principal component, or their mean (default %(default)s)")
    v.add_argument("--search", action="store_true", help="then search layer ranges and coefficients on the dev split with --judge")
    v.add_argument("--search-prompts", type=int, default=32, help="dev prompts the search answers (default %(default)s)")
    _search_flags(v)
    return p


def _split(pairs: list[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    if not 0 <= fraction < 1:
        raise InputError(f"--eval-fraction must be in [0, 1), got {fraction}")
    train, held = split_holdout(len(pairs), fraction, seed)
    return [pairs[i] for i in train], [pairs[i] for i in held]


def _benign(path: str | None, limit: int) -> list[Any]:
    return [] if path is None else [r.prompt for r in load_prompts(path, limit=limit)]


def _plot_agreement(vector: Any, path: Path) -> None:
    """Per layer: the share of training pairs whose chosen answer lies on the direction's side."""
    import matplotlib  # heavy dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agreement = {int(k): float(v) for k, v in vector.metadata.get("agreement", {}).items()}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(list(agreement), list(agreement.values()))
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_xlabel("decoder block")
    ax.set_ylabel("pairs ordered by the direction")
    ax.set_ylim(0, 1)
    ax.set_title(f"steering vector ({vector.method}, {vector.metadata.get('data_size')} pairs)")
    save_figure(fig, path)


def _train_vector(args: argparse.Namespace, model: Any, tok: Any, train: list[PreferencePair], held: list[PreferencePair]) -> int:
    from judge import RewardModel  # heavy dependency (torch)

    from .layer_search import search
    from .vector import SteeringVector

    if args.search and not args.judge:
        raise InputError("--search needs --judge DIR (a reward model: alignware train reward)")
    if args.search and not held:
        raise InputError("--search needs held-out prompts: set --eval-fraction above 0")
    vector = SteeringVector.train(model, tok, train, layers=_layers(args.layers), method=args.vector_method,
                                  max_length=args.max_length, batch_size=args.batch_size or 8, progress=not args.quiet,
                                  base_model=args.base)
    out = vector.save(args.out)
    _plot_agreement(vector, out / "training.png")
    print(f"steering vector: {len(vector.directions)} layers, default layers {vector.default_layers[0]}-{vector.default_layers[-1]}, "
          f"coefficient {vector.coefficient:g} -> {out}")
    if args.search:
        judge = RewardModel.load(args.judge)
        result = search(vector, model, tok, judge, [p.prompt for p in held[: args.search_prompts]],
                        layer_ranges=args.layer_ranges, coefficients=args.coefficients, max_tokens=args.search_max_tokens,
                        benign_prompts=_benign(args.benign, args.benign_limit), max_refusal_increase=args.max_refusal_increase,
                        out=out, progress=not args.quiet)
        _print_search(result)
    return EXIT_OK


def _given(config_type: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flags named like ``config_type``'s fields that were given (``None`` means: the config's default);
    ``--layers`` is parsed by each method."""
    return {k: v for k, v in flag_values(config_type, args, skip=("layers",)).items() if v is not None}


def _train_recontrol(args: argparse.Namespace, model: Any, tok: Any, pairs: list[PreferencePair]) -> int:
    from .recontrol import train_recontrol
    from .value import ReControlConfig

    if not args.judge:
        raise InputError("--method recontrol needs --judge DIR: the reward model that labels the sampled answers")
    if args.layers is not None:
        raise InputError("--layers does not apply to recontrol: it edits the state the output head reads")
    config = ReControlConfig(**_given(ReControlConfig, args))  # it holds out eval_fraction of the prompts itself
    result = train_recontrol(pairs, args.out, config, judge=args.judge, model=model, tokenizer=tok, base=args.base,
                             resume=args.resume, progress=not args.quiet)
    print(f"RE-Control editor -> {result.out_dir} ({', '.join(f'{k} {v:.0f} s' for k, v in result.timings.items())})")
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _train_rahf(args: argparse.Namespace, pairs: list[PreferencePair]) -> int:
    from .rahf import RAHFConfig
    from .rahf_train import train_rahf

    layers = _layers(args.layers)
    config = RAHFConfig(**_given(RAHFConfig, args), layers=None if layers is None else tuple(layers))  # holds out eval_fraction itself
    result = train_rahf(pairs, args.out, config, base=None if args.base == "embedded" else args.base, resume=args.resume,
                        progress=not args.quiet)
    print(f"RAHF: fit loss {result.fit_loss_untrained} -> {result.fit_loss_final} on blocks {result.layers}; "
          f"adapter {result.adapter_dir}, merged model {result.merged_dir}")
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _print_search(result: Any) -> None:
    for c in result.cells:
        refusals = "" if c.refusal_rate is None else f"  refusals {c.refusal_rate:.0%}{'' if c.eligible else ' (over the bound)'}"
        lo, hi = c.gain_interval or (float("nan"), float("nan"))
        print(f"  layers {c.label:>8}  x{c.coefficient:<7g} gain {c.gain:+.3f} ({lo:+.3f} to {hi:+.3f})  win rate {c.win_rate:.1%}{refusals}")
    b = result.best
    print(f"best: layers {b.label}, coefficient {b.coefficient:g} (gain {b.gain:+.3f}); saved as the vector's default")


def train_main(argv: Sequence[str] | None = None) -> int:
    """``alignware train steering``: returns the shared train exit codes (0 done, 1 failed, 2 bad input, 130 Ctrl-C)."""
    args = train_parser().parse_args(argv)

    def body() -> int:
        from middleware.models import load_causal_lm  # heavy dependency (torch, transformers)

        set_threads(args.threads)
        pairs = load_pairs(args.data, limit=args.limit)
        if len(pairs) < 2:
            raise InputError(f"{args.data}: a steering method needs at least 2 preference pairs, got {len(pairs)}")
        train, held = _split(pairs, args.eval_fraction, args.seed)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "command.json").write_text(json.dumps({"argv": list(argv if argv is not None else sys.argv[1:])}, indent=2))
        if args.method == "rahf":
            return _train_rahf(args, pairs)  # loads its own models (one per LoRA step)
        model, tok = load_causal_lm(None if args.base == "embedded" else args.base)
        if args.method == "vector":
            return _train_vector(args, model, tok, train, held)
        if args.method == "recontrol":
            return _train_recontrol(args, model, tok, pairs)
        raise InputError(f"--method {args.method} is not available in this installation")

    return run_train_command(body)


# -- alignware steer search ---------------------------------------------------------------------
def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alignware steer search",
        description="Try a steering vector at several layer ranges and coefficients on dev prompts, score each with a "
        "reward model, and save the best cell as the vector's default (search.json, search.png in the vector's folder).",
    )
    p.add_argument("--vector", required=True, help="a steering vector folder (alignware train steering --method vector)")
    p.add_argument("--prompts", required=True, help="dev prompts (JSONL: prompt rows or preference pairs); not the evaluation prompts")
    p.add_argument("--limit", type=int, default=32, help="dev prompts used (default %(default)s)")
    p.add_argument("--base", default=None, help="the model to steer (default: the vector's base model)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _search_flags(p)
    return p


def search_main(argv: Sequence[str] | None = None) -> int:
    """``alignware steer search``: exit 0 done, 1 failed, 2 bad input."""
    args = search_parser().parse_args(argv)

    def body() -> int:
        from judge import RewardModel  # heavy dependency (torch)
        from middleware.models import load_causal_lm

        from .layer_search import search
        from .vector import SteeringVector

        if not args.judge:
            raise InputError("--judge DIR is required (a reward model: alignware train reward)")
        set_threads(args.threads)
        vector = SteeringVector.load(args.vector)
        base = args.base or vector.base_model or "embedded"
        model, tok = load_causal_lm(None if base == "embedded" else base)
        prompts = [r.prompt for r in load_prompts(args.prompts, limit=args.limit)]
        result = search(vector, model, tok, RewardModel.load(args.judge), prompts, layer_ranges=args.layer_ranges,
                        coefficients=args.coefficients, max_tokens=args.search_max_tokens,
                        benign_prompts=_benign(args.benign, args.benign_limit), max_refusal_increase=args.max_refusal_increase,
                        out=args.vector, progress=not args.quiet)
        _print_search(result)
        return EXIT_OK

    return run_train_command(body)
