"""One supervised fine-tuning trainer for both text-to-text stages: rendered template text in, better
text out (BPO rewriter: prompt -> optimized prompt; Aligner corrector: question + answer -> correction).

LoRA adapters via peft; the loss is on the target tokens (and the closing EOS) only. Batches are
built from length buckets and padded to their own longest row, and the output layer is applied to the
target positions only, which is what makes this trainer fast on CPU. Training is resumable: numbered,
checksummed checkpoints (``middleware.training``) every ``save_every`` steps hold the adapter weights,
the optimizer moments and the random state, and the data order depends only on the seed and the step,
so a resumed run ends with the same weights as an uninterrupted one.

The result is a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) with the
manifest ``alignware.json`` that ``rewriters.generator.TextGenerator.from_pretrained`` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from middleware.errors import CheckpointError, InputError
from middleware.training import (
    CheckpointManager,
    load_checkpoint,
    plot_history,
    rng_state,
    set_rng_state,
    sha256,
    split_holdout,
    epoch_order,
    tensors_to_optimizer,
    write_json_atomic,
)

from middleware.adapters import ADAPTER_FILES, MANIFEST, base_label

from .generator import KINDS
from .templates import DEFAULT_TEMPLATES, get_template

log = logging.getLogger("alignware")

IGNORE_INDEX = -100
#: Model types whose causal-LM head is a plain linear layer on the decoder's last hidden state, so the
#: head can be applied to the target positions only.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3"})
#: Batches per length bucket: rows are sorted by length within groups of this many batches.
BUCKET_BATCHES = 16

__all__ = [
    "SFTExample",
    "SFTConfig",
    "SFTResult",
    "tokenize_example",
    "collate",
    "train_sft",
    "add_train_args",
    "config_from_args",
    "init_adapter",
]


@dataclass
class SFTExample:
    """One training pair. ``source`` is the rendered template text; ``target`` the text to learn.

    ``group`` (optional) names the item the example was made from, e.g. the index of its preference
    pair. ``train_sft`` holds out main examples; a warm-up example with the ``group`` of a held-out
    example is left out of training too, so the held-out loss is measured on data never trained on.
    """

    source: str
    target: str
    group: int | str | None = None


@dataclass
class SFTConfig:
    """Settings of one SFT run (LoRA, optimisation, evaluation, checkpoints).

    ``epochs`` and ``warmup_epochs`` may be fractional. ``warmup_epochs`` applies only when
    ``train_sft`` gets ``warmup_examples`` (the Aligner identity warm-up: answer -> same answer),
    which are trained on before the main examples. ``max_steps`` caps the total number of steps.
    """

    base_model: str | None = None
    template: str = "bpo"
    kind: str = "rewriter"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-4
    epochs: float = 1.0
    batch_size: int = 8
    max_length: int = 512
    warmup_epochs: float = 1.0
    eval_fraction: float = 0.1
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    max_steps: int | None = None

    def validate(self) -> None:
        """Raise ``InputError`` naming the first bad setting."""
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        get_template(self.template)
        positive = {"lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "batch_size": self.batch_size,
                    "max_length": self.max_length, "eval_every": self.eval_every, "save_every": self.save_every,
                    "keep_checkpoints": self.keep_checkpoints, "learning_rate": self.learning_rate}
        for k, v in positive.items():
            if not v > 0:
                raise InputError(f"{k} must be positive, got {v!r}")
        if self.max_length < 2:
            raise InputError(f"max_length must be at least 2, got {self.max_length}")
        if self.epochs < 0 or self.warmup_epochs < 0:
            raise InputError("epochs and warmup_epochs must be 0 or more")
        if not 0 <= self.lora_dropout < 1:
            raise InputError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.eval_fraction < 1:
            raise InputError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be at least 1, got {self.max_steps}")
        if not self.target_modules:
            raise InputError("target_modules is empty: name the linear layers LoRA adapts (e.g. q_proj v_proj)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


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


# -- tokenisation --------------------------------------------------------------------------------
def tokenize_example(tokenizer: Any, ex: SFTExample, max_length: int, *, pad_to_max_length: bool = False) -> dict[str, list[int]]:
    """Token ids of ``source + target + EOS`` with labels on the target and EOS only.

    The source is tokenized as at inference (with the tokenizer's special tokens, e.g. BOS) and the
    target after it without them, so the model learns exactly the continuation it will be asked for.
    Too long: the source is cut from the left (a leading BOS is kept); the target is kept, unless it
    alone does not fit, then it is cut from the right. With ``pad_to_max_length`` the row is padded
    on the right to ``max_length`` (label -100, attention 0).

    Returns lists ``input_ids``, ``labels`` (-100 on source and padding), ``attention_mask``.
    """
    if max_length < 2:
        raise InputError(f"max_length must be at least 2, got {max_length}")
    if not isinstance(ex.source, str) or not isinstance(ex.target, str):
        raise InputError("SFTExample source and target must be strings")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("the tokenizer has no EOS token: the model could never learn to stop")
    src = list(tokenizer(ex.source)["input_ids"])
    if len(src) > 1 and src[-1] == eos and not ex.source.endswith(str(tokenizer.eos_token)):
        src = src[:-1]  # tokenizers that close every text with EOS: the source must stay open
    if not src:
        raise InputError(f"the source text tokenizes to nothing: {ex.source[:60]!r}")
    tgt = list(tokenizer(ex.target, add_special_tokens=False)["input_ids"]) + [eos]
    if len(tgt) > max_length - 1:
        tgt = tgt[: max_length - 1]
    budget = max_length - len(tgt)
    if len(src) > budget:
        bos = tokenizer.bos_token_id
        if bos is not None and src[0] == bos and budget > 1:
            src = [bos] + src[len(src) - budget + 1 :]
        else:
            src = src[len(src) - budget :]
    ids = src + tgt
    labels = [IGNORE_INDEX] * len(src) + tgt
    mask = [1] * len(ids)
    if pad_to_max_length and len(ids) < max_length:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        extra = max_length - len(ids)
        ids += [pad] * extra
        labels += [IGNORE_INDEX] * extra
        mask += [0] * extra
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad rows to the longest one in the batch; tensors ``input_ids``, ``labels``, ``attention_mask``."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
        mask[i, :n] = torch.tensor(r["attention_mask"], dtype=torch.long)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# -- the step plan -------------------------------------------------------------------------------
@dataclass
class _Phase:
    name: str
    rows: list[int]  # indices into the tokenized rows
    offset: int  # epoch index offset, so the phases draw different orders
    steps_per_epoch: int
    steps: int


class _Plan:
    """Maps a global step to its batch; depends only on (seed, step), so a resumed run replays it."""

    def __init__(self, phases: list[tuple[str, list[int], float]], lengths: list[int], batch_size: int, seed: int, max_steps: int | None) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.phases: list[_Phase] = []
        offset = 0
        for name, rows, epochs in phases:
            if not rows or epochs <= 0:
                continue
            per_epoch = math.ceil(len(rows) / batch_size)
            self.phases.append(_Phase(name, rows, offset, per_epoch, math.ceil(epochs * per_epoch - 1e-9)))
            offset += math.ceil(epochs) + 1
        planned = sum(p.steps for p in self.phases)
        self.total = min(planned, max_steps) if max_steps is not None else planned
        self._cache: tuple[tuple[int, int], list[list[int]]] | None = None

    def locate(self, step: int) -> tuple[_Phase, int]:
        """(phase, step within the phase) of the 0-based global ``step``."""
        for ph in self.phases:
            if step < ph.steps:
                return ph, step
            step -= ph.steps
        raise IndexError(step)

    def epoch_batches(self, ph: _Phase, epoch: int) -> list[list[int]]:
        """The batches of one epoch: a seeded shuffle, rows sorted by length within buckets of
        ``BUCKET_BATCHES`` batches (little padding), then the batches shuffled."""
        import torch

        key = (ph.offset, epoch)
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        perm = [ph.rows[i] for i in epoch_order(len(ph.rows), ph.offset + epoch, self.seed)]
        span = self.batch_size * BUCKET_BATCHES
        out: list[list[int]] = []
        for start in range(0, len(perm), span):
            chunk = sorted(perm[start : start + span], key=lambda i: -self.lengths[i])
            out.extend(chunk[k : k + self.batch_size] for k in range(0, len(chunk), self.batch_size))
        g = torch.Generator().manual_seed(self.seed * 7_919 + ph.offset * 104_729 + epoch + 1)
        order = torch.randperm(len(out), generator=g).tolist()
        batches = [out[i] for i in order]
        self._cache = (key, batches)
        return batches

    def batch(self, step: int) -> tuple[_Phase, float, list[int]]:
        """(phase, epochs done in the phase after this step, row indices) of the 0-based global ``step``."""
        ph, local = self.locate(step)
        epoch, b = divmod(local, ph.steps_per_epoch)
        return ph, (local + 1) / ph.steps_per_epoch, self.epoch_batches(ph, epoch)[b]


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 3% of steps (at least one), then linear decay to zero."""
    warm = max(1, round(0.03 * total))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


# -- the model -----------------------------------------------------------------------------------
class _LossFn:
    """Mean cross-entropy over the target tokens of a batch; the output layer runs on those positions only
    when the architecture allows it."""

    def __init__(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model = model
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        self.decoder: Any = getattr(base, getattr(base, "base_model_prefix", "model"), None)
        self.head: Any = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        self.fast = model_type in PLAIN_HEAD_MODEL_TYPES and self.decoder is not None and self.head is not None

    def __call__(self, batch: dict[str, Any]) -> tuple[Any, int]:
        """(sum of token losses, number of target tokens)."""
        import torch.nn.functional as F

        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        n = int(keep.sum())
        if self.fast:
            hidden = self.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            h = hidden.last_hidden_state[:, :-1][keep]
            logits = self.head(h)
        else:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            logits = out.logits[:, :-1][keep]
        loss = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
        return loss, n


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _snapshot(params: dict[str, Any], optimizer: Any) -> tuple[dict[str, Any], dict[Any, dict[str, Any]]]:
    """Copies of the trainable weights and the optimizer state, taken before an update so that an
    interrupted update can be undone (a LoRA adapter and its moments: a small share of the model)."""
    import copy

    import torch

    with torch.no_grad():
        weights = {n: p.detach().clone() for n, p in params.items()}
        state = {
            p: {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in st.items()}
            for p, st in optimizer.state.items()
        }
    return weights, state


def _restore(snapshot: tuple[dict[str, Any], dict[Any, dict[str, Any]]], params: dict[str, Any], optimizer: Any) -> None:
    """Put back the weights and optimizer state of :func:`_snapshot`."""
    import torch

    weights, state = snapshot
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    optimizer.state.clear()
    for p, st in state.items():
        optimizer.state[p] = st


def _fingerprint(config: SFTConfig, examples: Sequence[SFTExample], warmup: Sequence[SFTExample]) -> str:
    """Identifies a run: everything that changes the weights (not eval/save intervals)."""
    h = hashlib.sha256()
    cfg = config.to_dict()
    for k in ("eval_every", "save_every", "keep_checkpoints"):
        cfg.pop(k)
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for tag, exs in ((b"M", examples), (b"W", warmup)):
        for ex in exs:
            h.update(tag + ex.source.encode() + b"\0" + ex.target.encode() + b"\1")
            if ex.group is not None:  # groups decide which warm-up examples are held out
                h.update(b"G" + str(ex.group).encode() + b"\2")
    return h.hexdigest()


def _evaluate(loss_fn: _LossFn, rows: list[dict[str, list[int]]], batch_size: int, pad_id: int, device: Any) -> float | None:
    import torch

    if not rows:
        return None
    model = loss_fn.model
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    with torch.no_grad():
        for k in range(0, len(order), batch_size):
            batch = {k: t.to(device) for k, t in collate([rows[i] for i in order[k : k + batch_size]], pad_id).items()}
            loss, n = loss_fn(batch)
            total += float(loss)
            count += n
    if was_training:
        model.train()
    return total / max(1, count)


def _save_adapter(model: Any, out_dir: Path, manifest: dict[str, Any]) -> None:
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


def _load_training_model(config: SFTConfig) -> tuple[Any, Any]:
    import torch
    from middleware.models import load_causal_lm
    from peft import LoraConfig, get_peft_model

    model, tok = load_causal_lm(config.base_model)
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
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model, lora)
    return model, tok


def _manifest(config: SFTConfig, **training: Any) -> dict[str, Any]:
    tmpl = get_template(config.template)
    return {
        "format": 1,
        "kind": config.kind,
        "base_model": base_label(config.base_model),
        "template": tmpl.name,
        "template_spec": tmpl.to_dict(),
        "generation": dict(tmpl.generation),
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
    model, _ = _load_training_model(config)
    if random_init:
        g = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.0 / max(1, p.shape[-1])) ** 0.5)
    out = Path(out_dir).expanduser()
    _save_adapter(model, out, _manifest(config, steps=0))
    return out


# -- training ------------------------------------------------------------------------------------
def train_sft(
    examples: list[SFTExample],
    config: SFTConfig,
    out_dir: str | Path,
    *,
    warmup_examples: list[SFTExample] | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], Any] | None = None,
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
    """
    import torch
    from tqdm.auto import tqdm

    config.validate()
    examples = list(examples)
    warmup = list(warmup_examples or [])
    if not examples and not warmup:
        raise InputError("no training examples")
    for i, ex in enumerate(examples + warmup):
        if not isinstance(ex, SFTExample):
            raise InputError(f"examples[{i}] is a {type(ex).__name__}, expected SFTExample")
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config, examples, warmup)

    model, tok = _load_training_model(config)
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    main_rows = [tokenize_example(tok, ex, config.max_length) for ex in examples]
    warm_rows = [tokenize_example(tok, ex, config.max_length) for ex in warmup]
    rows = main_rows + warm_rows
    lengths = [len(r["input_ids"]) for r in rows]
    train_idx, eval_idx = split_holdout(len(main_rows), config.eval_fraction, config.seed) if main_rows else ([], [])
    eval_rows = [main_rows[i] for i in eval_idx]
    held_groups = {examples[i].group for i in eval_idx} - {None}
    warm_idx = [len(main_rows) + j for j, ex in enumerate(warmup) if ex.group is None or ex.group not in held_groups]
    if held_groups:
        log.info("left out %d warm-up examples of held-out groups", len(warm_rows) - len(warm_idx))
    if not train_idx and not warm_idx:
        raise InputError("no training examples left after holding out the evaluation share")
    plan = _Plan(
        [("warmup", warm_idx, config.warmup_epochs), ("main", train_idx, config.epochs)],
        lengths, config.batch_size, config.seed, config.max_steps,
    )
    if plan.total == 0:
        raise InputError("the run has no steps: check epochs / warmup_epochs and the number of examples")

    params = _trainable(model)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=0.0)
    loss_fn = _LossFn(model)
    manager = CheckpointManager(out_dir, keep=config.keep_checkpoints)

    step = 0
    history: list[dict[str, Any]] = []
    eval_untrained: float | None = None
    resumed_from: int | None = None
    if not resume and manager.root.exists():
        log.warning("resume=False: removing the old checkpoints in %s", manager.root)
        shutil.rmtree(manager.root)
    latest = manager.latest() if resume else None
    if latest is not None:
        ck = load_checkpoint(latest)
        if ck.state.get("fingerprint") != fingerprint:
            raise InputError(
                f"{latest} belongs to a run with other settings or data; pass resume=False (or --no-resume) "
                f"to start over, or use another output folder"
            )
        missing = sorted(set(params) - set(ck.model))
        if missing:
            raise CheckpointError(f"{latest}: adapter tensors missing: {missing[:3]}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(ck.model[name].to(p.device, p.dtype))
        tensors_to_optimizer(optimizer, ck.optimizer, ck.state["optimizer_meta"])
        set_rng_state(ck.rng)
        step = ck.step
        history = list(ck.state.get("history", []))
        eval_untrained = ck.state.get("eval_loss_untrained")
        resumed_from = step
        log.info("resuming from %s (step %d of %d)", latest, step, plan.total)

    model.train()
    if step == 0:
        eval_untrained = _evaluate(loss_fn, eval_rows, config.batch_size, pad_id, device)
        if eval_untrained is not None:
            history.append({"step": 0, "eval_loss": eval_untrained})

    def checkpoint(at: int, rng: dict[str, Any] | None = None) -> None:
        state = {
            "fingerprint": fingerprint,
            "config": config.to_dict(),
            "history": history,
            "eval_loss_untrained": eval_untrained,
            "total_steps": plan.total,
        }
        manager.save(at, model_tensors=params, optimizer=optimizer, state=state, rng=rng)

    train_seconds = 0.0
    target_tokens = 0
    all_tokens = 0
    stopped = False
    interrupted = False
    # Ctrl-C can land anywhere; what it saves is always the state at the end of the last finished step.
    # ``step_rng`` is (step, random state at its start, before dropout drew any mask); ``committing`` is
    # the step whose optimizer update is under way: until ``step`` reaches it the weights and moments
    # may be half-updated, and ``snapshot`` holds them as of the end of step ``step``.
    step_rng: tuple[int, dict[str, Any]] | None = None
    committing: int | None = None
    snapshot: tuple[dict[str, Any], dict[Any, dict[str, Any]]] | None = None
    row: dict[str, Any] = {}
    saved_at = step
    last_eval: float | None = None
    # in a terminal the bar redraws in place; in a log file (nohup, CI) it writes a line every 30 s instead
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=plan.total, initial=step, desc=f"train {config.kind}", unit="step", disable=not progress,
        dynamic_ncols=tty, mininterval=0.1 if tty else 30.0, ascii=not tty,
    )
    try:
        while step < plan.total:
            step_rng = (step, rng_state())  # nothing random has been drawn for this step yet
            t0 = time.perf_counter()
            phase, epoch, idx = plan.batch(step)
            batch = {n: t.to(device) for n, t in collate([rows[i] for i in idx], pad_id).items()}
            lr = _lr_at(step, plan.total, config.learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, n = loss_fn(batch)
            loss = loss_sum / max(1, n)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            value = float(loss.detach())
            n_all = int(batch["attention_mask"].sum())
            row = {"step": step + 1, "loss": value, "lr": lr, "epoch": round(epoch, 4), "target_tokens": n, "tokens": n_all}
            if phase.name == "warmup":
                row["warmup"] = 1
            snapshot = _snapshot(params, optimizer)
            committing = step + 1
            optimizer.step()
            history.append(row)
            step += 1  # the step counts from here: weights, moments and history are those of ``step``
            committing = None
            snapshot = None
            train_seconds += time.perf_counter() - t0
            target_tokens += n
            all_tokens += n_all
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            if eval_rows and (step % config.eval_every == 0 or step == plan.total):
                last_eval = _evaluate(loss_fn, eval_rows, config.batch_size, pad_id, device)
                history.append({"step": step, "eval_loss": last_eval})
                bar.set_postfix(loss=f"{value:.3f}", eval=f"{last_eval:.3f}", refresh=False)
            if callback is not None and callback(row) is False:
                stopped = True
            if step % config.save_every == 0 or step == plan.total or stopped:
                checkpoint(step)
                saved_at = step
            if stopped:
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep what was learnt and stop. An update that had not finished is undone, so the
        # checkpoint and the exported adapter hold the weights and moments of the last finished step;
        # within a step, the random state saved is the one the step started with (the masks dropout
        # drew before the interrupt are drawn again on resume, as in an uninterrupted run).
        interrupted = stopped = True
        if committing is not None and step != committing:
            assert snapshot is not None
            _restore(snapshot, params, optimizer)
            if history and history[-1] is row:
                history.pop()
        # between steps (after the update) the random state now is the one the next step starts with
        rng = step_rng[1] if step_rng is not None and step_rng[0] == step else None
        if step > saved_at:
            checkpoint(step, rng=rng)
            saved_at = step
    finally:
        bar.close()

    if eval_rows:
        tail = history[-1] if history else {}
        if tail.get("step") == step and "eval_loss" in tail:
            last_eval = tail["eval_loss"]
        else:
            last_eval = _evaluate(loss_fn, eval_rows, config.batch_size, pad_id, device)
            history.append({"step": step, "eval_loss": last_eval})

    manifest = _manifest(
        config, steps=step, total_steps=plan.total, finished=step >= plan.total,
        examples=len(examples), warmup_examples=len(warmup),
        warmup_examples_held_out=len(warmup) - len(warm_idx),
        eval_loss_untrained=eval_untrained, eval_loss_final=last_eval,
        tokens_per_second=round(target_tokens / train_seconds, 2) if train_seconds else None,
    )
    _save_adapter(model, out_dir, manifest)
    write_json_atomic(out_dir / "history.json", history)
    try:
        curves = [{k: v for k, v in r.items() if k in ("step", "loss", "eval_loss")} for r in history]
        plot_history(curves, out_dir / "loss.png", title=f"{config.kind} SFT ({config.template})")
    except Exception as e:  # a missing plotting backend must not lose a trained adapter
        log.warning("could not draw %s: %s", out_dir / "loss.png", e)

    return SFTResult(
        out_dir=out_dir,
        history=history,
        eval_loss_untrained=eval_untrained,
        eval_loss_final=last_eval,
        steps=step,
        tokens_per_second=target_tokens / train_seconds if train_seconds else 0.0,
        total_tokens_per_second=all_tokens / train_seconds if train_seconds else 0.0,
        train_seconds=train_seconds,
        target_tokens=target_tokens,
        resumed_from=resumed_from,
        stopped_early=stopped,
        total_steps=plan.total,
        interrupted=interrupted,
    )


# -- command line ---------------------------------------------------------------------------------
def add_train_args(parser: Any) -> None:
    """Add the SFT settings to an ``argparse`` parser (used by ``alignware train rewriter|corrector``)."""
    d = SFTConfig()
    g = parser.add_argument_group("fine-tuning (LoRA SFT)")
    g.add_argument("--base-model", default=None, help="base model folder or .gguf (default: the embedded model)")
    g.add_argument("--template", default=None, help="prompt template name (default: bpo for rewriter, aligner-v1.0 for corrector)")
    g.add_argument("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    g.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help=f"LoRA dropout (default {d.lora_dropout})")
    g.add_argument("--target-modules", nargs="+", default=list(d.target_modules), metavar="NAME",
                   help="linear layers to adapt (default: %(default)s)")
    g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=d.learning_rate,
                   help=f"peak learning rate (default {d.learning_rate})")
    g.add_argument("--epochs", type=float, default=d.epochs, help=f"epochs over the training pairs (default {d.epochs})")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"examples per step (default {d.batch_size})")
    g.add_argument("--max-length", type=int, default=d.max_length, help=f"tokens per example (default {d.max_length})")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help=f"epochs of the warm-up phase, when there is one (default {d.warmup_epochs})")
    g.add_argument("--eval-fraction", type=float, default=d.eval_fraction, help=f"held-out share (default {d.eval_fraction})")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help=f"steps between evaluations (default {d.eval_every})")
    g.add_argument("--save-every", type=int, default=d.save_every, help=f"steps between checkpoints (default {d.save_every})")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help=f"checkpoints kept (default {d.keep_checkpoints})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    g.add_argument("--no-resume", dest="resume", action="store_false", help="start over instead of resuming from checkpoints")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: Any, *, kind: str | None = None) -> SFTConfig:
    """Build an ``SFTConfig`` from parsed ``add_train_args`` flags. ``kind`` (or ``args.kind``) picks the
    default template; the result is validated."""
    kind = kind or getattr(args, "kind", None) or "rewriter"
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    names = {f.name for f in fields(SFTConfig)}
    values = {n: getattr(args, n) for n in names if hasattr(args, n) and n not in ("kind", "template")}
    if "target_modules" in values:
        mods: list[str] = []
        for m in values["target_modules"]:
            mods.extend(x for x in str(m).replace(",", " ").split() if x)
        values["target_modules"] = tuple(mods)
    cfg = SFTConfig(kind=kind, template=getattr(args, "template", None) or DEFAULT_TEMPLATES[kind], **values)
    cfg.validate()
    return cfg


def iter_batches(rows: Sequence[dict[str, list[int]]], batch_size: int, pad_id: int) -> Iterator[dict[str, Any]]:
    """Collated batches of ``rows`` in order (helper for evaluation scripts)."""
    for k in range(0, len(rows), batch_size):
        yield collate(rows[k : k + batch_size], pad_id)
