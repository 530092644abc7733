"""The one decode loop: rows of token ids continued by a causal LM over a KV cache.

Used by ``LocalBackend`` (chat requests) and ``rewriters.generator.TextGenerator`` (rendered
templates). Prompts are left-padded with an attention mask and explicit position ids; every row has
its own sampling settings (greedy, or temperature and ``top_p`` with its own seeded generator), token
budget and stop strings, and a row stops on its own at EOS. Under greedy decoding a batched answer is
therefore the same as the answer to the row alone.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from .errors import AlignwareError, InputError

REPLACEMENT_CHAR = "\ufffd"
SEED_RANGE = (-(2**63), 2**64 - 1)  # what ``torch.Generator.manual_seed`` accepts

__all__ = ["REPLACEMENT_CHAR", "SEED_RANGE", "Decoder", "Row", "check_sampling", "choose", "eos_ids"]


def check_sampling(temperature: float | None, seed: int | None, top_p: float | None = None) -> None:
    """Raise ``InputError`` naming the field when ``temperature``, ``seed`` or ``top_p`` cannot be used for sampling."""
    if temperature is not None and not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if seed is not None and not (isinstance(seed, int) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise InputError(f"seed must be an integer that fits in 64 bits (from -2**63 to 2**64 - 1), got {seed!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every token id that ends a generation: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
            break
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(int(i) for i in ids)


@dataclass
class Row:
    """The state of one prompt while it is being continued.

    Attributes:
        prompt_ids: the prompt's token ids.
        max_new: the most tokens to generate (the closing EOS included).
        temperature: ``None`` or ``0`` decodes greedily; otherwise the sampling temperature.
        top_p: nucleus filtering when sampling (``None`` or ``1``: none).
        seed: seeds the row's own random generator when sampling (``None``: the global one).
        stops: strings that end the text; the text is cut before the first one found.
        incremental: decode the text after every token (streams, stop strings); otherwise only at the end.
        ids: the generated ids, the closing EOS not included.
        generated: every token generated, the closing EOS included.
        text: the decoded text (kept current while ``incremental``, complete once finished).
        finish: ``"stop"`` (EOS or a stop string), ``"length"`` (budget spent), ``None`` while running.
    """

    prompt_ids: list[int]
    max_new: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    incremental: bool = False
    ids: list[int] = field(default_factory=list)
    generated: int = 0
    text: str = ""
    finish: Literal["stop", "length"] | None = None
    generator: Any = None

    @property
    def greedy(self) -> bool:
        return not self.temperature

    def stream_safe_text(self) -> str:
        """The longest prefix of the current text that later tokens cannot change or cut away.

        Trailing replacement characters (a multi-byte character still incomplete) and a trailing
        piece that could be the start of a stop string are held back until the row finishes.
        """
        if self.finish is not None:
            return self.text
        safe = self.text.rstrip(REPLACEMENT_CHAR)
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(safe)), hold, -1):
                if safe.endswith(s[:k]):
                    hold = k
                    break
        return safe[: len(safe) - hold] if hold else safe


def choose(row: Row, logits: Any) -> int:
    """The next token of ``row`` from its last logits: greedy, or sampled with temperature and ``top_p``."""
    import torch  # heavy dependency

    if row.greedy:
        return int(torch.argmax(logits))
    logits = logits / row.temperature
    if row.top_p is not None and row.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > row.top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=row.generator))


class Decoder:
    """Continues ``Row``s with one causal LM and its tokenizer.

    Args:
        model: the causal LM (anything called like a transformers model: an ``AdapterScopedModel`` too).
        tokenizer: its tokenizer.
        require_eos: raise ``AlignwareError`` when the model and tokenizer define no EOS token.

    Attributes:
        eos_ids: the token ids that end a row.
        pad_id: the id left padding uses (the tokenizer's pad token, else the smallest EOS id, else 0).
        context: the model's context length (``max_position_embeddings``), ``None`` when unknown.
    """

    def __init__(self, model: Any, tokenizer: Any, *, require_eos: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids(model, tokenizer)
        if require_eos and not self.eos_ids:
            raise AlignwareError("the model and tokenizer define no end-of-sequence token")
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = min(self.eos_ids) if self.eos_ids else 0
        self.pad_id = int(pad)
        self.context: int | None = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self._keeps_logits = "logits_to_keep" in params
        # transformers 5.x names the KV cache ``cache`` (``past_key_values`` is deprecated); older models use the old name
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> Any:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    def text(self, ids: list[int]) -> str:
        """``ids`` decoded, special tokens removed."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def run(self, rows: list[Row]) -> Iterator[None]:
        """Continue ``rows`` as one left-padded batch over a KV cache, updating them in place; yield after every token.

        Sampled rows with a seed get their own generator (the global random state is not touched).
        Each forward pass is one call of the model, so a model that switches an adapter on per call
        (``AdapterScopedModel``) does so for every token.
        """
        import torch  # heavy dependency

        device = self.device
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long, device=device)
            mask[i, width - len(r.prompt_ids) :] = 1
            if not r.greedy and r.seed is not None and r.generator is None:
                r.generator = torch.Generator(device=device).manual_seed(int(r.seed))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}
        past = None
        for _ in range(max(r.max_new for r in rows)):
            with torch.inference_mode():
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{self._cache_arg: past},
                    **extra,
                )
                past = out[self._cache_arg]
                logits = out.logits[:, -1, :].float()
                chosen = [self.pad_id if r.finish is not None else choose(r, logits[i]) for i, r in enumerate(rows)]
            for r, tok in zip(rows, chosen):
                if r.finish is None:
                    self.push(r, tok)
            yield
            if all(r.finish is not None for r in rows):
                return
            input_ids = torch.tensor(chosen, dtype=torch.long, device=device).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1

    def push(self, row: Row, token: int) -> None:
        """Add ``token`` to ``row``: finish it at EOS, at a stop string or when its budget is spent."""
        row.generated += 1
        if token in self.eos_ids:
            row.finish = "stop"
            row.text = self.text(row.ids)
            return
        row.ids.append(token)
        if row.incremental:
            before = len(row.text)
            row.text = self.text(row.ids)
            if row.stops:
                start = max(0, before - max(len(s) for s in row.stops))
                hits = [i for i in (row.text.find(s, start) for s in row.stops) if i >= 0]
                if hits:
                    row.text = row.text[: min(hits)]
                    row.finish = "stop"
                    return
        if row.generated >= row.max_new:
            row.finish = "length"
            if not row.incremental:
                row.text = self.text(row.ids)
