"""Direct preference optimisation of a LoRA adapter (``train_dpo``), on the SFT trainer's machinery: the
LoRA model and its fast target-position head (``middleware.sft``), the token rows (``middleware.sft_data``),
and the training skeleton (``middleware.training``: length-bucketed batches, learning-rate schedule,
checkpoints, resume, Ctrl-C safety, plots).

The reference model is the policy as the run starts, kept as one model: without ``init`` it is the base
with the adapter switched off (a fresh LoRA adapter starts as a no-op); with ``init`` (an SFT adapter
folder, the normal path: ``--init runs/corrector``) the policy starts from that adapter and the reference
is that adapter as loaded. The reference's log-probabilities of every target are computed once, before
the first step, and stored with each checkpoint, so a resumed run uses the very same numbers and no second
model is ever held in memory. The objective, its variants and the rewards it reports are in
``middleware.dpo_loss``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .adapters import base_label, read_manifest, verify_adapter
from .checkpoints import CheckpointManager, sha256
from .dpo_data import DPOExample, check_dpo_examples
from .distributed import SINGLE, Dist, current, no_share
from .dpo_loss import DPOSettings, dpo_loss, sequence_logps
from .errors import InputError
from .sft import TargetLoss, export_adapter, load_training_model, resume_checkpoint, trainable_params
from .sft_data import BUCKET_BATCHES, SFTConfig, SFTExample, collate, tokenize_example, weight_settings
from .training import BatchPlan, LossFn, LRSchedule, TrainingLoop, drop_if_last, split_holdout

log = logging.getLogger("alignware")

__all__ = ["DPOResult", "train_dpo", "reference_logps"]

Row = dict[str, list[int]]


@dataclass
class DPOResult:
    """What ``train_dpo`` did.

    Attributes:
        out_dir: the adapter folder.
        history: per step ``{"step", "loss", "rewards_chosen", "rewards_rejected", "rewards_margin",
            "rewards_accuracy", "lr", "epoch", "tokens"}``; per evaluation the same names with ``eval_`` in
            front (step 0: the starting policy, whose rewards are all 0 and accuracy 0).
        eval_untrained / eval_final: the held-out metrics before step 1 and after the last step (``None``
            without a held-out set).
        steps / total_steps: optimizer steps done in all, and planned.
        pairs_per_second: training pairs per second of this call's training steps plus the training pairs'
            share of its reference pass (the reference is computed once per run, for every pair).
        train_seconds / reference_seconds: seconds in training steps, and in the reference pass (0 on resume).
    """

    out_dir: Path
    history: list[dict[str, Any]]
    eval_untrained: dict[str, float] | None
    eval_final: dict[str, float] | None
    steps: int
    total_steps: int
    pairs_per_second: float = 0.0
    train_seconds: float = 0.0
    reference_seconds: float = 0.0
    resumed_from: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    held_out: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


# -- data ---------------------------------------------------------------------------------------
@dataclass
class _PairRows:
    chosen: list[Row]
    rejected: list[Row]
    train: list[int]
    held: list[int]


def _tokenize(tok: Any, examples: list[DPOExample], config: SFTConfig) -> _PairRows:
    """Both targets of every example as SFT rows; the held-out split by ``group`` (one group, one side)."""
    chosen = [tokenize_example(tok, SFTExample(ex.source, ex.chosen), config.max_length) for ex in examples]
    rejected = [tokenize_example(tok, SFTExample(ex.source, ex.rejected), config.max_length) for ex in examples]
    keys = [ex.group if ex.group is not None else f"#{i}" for i, ex in enumerate(examples)]
    groups = list(dict.fromkeys(keys))
    _, held_groups = split_holdout(len(groups), config.eval_fraction, config.seed)
    held_keys = {groups[g] for g in held_groups}
    train = [i for i, k in enumerate(keys) if k not in held_keys]
    held = [i for i, k in enumerate(keys) if k in held_keys]
    if not train:
        raise InputError("no preference examples left for training after holding out the evaluation share")
    return _PairRows(chosen, rejected, train, held)


def _batch(rows: _PairRows, idx: list[int], pad_id: int, device: Any) -> dict[str, Any]:
    """One forward batch: the chosen rows of ``idx``, then their rejected rows."""
    return {n: t.to(device) for n, t in collate([rows.chosen[i] for i in idx] + [rows.rejected[i] for i in idx], pad_id).items()}


def _fingerprint(config: SFTConfig, settings: DPOSettings, examples: list[DPOExample], init: str | None) -> str:
    """Identifies a run: everything that changes the weights (not eval/save intervals)."""
    h = hashlib.sha256()
    h.update(json.dumps({"config": weight_settings(config), "dpo": settings.to_dict(), "init": init}, sort_keys=True).encode())
    for ex in examples:
        h.update("\0".join((ex.source, ex.chosen, ex.rejected, str(ex.group))).encode() + b"\1")
    return h.hexdigest()


# -- the starting adapter -------------------------------------------------------------------------
def _init_config(config: SFTConfig, init: Path) -> tuple[SFTConfig, str]:
    """``config`` with the LoRA shape of the adapter folder ``init``, and that adapter's checksum; ``InputError``
    when it was trained for another kind of stage or another base model."""
    verify_adapter(init)
    manifest = read_manifest(init) or {}
    if manifest.get("kind") not in (None, config.kind):
        raise InputError(f"{init}: a {manifest.get('kind')} adapter cannot start a {config.kind} DPO run")
    if manifest.get("base_model") not in (None, base_label(config.base_model)):
        raise InputError(
            f"{init}: trained on {manifest.get('base_model')}, but this run's base model is {base_label(config.base_model)}"
        )
    try:
        peft_cfg = json.loads((init / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{init / 'adapter_config.json'}: unreadable: {e}") from None
    r, alpha, modules = int(peft_cfg["r"]), int(peft_cfg["lora_alpha"]), tuple(sorted(peft_cfg["target_modules"]))
    if (config.lora_r, config.lora_alpha, tuple(sorted(config.target_modules))) != (r, alpha, modules):
        log.info("LoRA settings taken from %s: r=%d alpha=%d on %s", init, r, alpha, " ".join(modules))
    return replace(config, lora_r=r, lora_alpha=alpha, target_modules=modules), sha256(init / "adapter_model.safetensors")


def _load_init(model: Any, init: Path) -> None:
    """Put the weights of the adapter folder ``init`` into the fresh adapter of ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(init / "adapter_model.safetensors")))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise InputError(f"{init}: the adapter lacks {len(missing)} LoRA tensors, e.g. {missing[0]}")


# -- log-probabilities ----------------------------------------------------------------------------
def _logps(scorer: TargetLoss, batch: dict[str, Any]) -> tuple[Any, Any]:
    return sequence_logps(scorer.target_logits(batch))


def reference_logps(
    scorer: TargetLoss, rows: _PairRows, pad_id: int, device: Any, batch_size: int, *, adapter_off: bool,
    progress: bool = True, only: "set[int] | None" = None,
) -> tuple[Any, Any]:
    """``(sums, counts)``, tensors ``[examples, 2]`` (chosen, rejected): the reference's summed target
    log-probabilities, computed with the adapter switched off (``adapter_off``) or as it is, in eval mode;
    for the examples in ``only`` when given (the others stay 0)."""
    import contextlib

    import torch
    from tqdm.auto import tqdm

    n = len(rows.chosen)
    sums = torch.zeros(n, 2, dtype=torch.float32)
    counts = torch.zeros(n, 2, dtype=torch.long)
    wanted = range(n) if only is None else sorted(only)
    order = sorted(wanted, key=lambda i: len(rows.chosen[i]["input_ids"]) + len(rows.rejected[i]["input_ids"]))
    model = scorer.model
    was_training = model.training
    model.eval()
    off = model.disable_adapter() if adapter_off else contextlib.nullcontext()
    with torch.no_grad(), off:
        for k in tqdm(range(0, len(order), batch_size), desc="reference log-probs", unit="batch", disable=not progress):
            idx = order[k : k + batch_size]
            s, c = _logps(scorer, _batch(rows, idx, pad_id, device))
            b = len(idx)
            sums[idx, 0], sums[idx, 1] = s[:b].cpu(), s[b:].cpu()
            counts[idx, 0], counts[idx, 1] = c[:b].cpu(), c[b:].cpu()
    if was_training:
        model.train()
    return sums, counts


def _first_reference(
    scorer: TargetLoss, rows: _PairRows, plan: BatchPlan, pad_id: int, device: Any, batch_size: int, *,
    adapter_off: bool, progress: bool,
) -> tuple[tuple[Any, Any], float, float]:
    """The reference log-probs of a fresh run, for the pairs its steps use and the held-out ones (fewer than
    all with ``max_steps``), the seconds that took and the share of them spent on training pairs."""
    t0 = time.perf_counter()
    used = {i for s in range(plan.total) for i in plan.batch(s)[2]} | set(rows.held)
    ref = reference_logps(scorer, rows, pad_id, device, batch_size, adapter_off=adapter_off, progress=progress, only=used)
    return ref, time.perf_counter() - t0, len(used - set(rows.held)) / len(used)


_REWARDS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy")


def _reward_sums(chosen: Any, rejected: Any) -> list[float]:
    """The sums behind the reward metrics (``_REWARDS``): what processes add up to get the global means."""
    return [float(chosen.sum()), float(rejected.sum()), float((chosen - rejected).sum()), float((chosen > rejected).sum())]


def _means(loss_sum: float, n: float, reward_sums: Sequence[float]) -> dict[str, float]:
    n = max(1.0, n)
    return {"loss": loss_sum / n, **{name: value / n for name, value in zip(_REWARDS, reward_sums)}}


def _metrics(losses: Any, chosen: Any, rejected: Any) -> dict[str, float]:
    return _means(float(losses.sum()), len(losses), _reward_sums(chosen, rejected))


class _Objective:
    """The DPO loss of a set of pairs under the current policy, against the stored reference."""

    def __init__(self, scorer: TargetLoss, rows: _PairRows, ref: tuple[Any, Any], settings: DPOSettings, pad_id: int, device: Any):
        self.scorer, self.rows, self.settings, self.pad_id, self.device = scorer, rows, settings, pad_id, device
        self.ref_sums, self.ref_counts = ref[0].to(device), ref[1].to(device)

    def __call__(self, idx: list[int]) -> tuple[Any, Any, Any, int]:
        """``(losses, chosen_rewards, rejected_rewards, tokens)`` of the pairs ``idx``."""
        batch = _batch(self.rows, idx, self.pad_id, self.device)
        sums, counts = _logps(self.scorer, batch)
        b = len(idx)
        rs, rc = self.ref_sums[idx], self.ref_counts[idx]
        losses, cr, rr = dpo_loss(sums[:b], sums[b:], rs[:, 0], rs[:, 1], self.settings, counts[:b], counts[b:])
        return losses, cr, rr, int(batch["attention_mask"].sum())

    def evaluate(self, idx: list[int], batch_size: int) -> dict[str, float] | None:
        """The held-out metrics (``eval_`` names) over the pairs ``idx``, in eval mode."""
        import torch

        if not idx:
            return None
        model = self.scorer.model
        was_training = model.training
        model.eval()
        parts: list[tuple[Any, Any, Any]] = []
        with torch.no_grad():
            for k in range(0, len(idx), batch_size):
                losses, cr, rr, _ = self(idx[k : k + batch_size])
                parts.append((losses, cr, rr))
        if was_training:
            model.train()
        joined = [torch.cat([p[j] for p in parts]) for j in range(3)]
        return {f"eval_{k}": v for k, v in _metrics(*joined).items()}


def _step_fn(plan: BatchPlan, objective: _Objective, optimizer: Any, dist: Dist = SINGLE) -> LossFn:
    """The forward pass of a step for ``TrainingLoop``: the mean DPO loss of the step's pairs and its history
    row. Under several processes each one scores its share of the pairs (``dist.shard``) and returns their
    summed loss over the whole batch's size, times the number of processes, so the gradients ``TrainingLoop``
    averages are those of the whole batch's mean (``dist.step_mean``); the row's metrics are the whole batch's."""

    def compute(at: int) -> tuple[Any, Callable[[], dict[str, Any]]]:
        _, epoch, idx = plan.batch(at)
        mine = dist.shard(idx)
        if mine:
            losses, cr, rr, tokens = objective(mine)
            loss_sum, rewards = losses.sum(), _reward_sums(cr, rr)
        else:  # fewer pairs than processes: this one contributes nothing
            loss_sum, tokens, rewards = no_share(), 0, [0.0] * len(_REWARDS)
        loss, (total, n, *summed) = dist.step_mean(loss_sum, len(mine), *rewards, tokens)

        def make_row() -> dict[str, Any]:
            row = {"step": at + 1, **_means(total, n, summed[:-1])}
            row.update(lr=optimizer.param_groups[0]["lr"], epoch=round(epoch, 4), tokens=int(summed[-1]))
            return row

        return loss, make_row

    return compute


# -- training -------------------------------------------------------------------------------------
def train_dpo(
    examples: list[DPOExample],
    config: SFTConfig,
    out_dir: str | Path,
    *,
    settings: DPOSettings = DPOSettings(),
    init: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    device: str | None = None,
) -> DPOResult:
    """Train a LoRA adapter on preference ``examples`` by DPO (or IPO: ``settings.loss``) and save it at ``out_dir``.

    ``config`` is the SFT trainer's (LoRA shape, optimisation, lengths, held-out share, checkpoints; its
    ``warmup_epochs`` is not used); with ``init`` the LoRA shape is that adapter's. A share
    ``config.eval_fraction`` of the examples' groups is held out and measured before step 1, every
    ``eval_every`` steps and at the end: loss, rewards of both targets, their margin and the preference
    accuracy. Checkpoints, resume (same weights as an uninterrupted run), Ctrl-C (the last finished step
    saved and exported), ``callback`` (returning ``False`` stops), ``device`` and ``accelerate launch`` behave
    as in ``train_sft``.

    Writes the adapter files, ``alignware.json`` (``training.method = "dpo"``), ``history.json`` and ``loss.png``.
    """
    import torch  # heavy: loaded when a run starts

    config.validate()
    settings.validate()
    examples = check_dpo_examples(examples)
    init_dir = Path(init).expanduser() if init is not None else None
    init_digest = None
    if init_dir is not None:
        config, init_digest = _init_config(config, init_dir)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(config, settings, examples, init_digest)

    dist = current()
    model, tok = load_training_model(config, device=dist.device(device))
    if init_dir is not None:
        _load_init(model, init_dir)
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = _tokenize(tok, examples, config)
    lengths = [max(len(c["input_ids"]), len(r["input_ids"])) for c, r in zip(rows.chosen, rows.rejected)]
    plan = BatchPlan.from_epochs([("main", rows.train, config.epochs)], lengths, config.batch_size, config.seed,
                                 max_steps=config.max_steps, window=BUCKET_BATCHES, longest_first=True)
    if plan.total == 0:
        raise InputError("the run has no steps: check epochs and the number of examples")

    params = trainable_params(model)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=0.0)
    scorer = TargetLoss(model)
    manager = CheckpointManager(out_dir, keep=config.keep_checkpoints)
    ck = resume_checkpoint(manager, resume, fp, params, optimizer, plan.total, dist)
    step = ck.step if ck else 0
    history: list[dict[str, Any]] = list(ck.state.get("history", [])) if ck else []
    eval_untrained: dict[str, float] | None = ck.state.get("eval_untrained") if ck else None
    if ck is not None:
        saved = ck.state["reference"]
        ref = (torch.tensor(saved["sums"], dtype=torch.float32), torch.tensor(saved["counts"], dtype=torch.long))
        ref_seconds, ref_share = 0.0, 0.0
    else:
        ref, ref_seconds, ref_share = _first_reference(scorer, rows, plan, pad_id, device, config.batch_size,
                                                       adapter_off=init_dir is None, progress=progress)
    objective = _Objective(scorer, rows, ref, settings, pad_id, device)

    model.train()
    if step == 0:
        eval_untrained = objective.evaluate(rows.held, config.batch_size)
        if eval_untrained is not None:
            history.append({"step": 0, **eval_untrained})

    def checkpoint(at: int, rng: dict[str, Any] | None = None) -> None:
        state = {"fingerprint": fp, "config": config.to_dict(), "dpo": settings.to_dict(), "history": history,
                 "eval_untrained": eval_untrained, "total_steps": plan.total,
                 "reference": {"sums": ref[0].tolist(), "counts": ref[1].tolist()}}
        manager.save(at, model_tensors=params, optimizer=optimizer, state=state, rng=rng)

    last_eval: list[dict[str, float] | None] = [None]

    def on_step(at: int, row: dict[str, Any]) -> bool:
        loop.bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['rewards_accuracy']:.2f}", refresh=False)
        if rows.held and (at % config.eval_every == 0 or at == plan.total):
            last_eval[0] = objective.evaluate(rows.held, config.batch_size)
            history.append({"step": at, **(last_eval[0] or {})})
        return callback is not None and callback(row) is False

    schedule = LRSchedule(plan.total, warmup=max(1, round(0.1 * plan.total)), decay="linear")
    loop = TrainingLoop(params, optimizer, schedule, [config.learning_rate], save_every=config.save_every,
                        grad_clip=1.0, desc=f"train {config.kind} (DPO)", progress=progress, dist=dist)
    done = loop.run(_step_fn(plan, objective, optimizer, dist), start=step, stop=plan.total, save=checkpoint,
                    record=history.append, unrecord=drop_if_last(history), on_step=on_step)

    final = last_eval[0]
    if rows.held and not (history and history[-1].get("step") == done.step and "eval_loss" in history[-1]):
        final = objective.evaluate(rows.held, config.batch_size)
        history.append({"step": done.step, **(final or {})})
    elif rows.held:
        final = {k: v for k, v in history[-1].items() if k.startswith("eval_")}
    trained_pairs = sum(len(plan.batch(s)[2]) for s in range(step, done.step))
    seconds = done.train_seconds + ref_seconds * ref_share
    training = dict(
        method="dpo", dpo=settings.to_dict(), init=str(init_dir) if init_dir else None, steps=done.step,
        total_steps=plan.total, finished=done.step >= plan.total, examples=len(examples), held_out=len(rows.held),
        eval_untrained=eval_untrained, eval_final=final,
        pairs_per_second=round(trained_pairs / seconds, 3) if seconds else None,
    )
    if dist.is_main:  # under accelerate launch every process holds the same weights; rank 0 writes them
        export_adapter(model, out_dir, config, history, training, title=f"{config.kind} DPO",
                       curves=("loss", "eval_loss", "rewards_accuracy", "eval_rewards_accuracy"))
    dist.barrier()
    return DPOResult(
        out_dir=out_dir, history=history, eval_untrained=eval_untrained, eval_final=final, steps=done.step,
        total_steps=plan.total, pairs_per_second=trained_pairs / seconds if seconds else 0.0,
        train_seconds=done.train_seconds, reference_seconds=ref_seconds,
        resumed_from=ck.step if ck else None, stopped_early=done.stopped, interrupted=done.interrupted,
        held_out=len(rows.held), settings=settings.to_dict(),
    )
