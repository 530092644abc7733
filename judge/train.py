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
from middleware.checkpoints import CheckpointManager, write_json_atomic
from middleware.training import (
    BatchPlan,
    LRSchedule,
    Phase,
    TrainingLoop,
    latest_checkpoint,
    plot_history,
    restore_optimizer,
    run_differences,
    split_holdout,
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
    """What ``train_reward_model`` returns; ``interrupted``: Ctrl-C stopped it (the last finished step
    is saved; calling again resumes)."""
    model: RewardModel
    out_dir: Path
    steps: int
    total_steps: int
    finished: bool
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


def _fingerprint(pairs: Sequence[PreferencePair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(p.model_dump_json(include={"prompt", "chosen", "rejected"}).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _clear_run(out_dir: Path) -> None:
    """Remove an earlier run's checkpoints and final model from ``out_dir`` (other files stay)."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, PLOT_FILE):
        (out_dir / name).unlink(missing_ok=True)


def _saved_run(state: dict[str, Any]) -> dict[str, Any]:
    """The run identity stored with a checkpoint; ``lr`` is the name earlier versions gave ``learning_rate``."""
    run = dict(state.get("run", {}))
    train = run.get("train")
    if isinstance(train, dict) and "lr" in train:
        run["train"] = {("learning_rate" if k == "lr" else k): v for k, v in train.items()}
    return run


def _split_pairs(
    pairs: "Sequence[PreferencePair] | str | Path", eval_pairs: "Sequence[PreferencePair] | str | Path | None", tcfg: TrainConfig
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training pairs, held-out pairs): ``eval_pairs`` when given, else a seeded share of ``pairs``."""
    all_pairs = load_pairs(pairs) if isinstance(pairs, (str, Path)) else list(pairs)
    if not all_pairs:
        raise InputError(f"{pairs if isinstance(pairs, (str, Path)) else 'pairs'}: no preference pairs to train on")
    if eval_pairs is not None:
        return all_pairs, load_pairs(eval_pairs) if isinstance(eval_pairs, (str, Path)) else list(eval_pairs)
    tr_idx, ev_idx = split_holdout(len(all_pairs), tcfg.eval_fraction, tcfg.seed)
    return [all_pairs[i] for i in tr_idx], [all_pairs[i] for i in ev_idx]


def _optimizer(net: Any, mcfg: RewardConfig, tcfg: TrainConfig) -> tuple[Any, dict[str, Any], list[float]]:
    """(AdamW with the head's and the backbone's parameter groups, the trainable parameters by name
    (head first), the groups' peak learning rates)."""
    base_lr, head_lr = tcfg.lrs(mcfg.train)
    head = {n: p for n, p in net.named_parameters() if p.requires_grad and n.startswith("head.")}
    body = {n: p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("head.")}
    groups = [{"params": list(head.values()), "lr": head_lr, "base_lr": head_lr}]
    peaks = [head_lr]
    if body:
        groups.append({"params": list(body.values()), "lr": base_lr, "base_lr": base_lr})
        peaks.append(base_lr)
    return torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay), {**head, **body}, peaks


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
        A ``TrainResult``; ``finished`` is false when ``stop_after`` or Ctrl-C (``interrupted``) ended
        the run early. Ctrl-C saves the last finished step as a checkpoint, as the SFT trainer does.
    """
    mcfg = model or RewardConfig()
    tcfg = train or TrainConfig()
    out_dir = Path(out_dir)
    train_pairs, held = _split_pairs(pairs, eval_pairs, tcfg)
    run_id = {
        "model": asdict(mcfg),
        "train": tcfg.identity(),
        "data": _fingerprint(train_pairs),
        "eval_data": _fingerprint(held),
        "n_train": len(train_pairs),
        "n_eval": len(held),
    }
    manager = CheckpointManager(out_dir, keep=tcfg.keep_checkpoints)
    if not resume:
        _clear_run(Path(out_dir))
    ckpt = latest_checkpoint(manager, resume=resume)
    if ckpt is not None:
        diff = run_differences(_saved_run(ckpt.state), run_id)
        if diff:
            raise InputError(
                f"{out_dir} holds a run with different {', '.join(diff)} (checkpoint {ckpt.path.name}); "
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
    opt, params, peaks = _optimizer(net, mcfg, tcfg)

    history: list[dict[str, Any]] = []
    start = 0
    if ckpt is not None:
        rm.load_trainable_state(ckpt.model, source=str(ckpt.path))
        restore_optimizer(ckpt, opt)
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
    window: list[dict[str, Any]] = []

    def save(step: int, rng: dict[str, Any] | None = None) -> None:
        if window:  # a run stopped between two history rows keeps the steps it did
            history.append(_mean_row(window))
            window.clear()
        state = {"run": run_id, "history": history, "total_steps": total}
        manager.save(step, model_tensors=rm.trainable_state(), optimizer=opt, state=state, rng=rng)
        if time.monotonic() - last_plot[0] > 60:  # a live plot for long runs, without slowing short ones
            plot()
            last_plot[0] = time.monotonic()

    if start == 0 and enc_eval and total > 0 and not history:
        history.append({"step": 0, **evaluate()})

    stop = total if tcfg.stop_after is None else min(total, max(start, tcfg.stop_after))
    log_every = _log_every(total, tcfg.save_every)
    plan = BatchPlan([Phase("main", list(range(len(enc_train))), 0, spe, total)], lengths, tcfg.batch_size, tcfg.seed,
                     window=32, bucket=tcfg.bucket)
    pairs_done = {"n": 0, "last": 0}
    current: dict[str, Any] = {}

    def compute(step: int) -> tuple[Any, Callable[[], dict[str, Any]]]:
        idx = plan.batch(step)[2]
        pairs_done["last"] = len(idx)
        rc, rr = rewards_for(idx)
        margin = rc - rr
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        return loss, lambda: {"step": step + 1, "loss": float(loss.detach()), "train_acc": accuracy_from_margins(margin.detach().tolist())}

    def on_step(step: int, row: dict[str, Any]) -> bool:
        pairs_done["n"] += pairs_done["last"]
        if step % log_every == 0 or step == total:
            history.append(_mean_row(window))
            window.clear()
        current.clear()
        current.update(row)
        if step % eval_every == 0 or step == total:
            ev = evaluate()
            net.train()
            if ev:
                history.append({"step": step, **ev})
                current.update(ev)
        return False

    def after_save(step: int, row: dict[str, Any]) -> None:
        post = {"loss": f"{current['loss']:.3f}", "pairs/s": f"{pairs_done['n'] / max(loop.train_seconds, 1e-9):.2f}"}
        if "eval_acc" in current:
            post["eval_acc"] = f"{current['eval_acc']:.3f}"
        loop.bar.set_postfix(post, refresh=False)  # drawn by update(), at most every mininterval
        for cb in callbacks:
            cb(step, dict(current))

    def unrecord(row: dict[str, Any]) -> None:
        if window and window[-1] is row:
            window.pop()

    net.train()
    schedule = LRSchedule(total, warmup=int(round(total * tcfg.warmup_ratio)), decay="cosine")
    loop = TrainingLoop(params, opt, schedule, peaks, save_every=tcfg.save_every, grad_clip=tcfg.grad_clip,
                        desc="training reward model", progress=progress)
    done = loop.run(compute, start=start, stop=stop, save=save, record=window.append, unrecord=unrecord,
                    on_step=on_step, after_save=after_save)
    step, train_time = done.step, done.train_seconds
    if start < step < total and step % tcfg.save_every != 0:
        if not done.interrupted:  # Ctrl-C saved its step already
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
        "pairs_per_second": pairs_done["n"] / train_time if train_time > 0 else None,
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
    return TrainResult(
        model=rm, out_dir=out_dir, steps=step, total_steps=total, finished=finished, metrics=metrics, history=history,
        interrupted=done.interrupted,
    )


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

