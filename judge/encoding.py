"""Turning preference pairs and (prompt, response) items into the reward model's token rows.

A conversation is rendered through the backbone's chat template (a plain ``Role: text`` layout when it
has none); the reward is read at the last token of the response. ``PairEncoder`` tokenizes and
truncates; ``packed_batch`` lays a pair out as one row ``prompt | chosen | rejected`` with a block mask
and restarted positions, so the prompt is encoded once for both answers; ``seq_batch`` pads plain rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from middleware.types import MessagesLike, PreferencePair, to_messages

PromptLike = MessagesLike

_FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class EncodedPair:
    """Token ids of one pair after truncation: the shared prompt and both answers."""
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def packed_length(self) -> int:
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def fit(prompt: list[int], responses: Sequence[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Truncate so that ``prompt + r`` fits ``max_length`` for every ``r``: the start of the prompt goes
    first; an answer is cut at its end only when it alone leaves less than a quarter of the budget."""
    floor = min(len(prompt), max_length // 4)
    room = max_length - floor
    resp = [r[:room] for r in responses]
    keep = max_length - max(len(r) for r in resp)
    return (prompt[-keep:] if len(prompt) > keep else list(prompt)), resp


class PairEncoder:
    """Renders and tokenizes conversations for one tokenizer and length budget."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.bos = self._needs_bos()

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

    def render_response(self, prompt: PromptLike, prompt_text: str, response: str) -> str:
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
        out: list[EncodedPair] = []
        step = 256
        tok = self.tokenizer
        bar = tqdm(total=len(pairs), desc="tokenizing", unit="pair", disable=not progress or len(pairs) < 512)
        for i in range(0, len(pairs), step):
            chunk = pairs[i : i + step]
            ptexts = [self.render_prompt(p.prompt) for p in chunk]
            ctexts = [self.render_response(p.prompt, t, p.chosen) for p, t in zip(chunk, ptexts)]
            rtexts = [self.render_response(p.prompt, t, p.rejected) for p, t in zip(chunk, ptexts)]
            for pi, ci, ri, pt in zip(self._ids(ptexts), self._ids(ctexts), self._ids(rtexts), ptexts):
                if self.bos and not pt.startswith(tok.bos_token):
                    pi = [tok.bos_token_id] + pi
                p, (c, r) = fit(pi, [ci or [tok.pad_token_id], ri or [tok.pad_token_id]], self.max_length)
                out.append(EncodedPair(p, c, r))
            bar.update(len(chunk))
        bar.close()
        return out

    def encode(self, items: Sequence[tuple[PromptLike, str]]) -> list[list[int]]:
        """Token ids of (prompt, response) items, truncated to ``max_length``."""
        return [p + r for p, r in self.encode_split(items)]

    def encode_split(self, items: Sequence[tuple[PromptLike, str]]) -> list[tuple[list[int], list[int]]]:
        """``(prompt ids, response ids)`` of (prompt, response) items, truncated to ``max_length`` together."""
        tok = self.tokenizer
        ptexts = [self.render_prompt(p) for p, _ in items]
        rtexts = [self.render_response(p, t, r) for (p, r), t in zip(items, ptexts)]
        out = []
        for pi, ri, pt in zip(self._ids(ptexts), self._ids(rtexts), ptexts):
            if self.bos and not pt.startswith(tok.bos_token):
                pi = [tok.bos_token_id] + pi
            p, (r,) = fit(pi, [ri or [tok.pad_token_id]], self.max_length)
            out.append((p, r))
        return out


# -- batches ----------------------------------------------------------------------------------
def seq_batch(seqs: Sequence[list[int]], pad: int, device: Any) -> tuple[Any, ...]:
    """Right-padded rows: ``(input_ids, attention_mask, None, index of each row's last token)``."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    index = torch.tensor([[len(s) - 1] for s in seqs], dtype=torch.long)
    return ids.to(device), mask.to(device), None, index.to(device)


def packed_batch(pairs: Sequence[EncodedPair], pad: int, dtype: Any, device: Any) -> tuple[Any, ...]:
    """Rows ``prompt | chosen | rejected`` with a block mask: each answer sees the prompt and itself."""
    L = max(p.packed_length for p in pairs)
    B = len(pairs)
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
    mask = torch.zeros((B, 1, L, L), dtype=dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    return ids.to(device), mask.to(device), pos.to(device), index.to(device)


def split_batch(pairs: Sequence[EncodedPair], pad: int, device: Any) -> tuple[Any, ...]:
    """Chosen and rejected as separate rows ``[c0..cB-1, r0..rB-1]``."""
    return seq_batch([p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs], pad, device)
