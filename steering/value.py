"""RE-Control's value function: a small MLP on the final-norm hidden state of a causal LM, its training
data (``Trajectories``: the states of sampled answers and their rewards), its TD(0) loss, and its
training on ``middleware.training.TrainingLoop`` (held-out split, checkpoints, resume, loss plot).

Method (Kong et al. 2024, "Aligning LLMs with representation editing: a control perspective"): the
state ``h_t`` is the hidden state that produces the logits of answer token ``t`` (``h_1`` sits at the
prompt's last position); a trajectory ``h_1 … h_T`` of an answer with reward ``r`` is fitted by
temporal differences with no discount and the reward at the end::

    loss = mean_t (V(h_t) − stopgrad(V(h_{t+1})))²   +   (V(h_T) − r)²      (t = 1 … T−1)

averaged over the trajectories of a batch. Where this differs from the reference
(Lingkai-Kong/RE-Control, ``train_value_model.py``) and why:

- the TD target ``V(h_{t+1})`` is detached (semi-gradient TD(0)); the reference's training loss leaves
  it attached, so the gradient also pulls ``V(h_{t+1})`` towards ``V(h_t)``, towards the start of the
  answer rather than towards the reward (its test loss detaches, its training loss does not);
- the terminal term uses the last state of each trajectory; the reference takes ``mask.argmax(1)``,
  which is the *first* valid position, so it fits the first state to the reward and never the last;
- the TD part is a mean per trajectory (the reference sums over tokens, so long answers weigh more);
- inputs are centred and scaled (one mean vector and one scale, isotropic, so a gradient step in the
  normalised space is a step of the same direction in the model's space; SmolLM2's final-norm states
  carry one dimension near 50 that would otherwise dominate), and rewards are z-scored on the
  training split (``reward_mean``/``reward_std`` are stored, ``ValueNet.reward`` undoes it): the
  editor's step size is then in units of reward standard deviations, whatever the judge's scale;
- SiLU instead of ReLU: the editor follows ∇V for several steps, and a smooth V has a gradient that
  changes as the state moves (a ReLU MLP's is piecewise constant);
- AdamW with a cosine schedule, gradient clipping, a held-out split by prompt (several answers to one
  prompt never straddle it), float32 rather than bfloat16.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from middleware.checkpoints import CheckpointManager, write_json_atomic
from middleware.distributed import current
from middleware.errors import InputError
from middleware.training import (
    BatchPlan,
    LRSchedule,
    Phase,
    TrainingLoop,
    latest_checkpoint,
    plot_history,
    restore_optimizer,
    run_differences,
)

log = logging.getLogger("alignware")

__all__ = ["ReControlConfig", "Trajectories", "ValueNet", "ValueRun", "td_loss"]


@dataclass
class ReControlConfig:
    """Settings of a RE-Control run: collection, value training and the editor's defaults.

    Collection: ``samples_per_prompt`` answers per training prompt, sampled with ``temperature``/``top_p``
    (each answer from its own generator seeded from ``seed``), at most ``max_new_tokens`` long,
    ``collect_batch_size`` answers decoded at once. Value net: ``width`` × ``depth`` hidden layers.
    Training: ``epochs`` (or ``max_steps``) of ``batch_size`` trajectories, AdamW at ``learning_rate``,
    ``eval_fraction`` of the prompts held out, a checkpoint every ``save_every`` steps (``keep_checkpoints``
    kept). Editor defaults written to the manifest: ``steps`` gradient steps of ``step_size`` on V, the
    whole edit capped at ``max_edit_norm`` (see ``ValueGuidedEditor``).
    """

    samples_per_prompt: int = 4
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float | None = 0.95
    collect_batch_size: int = 8
    width: int = 512
    depth: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    epochs: float = 30.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_fraction: float = 0.1
    save_every: int = 200
    keep_checkpoints: int = 2
    warmup_ratio: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    steps: int = 4
    step_size: float = 2.0
    max_edit_norm: float = 8.0

    def __post_init__(self) -> None:
        for name in ("samples_per_prompt", "max_new_tokens", "collect_batch_size", "width", "depth", "batch_size", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise InputError(f"ReControlConfig.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.temperature <= 0:
            raise InputError(f"ReControlConfig.temperature must be positive (answers are sampled), got {self.temperature!r}")
        if not 0 <= self.eval_fraction < 1:
            raise InputError(f"ReControlConfig.eval_fraction must be in [0, 1), got {self.eval_fraction!r}")
        if self.steps < 0 or self.step_size < 0 or self.max_edit_norm < 0:
            raise InputError("ReControlConfig.steps, step_size and max_edit_norm must not be negative")
        if self.epochs <= 0 and self.max_steps is None:
            raise InputError(f"ReControlConfig.epochs must be positive, got {self.epochs!r}")

    def collection(self) -> dict[str, Any]:
        """The fields that decide the sampled answers (a collection cache is reused only when they match)."""
        keys = ("samples_per_prompt", "max_new_tokens", "temperature", "top_p", "seed")
        return {k: getattr(self, k) for k in keys}

    def training(self) -> dict[str, Any]:
        """The fields that decide value training (a checkpoint is resumed only when they match)."""
        skip = set(self.collection()) - {"seed"} | {"collect_batch_size", "save_every", "keep_checkpoints", "steps", "step_size", "max_edit_norm"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


class ValueNet(nn.Module):
    """``V(h)``: an MLP from a hidden state (``[..., hidden_size]``) to a value (``[...]``), in z-scored
    reward units. The input centring/scale and the reward normalisation are buffers, saved with it."""

    in_mean: torch.Tensor
    in_scale: torch.Tensor
    reward_mean: torch.Tensor
    reward_std: torch.Tensor

    def __init__(self, hidden_size: int, width: int = 512, depth: int = 2) -> None:
        super().__init__()
        if hidden_size < 1 or width < 1 or depth < 1:
            raise InputError(f"ValueNet needs positive sizes, got hidden_size={hidden_size}, width={width}, depth={depth}")
        self.hidden_size, self.width, self.depth = hidden_size, width, depth
        layers: list[nn.Module] = []
        d = hidden_size
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("in_mean", torch.zeros(hidden_size))
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = (h.to(self.in_mean.dtype) - self.in_mean) / self.in_scale
        return self.mlp(x).squeeze(-1)

    def reward(self, h: torch.Tensor) -> torch.Tensor:
        """``V(h)`` in the judge's reward units."""
        return self(h) * self.reward_std + self.reward_mean

    def fit_normalisation(self, states: torch.Tensor, rewards: torch.Tensor) -> None:
        """Set the input centring/scale and reward normalisation from training data (``[N, hidden]``, ``[n]``)."""
        with torch.no_grad():
            mean = states.float().mean(0)
            scale = ((states.float() - mean).pow(2).mean()).sqrt().clamp(min=1e-6)
            self.in_mean.copy_(mean)
            self.in_scale.copy_(scale)
            self.reward_mean.copy_(rewards.float().mean())
            std = rewards.float().std() if rewards.numel() > 1 else torch.tensor(1.0)
            self.reward_std.copy_(std if torch.isfinite(std) and std > 1e-6 else torch.tensor(1.0))

    def shape(self) -> dict[str, int]:
        return {"hidden_size": self.hidden_size, "width": self.width, "depth": self.depth}


@dataclass
class Trajectories:
    """Answers' state sequences and rewards: trajectory ``i`` is ``states[offsets[i]:offsets[i + 1]]``
    (one state per generated token, the closing EOS included) with reward ``rewards[i]``; ``group[i]``
    is the index of its prompt."""

    states: torch.Tensor
    offsets: list[int]
    rewards: torch.Tensor
    group: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> list[int]:
        return [b - a for a, b in zip(self.offsets, self.offsets[1:])]

    def item(self, i: int) -> torch.Tensor:
        return self.states[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, idx: Sequence[int]) -> "Trajectories":
        parts = [self.item(i) for i in idx]
        offsets = [0]
        for p in parts:
            offsets.append(offsets[-1] + len(p))
        states = torch.cat(parts) if parts else self.states[:0]
        group = [self.group[i] for i in idx] if self.group else []
        return Trajectories(states, offsets, self.rewards[list(idx)], group)

    def padded(self, idx: Sequence[int], device: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(states ``[B, T, hidden]`` float32, right-padded with zeros; lengths ``[B]``; rewards ``[B]``)."""
        lengths = [self.offsets[i + 1] - self.offsets[i] for i in idx]
        out = torch.zeros((len(idx), max(lengths), self.states.shape[-1]), dtype=torch.float32)
        for j, i in enumerate(idx):
            out[j, : lengths[j]] = self.item(i).float()
        return out.to(device), torch.tensor(lengths, device=device), self.rewards[list(idx)].float().to(device)


def td_loss(value: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TD(0) loss of a padded batch (``states [B, T, H]``, ``lengths [B]`` ≥ 1, ``targets [B]``:
    the final rewards, normalised as ``value`` predicts them).

    Returns (loss, per-trajectory TD part ``[B]``, per-trajectory terminal part ``[B]``): for each
    trajectory, the mean over ``t < T`` of ``(V(h_t) − V(h_{t+1}).detach())²`` (0 when ``T = 1``) plus
    ``(V(h_T) − r)²`` at its own last state; the loss is their sum averaged over the batch.
    """
    v = value(states)  # [B, T]
    b, t = v.shape
    pos = torch.arange(t, device=v.device)
    has_next = (pos[None, :-1] < (lengths[:, None] - 1)).float()  # [B, T-1]
    diff = (v[:, :-1] - v[:, 1:].detach()) * has_next
    td = diff.pow(2).sum(1) / (lengths - 1).clamp(min=1).float()
    last = v[torch.arange(b, device=v.device), lengths - 1]
    terminal = (last - targets).pow(2)
    return (td + terminal).mean(), td.detach(), terminal.detach()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if a.numel() < 2 or float(a.std()) < 1e-9 or float(b.std()) < 1e-9:
        return None
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


class ValueRun:
    """One value-function training run over ``train`` (and evaluation on ``held``), checkpointed in
    ``out_dir/checkpoints``; ``run()`` trains from the newest matching checkpoint (or from scratch) and
    returns the metrics. ``history`` holds the rows for the plot (``out_dir/value_training.png``)."""

    PLOT = "value_training.png"

    def __init__(
        self, net: ValueNet, train: Trajectories, held: Trajectories, cfg: ReControlConfig, out_dir: Path, run_id: dict[str, Any],
        *, resume: bool = True, progress: bool = True, device: Any = None,
    ) -> None:
        if len(train) == 0:
            raise InputError("no trajectories to train the value function on")
        self.net, self.train_set, self.held, self.cfg, self.out_dir = net, train, held, cfg, Path(out_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        self.manager = CheckpointManager(self.out_dir, keep=cfg.keep_checkpoints)
        # under accelerate launch every process trains the same net on the same data (it is small next to the
        # sampling that fed it): the averaged gradients are each one's, and rank 0 alone writes
        self.dist = current()
        if not resume:
            if self.dist.is_main:
                shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)
            self.dist.barrier()
        spe = math.ceil(len(train) / cfg.batch_size)
        self.total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * spe))
        self.plan = BatchPlan([Phase("main", list(range(len(train))), 0, spe, self.total)], train.lengths, cfg.batch_size, cfg.seed, window=16)
        self.run_id = run_id
        self.history: list[dict[str, Any]] = []
        self.start = 0
        self.eval_every = max(1, min(cfg.save_every, max(1, self.total // 20)))
        self.log_every = max(1, min(cfg.save_every, self.total // 100))
        while cfg.save_every % self.log_every:  # a divisor of save_every: a resumed run logs the rows an uninterrupted one does
            self.log_every -= 1
        ckpt = latest_checkpoint(self.manager, resume=resume)
        torch.manual_seed(cfg.seed)
        net.fit_normalisation(train.states, train.rewards)
        net.to(self.device)
        self.params = {n: p for n, p in net.named_parameters() if p.requires_grad}
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        if ckpt is not None:
            diff = run_differences(ckpt.state.get("run", {}), run_id)
            if diff:
                raise InputError(
                    f"{out_dir} holds a value-function run with different {', '.join(diff)} (checkpoint {ckpt.path.name}); "
                    "use another output folder, or start over there (resume=False)"
                )
            net.load_state_dict({k: v.to(self.device) for k, v in ckpt.model.items()})
            restore_optimizer(ckpt, self.opt)
            self.history = list(ckpt.state.get("history", []))
            self.start = ckpt.step
            log.info("resuming value training from %s (step %d of %d)", ckpt.path, self.start, self.total)

    def targets(self, rewards: torch.Tensor) -> torch.Tensor:
        return (rewards - self.net.reward_mean) / self.net.reward_std

    def compute(self, step: int) -> tuple[torch.Tensor, Callable[[], dict[str, Any]]]:
        idx = self.plan.batch(step)[2]
        states, lengths, rewards = self.train_set.padded(idx, self.device)
        loss, td, term = td_loss(self.net, states, lengths, self.targets(rewards))
        return loss, lambda: {"step": step + 1, "loss": float(loss.detach()), "td": float(td.mean()), "terminal": float(term.mean())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out TD loss, terminal error, and how well V at the first and last states tracks the reward."""
        if len(self.held) == 0:
            return {}
        self.net.eval()
        tds, terms, first, last = [], [], [], []
        for a in range(0, len(self.held), self.cfg.batch_size):
            idx = list(range(a, min(a + self.cfg.batch_size, len(self.held))))
            states, lengths, rewards = self.held.padded(idx, self.device)
            _, td, term = td_loss(self.net, states, lengths, self.targets(rewards))
            v = self.net(states)
            tds.append(td)
            terms.append(term)
            first.append(v[:, 0])
            last.append(v[torch.arange(len(idx), device=v.device), lengths - 1])
        self.net.train()
        r = self.targets(self.held.rewards.float().to(self.device))
        td_all, term_all = torch.cat(tds), torch.cat(terms)
        return {
            "eval_loss": float((td_all + term_all).mean()),
            "eval_terminal": float(term_all.mean()),
            "eval_corr_first": _corr(torch.cat(first).cpu(), r.cpu()),
            "eval_corr_last": _corr(torch.cat(last).cpu(), r.cpu()),
        }

    def save(self, step: int, rng: dict[str, Any] | None = None) -> None:
        state = {"run": self.run_id, "history": self.history, "total_steps": self.total}
        self.manager.save(step, model_tensors=dict(self.net.state_dict()), optimizer=self.opt, state=state, rng=rng)

    def on_step(self, step: int, row: dict[str, Any]) -> bool:
        if step % self.log_every == 0 or step == self.total:
            self.history.append(row)
        if step % self.eval_every == 0 or step == self.total:
            ev = {k: v for k, v in self.evaluate().items() if v is not None}
            if ev:
                self.history.append({"step": step, **ev})
        return False

    def plot(self) -> None:
        try:
            plot_history(self.history, self.out_dir / self.PLOT, title="RE-Control value function (TD(0))")
        except Exception as e:  # a plotting problem must not lose a training run
            log.warning("could not draw %s: %s", self.out_dir / self.PLOT, e)

    def run(self) -> dict[str, Any]:
        """Train to the end (or to Ctrl-C, which keeps the last finished step); returns the metrics."""
        if self.start == 0 and not self.history:
            self.history.append({"step": 0, **{k: v for k, v in self.evaluate().items() if v is not None}})
        self.net.train()
        schedule = LRSchedule(self.total, warmup=int(round(self.total * self.cfg.warmup_ratio)), decay="cosine")
        loop = TrainingLoop(self.params, self.opt, schedule, [self.cfg.learning_rate], save_every=self.cfg.save_every,
                            grad_clip=self.cfg.grad_clip, desc="training value function", progress=self.progress, dist=self.dist)
        done = loop.run(self.compute, start=self.start, stop=self.total, save=self.save, on_step=self.on_step)
        self.net.eval()
        if self.dist.is_main:
            self.plot()
        final = self.evaluate()
        metrics = {
            "steps": done.step, "total_steps": self.total, "finished": done.step >= self.total, "interrupted": done.interrupted,
            "n_train": len(self.train_set), "n_eval": len(self.held), "train_seconds_this_run": done.train_seconds,
            "train_loss": next((r["loss"] for r in reversed(self.history) if "loss" in r), None), **final,
        }
        if self.dist.is_main:
            write_json_atomic(self.out_dir / "value_metrics.json", metrics)
        return metrics
