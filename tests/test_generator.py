"""``TextGenerator`` on a tiny random Llama: batching, streaming, defaults, seeded sampling, loading checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from local_models import TEXTS, adapters, fresh_bases  # noqa: F401  (fixtures)
from middleware.errors import CheckpointError, InputError
from middleware.shared_base import SharedBase
from rewriters.generator import TextGenerator


pytestmark = pytest.mark.usefixtures("fresh_bases")


def test_batch_equals_one_by_one_greedy(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    batched = gen.generate_ex(TEXTS, max_new_tokens=12, temperature=0.0)
    alone = [gen.generate_ex(t, max_new_tokens=12, temperature=0.0)[0] for t in TEXTS]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.n_tokens for g in batched] == [g.n_tokens for g in alone]
    assert all(g.text for g in batched)
    assert gen.generate(TEXTS, max_new_tokens=12, temperature=0.0, batch_size=3) == [g.text for g in alone]
    for g in batched:
        assert g.finish_reason in ("stop", "length")
        assert g.finish_reason == "stop" or g.n_tokens == 12


def test_stream_concat_equals_generate(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    for text in TEXTS:
        pieces = list(gen.stream(text, max_new_tokens=16, temperature=0.0))
        assert "".join(pieces) == gen.generate(text, max_new_tokens=16, temperature=0.0)[0]
    stream = gen.stream(TEXTS[0], max_new_tokens=200, temperature=0.0)
    next(stream, None)
    stream.close()  # stops the worker; the base is free again
    with gen.shared.using(None):
        pass


def test_length_finish_and_defaults(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    (g,) = gen.generate_ex(TEXTS[0], max_new_tokens=1, temperature=0.0)
    assert g.n_tokens <= 1 and (g.finish_reason == "length") == (g.n_tokens == 1)
    assert gen.manifest["generation"]["temperature"] == 0.6  # BPO's published decoding is the default
    with pytest.raises(InputError, match="top_p"):
        gen.generate("x", top_p=0.0)
    with pytest.raises(InputError, match="texts\\[0\\]"):
        gen.generate([3])  # type: ignore[list-item]


def test_seeded_sampling_is_repeatable_and_private(tiny_model_dir: Path) -> None:
    import torch

    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = gen.generate(TEXTS[:2], temperature=1.0, top_p=0.95, seed=7, max_new_tokens=10)
    b = gen.generate(TEXTS[:2], temperature=1.0, top_p=0.95, seed=7, max_new_tokens=10)
    assert a == b
    assert torch.equal(before, torch.get_rng_state())


def test_full_model_folder_and_errors(tiny_model_dir: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="template"):
        TextGenerator.from_pretrained(tiny_model_dir)
    full = TextGenerator.from_pretrained(tiny_model_dir, kind="corrector")
    assert full.adapter is None and full.template.name == "aligner-v1.0"
    assert full.generate(TEXTS[0], max_new_tokens=5, temperature=0.0)

    with pytest.raises(InputError, match="not a corrector|holds a rewriter"):
        TextGenerator.from_pretrained(adapters[0], kind="corrector")
    with pytest.raises(InputError, match="no such folder"):
        TextGenerator.from_pretrained(tmp_path / "missing")

    broken = tmp_path / "broken"
    shutil.copytree(adapters[0], broken)
    blob = bytearray((broken / "adapter_model.safetensors").read_bytes())
    blob[-4:] = b"\x00\x01\x02\x03"
    (broken / "adapter_model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        TextGenerator.from_pretrained(broken)
    with pytest.raises(InputError, match="no adapter named"):
        with SharedBase.get(tiny_model_dir).using("nope"):
            pass


def test_bad_temperature_and_seed_are_input_errors(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    for t in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="temperature must be a finite number"):
            gen.generate("x", temperature=t, max_new_tokens=2)
    with pytest.raises(InputError, match="seed"):
        gen.generate("x", temperature=1.0, seed=2**70, max_new_tokens=2)
    with pytest.raises(InputError, match="seed"):
        list(gen.stream("x", temperature=1.0, seed=-(2**63) - 1, max_new_tokens=2))
