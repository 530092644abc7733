"""``SteeringVector``: directions from states (PCA sign and scale on synthetic data), training from pairs
and templates on tiny models, arithmetic, and the safetensors + manifest round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from judge_pairs import toy_pairs
from middleware.errors import CheckpointError, InputError
from steering.directions import directions_from_states, openings
from steering.vector import MANIFEST, TENSORS, SteeringVector
from steering_models import lively_model, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread


def synthetic(n: int = 40, width: int = 16, seed: int = 0) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """Pairs whose chosen state is the rejected one moved along ``u`` by 1 to 3 (plus a little noise)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(width, generator=gen), dim=0)
    rejected = torch.randn(n, width, generator=gen) * 3
    chosen = rejected + (1 + 2 * torch.rand(n, 1, generator=gen)) * u + 0.05 * torch.randn(n, width, generator=gen)
    return {5: chosen}, {5: rejected}, u


def test_pca_finds_the_direction_with_the_right_sign_and_the_gap_as_its_length() -> None:
    chosen, rejected, u = synthetic()
    gap = float(((chosen[5] - rejected[5]) @ u).mean())
    for method in ("pca_diff", "mean_diff"):
        d, agree = directions_from_states(chosen, rejected, method)
        assert torch.nn.functional.cosine_similarity(d[5], u, dim=0) > 0.99
        assert d[5].norm() == pytest.approx(gap, rel=0.02)
        assert agree[5] == 1.0
        flipped, agree_flipped = directions_from_states(rejected, chosen, method)  # labels swapped: the sign follows
        assert torch.nn.functional.cosine_similarity(flipped[5], u, dim=0) < -0.99
        assert agree_flipped[5] == 1.0


def test_pca_of_identical_differences_is_their_direction() -> None:
    # every pair differs by exactly u: a centred PCA (repeng's) would see no variance along u at all
    gen = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=0)
    rejected = torch.randn(10, 8, generator=gen)
    d, _ = directions_from_states({1: rejected + 2 * u}, {1: rejected}, "pca_diff")
    torch.testing.assert_close(d[1], 2 * u, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="method"):
        directions_from_states({1: rejected}, {1: rejected}, "nope")  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return lively_model(tmp_path_factory.mktemp(request.param), request.param, layers=4)


def test_train_from_pairs(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    v = SteeringVector.train(model, tok, toy_pairs(8), method="pca_diff", max_length=64, batch_size=4)
    assert sorted(v.directions) == [1, 2, 3]  # every block but the first, which llama.cpp cannot steer
    assert v.layers == [1, 2] and v.coefficient == 0.5 and v.hidden_size == 32 and v.model_type == model.config.model_type
    assert v.metadata["data_size"] == 8 and set(v.metadata["agreement"]) == {"1", "2", "3"}
    assert all(d.norm() > 0 for d in v.directions.values())
    m = SteeringVector.train(model, tok, toy_pairs(8), method="mean_diff", layers=[0, -1], max_length=64)
    assert sorted(m.directions) == [0, 3] and m.method == "mean_diff"
    with pytest.raises(InputError, match="at least 2"):
        SteeringVector.train(model, tok, toy_pairs(1))
    with pytest.raises(InputError, match="4 decoder blocks"):
        SteeringVector.train(model, tok, toy_pairs(4), layers=[9])


def test_from_templates(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    v = SteeringVector.from_templates(model, tok, "happy", "sad", prompts=["Hi.", "Tell me more."], suffixes=["I am here", "Well"])
    assert v.metadata["data_size"] == 2 * 4 and v.metadata["source"] == "templates" and sorted(v.directions) == [1, 2, 3]
    swapped = SteeringVector.from_templates(model, tok, "sad", "happy", prompts=["Hi.", "Tell me more."], suffixes=["I am here", "Well"])
    torch.testing.assert_close(swapped.directions[2], -v.directions[2], atol=1e-4, rtol=1e-4)
    assert openings(["a b c", "a b"]) == ["a", "a b", "a b c"]
    with pytest.raises(InputError, match="persona"):
        SteeringVector.from_templates(model, tok, "happy", "sad", template="Be nice.")


def vec(at: list[int], width: int = 4, value: float = 1.0, **kw: Any) -> SteeringVector:
    return SteeringVector({i: torch.full((width,), value * (i + 1)) for i in at}, **kw)


def test_arithmetic() -> None:
    a, b = vec([1, 2], layers=[1]), vec([2, 3], value=2.0, layers=[3])
    s = a + b
    assert sorted(s.directions) == [1, 2, 3] and s.layers == [1, 3]
    torch.testing.assert_close(s.directions[2], torch.full((4,), 3.0 + 6.0))
    torch.testing.assert_close((a - b).directions[3], torch.full((4,), -8.0))
    torch.testing.assert_close((-a).directions[1], torch.full((4,), -2.0))
    torch.testing.assert_close((2 * a).directions[2], (a * 2).directions[2])
    torch.testing.assert_close((a / 2).directions[2], torch.full((4,), 1.5))
    with pytest.raises(InputError, match="hidden sizes 4 and 5"):
        a + vec([1], width=5)
    with pytest.raises(TypeError):
        a * "x"  # type: ignore[operator]
    with pytest.raises(InputError, match=r"default layers \[7\]"):
        vec([1], layers=[7])
    with pytest.raises(InputError, match="no direction for layers"):
        a.scaled_directions(layers=[5])


def test_save_load_round_trip_and_bad_folders(tmp_path: Path) -> None:
    v = vec([1, 2, 5], width=6, layers=[2, 5], coefficient=3.5, model_type="llama", base_model="embedded", method="mean_diff",
            metadata={"data_size": 12})
    v.save(tmp_path / "v")
    w = SteeringVector.load(tmp_path / "v")
    assert (w.layers, w.coefficient, w.model_type, w.base_model, w.method) == ([2, 5], 3.5, "llama", "embedded", "mean_diff")
    assert all(torch.equal(w.directions[k], v.directions[k]) for k in v.directions) and sorted(w.directions) == [1, 2, 5]
    man = json.loads((tmp_path / "v" / MANIFEST).read_text())
    assert man["hidden_size"] == 6 and man["layers"] == [1, 2, 5] and man["default_layers"] == [2, 5] and man["data_size"] == 12
    assert not list((tmp_path / "v").glob("*.tmp"))

    with pytest.raises(CheckpointError, match="no such file"):
        SteeringVector.load(tmp_path / "missing")
    t = tmp_path / "v" / TENSORS
    t.write_bytes(t.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        SteeringVector.load(tmp_path / "v")
    (tmp_path / "v" / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        SteeringVector.load(tmp_path / "v")
    (tmp_path / "v" / MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a steering vector"):
        SteeringVector.load(tmp_path / "v")
