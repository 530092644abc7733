"""Reward model: a scalar head on a transformers backbone, trained from preference pairs.

The reward of ``(prompt, response)`` is a linear head on the backbone's last hidden state at the last
non-pad token of the conversation rendered through the backbone's chat template. Training minimises the
Bradley–Terry loss ``-log σ(r(x, chosen) − r(x, rejected))``.

Three ways to train (``RewardConfig.train``):

- ``"lora"``: LoRA adapters (peft) on the linear layers of the top ``train_layers`` blocks, plus the head;
- ``"full"``: every weight of the top ``train_layers`` blocks (and the final norm), plus the head;
- ``"head"``: the backbone stays frozen; its features are computed once and only the head is trained.

Speed: pairs are bucketed by length, and the chosen and rejected answers of a pair share one pass over
the prompt (one packed row ``prompt | chosen | rejected`` with a block mask and restarted positions), so
the prompt is encoded once instead of twice. ``layers`` keeps only the first N blocks of the backbone.

Saved folders hold ``reward.safetensors`` (the trained tensors only: adapters or top blocks, and the head)
and ``reward_config.json`` naming the backbone; no pickle. ``RewardModel.load`` also reads a training
checkpoint folder (``DIR/checkpoints/step-…``).

Example::

    result = train_reward_model("pairs.jsonl", "runs/rm", RewardConfig(max_length=256), TrainConfig(epochs=1))
    rm = RewardModel.load("runs/rm")
    rm.score("How do I boil an egg?", "Put it in boiling water for 8 minutes.")
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
import torch.nn as nn

from middleware.errors import AlignwareError, CheckpointError, InputError
from middleware.types import MessagesLike, PreferencePair, load_pairs, to_messages

log = logging.getLogger("alignware")

FORMAT = "alignware-reward"
FORMAT_VERSION = 1
CONFIG_FILE = "reward_config.json"
WEIGHTS_FILE = "reward.safetensors"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training.png"
TrainMode = Literal["lora", "full", "head"]
PromptLike = MessagesLike

#: (step, row) -> None, called after every optimizer step (after the checkpoint of that step, if any).
StepCallback = Callable[[int, dict[str, Any]], None]

_FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


# -- configuration --------------------------------------------------------------------------
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
        lr: learning rate of the backbone weights (``None``: 2e-4 for LoRA, 5e-5 for full, 1e-3 for head).
        head_lr: learning rate of the head (``None``: ``max(lr, 1e-3)``).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the steps with a linear warm-up; the rest decays on a cosine to zero.
        grad_clip: gradient norm clip (``None``: off).
        eval_fraction: share of the pairs held out for evaluation (0: none).
        eval_every: evaluate the held-out pairs every N steps (``None``: with every checkpoint) and at the end.
        save_every: write a checkpoint every N steps (and at the end).
        keep: how many checkpoints to keep.
        seed: seeds the split, the head's initialisation and the data order.
        bucket: group pairs of similar length into batches (less padding).
        share_prompt: encode the prompt once per pair (packed rows) instead of twice.
        stop_after: stop this run after N steps in total (for tests and time-boxed runs; rerun to resume).
    """

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    lr: float | None = None
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float | None = 1.0
    eval_fraction: float = 0.1
    eval_every: int | None = None
    save_every: int = 50
    keep: int = 2
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
        base = self.lr if self.lr is not None else {"lora": 2e-4, "full": 5e-5, "head": 1e-3}[mode]
        head = self.head_lr if self.head_lr is not None else max(base, 1e-3)
        return base, head

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one."""
        d = asdict(self)
        for k in ("stop_after", "keep", "eval_every", "save_every"):
            d.pop(k)
        return d


# -- tokenized data --------------------------------------------------------------------------
@dataclass
class EncodedPair:
    """Token ids of one pair after truncation: the shared prompt and both answers."""
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def packed_length(self) -> int:
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def _fit(prompt: list[int], responses: Sequence[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Truncate so that ``prompt + r`` fits ``max_length`` for every ``r``: the start of the prompt goes
    first; an answer is cut at its end only when it alone leaves less than a quarter of the budget."""
    floor = min(len(prompt), max_length // 4)
    room = max_length - floor
    resp = [r[:room] for r in responses]
    keep = max_length - max(len(r) for r in resp)
    return (prompt[-keep:] if len(prompt) > keep else list(prompt)), resp


# -- the network -----------------------------------------------------------------------------
def _decoder_layers(model: Any) -> tuple[Any, str]:
    """The ``ModuleList`` of transformer blocks in ``model`` and its attribute path."""
    n = getattr(model.config, "num_hidden_layers", None)
    best: tuple[int, str, Any] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            if best is None or len(mod) > best[0]:
                best = (len(mod), name, mod)
    if best is None:
        raise AlignwareError(f"{type(model).__name__}: cannot find its list of transformer blocks")
    return best[2], best[1]


def _truncate_layers(model: Any, keep: int) -> None:
    blocks, path = _decoder_layers(model)
    if keep >= len(blocks):
        return
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    setattr(parent, path.rsplit(".", 1)[-1], nn.ModuleList(list(blocks)[:keep]))
    model.config.num_hidden_layers = keep
    for attr in ("layer_types",):
        v = getattr(model.config, attr, None)
        if isinstance(v, list):
            setattr(model.config, attr, v[:keep])


def _linear_names(blocks: Any) -> list[str]:
    names = sorted({n.rsplit(".", 1)[-1] for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)})
    if not names:
        raise AlignwareError("no linear layers found in the transformer blocks: LoRA has nothing to adapt")
    return names


def _build_net(config: RewardConfig, device: str | None = None) -> tuple[Any, Any]:
    """``(net, tokenizer)``: backbone (truncated, LoRA-wrapped as configured) plus a fresh head."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from middleware.models import resolve_model_path

    folder = resolve_model_path(None if config.backbone == "embedded" else config.backbone)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        backbone = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as e:
        raise AlignwareError(f"{folder}: cannot load the backbone: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if config.layers is not None:
        _truncate_layers(backbone, config.layers)
    blocks, path = _decoder_layers(backbone)
    n = len(blocks)
    top = n if config.train_layers is None else min(config.train_layers, n)
    for p in backbone.parameters():
        p.requires_grad_(False)
    if config.train == "lora":
        from peft import LoraConfig, get_peft_model

        targets = config.lora_targets or _linear_names(blocks)
        lcfg = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(targets),
            layers_to_transform=list(range(n - top, n)),
            layers_pattern=path.rsplit(".", 1)[-1],
            bias="none",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            backbone = get_peft_model(backbone, lcfg)
    elif config.train == "full":
        for blk in list(blocks)[n - top :]:
            for p in blk.parameters():
                p.requires_grad_(True)
        norm = getattr(backbone, "norm", None)
        if isinstance(norm, nn.Module):
            for p in norm.parameters():
                p.requires_grad_(True)
    net = RewardNet(backbone, int(backbone.config.hidden_size))
    net.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return net, tok


class RewardNet(nn.Module):
    """Backbone + linear head; the reward is the head on the last hidden state at given positions."""
    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        self.reset_head(0)

    def reset_head(self, seed: int) -> None:
        """Initialise the head from ``seed`` alone (independent of the global RNG)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(self.head.weight.shape, generator=g) / math.sqrt(self.head.in_features + 1)
            self.head.weight.copy_(w.to(self.head.weight.device))
            self.head.bias.zero_()

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """Last hidden states at ``index`` (``[B, k]`` positions) -> ``[B, k, H]``."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        h = out.last_hidden_state
        return h.gather(1, index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask, position_ids, index)).squeeze(-1)


# -- the reward model ------------------------------------------------------------------------
class RewardModel:
    """A scalar reward on (prompt, response): build it with ``RewardModel.create``, train it with
    ``train_reward_model``, reload it with ``RewardModel.load``."""

    def __init__(self, net: Any, tokenizer: Any, config: RewardConfig, *, info: dict[str, Any] | None = None) -> None:
        self.net = net
        self.tokenizer = tokenizer
        self.config = config
        self.info = dict(info or {})
        self._bos = self._needs_bos()
        self._frozen_state: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RewardModel(backbone={self.config.backbone!r}, train={self.config.train!r}, max_length={self.config.max_length})"

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, config: RewardConfig | None = None, *, device: str | None = None) -> "RewardModel":
        """A new reward model (untrained head) on the configured backbone."""
        config = config or RewardConfig()
        net, tok = _build_net(config, device)
        return cls(net, tok, config)

    @property
    def device(self) -> Any:
        return self.net.head.weight.device

    def trainable_state(self) -> dict[str, Any]:
        """The tensors training changes (adapters or top blocks, and the head), by name."""
        if self._frozen_state is not None:
            return dict(self._frozen_state)
        return {n: p.detach() for n, p in self.net.named_parameters() if p.requires_grad}

    def load_trainable_state(self, tensors: dict[str, Any], *, source: str = "checkpoint") -> None:
        """Put saved trainable tensors into the model; ``CheckpointError`` when they do not fit it."""
        if self._frozen_state is not None:
            raise AlignwareError("this reward model's adapters are merged: load it with merge=False to change its weights")
        params = dict(self.net.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        missing = sorted(expected - set(tensors))
        unknown = sorted(set(tensors) - set(params))
        if missing or unknown:
            raise CheckpointError(
                f"{source}: its tensors do not fit this reward model ({self.config.train}, backbone "
                f"{self.config.backbone!r}): missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
                f"unexpected {unknown[:3]}{'…' if len(unknown) > 3 else ''}"
            )
        with torch.no_grad():
            for name, t in tensors.items():
                p = params[name]
                if p.shape != t.shape:
                    raise CheckpointError(f"{source}: {name} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
                p.copy_(t.to(p.device, p.dtype))

    def save(self, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write ``reward.safetensors`` and ``reward_config.json`` into ``path`` (atomically per file)."""
        import os

        from safetensors.torch import save_file

        from middleware.training import sha256, write_json_atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (WEIGHTS_FILE + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.trainable_state().items()}, str(tmp))
        os.replace(tmp, path / WEIGHTS_FILE)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": self.config.backbone,
            "hidden_size": int(self.net.head.in_features),
            "config": asdict(self.config),
            "weights": WEIGHTS_FILE,
            "sha256": {WEIGHTS_FILE: sha256(path / WEIGHTS_FILE)},
            **self.info,
            **(extra or {}),
        }
        write_json_atomic(path / CONFIG_FILE, meta)
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, merge: bool = True) -> "RewardModel":
        """Load a saved reward model folder, or a training checkpoint folder (``…/checkpoints/step-N``),
        or a run folder whose final model is missing (its latest good checkpoint).

        Raises ``CheckpointError`` when the folder is missing, half-written or corrupt.
        With ``merge`` LoRA adapters are merged into the backbone for faster scoring.
        """
        from middleware.training import CheckpointManager, load_checkpoint, sha256

        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no such reward model folder")
        if (path / CONFIG_FILE).is_file():
            try:
                meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path / CONFIG_FILE}: corrupt JSON ({e.msg} at line {e.lineno})") from None
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path / CONFIG_FILE}: not an alignware reward model (format {meta.get('format')!r})")
            weights = path / meta.get("weights", WEIGHTS_FILE)
            if not weights.is_file():
                raise CheckpointError(f"{weights}: missing: the reward model was not saved completely")
            digest = meta.get("sha256", {}).get(weights.name)
            if digest and sha256(weights) != digest:
                raise CheckpointError(f"{weights}: checksum mismatch: the file is corrupt or was changed after saving")
            from safetensors.torch import load_file

            try:
                tensors = load_file(str(weights))
            except Exception as e:
                raise CheckpointError(f"{weights}: cannot read tensors: {e}") from None
            config = RewardConfig.from_dict(meta["config"])
            info = {k: meta[k] for k in ("train_metrics",) if k in meta}
            source = str(weights)
        else:
            ckpt_dir = path
            if not (path / "state.json").exists() and (path / "checkpoints").is_dir():
                latest = CheckpointManager(path).latest()
                if latest is None:
                    raise CheckpointError(f"{path}: no finished model and no good checkpoint in {path / 'checkpoints'}")
                ckpt_dir = latest
            elif not (path / "state.json").exists() and not any(path.glob("*.safetensors")):
                raise CheckpointError(f"{path}: not a reward model folder ({CONFIG_FILE} is missing)")
            ckpt = load_checkpoint(ckpt_dir)
            try:
                config = RewardConfig.from_dict(ckpt.state["run"]["model"])
            except KeyError:
                raise CheckpointError(f"{ckpt_dir}: not a reward-model checkpoint (no run settings in state.json)") from None
            tensors, info, source = ckpt.model, {"checkpoint_step": ckpt.step}, str(ckpt_dir)
        rm = cls.create(config, device=device)
        rm.load_trainable_state(tensors, source=source)
        rm.info.update(info)
        if merge:
            rm.merge_adapters()
        rm.net.eval()
        return rm

    def merge_adapters(self) -> None:
        """Fold LoRA adapters into the backbone weights (inference only; no more training)."""
        if self._frozen_state is not None:
            return
        self._frozen_state = {k: v.clone() for k, v in self.trainable_state().items()}
        bb = self.net.backbone
        if hasattr(bb, "merge_and_unload"):
            self.net.backbone = bb.merge_and_unload()
        for p in self.net.parameters():
            p.requires_grad_(False)

    # -- encoding ---------------------------------------------------------------------------
    def _needs_bos(self) -> bool:
        tok = self.tokenizer
        if tok.bos_token_id is None:
            return False
        ids = tok("a").input_ids
        return bool(ids) and ids[0] == tok.bos_token_id

    def render_prompt(self, prompt: PromptLike) -> str:
        """The prompt as the backbone sees it, ending where the assistant's answer starts."""
        msgs = [m.model_dump() for m in to_messages(prompt)]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return "".join(f"{_FALLBACK_ROLES[m['role']]}: {m['content']}\n\n" for m in msgs) + "Assistant: "

    def _render_response(self, prompt: PromptLike, prompt_text: str, response: str) -> str:
        msgs = [m.model_dump() for m in to_messages(prompt)] + [{"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            full = self.tokenizer.apply_chat_template(msgs, tokenize=False)
            if full.startswith(prompt_text):
                return full[len(prompt_text) :]
        return response + (self.tokenizer.eos_token or "")

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def encode_pairs(self, pairs: Sequence[PreferencePair], *, progress: bool = False) -> list[EncodedPair]:
        """Tokenize and truncate pairs (prompt shared by both answers)."""
        from tqdm.auto import tqdm

        out: list[EncodedPair] = []
        step = 256
        bar = tqdm(total=len(pairs), desc="tokenizing", unit="pair", disable=not progress or len(pairs) < 512)
        for i in range(0, len(pairs), step):
            chunk = pairs[i : i + step]
            ptexts = [self.render_prompt(p.prompt) for p in chunk]
            ctexts = [self._render_response(p.prompt, t, p.chosen) for p, t in zip(chunk, ptexts)]
            rtexts = [self._render_response(p.prompt, t, p.rejected) for p, t in zip(chunk, ptexts)]
            for pi, ci, ri, pt in zip(self._ids(ptexts), self._ids(ctexts), self._ids(rtexts), ptexts):
                if self._bos and not pt.startswith(self.tokenizer.bos_token):
                    pi = [self.tokenizer.bos_token_id] + pi
                p, (c, r) = _fit(pi, [ci or [self.tokenizer.pad_token_id], ri or [self.tokenizer.pad_token_id]], self.config.max_length)
                out.append(EncodedPair(p, c, r))
            bar.update(len(chunk))
        bar.close()
        return out

    def encode(self, items: Sequence[tuple[PromptLike, str]]) -> list[list[int]]:
        """Token ids of (prompt, response) items, truncated to ``max_length``."""
        ptexts = [self.render_prompt(p) for p, _ in items]
        rtexts = [self._render_response(p, t, r) for (p, r), t in zip(items, ptexts)]
        out = []
        for pi, ri, pt in zip(self._ids(ptexts), self._ids(rtexts), ptexts):
            if self._bos and not pt.startswith(self.tokenizer.bos_token):
                pi = [self.tokenizer.bos_token_id] + pi
            p, (r,) = _fit(pi, [ri or [self.tokenizer.pad_token_id]], self.config.max_length)
            out.append(p + r)
        return out

    # -- batches ----------------------------------------------------------------------------
    def _seq_batch(self, seqs: Sequence[list[int]]) -> tuple[Any, ...]:
        L = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        index = torch.tensor([[len(s) - 1] for s in seqs], dtype=torch.long)
        dev = self.device
        return ids.to(dev), mask.to(dev), None, index.to(dev)

    def _packed_batch(self, pairs: Sequence[EncodedPair]) -> tuple[Any, ...]:
        """Rows ``prompt | chosen | rejected`` with a block mask: each answer sees the prompt and itself."""

        L = max(p.packed_length for p in pairs)
        B = len(pairs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((B, L), pad, dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        seg = torch.full((B, L), 3, dtype=torch.long)
        index = torch.zeros((B, 2), dtype=torch.long)
        for i, p in enumerate(pairs):
            P, C, R = len(p.prompt), len(p.chosen), len(p.rejected)
            ids[i, : P + C + R] = torch.tensor(p.prompt + p.chosen + p.rejected, dtype=torch.long)
            pos[i, :P] = torch.arange(P)
            pos[i, P : P + C] = torch.arange(P, P + C)
            pos[i, P + C : P + C + R] = torch.arange(P, P + R)
            seg[i, :P], seg[i, P : P + C], seg[i, P + C : P + C + R] = 0, 1, 2
            index[i, 0], index[i, 1] = P + C - 1, P + C + R - 1
        ar = torch.arange(L)
        causal = ar.view(1, L, 1) >= ar.view(1, 1, L)
        sq, sk = seg.unsqueeze(2), seg.unsqueeze(1)
        allowed = causal & ((sk == 0) | (sk == sq)) & (sq != 3)
        allowed |= torch.eye(L, dtype=torch.bool).unsqueeze(0)
        dtype = next(self.net.backbone.parameters()).dtype
        mask = torch.zeros((B, 1, L, L), dtype=dtype)
        mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
        dev = self.device
        return ids.to(dev), mask.to(dev), pos.to(dev), index.to(dev)

    def _split_batch(self, pairs: Sequence[EncodedPair]) -> tuple[Any, ...]:
        """Chosen and rejected as separate rows ``[c0..cB-1, r0..rB-1]``."""
        return self._seq_batch([p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs])

    def pair_rewards(self, pairs: Sequence[EncodedPair], *, share_prompt: bool = True) -> tuple[Any, Any]:
        """``(r_chosen, r_rejected)`` tensors for encoded pairs (differentiable)."""
        if share_prompt:
            r = self.net(*self._packed_batch(pairs))
            return r[:, 0], r[:, 1]
        r = self.net(*self._split_batch(pairs)).squeeze(-1)
        return r[: len(pairs)], r[len(pairs) :]

    def pair_features(self, pairs: Sequence[EncodedPair], *, share_prompt: bool = True) -> Any:
        """Backbone features ``[B, 2, H]`` (chosen, rejected) at the reward positions."""
        if share_prompt:
            return self.net.features(*self._packed_batch(pairs))
        f = self.net.features(*self._split_batch(pairs)).squeeze(1)
        return torch.stack([f[: len(pairs)], f[len(pairs) :]], dim=1)

    # -- scoring ----------------------------------------------------------------------------
    def score(self, prompt: PromptLike, response: str) -> float:
        """The reward of ``response`` to ``prompt`` (a string or a list of messages)."""
        return self.score_batch([(prompt, response)])[0]

    def score_batch(self, items: Sequence[tuple[PromptLike, str]], *, batch_size: int = 16, progress: bool = False) -> list[float]:
        """Rewards of many ``(prompt, response)`` items, in order; batched by length."""
        from tqdm.auto import tqdm

        items = list(items)
        if not items:
            return []
        seqs = self.encode(items)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]), reverse=True)
        out = [0.0] * len(seqs)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                for j in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
                    idx = order[j : j + batch_size]
                    r = self.net(*self._seq_batch([seqs[i] for i in idx])).squeeze(-1)
                    for i, v in zip(idx, r.float().cpu().tolist()):
                        out[i] = float(v)
        finally:
            self.net.train(was_training)
        return out

    def pair_margins(self, pairs: Sequence[PreferencePair | EncodedPair], *, batch_size: int = 16, progress: bool = False, share_prompt: bool = True) -> list[float]:
        """``r(chosen) − r(rejected)`` for each pair."""
        from tqdm.auto import tqdm

        enc = [p if isinstance(p, EncodedPair) else None for p in pairs]
        raw = [p for p in pairs if not isinstance(p, EncodedPair)]
        if raw:
            it = iter(self.encode_pairs(raw))  # type: ignore[arg-type]
            enc = [e if e is not None else next(it) for e in enc]
        order = sorted(range(len(enc)), key=lambda i: enc[i].packed_length, reverse=True)  # type: ignore[union-attr]
        out = [0.0] * len(enc)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                for j in tqdm(range(0, len(order), batch_size), desc="scoring pairs", unit="batch", disable=not progress, leave=False):
                    idx = order[j : j + batch_size]
                    rc, rr = self.pair_rewards([enc[i] for i in idx], share_prompt=share_prompt)  # type: ignore[misc]
                    for i, v in zip(idx, (rc - rr).float().cpu().tolist()):
                        out[i] = float(v)
        finally:
            self.net.train(was_training)
        return out


def accuracy_from_margins(margins: Iterable[float], eps: float = 0.0) -> float:
    """Share of pairs whose chosen answer scores higher; ties count half."""
    m = list(margins)
    if not m:
        return float("nan")
    return sum(1.0 if x > eps else (0.5 if abs(x) <= eps else 0.0) for x in m) / len(m)


# -- training --------------------------------------------------------------------------------
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

    from middleware.training import batches, epoch_order

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
    import shutil

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
    from tqdm.auto import tqdm

    from middleware.training import CheckpointManager, load_checkpoint, plot_history, set_rng_state, split_holdout, tensors_to_optimizer, write_json_atomic

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
    from tqdm.auto import tqdm

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


# -- command line ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    d, t = RewardConfig(), TrainConfig()
    p = argparse.ArgumentParser(
        prog="alignware train reward",
        description="Train a reward model on preference pairs (Bradley–Terry loss). Rerunning the same command "
        "resumes from the newest good checkpoint in --out.",
    )
    p.add_argument("--data", required=True, help="preference pairs (JSONL: prompt, chosen, rejected)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, the final model, metrics.json, training.png")
    p.add_argument("--eval-data", help="held-out pairs (default: --eval-fraction of --data)")
    p.add_argument("--eval-fraction", type=float, default=t.eval_fraction, help="share of --data held out (default %(default)s)")
    p.add_argument("--limit", type=int, help="use only the first N pairs of --data")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default=d.backbone, help="'embedded', a model folder or a .gguf file (default %(default)s)")
    m.add_argument("--max-length", type=int, default=d.max_length, help="tokens per prompt+response (default %(default)s)")
    m.add_argument("--layers", type=int, help="keep only the first N transformer blocks")
    m.add_argument("--train", choices=["lora", "full", "head"], default=d.train, help="what to train (default %(default)s)")
    m.add_argument("--train-layers", type=int, help="adapt only the top N blocks (default: all)")
    m.add_argument("--lora-r", type=int, default=d.lora_r)
    m.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    m.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=float, default=t.epochs, help="default %(default)s")
    o.add_argument("--max-steps", type=int, help="total steps (overrides --epochs)")
    o.add_argument("--batch-size", type=int, default=t.batch_size, help="pairs per step (default %(default)s)")
    o.add_argument("--lr", type=float, help="learning rate (default: 2e-4 lora, 5e-5 full, 1e-3 head)")
    o.add_argument("--head-lr", type=float, help="learning rate of the head (default: max(lr, 1e-3))")
    o.add_argument("--weight-decay", type=float, default=t.weight_decay)
    o.add_argument("--warmup-ratio", type=float, default=t.warmup_ratio)
    o.add_argument("--seed", type=int, default=t.seed)
    o.add_argument("--no-bucket", action="store_true", help="do not group pairs of similar length")
    o.add_argument("--no-share-prompt", action="store_true", help="encode the prompt separately for each answer")
    r = p.add_argument_group("checkpoints")
    r.add_argument("--save-every", type=int, default=t.save_every, help="checkpoint every N steps (default %(default)s)")
    r.add_argument("--eval-every", type=int, help="evaluate every N steps (default: with each checkpoint)")
    r.add_argument("--keep", type=int, default=t.keep, help="checkpoints to keep (default %(default)s)")
    r.add_argument("--stop-after", type=int, help="stop after N steps in total (rerun to continue)")
    r.add_argument("--fresh", action="store_true", help="start over: remove the earlier run's checkpoints and final model from --out first")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def train_main(argv: list[str] | None = None) -> int:
    """``alignware train reward ...``: returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        from middleware.training import set_threads

        set_threads(args.threads)
        mcfg = RewardConfig(
            backbone=args.backbone,
            max_length=args.max_length,
            layers=args.layers,
            train=args.train,
            train_layers=args.train_layers,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
        )
        tcfg = TrainConfig(
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            head_lr=args.head_lr,
            weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio,
            eval_fraction=0.0 if args.eval_data else args.eval_fraction,
            eval_every=args.eval_every,
            save_every=args.save_every,
            keep=args.keep,
            seed=args.seed,
            bucket=not args.no_bucket,
            share_prompt=not args.no_share_prompt,
            stop_after=args.stop_after,
        )
        pairs = load_pairs(args.data, limit=args.limit)
        res = train_reward_model(
            pairs, args.out, mcfg, tcfg, eval_pairs=args.eval_data, resume=not args.fresh, progress=not args.quiet, device=args.device
        )
    except (InputError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InputError) else 1
    m = res.metrics
    acc = f"{m['eval_acc']:.3f}" if m.get("eval_acc") is not None else "n/a"
    pps = f"{m['pairs_per_second']:.2f}" if m.get("pairs_per_second") else "n/a"
    if res.finished:
        feat = f" (head only; backbone features took {m['feature_seconds_this_run']:.0f} s)" if m.get("feature_seconds_this_run") else ""
        print(f"done: {res.steps} steps, held-out pairwise accuracy {acc} on {m['n_eval']} pairs, {pps} pairs/s{feat}")
        print(f"model: {res.out_dir}  (RewardModel.load({str(res.out_dir)!r}))  plot: {res.out_dir / PLOT_FILE}")
    else:
        print(f"stopped after {res.steps} of {res.total_steps} steps (held-out accuracy {acc}); rerun the same command to resume")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(train_main())
