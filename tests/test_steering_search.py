"""``steering.search``: the (layer range × coefficient) grid scored by a tiny reward model, its files,
and the best cell written into the vector's manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from judge import RewardModel
from judge_pairs import cfg
from middleware.errors import InputError
from steering import search
from steering.hooks import hidden_size
from steering.layer_search import parse_layer_range
from steering.vector import MANIFEST, SteeringVector
from steering_models import backend, lively_model, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

PROMPTS = ["Hi", "What is the capital of France?", "Tell me about the quick brown fox.", "Please improve this prompt."]


def test_parse_layer_range() -> None:
    assert parse_layer_range("1-3", [0, 1, 2, 3, 4]) == ("1-3", [1, 2, 3])
    assert parse_layer_range((2, 9), [1, 2, 3]) == ("2-3", [2, 3])
    assert parse_layer_range([1, 3], [1, 2, 3]) == ("1,3", [1, 3])
    with pytest.raises(InputError, match="none of the vector's layers"):
        parse_layer_range("7-8", [1, 2])
    with pytest.raises(InputError, match="first-last"):
        parse_layer_range("a-b", [1])


def test_search_grid_files_and_manifest(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tok = lively_model(tmp_path / "m", "llama")
    judge = RewardModel.create(cfg(tiny_model_dir, train="head"))
    gen = torch.Generator().manual_seed(0)
    v = SteeringVector({i: torch.randn(hidden_size(model), generator=gen) for i in (0, 1, 2)}, layers=[0, 1, 2])
    v.save(tmp_path / "v")
    result = search(tmp_path / "v", backend(model, tok), None, judge, PROMPTS, layer_ranges=["0-1", (2, 2)], coefficients=[0.0, 1.0, 3.0], max_tokens=6)

    assert [c.label for c in result.cells] == ["0-1"] * 3 + ["2-2"] * 3 and [c.coefficient for c in result.cells] == [0.0, 1.0, 3.0] * 2
    for c in result.cells[::3]:  # coefficient 0 answers exactly as plain
        assert c.gain == 0.0 and c.win_rate == 0.5 and c.reward == pytest.approx(result.baseline)
    assert any(c.gain != 0.0 for c in result.cells)
    best = result.best
    assert best.gain == max(c.gain for c in result.cells)
    for c in result.cells:
        assert c.gain_interval is not None and c.gain_interval[0] <= c.gain <= c.gain_interval[1]
        assert 0.0 <= c.win_interval[0] <= c.win_rate <= c.win_interval[1] <= 1.0

    grid = json.loads((tmp_path / "v" / "search.json").read_text())
    assert len(grid["cells"]) == 6 and grid["best"]["coefficient"] == best.coefficient and "plain" in grid["samples"]
    assert (tmp_path / "v" / "search.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((tmp_path / "v" / MANIFEST).read_text())
    assert manifest["coefficient"] == best.coefficient and manifest["default_layers"] == best.layers
    saved = SteeringVector.load(tmp_path / "v")
    assert saved.coefficient == best.coefficient and saved.metadata["search"]["gain"] == pytest.approx(best.gain)


def test_search_checks_its_inputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tok = lively_model(tmp_path / "m", "llama")
    v = SteeringVector({1: torch.ones(hidden_size(model))})
    judge: Any = RewardModel.create(cfg(tiny_model_dir, train="head"))
    with pytest.raises(InputError, match="dev prompt"):
        search(v, model, tok, judge, [])
    with pytest.raises(InputError, match="score_batch"):
        search(v, model, tok, object(), PROMPTS)
    with pytest.raises(InputError, match="hidden size 5"):
        search(SteeringVector({1: torch.ones(5)}), model, tok, judge, PROMPTS)


def test_the_best_cell_must_keep_benign_refusals_within_the_bound() -> None:
    from steering.layer_search import Cell, SearchResult

    def cell(c: float, gain: float, refusals: float, eligible: bool) -> Cell:
        return Cell("1-2", [1, 2], c, gain, None, 0.5, (0.0, 1.0), gain, refusals, eligible)

    strong, mild = cell(4.0, 0.9, 0.6, False), cell(1.0, 0.3, 0.05, True)
    result = SearchResult([mild, strong], ["1-2"], [1.0, 4.0], 0.0, 4, baseline_refusal_rate=0.0)
    assert result.best is mild  # the refusing cell gains more but is not eligible
    none_ok = SearchResult([cell(1.0, 0.3, 0.5, False), cell(2.0, 0.9, 0.8, False)], ["1-2"], [1.0, 2.0], 0.0, 4)
    assert none_ok.best.coefficient == 1.0  # no eligible cell: the one that refuses least


def test_search_counts_refusals_on_benign_prompts(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tok = lively_model(tmp_path / "m", "llama")
    judge = RewardModel.create(cfg(tiny_model_dir, train="head"))
    v = SteeringVector({1: torch.ones(hidden_size(model))}, layers=[1])
    result = search(v, backend(model, tok), None, judge, PROMPTS[:2], benign_prompts=PROMPTS[2:], layer_ranges=["1-1"],
                    coefficients=[0.0, 2.0], max_tokens=4)
    assert result.baseline_refusal_rate == 0.0  # a random tiny model does not open with a refusal phrase
    assert all(c.refusal_rate == 0.0 and c.eligible for c in result.cells)
    assert result.to_json()["baseline_refusal_rate"] == 0.0
