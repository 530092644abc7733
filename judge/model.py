"""The reward model: a scalar head on a transformers backbone (``RewardNet``) and ``RewardModel``, which
builds, loads, saves and scores with it.

The reward of ``(prompt, response)`` is a linear head on the backbone's last hidden state at the last
non-pad token of the conversation rendered through the backbone's chat template (``judge.encoding``).
Three ways to train (``RewardConfig.train``): ``"lora"`` (LoRA adapters on the linear layers of the top
``train_layers`` blocks, plus the head), ``"full"`` (every weight of the top ``train_layers`` blocks and
the final norm, plus the head) and ``"head"`` (the backbone stays frozen). ``layers`` keeps only the
first N blocks of the backbone.

Saved folders hold ``reward.safetensors`` (the trained tensors only: adapters or top blocks, and the head)
and ``reward_config.json`` naming the backbone; no pickle. ``RewardModel.load`` also reads a training
checkpoint folder (``DIR/checkpoints/step-…``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from middleware.errors import AlignwareError, CheckpointError
from middleware.models import decoder_layers_path, resolve_model_path
from middleware.checkpoints import CheckpointManager, load_checkpoint, sha256, write_json_atomic
from middleware.types import PreferencePair

from .config import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, RewardConfig
from .encoding import EncodedPair, PairEncoder, PromptLike, packed_batch, seq_batch, split_batch


# -- the network -----------------------------------------------------------------------------
def _truncate_layers(model: Any, keep: int) -> None:
    blocks, path = decoder_layers_path(model)
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
    blocks, path = decoder_layers_path(backbone)
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
        self.encoder = PairEncoder(tokenizer, config.max_length)
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

    # -- encoding (see ``judge.encoding``) ------------------------------------------------------
    def render_prompt(self, prompt: PromptLike) -> str:
        """The prompt as the backbone sees it, ending where the assistant's answer starts."""
        return self.encoder.render_prompt(prompt)

    def encode_pairs(self, pairs: Sequence[PreferencePair], *, progress: bool = False) -> list[EncodedPair]:
        """Tokenize and truncate pairs (prompt shared by both answers)."""
        return self.encoder.encode_pairs(pairs, progress=progress)

    def encode(self, items: Sequence[tuple[PromptLike, str]]) -> list[list[int]]:
        """Token ids of (prompt, response) items, truncated to ``max_length``."""
        return self.encoder.encode(items)

    # -- batches ----------------------------------------------------------------------------
    def _seq_batch(self, seqs: Sequence[list[int]]) -> tuple[Any, ...]:
        return seq_batch(seqs, self.tokenizer.pad_token_id, self.device)

    def _packed_batch(self, pairs: Sequence[EncodedPair]) -> tuple[Any, ...]:
        dtype = next(self.net.backbone.parameters()).dtype
        return packed_batch(pairs, self.tokenizer.pad_token_id, dtype, self.device)

    def _split_batch(self, pairs: Sequence[EncodedPair]) -> tuple[Any, ...]:
        return split_batch(pairs, self.tokenizer.pad_token_id, self.device)

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
