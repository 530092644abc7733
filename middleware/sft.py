"""One supervised fine-tuning trainer for every LoRA adapter the stage families train: source text in,
target text out (BPO rewriter: prompt -> optimized prompt; Aligner corrector: question + answer ->
correction; RAHF: instruction + prompt -> chosen or rejected answer).

This module holds what is SFT's own: the LoRA model (peft) and its loss, the adapter folder with its
manifest, and ``train_sft`` on the shared training skeleton (``middleware.training``: length-bucketed
batches, learning-rate schedule, Ctrl-C safety, resume). The examples, settings and token rows are in
``middleware.sft_data``. The loss is on the target tokens (and the closing EOS) only, and the output
layer is applied to the target positions only, which is what makes this trainer fast on CPU. Training
is resumable: numbered, checksummed checkpoints every ``save_every`` steps hold the adapter weights,
the optimizer moments and the random state, and the data order depends only on the seed and the step,
so a resumed run ends with the same weights as an uninterrupted one.

The result is a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) with the
manifest ``alignware.json`` (``middleware.adapters``) that the stages loading adapters onto a
``SharedBase`` read; what the manifest says beyond the LoRA and the run comes from the config's
``manifest_fields`` (the rewriters add their template there).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .adapters import ADAPTER_FILES, MANIFEST, base_label
from .checkpoints import Checkpoint, CheckpointManager, sha256, write_json_atomic
from .distributed import SINGLE, Dist, current, no_share
from .errors import CheckpointError, InputError
from .models import load_causal_lm
from .sft_data import IGNORE_INDEX, SFTConfig, SFTExample, check_examples, collate, fingerprint, prepare_rows
from .training import (
    BatchPlan,
    LossFn,
    LRSchedule,
    TrainingLoop,
    drop_if_last,
    latest_checkpoint,
    plot_history,
    restore_optimizer,
    run_differences,
)

log = logging.getLogger("alignware")

#: Model types whose causal-LM head is a plain linear layer on the decoder's last hidden state, so the
#: head can be applied to the target positions only.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3"})

__all__ = ["SFTResult", "TargetLoss", "adapter_manifest", "export_adapter", "init_adapter", "load_training_model", "resume_checkpoint", "resume_run", "save_adapter", "trainable_params", "train_sft"]


@dataclass
class SFTResult:
    """What ``train_sft`` did.

    Attributes:
        out_dir: the adapter folder.
        history: rows ``{"step", "loss", "lr", "epoch", "target_tokens", "tokens"}`` per step (``"warmup": 1``
            on warm-up steps) and
            ``{"step", "eval_loss"}`` per evaluation (step 0: the untrained adapter).
        eval_loss_untrained: held-out loss before step 1 (``None`` without a held-out set).
        eval_loss_final: held-out loss after the last step.
        steps: optimizer steps taken in all (including those of a resumed run before it stopped).
        tokens_per_second: target tokens (the supervised ones) per second of training in this call.
        total_tokens_per_second: all non-padding tokens per second of training in this call.
        train_seconds: seconds spent in training steps in this call (no evaluation, no saving).
        resumed_from: the step of the checkpoint this call resumed from, if any.
        stopped_early: training stopped before ``total_steps`` (callback, or Ctrl-C).
        total_steps: the steps the whole run plans.
        interrupted: Ctrl-C stopped it; the adapter holds the weights of the last finished step.
    """

    out_dir: Path
    history: list[dict[str, Any]]
    eval_loss_untrained: float | None
    eval_loss_final: float | None
    steps: int
    tokens_per_second: float
    total_tokens_per_second: float = 0.0
    train_seconds: float = 0.0
    target_tokens: int = 0
    resumed_from: int | None = None
    stopped_early: bool = False
    total_steps: int = 0
    interrupted: bool = False


# -- the model -----------------------------------------------------------------------------------
class TargetLoss:
    """Cross-entropy over the target tokens of a batch; the output layer runs on those positions only
    when the architecture allows it."""

    def __init__(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model = model
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        self.decoder: Any = getattr(base, getattr(base, "base_model_prefix", "model"), None)
        self.head: Any = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        self.fast = model_type in PLAIN_HEAD_MODEL_TYPES and self.decoder is not None and self.head is not None

    def target_logits(self, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
        """``(logits, labels, keep)``: the logits at the target positions (rows of ``keep``, the
        ``[batch, length - 1]`` mask of positions whose next token is a target token), and those tokens."""
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        if self.fast:
            hidden = self.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            logits = self.head(hidden.last_hidden_state[:, :-1][keep])
        else:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            logits = out.logits[:, :-1][keep]
        return logits, labels[keep], keep

    def __call__(self, batch: dict[str, Any]) -> tuple[Any, int]:
        """(sum of token losses, number of target tokens)."""
        import torch.nn.functional as F

        logits, labels, keep = self.target_logits(batch)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        return loss, int(keep.sum())


def trainable_params(model: Any) -> dict[str, Any]:
    """The parameters the optimizer updates (the LoRA matrices), by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _evaluate(
    loss_fn: TargetLoss, rows: list[dict[str, list[int]]], batch_size: int, pad_id: int, device: Any, dist: Dist = SINGLE
) -> float | None:
    """Mean loss per target token over ``rows``; under several processes each takes every
    ``world_size``-th batch and the sums are added up over them."""
    import torch

    if not rows:
        return None
    model = loss_fn.model
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    starts = list(range(0, len(order), batch_size))[dist.rank :: dist.world_size]
    with torch.no_grad():
        for k in starts:
            batch = {k: t.to(device) for k, t in collate([rows[i] for i in order[k : k + batch_size]], pad_id).items()}
            loss, n = loss_fn(batch)
            total += float(loss)
            count += n
    if was_training:
        model.train()
    total_all, count_all = dist.sum([total, count])
    return total_all / max(1.0, count_all)


def save_adapter(model: Any, out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the adapter files and the manifest into ``out_dir``: each file is written aside and renamed
    into place, the manifest (with the files' checksums) last, so a failure leaves the previous
    adapter whole or a detectably inconsistent one, never silently mixed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=out_dir))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for name in ADAPTER_FILES:
            if not (tmp / name).is_file():
                raise CheckpointError(f"peft did not write {name} into {tmp}")
        manifest = dict(manifest, files={name: sha256(tmp / name) for name in ADAPTER_FILES})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        for name in (*ADAPTER_FILES, MANIFEST):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_training_model(
    config: SFTConfig, *, layers_to_transform: list[int] | None = None, device: str | None = None
) -> tuple[Any, Any]:
    """``(peft model, tokenizer)``: ``config.base_model`` with a fresh LoRA (``config``'s rank, alpha,
    dropout, target modules; seeded by ``config.seed``), on the decoder blocks ``layers_to_transform``
    only when given, on ``device`` (``None``: cuda if available, else cpu); ``InputError`` names target
    modules it lacks."""
    import torch  # heavy dependencies: loaded with the model
    from peft import LoraConfig, get_peft_model

    model, tok = load_causal_lm(config.base_model, device=device)
    linear_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [m for m in config.target_modules if m not in linear_names]
    if missing:
        raise InputError(
            f"target_modules {missing} are not linear layers of {config.base_model or 'the embedded model'}; "
            f"it has: {', '.join(sorted(linear_names))}"
        )
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=layers_to_transform,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model, lora)
    return model, tok


def adapter_manifest(config: SFTConfig, **training: Any) -> dict[str, Any]:
    return {
        "format": 1,
        "kind": config.kind,
        "base_model": base_label(config.base_model),
        **config.manifest_fields(),
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": list(config.target_modules)},
        "training": dict(training, config=config.to_dict()),
    }


def init_adapter(config: SFTConfig, out_dir: str | Path, *, random_init: bool = False) -> Path:
    """Write a freshly initialised (untrained) LoRA adapter folder with its manifest to ``out_dir``.

    With the default peft initialisation the adapter is a no-op (B = 0); ``random_init`` draws both LoRA
    matrices at random (seeded by ``config.seed``) so the adapter changes the model's outputs, which is
    what tests and memory benchmarks need.
    """
    import torch

    config.validate()
    model, _ = load_training_model(config)
    if random_init:
        g = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.0 / max(1, p.shape[-1])) ** 0.5)
    out = Path(out_dir).expanduser()
    save_adapter(model, out, adapter_manifest(config, steps=0))
    return out


def _resume(ck: Checkpoint, fp: str, params: dict[str, Any], optimizer: Any) -> None:
    """Put a checkpoint's adapter weights, optimizer moments and random state back; ``InputError`` when it
    belongs to another run (fingerprint ``fp``), ``CheckpointError`` when its tensors do not fit."""
    import torch  # heavy: loaded when a run starts

    if run_differences({"fingerprint": ck.state.get("fingerprint")}, {"fingerprint": fp}):
        raise InputError(
            f"{ck.path} belongs to a run with other settings or data; pass resume=False (or --fresh) "
            f"to start over, or use another output folder"
        )
    missing = sorted(set(params) - set(ck.model))
    if missing:
        raise CheckpointError(f"{ck.path}: adapter tensors missing: {missing[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ck.model[name].to(p.device, p.dtype))
    restore_optimizer(ck, optimizer)


def export_adapter(
    model: Any, out_dir: Path, config: SFTConfig, history: list[dict[str, Any]], training: dict[str, Any], *,
    curves: tuple[str, ...] = ("loss", "eval_loss"), title: str | None = None,
) -> None:
    """Write the adapter with its manifest (``training``: what the run did), ``history.json`` and ``loss.png``
    (the ``curves`` series of ``history``; default title: "<kind> SFT (<template>)")."""
    save_adapter(model, out_dir, adapter_manifest(config, **training))
    write_json_atomic(out_dir / "history.json", history)
    try:
        rows = [{k: v for k, v in r.items() if k == "step" or k in curves} for r in history]
        title = title or f"{config.kind} SFT" + (f" ({config.template})" if config.template else "")
        plot_history(rows, out_dir / "loss.png", title=title)
    except Exception as e:  # a missing plotting backend must not lose a trained adapter
        log.warning("could not draw %s: %s", out_dir / "loss.png", e)


def _step_fn(
    plan: BatchPlan, rows: list[dict[str, list[int]]], pad_id: int, device: Any, loss_fn: TargetLoss, optimizer: Any,
    dist: Dist = SINGLE,
) -> LossFn:
    """The forward pass of a step for ``TrainingLoop``: its batch, the mean loss on the target tokens, and
    its history row ``{"step", "loss", "lr", "epoch", "target_tokens", "tokens"}`` (``"warmup": 1`` in
    the warm-up phase).

    Under several processes each one computes its share of the step's batch (``dist.shard``) and
    ``dist.step_mean`` makes the loss whose averaged gradients are those of the whole batch's mean."""

    def compute(at: int) -> tuple[Any, Callable[[], dict[str, Any]]]:
        phase, epoch, idx = plan.batch(at)
        mine = [rows[i] for i in dist.shard(idx)]
        if mine:
            batch = {n: t.to(device) for n, t in collate(mine, pad_id).items()}
            loss_sum, n = loss_fn(batch)
            n_all = int(batch["attention_mask"].sum())
        else:  # fewer rows than processes: this one contributes nothing
            loss_sum, n, n_all = no_share(device), 0, 0
        loss, (total, n_sum, all_sum) = dist.step_mean(loss_sum, n, n_all)
        n, n_all = int(n_sum), int(all_sum)

        def make_row() -> dict[str, Any]:
            lr = optimizer.param_groups[0]["lr"]
            row = {"step": at + 1, "loss": total / max(1, n), "lr": lr, "epoch": round(epoch, 4), "target_tokens": n, "tokens": n_all}
            if phase.name == "warmup":
                row["warmup"] = 1
            return row

        return loss, make_row

    return compute


# -- training ------------------------------------------------------------------------------------
def resume_checkpoint(
    manager: CheckpointManager, resume: bool, fp: str, params: dict[str, Any], optimizer: Any, total: int,
    dist: Dist | None = None,
) -> Checkpoint | None:
    """The newest good checkpoint of the run ``fp``, its weights, optimizer moments and random state
    restored; ``None`` to start at step 0 (the old checkpoints removed when not resuming, by rank 0 of
    ``dist`` while the other processes wait). A checkpoint holds the full weights and moments, so a run
    resumes with any number of processes."""
    dist = current() if dist is None else dist
    if not resume and manager.root.exists() and dist.is_main:
        log.warning("resume=False: removing the old checkpoints in %s", manager.root)
        shutil.rmtree(manager.root)
    dist.barrier()
    ck = latest_checkpoint(manager, resume=resume)
    if ck is None:
        return None
    _resume(ck, fp, params, optimizer)
    log.info("resuming from %s (step %d of %d)", ck.path, ck.step, total)
    return ck


def resume_run(
    manager: CheckpointManager, resume: bool, fp: str, params: dict[str, Any], optimizer: Any, total: int,
    dist: Dist | None = None,
) -> tuple[int, list[dict[str, Any]], float | None, int | None]:
    """Where a run starts: the step, history and untrained held-out loss of the newest good checkpoint
    (weights and optimizer restored) and that step again as the one resumed from; or step 0 and nothing
    (the old checkpoints removed when not resuming)."""
    ck = resume_checkpoint(manager, resume, fp, params, optimizer, total, dist)
    if ck is None:
        return 0, [], None, None
    return ck.step, list(ck.state.get("history", [])), ck.state.get("eval_loss_untrained"), ck.step


def train_sft(
    examples: list[SFTExample],
    config: SFTConfig,
    out_dir: str | Path,
    *,
    warmup_examples: list[SFTExample] | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    device: str | None = None,
) -> SFTResult:
    """Fine-tune a LoRA adapter on ``examples`` and save it at ``out_dir``.

    A share ``config.eval_fraction`` of ``examples`` is held out; its loss is measured before step 1
    (the untrained adapter), every ``eval_every`` steps and at the end. ``warmup_examples`` (optional)
    are trained on first, for ``config.warmup_epochs``, except those whose ``group`` is the ``group`` of
    a held-out example (made from the same item, e.g. the same preference pair, they would leak its
    target into training). Checkpoints go to ``out_dir/checkpoints`` every ``save_every`` steps and at
    the end; with ``resume`` a run continues from the newest good one (a
    corrupt or half-written one is skipped with a warning) and ends with the same weights as an
    uninterrupted run. Checkpoints of a run with other settings or data raise ``InputError``.

    ``callback(row)`` is called with each history row; returning ``False`` stops training after that
    step (checkpoint and adapter are still written). A run that fails leaves the last good checkpoint
    and any previous final adapter in place.

    Writes ``adapter_config.json``, ``adapter_model.safetensors``, ``alignware.json``, ``history.json``
    and ``loss.png`` into ``out_dir``.

    ``device``: where the model trains (``"cpu"``, ``"cuda"``, ``"mps"``; ``None``: cuda if available,
    else cpu). Under ``accelerate launch --num_processes N`` each step's batch is split between the
    processes and their gradients averaged (``middleware.distributed``), which gives the weights of one
    process with the same ``batch_size`` (the global batch); each process trains on its own GPU
    (``cuda:LOCAL_RANK``), rank 0 alone writes the checkpoints and the adapter, and every process
    returns the same result.
    """
    import torch  # heavy: loaded when a run starts

    config.validate()
    examples, warmup = check_examples(examples, warmup_examples)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(config, examples, warmup)

    dist = current()
    model, tok = load_training_model(config, device=dist.device(device))
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    data = prepare_rows(tok, examples, warmup, config)
    rows, eval_rows, plan = data.rows, data.eval_rows, data.plan

    params = trainable_params(model)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=0.0)
    loss_fn = TargetLoss(model)
    manager = CheckpointManager(out_dir, keep=config.keep_checkpoints)

    step, history, eval_untrained, resumed_from = resume_run(manager, resume, fp, params, optimizer, plan.total, dist)

    model.train()
    if step == 0:
        eval_untrained = _evaluate(loss_fn, eval_rows, config.batch_size, pad_id, device, dist)
        if eval_untrained is not None:
            history.append({"step": 0, "eval_loss": eval_untrained})

    def checkpoint(at: int, rng: dict[str, Any] | None = None) -> None:
        state = {
            "fingerprint": fp,
            "config": config.to_dict(),
            "history": history,
            "eval_loss_untrained": eval_untrained,
            "total_steps": plan.total,
        }
        manager.save(at, model_tensors=params, optimizer=optimizer, state=state, rng=rng)

    tokens = {"target": 0, "all": 0}
    evals: list[float | None] = [None]

    def on_step(at: int, row: dict[str, Any]) -> bool:
        tokens["target"] += row["target_tokens"]
        tokens["all"] += row["tokens"]
        loop.bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
        if eval_rows and (at % config.eval_every == 0 or at == plan.total):
            evals[0] = _evaluate(loss_fn, eval_rows, config.batch_size, pad_id, device, dist)
            history.append({"step": at, "eval_loss": evals[0]})
            loop.bar.set_postfix(loss=f"{row['loss']:.3f}", eval=f"{evals[0]:.3f}", refresh=False)
        return callback is not None and callback(row) is False

    schedule = LRSchedule(plan.total, warmup=max(1, round(0.03 * plan.total)), decay="linear")
    loop = TrainingLoop(params, optimizer, schedule, [config.learning_rate], save_every=config.save_every,
                        grad_clip=1.0, desc=f"train {config.kind}", progress=progress, dist=dist)
    compute = _step_fn(plan, rows, pad_id, device, loss_fn, optimizer, dist)
    done = loop.run(compute, start=step, stop=plan.total, save=checkpoint, record=history.append, unrecord=drop_if_last(history),
                    on_step=on_step)
    step, train_seconds, stopped, interrupted = done.step, done.train_seconds, done.stopped, done.interrupted
    target_tokens, all_tokens = tokens["target"], tokens["all"]

    last_eval = evals[0]
    if eval_rows:
        last_eval = _final_eval(history, step, lambda: _evaluate(loss_fn, eval_rows, config.batch_size, pad_id, device, dist))

    training = dict(
        steps=step, total_steps=plan.total, finished=step >= plan.total, examples=len(examples),
        warmup_examples=len(warmup), warmup_examples_held_out=data.warmup_held_out,
        eval_loss_untrained=eval_untrained, eval_loss_final=last_eval,
        tokens_per_second=round(target_tokens / train_seconds, 2) if train_seconds else None,
    )
    if dist.is_main:
        export_adapter(model, out_dir, config, history, training)
    dist.barrier()
    return SFTResult(
        out_dir=out_dir, history=history, eval_loss_untrained=eval_untrained, eval_loss_final=last_eval, steps=step,
        tokens_per_second=target_tokens / train_seconds if train_seconds else 0.0,
        total_tokens_per_second=all_tokens / train_seconds if train_seconds else 0.0,
        train_seconds=train_seconds, target_tokens=target_tokens, resumed_from=resumed_from, stopped_early=stopped,
        total_steps=plan.total, interrupted=interrupted,
    )


def _final_eval(history: list[dict[str, Any]], step: int, evaluate: Callable[[], "float | None"]) -> "float | None":
    """The held-out loss at ``step``: the one the history already has for it, else measured now and recorded."""
    tail = history[-1] if history else {}
    if tail.get("step") == step and "eval_loss" in tail:
        return tail["eval_loss"]
    loss = evaluate()
    history.append({"step": step, "eval_loss": loss})
    return loss
