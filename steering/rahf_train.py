"""Training RAHF (``train_rahf``): the instruction-tuning LoRA(s) on the project's SFT trainer, the
targets ``h_plain + alpha * diff`` computed once and streamed from disk (``steering.rahf_targets``), the
alignment LoRA fitted on the training skeleton (``middleware.training.TrainingLoop``), then exported as an
adapter folder and as a merged checkpoint. The method and where it departs from the reference code:
``steering.rahf``.

Output folder::

    sft/scit/ or sft/chosen/ + sft/rejected/    instruction-tuning adapters (resumable SFT runs)
    targets/                                     the fit's targets (safetensors shards, reused on resume)
    fit/checkpoints/                             the fit's checkpoints
    adapter/                                     the alignment LoRA + alignware.json (kind "rahf")
    merged/                                      the base with the LoRA merged in + tokenizer
    rahf.json, history.json, loss.png            the run's manifest, its history and loss curves
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from judge.encoding import PairEncoder
from middleware.adapters import base_label
from middleware.checkpoints import CheckpointManager, write_json_atomic
from middleware.distributed import SINGLE, Dist, current, no_share
from middleware.errors import AlignwareError, InputError
from middleware.models import decoder_layers, load_causal_lm
from middleware.sft import SFTResult, load_training_model, resume_run, save_adapter, train_sft, trainable_params
from middleware.shared_base import SharedBase
from middleware.training import BatchPlan, LossFn, LRSchedule, TrainingLoop, drop_if_last, plot_history, split_holdout
from middleware.types import PreferencePair, load_pairs

from .hidden import block_states, layer_indices
from .rahf import RUN_MANIFEST, RAHFConfig, answer_examples, default_layers, scit_examples
from .rahf_targets import FitItem, TargetStore, build_targets, fit_batch, masked_l2

log = logging.getLogger("alignware")

__all__ = ["RAHFResult", "train_rahf"]


@dataclass
class RAHFResult:
    """What ``train_rahf`` did: the folders it wrote, the fit's history and losses, and the seconds and
    steps of each phase (``sft``, ``targets``, ``fit``) for sizing runs."""

    out_dir: Path
    adapter_dir: Path
    merged_dir: Path
    layers: list[int]
    history: list[dict[str, Any]]
    fit_loss_untrained: float | None
    fit_loss_final: float | None
    steps: int
    total_steps: int
    sft: dict[str, SFTResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    interrupted: bool = False


def _pairs(pairs: "Sequence[PreferencePair] | str | os.PathLike[str]") -> list[PreferencePair]:
    out = load_pairs(pairs) if isinstance(pairs, (str, os.PathLike)) else list(pairs)
    if not out:
        raise InputError("no preference pairs to train RAHF on")
    for i, p in enumerate(out):
        if not isinstance(p, PreferencePair):
            raise InputError(f"pairs[{i}] is a {type(p).__name__}, expected PreferencePair")
    return out


def _fingerprint(config: RAHFConfig, base: str, pairs: Sequence[PreferencePair], sft_dirs: Sequence[Path]) -> str:
    """Identifies the fit: its settings, the base, the pairs and the instruction-tuning adapters' checksums."""
    h = hashlib.sha256()
    cfg = config.to_dict()
    for k in ("eval_every", "save_every", "keep_checkpoints"):
        cfg.pop(k)
    h.update(json.dumps([cfg, base], sort_keys=True, default=str).encode())
    for p in pairs:
        h.update(json.dumps([p.model_dump(mode="json")["prompt"], p.chosen, p.rejected]).encode())
    for d in sft_dirs:
        h.update((d / "adapter_model.safetensors").read_bytes())
    return h.hexdigest()


def _run_sft(pairs: list[PreferencePair], encoder: PairEncoder, config: RAHFConfig, out: Path, resume: bool, progress: bool) -> dict[str, SFTResult]:
    """The instruction-tuning LoRA(s): ``{"scit": ...}`` or ``{"chosen": ..., "rejected": ...}``."""
    if config.variant == "scit":
        jobs = {"scit": scit_examples(pairs, encoder, config)}
    else:
        jobs = {w: answer_examples(pairs, encoder, w) for w in ("chosen", "rejected")}
    results = {}
    for name, examples in jobs.items():
        log.info("RAHF %s: instruction-tuning LoRA %r on %d examples", config.variant, name, len(examples))
        results[name] = train_sft(examples, config.sft_config(f"rahf-{name}"), out / "sft" / name, resume=resume, progress=progress)
    return results


def _evaluate(model: Any, store: TargetStore, items: list[FitItem], idx: list[int], layers: list[int], batch_size: int, pad: int) -> float | None:
    if not idx:
        return None
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k : k + batch_size]
            ids, mask, target, answer = fit_batch(items, chunk, store, layers, pad)
            h = block_states(model, ids, mask, layers)
            s, n = masked_l2(torch.stack([h[i] for i in layers]), target, answer)
            total += float(s)
            count += n
    if was:
        model.train()
    return total / max(1, count)


def _export(model: Any, tok: Any, out: Path, manifest: dict[str, Any], history: list[dict[str, Any]]) -> tuple[Path, Path]:
    """The adapter folder, then the merged checkpoint (written aside and moved into place), the run's files."""
    adapter_dir, merged_dir = out / "adapter", out / "merged"
    save_adapter(model, adapter_dir, manifest)
    write_json_atomic(out / "history.json", history)
    try:
        curves = [{k: v for k, v in r.items() if k in ("step", "loss", "eval_loss")} for r in history]
        plot_history(curves, out / "loss.png", title=f"RAHF {manifest['variant']} fit (masked L2)")
    except Exception as e:  # a missing plotting backend must not lose a trained adapter
        log.warning("could not draw %s: %s", out / "loss.png", e)
    merged = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=".merged.tmp-", dir=out))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if merged_dir.exists():
            shutil.rmtree(merged_dir)
        os.replace(tmp, merged_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(out / RUN_MANIFEST, dict(manifest, adapter="adapter", merged="merged"))
    return adapter_dir, merged_dir


def _step_fn(
    plan: BatchPlan, items: list[FitItem], store: TargetStore, layers: list[int], pad: int, model: Any, optimizer: Any,
    dist: Dist = SINGLE,
) -> LossFn:
    """The fit's step: the masked L2 distance to the targets over the answer tokens. Under several processes
    each one takes its share of the step's items (``dist.shard``) and ``dist.step_mean`` makes the loss
    whose averaged gradients are the whole batch's mean; the logged loss is the whole batch's."""

    def compute(at: int) -> tuple[Any, Callable[[], dict[str, Any]]]:
        _, epoch, idx = plan.batch(at)
        mine = dist.shard(idx)
        if mine:
            ids, mask, target, answer = fit_batch(items, mine, store, layers, pad)
            h = block_states(model, ids, mask, layers)
            s, n = masked_l2(torch.stack([h[i] for i in layers]), target, answer)
        else:  # fewer items than processes: this one contributes nothing
            s, n = no_share(), 0
        loss, (total, n_all) = dist.step_mean(s, n)
        n = int(n_all)
        value = total / max(1, n)

        def row() -> dict[str, Any]:
            return {"step": at + 1, "loss": value, "lr": optimizer.param_groups[0]["lr"],
                    "epoch": round(epoch, 4), "answer_tokens": n // len(layers)}

        return loss, row

    return compute


def train_rahf(
    pairs: "Sequence[PreferencePair] | str | os.PathLike[str]",
    out_dir: str | Path,
    config: RAHFConfig | None = None,
    *,
    base: str | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], Any] | None = None,
) -> RAHFResult:
    """Train RAHF on preference ``pairs`` (a list or a JSONL file) into ``out_dir``; see the module docstring
    for the folder. ``base`` (or ``config.base_model``; ``None``: the embedded model) is the plain model.

    Every phase resumes: the SFT runs from their checkpoints, the targets from ``targets/`` when they
    were made from the same settings, pairs and adapters, the fit from ``fit/checkpoints``. ``callback(row)``
    gets every fit history row; returning ``False`` stops the fit after that step (then exported).
    """
    config = config or RAHFConfig()
    if base is not None:
        config = dataclasses.replace(config, base_model=base)
    config.validate()
    pairs = _pairs(pairs)
    dist = current()
    progress = progress and dist.is_main
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    plain, tok = load_causal_lm(config.base_model)
    layers = layer_indices(plain, list(config.layers) if config.layers is not None else default_layers(len(decoder_layers(plain))))
    encoder = PairEncoder(tok, config.max_length)
    train_idx, held_idx = split_holdout(len(pairs), config.eval_fraction, config.seed)

    t0 = time.perf_counter()
    sft = _run_sft([pairs[i] for i in train_idx], encoder, config, out, resume, progress)
    seconds["sft"] = time.perf_counter() - t0
    sft_dirs = [r.out_dir for r in sft.values()]
    fp = _fingerprint(config, base_label(config.base_model), pairs, sft_dirs)

    t0 = time.perf_counter()
    store = TargetStore(out / "targets")
    if dist.is_main:  # under accelerate launch rank 0 builds the targets; the others read them
        shared = SharedBase(plain, tok, base_model=base_label(config.base_model))
        for name, d in zip(sft, sft_dirs):
            shared.add_adapter(name, d)
        built: list[FitItem] | None = build_targets(shared, encoder, pairs, layers, config, store, fp, progress=progress)
        del shared
    dist.barrier()
    if not dist.is_main:
        built = store.load(fp)
    if built is None:
        raise AlignwareError(f"{store.root}: rank 0's targets are not there")
    items = built
    seconds["targets"] = time.perf_counter() - t0
    del plain

    # items hold both answers of a pair next to each other; hold out whole pairs
    held = set(held_idx)
    fit_idx = [k for k, it in enumerate(items) if it.pair not in held]
    eval_idx = [k for k, it in enumerate(items) if it.pair in held]
    lora_cfg = config.sft_config("rahf")
    model, _ = load_training_model(lora_cfg, layers_to_transform=list(range(max(layers) + 1)), device=dist.device(None))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    params = trainable_params(model)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=0.0)
    plan = BatchPlan.from_epochs([("fit", fit_idx, config.epochs)], [len(it.ids) for it in items], config.batch_size,
                                 config.seed, max_steps=config.max_steps, window=16, longest_first=True)
    if plan.total == 0:
        raise InputError("the fit has no steps: check epochs and the number of pairs left after the held-out split")
    manager = CheckpointManager(out / "fit", keep=config.keep_checkpoints)
    step, history, eval_untrained, resumed_from = resume_run(manager, resume, fp, params, optimizer, plan.total, dist)
    model.train()
    if step == 0:
        eval_untrained = _evaluate(model, store, items, eval_idx, layers, config.batch_size, pad)
        if eval_untrained is not None:
            history.append({"step": 0, "eval_loss": eval_untrained})
    last_eval = [eval_untrained]

    def checkpoint(at: int, rng: dict[str, Any] | None = None) -> None:
        state = {"fingerprint": fp, "config": config.to_dict(), "history": history,
                 "eval_loss_untrained": eval_untrained, "total_steps": plan.total}
        manager.save(at, model_tensors=params, optimizer=optimizer, state=state, rng=rng)

    def on_step(at: int, row: dict[str, Any]) -> bool:
        loop.bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
        if eval_idx and (at % config.eval_every == 0 or at == plan.total):
            last_eval[0] = _evaluate(model, store, items, eval_idx, layers, config.batch_size, pad)
            history.append({"step": at, "eval_loss": last_eval[0]})
        return callback is not None and callback(row) is False

    schedule = LRSchedule(plan.total, warmup=max(1, round(0.03 * plan.total)), decay="linear")
    loop = TrainingLoop(params, optimizer, schedule, [config.learning_rate], save_every=config.save_every,
                        grad_clip=1.0, desc=f"fit rahf-{config.variant}", progress=progress, dist=dist)
    done = loop.run(_step_fn(plan, items, store, layers, pad, model, optimizer, dist), start=step, stop=plan.total,
                    save=checkpoint, record=history.append, unrecord=drop_if_last(history), on_step=on_step)
    seconds["fit"] = done.train_seconds
    seconds["sft_steps"] = float(sum(r.steps for r in sft.values()))

    manifest = {
        "format": 1, "kind": "rahf", "base_model": base_label(config.base_model), "variant": config.variant,
        "layers": layers, "alpha": config.alpha,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": list(config.target_modules), "layers_to_transform": list(range(max(layers) + 1))},
        "training": {"steps": done.step, "total_steps": plan.total, "finished": done.step >= plan.total,
                     "pairs": len(pairs), "held_out_pairs": len(held_idx), "fit_items": len(fit_idx),
                     "eval_loss_untrained": eval_untrained, "eval_loss_final": last_eval[0],
                     "sft": {k: str(r.out_dir.relative_to(out)) for k, r in sft.items()}, "config": config.to_dict()},
    }
    if dist.is_main:  # every process holds the same weights; rank 0 writes them
        _export(model, tok, out, manifest, history)
    dist.barrier()
    adapter_dir, merged_dir = out / "adapter", out / "merged"
    return RAHFResult(
        out_dir=out, adapter_dir=adapter_dir, merged_dir=merged_dir, layers=layers, history=history,
        fit_loss_untrained=eval_untrained, fit_loss_final=last_eval[0], steps=done.step, total_steps=plan.total,
        sft=sft, seconds=seconds, resumed_from=resumed_from, interrupted=done.interrupted,
    )
