"""What every trainer shares: one training skeleton (``TrainingLoop``) and its parts.

- data order: a seeded permutation per epoch (``epoch_order``), length-bucketed batches
  (``bucket_batches``), the step -> batch plan of a run's phases (``BatchPlan``) and a deterministic
  held-out split (``split_holdout``);
- the learning-rate schedule (``LRSchedule``: warm-up, then linear or cosine decay);
- ``TrainingLoop``: the optimizer steps with their progress bar, periodic saving, and Ctrl-C safety
  (the state before each update is kept so an interrupted update is undone, and the random state of
  the step's start is what the last checkpoint stores);
- resume: the newest verified checkpoint of the same run (``latest_checkpoint``, ``run_differences``,
  ``restore_optimizer``);
- the command line every ``alignware train ...`` verb shares (``add_training_flags``) and its exit
  codes (``run_train_command``); loss/accuracy plots.

Checkpoint files and the ``CheckpointManager`` are in ``middleware.checkpoints``. The SFT trainer
(``middleware.sft``) and the reward trainer (``judge.train``) are built on this module.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from .checkpoints import Checkpoint, CheckpointManager, load_checkpoint, rng_state, set_rng_state, tensors_to_optimizer
from .distributed import Dist, current
from .errors import AlignwareError, InputError

log = logging.getLogger("alignware")

#: Exit codes of every ``alignware train ...`` verb.
EXIT_OK = 0  # done, or stopped at --max-steps / --stop-after (resumable)
EXIT_FAILED = 1  # the run failed: checkpoint, data or model error
EXIT_USAGE = 2  # bad usage or bad input
EXIT_INTERRUPTED = 130  # Ctrl-C: the last finished step is saved, rerun to resume


# -- data order ----------------------------------------------------------------------------
def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` that depends only on (seed, epoch): resumable data order."""
    import torch  # heavy: loaded on first use

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), batch_size):
        yield list(order[i : i + batch_size])


def bucket_batches(
    order: Sequence[int], lengths: Sequence[int], batch_size: int, *, window: int, shuffle_seed: int, longest_first: bool = False
) -> list[list[int]]:
    """Length-bucketed batches of ``order`` (an epoch's seeded permutation of row indices): rows are
    sorted by length within windows of ``window`` batches (little padding), cut into batches, and the
    batches shuffled by ``shuffle_seed``."""
    import torch  # heavy: loaded on first use

    span = batch_size * window
    sign = -1 if longest_first else 1
    out: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: sign * lengths[i])
        out.extend(batches(chunk, batch_size))
    g = torch.Generator().manual_seed(shuffle_seed)
    return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]


@dataclass
class Phase:
    """A part of a run (e.g. a warm-up, then the main data): its rows (indices into the tokenized rows),
    an epoch offset (so the phases draw different orders), its steps per epoch and its steps."""

    name: str
    rows: list[int]
    offset: int
    steps_per_epoch: int
    steps: int


class BatchPlan:
    """Maps a global step to its batch; depends only on (seed, step), so a resumed run replays it.

    An epoch of a phase is a seeded permutation of its rows, cut into batches bucketed by length
    (``bucket_batches`` with windows of ``window`` batches) unless ``bucket`` is false.
    """

    def __init__(
        self, phases: Sequence[Phase], lengths: Sequence[int], batch_size: int, seed: int, *,
        total: int | None = None, window: int = 16, longest_first: bool = False, bucket: bool = True,
    ) -> None:
        self.phases = list(phases)
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.longest_first = longest_first
        self.bucket = bucket
        self.total = sum(p.steps for p in self.phases) if total is None else total
        self._cache: tuple[tuple[int, int], list[list[int]]] | None = None

    @classmethod
    def from_epochs(
        cls, phases: Sequence[tuple[str, list[int], float]], lengths: Sequence[int], batch_size: int, seed: int, *,
        max_steps: int | None = None, **kw: Any,
    ) -> "BatchPlan":
        """Phases of ``(name, rows, epochs)`` (fractions allowed; empty ones dropped), capped at ``max_steps``."""
        built: list[Phase] = []
        offset = 0
        for name, rows, epochs in phases:
            if not rows or epochs <= 0:
                continue
            per_epoch = math.ceil(len(rows) / batch_size)
            built.append(Phase(name, rows, offset, per_epoch, math.ceil(epochs * per_epoch - 1e-9)))
            offset += math.ceil(epochs) + 1
        planned = sum(p.steps for p in built)
        return cls(built, lengths, batch_size, seed, total=min(planned, max_steps) if max_steps is not None else planned, **kw)

    def locate(self, step: int) -> tuple[Phase, int]:
        """(phase, step within the phase) of the 0-based global ``step``."""
        for ph in self.phases:
            if step < ph.steps:
                return ph, step
            step -= ph.steps
        raise IndexError(step)

    def epoch_batches(self, ph: Phase, epoch: int) -> list[list[int]]:
        """The batches of one epoch of ``ph`` (the last one asked for is cached)."""
        key = (ph.offset, epoch)
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        perm = [ph.rows[i] for i in epoch_order(len(ph.rows), ph.offset + epoch, self.seed)]
        if self.bucket:
            shuffle = self.seed * 7_919 + ph.offset * 104_729 + epoch + 1
            out = bucket_batches(perm, self.lengths, self.batch_size, window=self.window, shuffle_seed=shuffle, longest_first=self.longest_first)
        else:
            out = list(batches(perm, self.batch_size))
        self._cache = (key, out)
        return out

    def batch(self, step: int) -> tuple[Phase, float, list[int]]:
        """(phase, epochs done in the phase after this step, row indices) of the 0-based global ``step``."""
        ph, local = self.locate(step)
        epoch, b = divmod(local, ph.steps_per_epoch)
        return ph, (local + 1) / ph.steps_per_epoch, self.epoch_batches(ph, epoch)[b]


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index split."""
    import torch  # heavy: loaded on first use

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    k = int(round(n * fraction)) if fraction > 0 else 0
    if fraction > 0 and n > 1:
        k = min(max(k, 1), n - 1)
    return sorted(perm[k:]), sorted(perm[:k])


# -- learning rate -------------------------------------------------------------------------
@dataclass(frozen=True)
class LRSchedule:
    """A linear warm-up over ``warmup`` steps, then a ``decay`` (linear or cosine) to zero at ``total``."""

    total: int
    warmup: int
    decay: Literal["linear", "cosine"] = "linear"

    def lr(self, step: int, peak: float) -> float:
        """The learning rate of the 0-based ``step`` for a peak rate ``peak``."""
        warm, total = self.warmup, self.total
        if self.decay == "cosine":
            return peak * self.factor(step)
        if warm > 0 and step < warm:
            return peak * (step + 1) / warm
        return peak * max(0.0, (total - step) / max(1, total - warm))

    def factor(self, step: int) -> float:
        """The share of the peak rate at the 0-based ``step``."""
        warm, total = self.warmup, self.total
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if self.decay == "linear":
            return max(0.0, (total - step) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


# -- resume --------------------------------------------------------------------------------
def latest_checkpoint(manager: CheckpointManager, *, resume: bool) -> Checkpoint | None:
    """The newest checkpoint that verifies (corrupt or half-written ones are skipped with a warning),
    loaded; ``None`` without one or when ``resume`` is false."""
    latest = manager.latest() if resume else None
    return load_checkpoint(latest) if latest is not None else None


def run_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys of ``current`` (a run's identity: settings and data fingerprints) whose values differ
    in ``saved`` (the identity stored with a checkpoint)."""

    def canon(v: Any) -> str:
        return json.dumps(v, sort_keys=True, default=str)

    return sorted(k for k in current if canon(saved.get(k)) != canon(current[k]))


def restore_optimizer(ckpt: Checkpoint, optimizer: Any) -> None:
    """Put a checkpoint's optimizer moments and random state back."""
    if ckpt.optimizer:
        tensors_to_optimizer(optimizer, ckpt.optimizer, ckpt.state.get("optimizer_meta", {}))
    set_rng_state(ckpt.rng)


# -- the loop ------------------------------------------------------------------------------
Snapshot = tuple[dict[str, Any], dict[Any, dict[str, Any]]]


def snapshot(params: dict[str, Any], optimizer: Any) -> Snapshot:
    """Copies of the trainable weights and the optimizer state, taken before an update so that an
    interrupted update can be undone (adapters or a head and their moments: a small share of a model)."""
    import torch  # heavy: loaded on first use

    with torch.no_grad():
        weights = {n: p.detach().clone() for n, p in params.items()}
        state = {
            p: {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in st.items()}
            for p, st in optimizer.state.items()
        }
    return weights, state


def restore(snap: Snapshot, params: dict[str, Any], optimizer: Any) -> None:
    """Put back the weights and optimizer state of :func:`snapshot`."""
    import torch  # heavy: loaded on first use

    weights, state = snap
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    optimizer.state.clear()
    for p, st in state.items():
        optimizer.state[p] = st


def drop_if_last(history: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """The ``unrecord`` hook of a trainer whose ``record`` is ``history.append``: it removes ``row`` when it is
    the last one recorded (an update undone by Ctrl-C)."""

    def unrecord(row: dict[str, Any]) -> None:
        if history and history[-1] is row:
            history.pop()

    return unrecord


@dataclass
class LoopResult:
    """How a ``TrainingLoop.run`` ended."""

    step: int  # steps done in all (including those before a resume)
    train_seconds: float  # seconds in training steps in this run (no evaluation, no saving)
    stopped: bool = False  # a hook asked to stop, or Ctrl-C
    interrupted: bool = False  # Ctrl-C; the last finished step is saved


#: loss_fn(step) -> (loss tensor, make_row): the forward pass of the 0-based ``step`` (the loop has set
#: the learning rates); ``make_row()``, called after backward and clipping, gives the step's record.
LossFn = Callable[[int], tuple[Any, Callable[[], dict[str, Any]]]]


class TrainingLoop:
    """The optimizer steps of a run, shared by every trainer.

    Each step: the learning rates (``peak_lrs``, one per parameter group, × the schedule), ``loss_fn(step)``, backward,
    gradient clipping, the step's row, a snapshot of the trainable state, the update, then the
    trainer's hooks: ``record(row)`` right after the update, ``on_step(step, row)`` (evaluation, callbacks; returning
    ``True`` stops the run after this step's checkpoint), a checkpoint every ``save_every`` steps, at
    ``total`` and when stopping (``save(step, rng)``), and ``after_save(step, row)``.

    Ctrl-C can land anywhere; what it saves is always the state at the end of the last finished step.
    An update that had not finished is undone from the snapshot (and ``unrecord(row)`` drops its row if
    ``record`` took it),
    and the random state saved is the one the next step starts with (the masks dropout drew before the
    interrupt are drawn again on resume, as in an uninterrupted run). ``run`` then returns with
    ``interrupted``; any other exception propagates, leaving the last checkpoint in place.

    Under ``accelerate launch`` (``dist``: ``middleware.distributed.current()`` unless given) the
    gradients are averaged over the processes before clipping, so every process takes the same update;
    only rank 0 shows the progress bar and calls ``save``, and the others wait for it at a barrier. A
    trainer that splits each batch between the processes scales its loss so that the average is the
    gradient of the whole batch (``middleware.sft``); one that does not gets the same result as a
    single process. ``loss_fn``, ``on_step`` and the hooks run on every process and must decide the
    same (e.g. stop at the same step).
    """

    def __init__(
        self,
        params: dict[str, Any],
        optimizer: Any,
        schedule: LRSchedule,
        peak_lrs: Sequence[float],
        *,
        save_every: int,
        grad_clip: float | None = 1.0,
        desc: str = "training",
        progress: bool = True,
        dist: Dist | None = None,
        precision: str | None = None,
    ) -> None:
        self.dist = current() if dist is None else dist
        self.precision = mixed_precision(precision)
        self.params = params
        self.optimizer = optimizer
        self.schedule = schedule
        self.peak_lrs = list(peak_lrs)
        self.save_every = save_every
        self.grad_clip = grad_clip
        self.desc = desc
        self.progress = progress
        self.bar: Any = None
        self.train_seconds = 0.0  # in training steps during ``run`` so far (no evaluation, no saving)
        self._clip_params = list(params.values())

    def _precision_tools(self, torch: Any) -> tuple[Any, Any]:
        """The forward pass's autocast context (a null one in full precision) and, for fp16, a gradient scaler."""
        if self.precision == "no":
            return contextlib.nullcontext(), None
        device = next(iter(self.params.values())).device.type
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        scaler = torch.amp.GradScaler(device) if self.precision == "fp16" else None
        return torch.autocast(device_type=device, dtype=dtype), scaler

    def run(
        self,
        loss_fn: LossFn,
        *,
        start: int,
        stop: int,
        save: Callable[[int, dict[str, Any] | None], None],
        record: Callable[[dict[str, Any]], None] = lambda row: None,
        unrecord: Callable[[dict[str, Any]], None] = lambda row: None,
        on_step: Callable[[int, dict[str, Any]], bool | None] = lambda step, row: None,
        after_save: Callable[[int, dict[str, Any]], None] = lambda step, row: None,
    ) -> LoopResult:
        """Train from step ``start`` to ``stop`` (at most ``schedule.total``)."""
        import torch  # heavy: loaded on first use
        from tqdm.auto import tqdm

        total, opt = self.schedule.total, self.optimizer
        step = saved_at = start
        # ``step_rng`` is (step, random state at its start, before dropout drew any mask); ``committing``
        # is the step whose update is under way: until ``step`` reaches it the weights and moments may
        # be half-updated, and ``snap`` holds them as of the end of step ``step``.
        step_rng: tuple[int, dict[str, Any]] | None = None
        committing: int | None = None
        snap: Snapshot | None = None
        row: dict[str, Any] = {}
        result = LoopResult(step=start, train_seconds=0.0)
        self.train_seconds = 0.0
        autocast, scaler = self._precision_tools(torch)
        # in a terminal the bar redraws in place; in a log file (nohup, CI) it writes a line every 30 s instead
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total, initial=start, desc=self.desc, unit="step", disable=not (self.progress and self.dist.is_main),
            dynamic_ncols=tty, mininterval=0.1 if tty else 30.0, ascii=not tty,
        )
        try:
            while step < stop:
                step_rng = (step, rng_state())  # nothing random has been drawn for this step yet
                t0 = time.perf_counter()
                for group, peak in zip(opt.param_groups, self.peak_lrs):
                    group["lr"] = self.schedule.lr(step, peak)
                with autocast:
                    loss, make_row = loss_fn(step)
                opt.zero_grad(set_to_none=True)
                (loss if scaler is None else scaler.scale(loss)).backward()
                self.dist.average_grads(self._clip_params)
                if scaler is not None:
                    scaler.unscale_(opt)
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self._clip_params, self.grad_clip)
                row = make_row()
                snap = snapshot(self.params, opt)
                committing = step + 1
                if scaler is None:
                    opt.step()
                else:  # a step whose gradients overflowed is skipped, and the scale lowered
                    scaler.step(opt)
                    scaler.update()
                record(row)
                step += 1  # the step counts from here: weights, moments and records are those of ``step``
                committing = None
                snap = None
                self.train_seconds += time.perf_counter() - t0
                self.bar.update(1)
                stopped = bool(on_step(step, row))
                if step % self.save_every == 0 or step == total or stopped:
                    if self.dist.is_main:
                        save(step, None)
                    self.dist.barrier()
                    saved_at = step
                after_save(step, row)
                if stopped:
                    result.stopped = True
                    break
        except KeyboardInterrupt:
            result.interrupted = result.stopped = True
            if committing is not None and step != committing:
                assert snap is not None
                restore(snap, self.params, opt)
                unrecord(row)
            # between steps (after the update) the random state now is the one the next step starts with
            rng = step_rng[1] if step_rng is not None and step_rng[0] == step else None
            if step > saved_at and self.dist.is_main:
                save(step, rng)
        finally:
            self.bar.close()
        result.step, result.train_seconds = step, self.train_seconds
        return result


PRECISIONS = ("no", "bf16", "fp16")


def mixed_precision(requested: str | None = None) -> str:
    """The precision of training's forward passes: ``requested``, else ``$ACCELERATE_MIXED_PRECISION`` (which
    ``accelerate launch --mixed_precision bf16`` sets), else ``"no"`` (float32). ``bf16``/``fp16`` run the
    forward pass under ``torch.autocast`` while the weights, their gradients and the optimizer stay float32;
    ``fp16`` also scales the loss (``torch.amp.GradScaler``), skipping a step whose gradients overflow."""
    value = (requested or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no").lower()
    if value not in PRECISIONS:
        raise InputError(f"mixed precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


# -- command line --------------------------------------------------------------------------
def add_training_flags(
    parser: Any,
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float | None,
    eval_fraction: float,
    eval_every: int | None,
    save_every: int,
    keep_checkpoints: int,
    seed: int,
    unit: str = "examples",
    learning_rate_help: str | None = None,
    eval_every_help: str | None = None,
    max_steps_help: str = "stop after this many optimizer steps in all (a cap on --epochs)",
    device: bool = False,
) -> None:
    """Add the flags every ``alignware train ...`` verb shares to ``parser`` (a parser or an argument
    group), with the verb's defaults. Their ``dest`` names are the config fields (``learning_rate``,
    ``keep_checkpoints``, …); ``--fresh`` sets ``resume`` to false."""
    p = parser
    p.add_argument("--epochs", type=float, default=epochs, help="passes over the training data, fractions allowed (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help=max_steps_help)
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"{unit} per step (default %(default)s)")
    p.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=learning_rate,
                   help=learning_rate_help or "peak learning rate (default %(default)s)")
    p.add_argument("--eval-fraction", type=float, default=eval_fraction, help="share of the data held out for evaluation (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=eval_every, help=eval_every_help or "steps between evaluations (default %(default)s)")
    p.add_argument("--save-every", type=int, default=save_every, help="steps between checkpoints (default %(default)s)")
    p.add_argument("--keep-checkpoints", type=int, default=keep_checkpoints, help="checkpoints kept (default %(default)s)")
    p.add_argument("--seed", type=int, default=seed, help="random seed (default %(default)s)")
    p.add_argument("--fresh", dest="resume", action="store_false",
                   help="start over: remove the earlier run's checkpoints from --out first (default: resume from the newest good one)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if device:
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def flag_values(config_type: type, args: Any, *, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The parsed flags (``argparse.Namespace``) named like the fields of the dataclass ``config_type``,
    as its keyword arguments; fields without a flag, and those in ``skip``, are left to their defaults."""
    return {f.name: getattr(args, f.name) for f in fields(config_type) if f.name not in skip and hasattr(args, f.name)}


def run_train_command(body: Callable[[], int]) -> int:
    """Run the body of an ``alignware train ...`` verb under the exit-code policy every verb shares:
    ``EXIT_OK`` (0) done, or stopped at --max-steps/--stop-after and resumable; ``EXIT_FAILED`` (1) the
    run failed (a checkpoint, data or model error); ``EXIT_USAGE`` (2) bad usage or bad input;
    ``EXIT_INTERRUPTED`` (130) Ctrl-C, the last good checkpoint kept. ``body`` returns the code of a
    run that ended (``EXIT_INTERRUPTED`` when its result says it was interrupted)."""
    try:
        return body()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except AlignwareError as e:  # CheckpointError and the others: the run failed
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before or after the training loop, which handles its own
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- plots ---------------------------------------------------------------------------------
def plot_history(history: Iterable[dict[str, Any]], path: str | Path, *, title: str = "training") -> Path:
    """Plot every numeric series in ``history`` (rows with a ``step``) against step, one panel per
    series name prefix (``loss``-like series together, ``acc``-like together)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if "step" in r]
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    loss_keys = [k for k in keys if "acc" not in k]
    acc_keys = [k for k in keys if "acc" in k]
    panels = [ks for ks in (loss_keys, acc_keys) if ks]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4), squeeze=False)
    for ax, ks in zip(axes[0], panels):
        for k in ks:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, label=k)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` (parents created) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def set_threads(n: int | None) -> None:
    """Use ``n`` torch threads on CPU (``None``: leave torch's default, one per core).

    On a CPU that other processes share, fewer threads than cores avoids oversubscription, which can
    slow small-model training and decoding several times over.
    """
    if n is None:
        return
    if n < 1:
        raise InputError(f"--threads must be 1 or more, got {n}")
    import torch  # heavy: loaded on first use

    torch.set_num_threads(n)

