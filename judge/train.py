"""Training a reward model from preference pairs: the Bradley–Terry loss ``-log σ(r(x, chosen) − r(x,
rejected))`` with a held-out split, checkpoints and resume.

Speed: pairs are bucketed by length, and the chosen and rejected answers of a pair share one pass over
the prompt (one packed row, see ``judge.encoding``). With ``train="head"`` the frozen backbone's features
are computed once and only the head trains.

Example::

    result = train_reward_model("pairs.jsonl", "runs/rm", RewardConfig(max_length=256), TrainConfig(epochs=1))
    rm = RewardModel.load("runs/rm")
    rm.score("How do I boil an egg?", "Put it in boiling water for 8 minutes.")
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from middleware.errors import InputError
from middleware.training import (
    CheckpointManager,
    batches,
    epoch_order,
    load_checkpoint,
    plot_history,
    set_rng_state,
    split_holdout,
    tensors_to_optimizer,
    write_json_atomic,
)
from middleware.types import PreferencePair, load_pairs

from .config import CONFIG_FILE, METRICS_FILE, PLOT_FILE, WEIGHTS_FILE, RewardConfig, TrainConfig
from .encoding import EncodedPair
from .model import RewardModel, accuracy_from_margins

log = logging.getLogger("alignware")

#: (step, row) -> None, called after every optimizer step (after the checkpoint of that step, if any).
StepCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What ``train_reward_model`` returns."""
    model: RewardModel
    out_dir: Path
    steps: int
    total_steps: int
    finished: bool
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _fingerprint(pairs: Sequence[PreferencePair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(p.model_dump_json(include={"prompt", "chosen", "rejected"}).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _schedule(lengths: Sequence[int], epoch: int, cfg: TrainConfig) -> list[list[int]]:
    """Batches (positions into the training list) of one epoch: a seeded shuffle, then, with
    ``bucket``, sorting by length inside windows of 32 batches and shuffling the batch order."""

    order = epoch_order(len(lengths), epoch, cfg.seed)
    if not cfg.bucket:
        return list(batches(order, cfg.batch_size))
    window = cfg.batch_size * 32
    out: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        out.extend(batches(chunk, cfg.batch_size))
    g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + 1)
    return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]


def _lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    warm = int(round(total * warmup_ratio))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    span = max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))


def _clear_run(out_dir: Path) -> None:
    """Remove an earlier run's checkpoints and final model from ``out_dir`` (other files stay)."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, PLOT_FILE):
        (out_dir / name).unlink(missing_ok=True)


def train_reward_model(
    pairs: "Sequence[PreferencePair] | str | Path",
    out_dir: str | Path,
    model: RewardConfig | None = None,
    train: TrainConfig | None = None,
    *,
    eval_pairs: "Sequence[PreferencePair] | str | Path | None" = None,
    callbacks: Sequence[StepCallback] = (),
    resume: bool = True,
    progress: bool = True,
    device: str | None = None,
) -> TrainResult:
    """Train a reward model on preference pairs with the Bradley–Terry loss.

    Args:
        pairs: pairs, or a JSONL file of them (``InputError`` on a bad file).
        out_dir: run folder: ``checkpoints/``, the final model (``reward.safetensors`` +
            ``reward_config.json``), ``metrics.json`` and ``training.png``.
        model: the reward model to build (default ``RewardConfig()``).
        train: training settings (default ``TrainConfig()``).
        eval_pairs: held-out pairs; default: ``train.eval_fraction`` of ``pairs``, split by seed.
        callbacks: ``fn(step, row)`` after each step; an exception raised there stops the run (the last
            checkpoint stays, and calling again with the same arguments resumes from it).
        resume: continue from the newest good checkpoint in ``out_dir`` (the settings and data must match).
            ``False`` starts over: the folder's checkpoints and final model from an earlier run are
            removed first, so nothing of that run can be loaded from ``out_dir`` afterwards.
        progress: show tqdm progress bars.

    Returns:
        A ``TrainResult``; ``finished`` is false when ``stop_after`` ended the run early.
    """
    mcfg = model or RewardConfig()
    tcfg = train or TrainConfig()
    out_dir = Path(out_dir)
    all_pairs = load_pairs(pairs) if isinstance(pairs, (str, Path)) else list(pairs)
    if not all_pairs:
        raise InputError(f"{pairs if isinstance(pairs, (str, Path)) else 'pairs'}: no preference pairs to train on")
    if eval_pairs is not None:
        held = load_pairs(eval_pairs) if isinstance(eval_pairs, (str, Path)) else list(eval_pairs)
        train_pairs = all_pairs
    else:
        tr_idx, ev_idx = split_holdout(len(all_pairs), tcfg.eval_fraction, tcfg.seed)
        train_pairs, held = [all_pairs[i] for i in tr_idx], [all_pairs[i] for i in ev_idx]

    run_id = {
        "model": asdict(mcfg),
        "train": tcfg.identity(),
        "data": _fingerprint(train_pairs),
        "eval_data": _fingerprint(held),
        "n_train": len(train_pairs),
        "n_eval": len(held),
    }
    manager = CheckpointManager(out_dir, keep=tcfg.keep)
    if not resume:
        _clear_run(Path(out_dir))
    latest = manager.latest() if resume else None
    ckpt = None
    if latest is not None:
        ckpt = load_checkpoint(latest)
        prev = ckpt.state.get("run", {})
        diff = sorted(k for k in run_id if json.dumps(prev.get(k), sort_keys=True, default=str) != json.dumps(run_id[k], sort_keys=True, default=str))
        if diff:
            raise InputError(
                f"{out_dir} holds a run with different {', '.join(diff)} (checkpoint {latest.name}); "
                "use another output folder, or start over there (--fresh / resume=False)"
            )

    torch.manual_seed(tcfg.seed)
    rm = RewardModel.create(mcfg, device=device)
    net = rm.net
    net.reset_head(tcfg.seed)
    enc_train = rm.encode_pairs(train_pairs, progress=progress)
    enc_eval = rm.encode_pairs(held, progress=progress)
    lengths = [e.packed_length if tcfg.share_prompt else len(e.prompt) + max(len(e.chosen), len(e.rejected)) for e in enc_train]

    spe = math.ceil(len(enc_train) / tcfg.batch_size)
    total = tcfg.max_steps if tcfg.max_steps is not None else max(1, math.ceil(tcfg.epochs * spe))
    eval_every = tcfg.eval_every or tcfg.save_every
    base_lr, head_lr = tcfg.lrs(mcfg.train)
    head_params = [p for n, p in net.named_parameters() if p.requires_grad and n.startswith("head.")]
    body_params = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("head.")]
    groups = [{"params": head_params, "lr": head_lr, "base_lr": head_lr}]
    if body_params:
        groups.append({"params": body_params, "lr": base_lr, "base_lr": base_lr})
    opt = torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)

    history: list[dict[str, Any]] = []
    start = 0
    if ckpt is not None:
        rm.load_trainable_state(ckpt.model, source=str(ckpt.path))
        if ckpt.optimizer:
            tensors_to_optimizer(opt, ckpt.optimizer, ckpt.state.get("optimizer_meta", {}))
        set_rng_state(ckpt.rng)
        history = list(ckpt.state.get("history", []))
        start = ckpt.step
        log.info("resuming from %s (step %d of %d)", ckpt.path, start, total)

    # Frozen backbone: its features never change, so compute them once.
    feats: dict[str, Any] = {}
    t_feat = time.perf_counter()
    if mcfg.train == "head":
        for name, enc in (("train", enc_train), ("eval", enc_eval)):
            if enc and (name == "eval" or start < total):
                feats[name] = _features(rm, enc, tcfg, progress, desc=f"features ({name})")

    feature_seconds = time.perf_counter() - t_feat

    def rewards_for(idx: list[int]) -> tuple[Any, Any]:
        if "train" in feats:
            r = net.head(feats["train"][idx]).squeeze(-1)
            return r[:, 0], r[:, 1]
        return rm.pair_rewards([enc_train[i] for i in idx], share_prompt=tcfg.share_prompt)

    def evaluate() -> dict[str, float]:
        if not enc_eval:
            return {}
        if "eval" in feats:
            with torch.no_grad():
                r = net.head(feats["eval"]).squeeze(-1)
            margins = (r[:, 0] - r[:, 1]).tolist()
        else:
            margins = rm.pair_margins(enc_eval, batch_size=tcfg.batch_size * 2, share_prompt=tcfg.share_prompt, progress=progress)
        m = torch.tensor(margins)
        return {
            "eval_loss": float(-torch.nn.functional.logsigmoid(m).mean()),
            "eval_acc": accuracy_from_margins(margins),
        }

    def plot() -> None:
        try:
            plot_history(history, out_dir / PLOT_FILE, title=f"reward model ({mcfg.train}, {Path(mcfg.backbone).name})")
        except Exception as e:  # a plotting problem must not lose a training run
            log.warning("could not draw %s: %s", out_dir / PLOT_FILE, e)

    last_plot = [time.monotonic()]

    def save(step: int) -> None:
        manager.save(step, model_tensors=rm.trainable_state(), optimizer=opt, state={"run": run_id, "history": history, "total_steps": total})
        if time.monotonic() - last_plot[0] > 60:  # a live plot for long runs, without slowing short ones
            plot()
            last_plot[0] = time.monotonic()

    if start == 0 and enc_eval and total > 0 and not history:
        history.append({"step": 0, **evaluate()})

    stop = total if tcfg.stop_after is None else min(total, max(start, tcfg.stop_after))
    train_time, trained_pairs = 0.0, 0
    log_every = _log_every(total, tcfg.save_every)
    window: list[dict[str, Any]] = []
    net.train()
    bar = tqdm(total=total, initial=start, desc="training reward model", unit="step", disable=not progress, dynamic_ncols=True)
    schedule_cache: dict[int, list[list[int]]] = {}
    step = start
    try:
        while step < stop:
            epoch, k = divmod(step, spe)
            if epoch not in schedule_cache:
                schedule_cache.clear()
                schedule_cache[epoch] = _schedule(lengths, epoch, tcfg)
            idx = schedule_cache[epoch][k]
            factor = _lr_factor(step, total, tcfg.warmup_ratio)
            for gr in opt.param_groups:
                gr["lr"] = gr["base_lr"] * factor
            t0 = time.perf_counter()
            rc, rr = rewards_for(idx)
            margin = rc - rr
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], tcfg.grad_clip)
            opt.step()
            train_time += time.perf_counter() - t0
            trained_pairs += len(idx)
            step += 1
            row: dict[str, Any] = {"step": step, "loss": float(loss.detach()), "train_acc": accuracy_from_margins(margin.detach().tolist())}
            window.append(row)
            if step % log_every == 0 or step == total:
                history.append(_mean_row(window))
                window.clear()
            if step % eval_every == 0 or step == total:
                ev = evaluate()
                net.train()
                if ev:
                    history.append({"step": step, **ev})
                    row = {**row, **ev}
            if step % tcfg.save_every == 0 or step == total:
                save(step)
            post = {"loss": f"{row['loss']:.3f}", "pairs/s": f"{trained_pairs / max(train_time, 1e-9):.2f}"}
            if "eval_acc" in row:
                post["eval_acc"] = f"{row['eval_acc']:.3f}"
            bar.set_postfix(post, refresh=False)  # drawn by update(), at most every mininterval
            bar.update(1)
            for cb in callbacks:
                cb(step, row)
    finally:
        bar.close()
    if start < step < total and step % tcfg.save_every != 0:
        if window:
            history.append(_mean_row(window))
        save(step)
        plot()  # a time-boxed run (stop_after) keeps everything it did

    finished = step >= total
    evals = [r for r in history if "eval_acc" in r]
    metrics: dict[str, Any] = {
        "steps": step,
        "total_steps": total,
        "finished": finished,
        "n_train": len(enc_train),
        "n_eval": len(enc_eval),
        "pairs_per_second": trained_pairs / train_time if train_time > 0 else None,
        "train_seconds_this_run": train_time,
        "feature_seconds_this_run": feature_seconds if mcfg.train == "head" else None,
        "eval_acc": evals[-1]["eval_acc"] if evals else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
    }
    if finished:
        if step > start or not (out_dir / CONFIG_FILE).is_file():
            rm.info["train_metrics"] = metrics
            rm.save(out_dir)
        write_json_atomic(out_dir / METRICS_FILE, metrics)
        plot()
    net.eval()
    return TrainResult(model=rm, out_dir=out_dir, steps=step, total_steps=total, finished=finished, metrics=metrics, history=history)


def _log_every(total: int, save_every: int) -> int:
    """Steps per history row: about 100 rows per run, and a divisor of ``save_every`` so that a resumed
    run logs exactly the rows an uninterrupted one does."""
    k = max(1, min(save_every, total // 100))
    while save_every % k:
        k -= 1
    return k


def _mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"step": rows[-1]["step"], "loss": sum(r["loss"] for r in rows) / len(rows), "train_acc": sum(r["train_acc"] for r in rows) / len(rows)}


def _features(rm: RewardModel, enc: Sequence[EncodedPair], cfg: TrainConfig, progress: bool, desc: str) -> Any:
    order = sorted(range(len(enc)), key=lambda i: enc[i].packed_length)
    out: Any = None
    rm.net.eval()
    bs = max(1, cfg.batch_size * 2)
    with torch.inference_mode():
        for j in tqdm(range(0, len(order), bs), desc=desc, unit="batch", disable=not progress):
            idx = order[j : j + bs]
            f = rm.pair_features([enc[i] for i in idx], share_prompt=cfg.share_prompt)
            if out is None:
                out = torch.zeros((len(enc), 2, f.shape[-1]), dtype=f.dtype)
            out[idx] = f.cpu()
    rm.net.train()
    return out.to(rm.device).clone()

