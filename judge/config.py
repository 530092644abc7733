"""What a reward model is (``RewardConfig``) and how it is trained (``TrainConfig``), with the names of
the files a saved reward model and a training run write."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Literal

from middleware.errors import InputError

FORMAT = "alignware-reward"
FORMAT_VERSION = 1
CONFIG_FILE = "reward_config.json"
WEIGHTS_FILE = "reward.safetensors"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training.png"
TrainMode = Literal["lora", "full", "head"]


@dataclass
class RewardConfig:
    """What the reward model is: backbone, sequence length and which weights train.

    Attributes:
        backbone: ``"embedded"`` (SmolLM2-135M-Instruct), a transformers model folder, or a ``.gguf`` file.
        max_length: tokens per (prompt, response); longer inputs lose the start of the prompt first.
        layers: keep only the first N transformer blocks of the backbone (``None``: all).
        train: ``"lora"``, ``"full"`` or ``"head"`` (see the module docs).
        train_layers: adapt only the top N (kept) blocks (``None``: all of them). Ignored for ``"head"``.
        lora_r, lora_alpha, lora_dropout: LoRA settings.
        lora_targets: names of the linear modules to adapt (``None``: every linear layer of the blocks).
    """

    backbone: str = "embedded"
    max_length: int = 512
    layers: int | None = None
    train: TrainMode = "lora"
    train_layers: int | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None

    def __post_init__(self) -> None:
        if self.train not in ("lora", "full", "head"):
            raise InputError(f"RewardConfig.train must be 'lora', 'full' or 'head', got {self.train!r}")
        if self.max_length < 8:
            raise InputError(f"RewardConfig.max_length must be at least 8 tokens, got {self.max_length}")
        for name in ("layers", "train_layers", "lora_r"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"RewardConfig.{name} must be at least 1, got {v}")
        if self.backbone is None:
            self.backbone = "embedded"
        self.backbone = str(self.backbone)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RewardConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training pairs (fractions allowed); ``max_steps`` overrides it.
        max_steps: total optimizer steps of the run.
        batch_size: pairs per step.
        learning_rate: learning rate of the backbone weights (``None``: 2e-4 for LoRA, 5e-5 for full, 1e-3 for head).
        head_lr: learning rate of the head (``None``: ``max(learning_rate, 1e-3)``).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the steps with a linear warm-up; the rest decays on a cosine to zero.
        grad_clip: gradient norm clip (``None``: off).
        eval_fraction: share of the pairs held out for evaluation (0: none).
        eval_every: evaluate the held-out pairs every N steps (``None``: with every checkpoint) and at the end.
        save_every: write a checkpoint every N steps (and at the end).
        keep_checkpoints: how many checkpoints to keep.
        seed: seeds the split, the head's initialisation and the data order.
        bucket: group pairs of similar length into batches (less padding).
        share_prompt: encode the prompt once per pair (packed rows) instead of twice.
        stop_after: stop this run after N steps in total (for tests and time-boxed runs; rerun to resume).
    """

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    learning_rate: float | None = None
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float | None = 1.0
    eval_fraction: float = 0.1
    eval_every: int | None = None
    save_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    bucket: bool = True
    share_prompt: bool = True
    stop_after: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InputError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.save_every < 1:
            raise InputError(f"save_every must be at least 1, got {self.save_every}")
        if self.max_steps is None and self.epochs <= 0:
            raise InputError(f"epochs must be positive, got {self.epochs}")

    def lrs(self, mode: TrainMode) -> tuple[float, float]:
        base = self.learning_rate if self.learning_rate is not None else {"lora": 2e-4, "full": 5e-5, "head": 1e-3}[mode]
        head = self.head_lr if self.head_lr is not None else max(base, 1e-3)
        return base, head

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one."""
        d = asdict(self)
        for k in ("stop_after", "keep_checkpoints", "eval_every", "save_every"):
            d.pop(k)
        return d
