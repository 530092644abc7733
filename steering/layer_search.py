"""``search``: the layer range and coefficient a steering vector works best at, measured with the reward model.

For every cell of a grid (layer range × coefficient) the dev prompts are answered greedily with the
vector applied, and each answer's reward is compared with that of the plain answer to the same prompt
(generated once): the cell's reward gain is the mean of these differences, with its 95% interval, and
its win rate the share of prompts where the steered answer scores higher (ties half), with its interval
(``middleware.evaluate.stats``). A small judge rewards refusals, and a vector read from harmlessness pairs
is mostly a refusal style, so with ``benign_prompts`` every cell also answers those and counts refusals
(``middleware.evaluate.refusals``): a cell that refuses benign prompts more than ``max_refusal_increase``
above the plain model is not eligible. The best eligible cell (highest mean gain) becomes the vector's
default coefficient and layers; ``search.json`` holds the grid and ``search.png`` shows it as a heat map.
No reference implementation does this: repeng's users pick layers and a coefficient by hand.

    result = search(vector, model, tokenizer, judge, dev_prompts, layer_ranges=["8-14", "8-20"], coefficients=[0.05, 0.1, 0.2])
    result.best      # Cell(layers=[8..20], coefficient=0.1, gain=0.31, ...)
    result.save("runs/vector")   # grid JSON + heat map, and the best cell as the vector's default
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from judge.encoding import PromptLike
from middleware.checkpoints import write_json_atomic
from middleware.errors import InputError
from middleware.evaluate.refusals import refusal_rate
from middleware.evaluate.stats import DEFAULT_EPSILON, mean_interval, outcome, win_rate_interval
from middleware.local import LocalBackend
from middleware.training import save_figure
from middleware.types import ChatRequest

from .stage import SteeringStage
from .vector import SteeringVector

__all__ = ["Cell", "SearchResult", "parse_layer_range", "search"]

@dataclass
class Cell:
    """One grid cell: where and how strongly the vector was applied, and what the judge made of it."""

    label: str
    layers: list[int]
    coefficient: float
    gain: float
    gain_interval: tuple[float, float] | None
    win_rate: float
    win_interval: tuple[float, float]
    reward: float
    #: share of refusals among the answers to the benign prompts (``None`` without benign prompts)
    refusal_rate: float | None = None
    #: whether the refusal rate stays within the bound (always true without benign prompts)
    eligible: bool = True


@dataclass
class SearchResult:
    """The grid (row-major: layer ranges × coefficients), the plain answers' mean reward and the best cell."""

    cells: list[Cell]
    labels: list[str]
    coefficients: list[float]
    baseline: float
    prompts: int
    samples: dict[str, list[str]] = field(default_factory=dict)
    #: refusal rate of the plain answers to the benign prompts (``None`` without benign prompts)
    baseline_refusal_rate: float | None = None

    @property
    def best(self) -> Cell:
        """The eligible cell with the highest mean gain (the smaller coefficient on a tie); when no cell is
        eligible, the one with the fewest refusals."""
        eligible = [c for c in self.cells if c.eligible]
        if not eligible:
            return min(self.cells, key=lambda c: (c.refusal_rate or 0.0, abs(c.coefficient), -c.gain))
        return max(eligible, key=lambda c: (c.gain, -abs(c.coefficient)))

    def to_json(self) -> dict[str, Any]:
        return {"baseline_reward": self.baseline, "baseline_refusal_rate": self.baseline_refusal_rate, "prompts": self.prompts,
                "layer_ranges": self.labels, "coefficients": self.coefficients, "best": asdict(self.best),
                "cells": [asdict(c) for c in self.cells]}

    def plot(self, path: "str | Path") -> Path:
        """A heat map of the reward gain (rows: layer ranges, columns: coefficients), the best cell outlined."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        grid = np.array([c.gain for c in self.cells]).reshape(len(self.labels), len(self.coefficients))
        fig, ax = plt.subplots(figsize=(1.2 * len(self.coefficients) + 2.5, 0.6 * len(self.labels) + 1.8))
        lim = float(np.abs(grid).max()) or 1.0
        im = ax.imshow(grid, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(self.coefficients)), [f"{c:g}" for c in self.coefficients])
        ax.set_yticks(range(len(self.labels)), self.labels)
        ax.set_xlabel("coefficient")
        ax.set_ylabel("layers")
        for k, c in enumerate(self.cells):
            text = f"{c.gain:+.2f}" + ("" if c.refusal_rate is None else f"\n{c.refusal_rate:.0%} ref.") + ("" if c.eligible else " ✗")
            ax.text(k % len(self.coefficients), k // len(self.coefficients), text, ha="center", va="center", fontsize=8)
        b = self.cells.index(self.best)
        ax.add_patch(plt.Rectangle((b % len(self.coefficients) - 0.5, b // len(self.coefficients) - 0.5), 1, 1, fill=False, lw=2))
        fig.colorbar(im, ax=ax, label="reward gain over plain")
        ax.set_title(f"steering search ({self.prompts} prompts)")
        return save_figure(fig, path)

    def save(self, folder: "str | Path", vector: SteeringVector | None = None) -> Path:
        """Write ``search.json`` and ``search.png`` into ``folder``; with ``vector``, make the best cell its
        default and save it there too (its manifest then names the coefficient and layers)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "search.json", {**self.to_json(), "samples": self.samples})
        self.plot(out / "search.png")
        if vector is not None:
            self.apply_to(vector).save(out)
        return out

    def apply_to(self, vector: SteeringVector) -> SteeringVector:
        """``vector`` with the best cell as its default coefficient and layers (changed in place, returned)."""
        best = self.best
        vector.coefficient, vector.layers = best.coefficient, list(best.layers)
        vector.metadata["search"] = {"gain": best.gain, "gain_interval": best.gain_interval, "win_rate": best.win_rate,
                                     "layers": best.label, "prompts": self.prompts, "refusal_rate": best.refusal_rate,
                                     "baseline_refusal_rate": self.baseline_refusal_rate, "eligible": best.eligible}
        return vector


def parse_layer_range(spec: Any, available: Sequence[int]) -> tuple[str, list[int]]:
    """``"8-20"`` or ``(8, 20)`` (inclusive) or a list of layers, as a label and the layers the vector has in it."""
    if isinstance(spec, str):
        lo, sep, hi = spec.partition("-")
        try:
            layers = list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise InputError(f"layer range {spec!r}: expected 'first-last', e.g. '8-20'") from None
    elif isinstance(spec, tuple) and len(spec) == 2:
        layers = list(range(int(spec[0]), int(spec[1]) + 1))
    else:
        layers = [int(i) for i in spec]
    kept = [i for i in layers if i in set(available)]
    if not kept:
        raise InputError(f"layer range {spec!r} holds none of the vector's layers ({min(available)}-{max(available)})")
    label = spec if isinstance(spec, str) else f"{kept[0]}-{kept[-1]}" if kept == list(range(kept[0], kept[-1] + 1)) else ",".join(map(str, kept))
    return label, kept


def search(
    vector: "SteeringVector | str | Path",
    backend_or_model: Any,
    tokenizer: Any = None,
    judge: Any = None,
    prompts: Sequence[PromptLike] = (),
    *,
    layer_ranges: Sequence[Any] | None = None,
    coefficients: Sequence[float] | None = None,
    max_tokens: int = 64,
    normalize: bool = False,
    benign_prompts: Sequence[PromptLike] = (),
    max_refusal_increase: float = 0.05,
    out: "str | Path | None" = None,
    progress: bool = False,
) -> SearchResult:
    """Measure every (layer range, coefficient) cell on ``prompts`` with ``judge`` (anything with ``score_batch``).

    ``backend_or_model``: a ``LocalBackend``, or a causal LM with its ``tokenizer``. ``layer_ranges``: default
    the vector's default layers, and its first and second halves. ``coefficients`` (per layer; the shifts of
    a range's layers add up): default 0.5, 1, 2 and 4 times the vector's own. With ``out`` (default: the vector's
    folder when ``vector`` is a path) the grid, the heat map and the vector with its new defaults are saved there.
    """
    if isinstance(vector, (str, Path)):
        out = vector if out is None else out
        vector = SteeringVector.load(vector)
    if judge is None or not hasattr(judge, "score_batch"):
        raise InputError("search needs a judge with score_batch (a judge.RewardModel)")
    if not prompts:
        raise InputError("search needs at least one dev prompt")
    if coefficients is None:
        coefficients = [round(m * vector.coefficient, 4) for m in (0.5, 1.0, 2.0, 4.0)]
    if not coefficients:
        raise InputError("search needs at least one coefficient")
    backend = backend_or_model if isinstance(backend_or_model, LocalBackend) else LocalBackend(model_obj=backend_or_model, tokenizer=tokenizer)
    vector.check_model(backend.model)
    if layer_ranges is None:
        d = vector.default_layers
        layer_ranges = [d] + ([d[: len(d) // 2], d[len(d) // 2 :]] if len(d) > 1 else [])
    ranges = [parse_layer_range(r, sorted(vector.directions)) for r in layer_ranges]
    requests = [ChatRequest.build(p, max_tokens=max_tokens, temperature=0) for p in [*prompts, *benign_prompts]]
    n = len(prompts)

    def rewards(stages: list[SteeringStage]) -> tuple[list[float], list[str], float | None]:
        texts = [r.text for r in backend.batch(requests, model_stages=stages)]
        refusals = refusal_rate(texts[n:]) if benign_prompts else None
        return [float(s) for s in judge.score_batch(list(zip(prompts, texts[:n])))], texts[:n], refusals

    bar = tqdm(total=1 + len(ranges) * len(coefficients), desc="steering search", unit="cell", disable=not progress)
    plain, plain_texts, plain_refusals = rewards([])
    bar.update(1)
    cells, samples = [], {"plain": plain_texts[:3]}
    for label, layers in ranges:
        for c in coefficients:
            stage = SteeringStage(vector, float(c), layers=layers, normalize=normalize, on_error="raise")
            steered, texts, refusals = rewards([stage])
            gains = [s - p for s, p in zip(steered, plain)]
            scores = [outcome(g, DEFAULT_EPSILON) for g in gains]
            eligible = refusals is None or plain_refusals is None or refusals <= plain_refusals + max_refusal_increase + 1e-9
            cells.append(Cell(label, layers, float(c), sum(gains) / len(gains), mean_interval(gains), sum(scores) / len(scores),
                              win_rate_interval(scores), sum(steered) / len(steered), refusals, eligible))
            samples[f"{label} x{c:g}"] = texts[:3]
            bar.update(1)
    bar.close()
    result = SearchResult(cells, [lab for lab, _ in ranges], [float(c) for c in coefficients], sum(plain) / len(plain), len(prompts),
                          samples, plain_refusals)
    if out is not None:
        result.save(out, vector)
    return result
