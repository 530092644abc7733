"""The targets of RAHF's alignment fit: for every (prompt, answer) item, the plain model's block outputs at
the target layers over the answer tokens plus ``alpha`` times the difference the instruction-tuned LoRA(s)
show there; computed once without gradients, written to safetensors shards and streamed back per batch
(``TargetStore``), so the fit holds one batch of targets in memory whatever the size of the data.
Also the fit's batches (``fit_batch``) and its loss (``masked_l2``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from judge.encoding import PairEncoder
from middleware.checkpoints import write_json_atomic
from middleware.shared_base import SharedBase
from middleware.types import PreferencePair

from .hidden import block_states, right_padded
from .rahf import RAHFConfig, with_instruction

__all__ = ["FitItem", "TargetStore", "build_targets", "fit_batch", "masked_l2"]

INDEX = "index.json"


@dataclass
class FitItem:
    """One (prompt, answer) row of the fit: its pair, token ids (prompt then answer), the prompt's length
    ``p``, the answer's ``n`` and the shard holding its target ``[layers, n, hidden]``."""

    pair: int
    ids: list[int]
    p: int
    n: int
    shard: str
    key: str


class TargetStore:
    """Targets on disk: ``shard-NNNNN.safetensors`` files and ``index.json`` (the run's fingerprint and
    the items), written last, so a store whose index names the run's fingerprint is whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, Any] = {}

    def load(self, fingerprint: str) -> list[FitItem] | None:
        """The items of a finished store made for ``fingerprint``; ``None`` otherwise."""
        f = self.root / INDEX
        if not f.is_file():
            return None
        try:
            index = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        if index.get("fingerprint") != fingerprint:
            return None
        items = [FitItem(**it) for it in index["items"]]
        return items if all((self.root / it.shard).is_file() for it in items) else None

    def start(self) -> None:
        """Remove an old store's files."""
        self._open.clear()
        if self.root.exists():
            for f in self.root.iterdir():
                f.unlink()
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, shard: str, tensors: dict[str, torch.Tensor]) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self.root / shard))

    def finish(self, fingerprint: str, items: list[FitItem]) -> None:
        write_json_atomic(self.root / INDEX, {"fingerprint": fingerprint, "items": [asdict(it) for it in items]})

    def get(self, item: FitItem) -> torch.Tensor:
        """The target of ``item``: float32 ``[layers, n, hidden]``."""
        handle = self._open.get(item.shard)
        if handle is None:
            handle = self._open[item.shard] = safe_open(str(self.root / item.shard), framework="pt")
        return handle.get_tensor(item.key).float()


def _answer_states(
    shared: SharedBase, adapter: str | None, encoded: Sequence[tuple[list[int], list[int]]], ns: Sequence[int], layers: list[int], pad: int
) -> list[list[torch.Tensor]]:
    """Per layer, per item: the states of the item's first ``ns[j]`` answer tokens (float32, CPU)."""
    device = next(shared.model.parameters()).device
    ids, mask = right_padded([p + r for p, r in encoded], pad, device)
    with shared.using(adapter) as model, torch.no_grad():
        h = block_states(model, ids, mask, layers)
    return [[h[layer][j, len(p) : len(p) + n].float().cpu() for j, ((p, _), n) in enumerate(zip(encoded, ns))] for layer in layers]


def build_targets(
    shared: SharedBase,
    encoder: PairEncoder,
    pairs: Sequence[PreferencePair],
    layers: list[int],
    config: RAHFConfig,
    store: TargetStore,
    fingerprint: str,
    *,
    progress: bool = False,
) -> list[FitItem]:
    """The fit's items with their targets in ``store`` (reused when the store was made for ``fingerprint``).

    SCIT: diff = tuned model on (good instruction + prompt + answer) minus on (bad instruction + prompt +
    answer); dual: the ``chosen`` LoRA minus the ``rejected`` LoRA on (prompt + answer). Both over the
    answer tokens all views share (a longer prompt may leave a long answer cut shorter).
    """
    found = store.load(fingerprint)
    if found is not None:
        return found
    store.start()
    tok = encoder.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    raw = [(i, p, a) for i, p in enumerate(pairs) for a in ([p.chosen, p.rejected] if config.answers == "both" else [p.chosen])]
    items: list[FitItem] = []
    bar = tqdm(total=len(raw), desc="RAHF targets", unit="item", disable=not progress)
    for k in range(0, len(raw), config.batch_size):
        chunk = raw[k : k + config.batch_size]
        plain = encoder.encode_split([(p.prompt, a) for _, p, a in chunk])
        if config.variant == "scit":
            good = encoder.encode_split([(with_instruction(p.prompt, config.good_instruction), a) for _, p, a in chunk])
            bad = encoder.encode_split([(with_instruction(p.prompt, config.bad_instruction), a) for _, p, a in chunk])
            views = [("scit", good), ("scit", bad)]
        else:
            views = [("chosen", plain), ("rejected", plain)]
        ns = [min(len(plain[j][1]), len(views[0][1][j][1]), len(views[1][1][j][1])) for j in range(len(chunk))]
        base = _answer_states(shared, None, plain, ns, layers, pad)
        pos = _answer_states(shared, views[0][0], views[0][1], ns, layers, pad)
        neg = _answer_states(shared, views[1][0], views[1][1], ns, layers, pad)
        shard = f"shard-{k // config.batch_size:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for j, (i, _, _) in enumerate(chunk):
            target = torch.stack([base[li][j] + config.alpha * (pos[li][j] - neg[li][j]) for li in range(len(layers))])
            key = str(len(items))
            tensors[key] = target
            p_ids, r_ids = plain[j]
            items.append(FitItem(pair=i, ids=p_ids + r_ids[: ns[j]], p=len(p_ids), n=ns[j], shard=shard, key=key))
        store.write(shard, tensors)
        bar.update(len(chunk))
    bar.close()
    store.finish(fingerprint, items)
    return items


def fit_batch(
    items: Sequence[FitItem], idx: Sequence[int], store: TargetStore, layers: Sequence[int], pad: int, device: Any = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, target [layers, B, T, hidden], answer mask [B, T])`` of the items ``idx``
    (right padding; targets are zero outside the answer tokens)."""
    rows = [items[i] for i in idx]
    ids, mask = right_padded([r.ids for r in rows], pad, device)
    answer = torch.zeros(ids.shape, dtype=torch.bool, device=device)
    target: torch.Tensor | None = None
    for j, r in enumerate(rows):
        t = store.get(r).to(device)
        if target is None:
            target = torch.zeros((len(layers), len(rows), ids.shape[1], t.shape[-1]), dtype=torch.float32, device=device)
        target[:, j, r.p : r.p + r.n] = t
        answer[j, r.p : r.p + r.n] = True
    assert target is not None
    return ids, mask, target, answer


def masked_l2(hidden: torch.Tensor, target: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum over target layers and answer tokens of ``||hidden - target||_2``, number of such terms).

    ``hidden`` and ``target`` are ``[layers, B, T, hidden]``, ``answer`` a ``[B, T]`` mask: positions
    outside it (the prompt, padding) count for nothing, whatever their targets hold."""
    keep = answer.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    dist = torch.linalg.vector_norm(hidden.float()[keep] - target.float()[keep], dim=-1)
    return dist.sum(), int(keep.sum())
