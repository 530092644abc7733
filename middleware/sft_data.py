"""What an SFT run trains on and with: the examples (``SFTExample``), the settings (``SFTConfig``), the
token rows (``tokenize_example``: loss on the target and the closing EOS only), their batches
(``collate``: padded to the batch's longest row) and the run's fingerprint.

Shared by every stage family that fine-tunes a LoRA adapter (``rewriters``: the rewriter and corrector,
whose ``rewriters.sft_config.SFTConfig`` adds their kinds and templates; ``steering``: RAHF).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from .errors import InputError
from .training import BatchPlan, split_holdout

log = logging.getLogger("alignware")

IGNORE_INDEX = -100
#: Batches per length bucket: rows are sorted by length within groups of this many batches.
BUCKET_BATCHES = 16


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

    ``kind`` and ``template`` are labels written into the adapter's manifest (what the adapter is for,
    how its sources were rendered); a stage family that gives them meaning subclasses this config,
    checks them in ``validate`` and adds its own manifest entries in ``manifest_fields``
    (``rewriters.sft_config.SFTConfig``). ``epochs`` and ``warmup_epochs`` may be fractional.
    ``warmup_epochs`` applies only when ``train_sft`` gets ``warmup_examples`` (e.g. the Aligner
    identity warm-up: answer -> same answer), which are trained on before the main examples.
    ``max_steps`` caps the total number of steps.
    """

    base_model: str | None = None
    template: str | None = None
    kind: str = "sft"
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
        if not isinstance(self.kind, str) or not self.kind:
            raise InputError(f"kind must be a non-empty string, got {self.kind!r}")
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

    def manifest_fields(self) -> dict[str, Any]:
        """What the adapter manifest says about the sources beyond ``kind`` (here: the ``template`` label)."""
        return {"template": self.template}


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


def weight_settings(config: SFTConfig) -> dict[str, Any]:
    """The settings of ``config`` that change the trained weights (all but the evaluation and saving intervals)."""
    cfg = config.to_dict()
    for k in ("eval_every", "save_every", "keep_checkpoints"):
        cfg.pop(k)
    return cfg


def fingerprint(config: SFTConfig, examples: Sequence[SFTExample], warmup: Sequence[SFTExample]) -> str:
    """Identifies a run: everything that changes the weights (not eval/save intervals)."""
    h = hashlib.sha256()
    h.update(json.dumps(weight_settings(config), sort_keys=True).encode())
    for tag, exs in ((b"M", examples), (b"W", warmup)):
        for ex in exs:
            h.update(tag + ex.source.encode() + b"\0" + ex.target.encode() + b"\1")
            if ex.group is not None:  # groups decide which warm-up examples are held out
                h.update(b"G" + str(ex.group).encode() + b"\2")
    return h.hexdigest()



def iter_batches(rows: Sequence[dict[str, list[int]]], batch_size: int, pad_id: int) -> Iterator[dict[str, Any]]:
    """Collated batches of ``rows`` in order (helper for evaluation scripts)."""
    for k in range(0, len(rows), batch_size):
        yield collate(rows[k : k + batch_size], pad_id)


def check_examples(examples: Sequence[SFTExample], warmup: Sequence[SFTExample] | None) -> tuple[list[SFTExample], list[SFTExample]]:
    """``(examples, warm-up examples)`` as lists; ``InputError`` when there are none or one is not an ``SFTExample``."""
    main, warm = list(examples), list(warmup or [])
    if not main and not warm:
        raise InputError("no training examples")
    for i, ex in enumerate(main + warm):
        if not isinstance(ex, SFTExample):
            raise InputError(f"examples[{i}] is a {type(ex).__name__}, expected SFTExample")
    return main, warm


@dataclass
class SFTRows:
    """The token rows of a run (main examples, then warm-up examples), its held-out rows and its plan."""

    rows: list[dict[str, list[int]]]
    eval_rows: list[dict[str, list[int]]]
    warmup_held_out: int  # warm-up examples left out because their group is held out
    plan: BatchPlan


def prepare_rows(tokenizer: Any, examples: list[SFTExample], warmup: list[SFTExample], config: SFTConfig) -> SFTRows:
    """Tokenize, hold out ``config.eval_fraction`` of the main examples (and the warm-up examples of
    their groups), and plan the steps: the warm-up phase, then the main one, in length buckets."""
    main_rows = [tokenize_example(tokenizer, ex, config.max_length) for ex in examples]
    warm_rows = [tokenize_example(tokenizer, ex, config.max_length) for ex in warmup]
    rows = main_rows + warm_rows
    lengths = [len(r["input_ids"]) for r in rows]
    train_idx, eval_idx = split_holdout(len(main_rows), config.eval_fraction, config.seed) if main_rows else ([], [])
    held_groups = {examples[i].group for i in eval_idx} - {None}
    warm_idx = [len(main_rows) + j for j, ex in enumerate(warmup) if ex.group is None or ex.group not in held_groups]
    if held_groups:
        log.info("left out %d warm-up examples of held-out groups", len(warm_rows) - len(warm_idx))
    if not train_idx and not warm_idx:
        raise InputError("no training examples left after holding out the evaluation share")
    plan = BatchPlan.from_epochs(
        [("warmup", warm_idx, config.warmup_epochs), ("main", train_idx, config.epochs)],
        lengths, config.batch_size, config.seed, max_steps=config.max_steps, window=BUCKET_BATCHES, longest_first=True,
    )
    if plan.total == 0:
        raise InputError("the run has no steps: check epochs / warmup_epochs and the number of examples")
    return SFTRows(rows, [main_rows[i] for i in eval_idx], len(warmup) - len(warm_idx), plan)
