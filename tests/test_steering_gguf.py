"""``steering.gguf``: a steering vector as a llama.cpp control vector, read back with the ``gguf`` package
the way llama.cpp's loader reads it (architecture, names ``direction.N`` with N >= 1, 1-D float32 of the
hidden size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from middleware.errors import InputError
from steering import export_gguf
from steering.gguf import read_gguf
from steering.vector import SteeringVector


def field_text(reader: GGUFReader, key: str) -> str:
    f = reader.get_field(key)
    assert f is not None, key
    return bytes(f.parts[-1]).decode()


def test_export_reads_back_as_llama_cpp_expects(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    v = SteeringVector({i: torch.randn(24, generator=gen) for i in (1, 2, 3, 7)}, model_type="llama", layers=[2, 3, 7], coefficient=2.5)
    path = export_gguf(v, tmp_path / "out" / "v.gguf")
    reader = GGUFReader(path)
    assert field_text(reader, "general.architecture") == "controlvector"
    assert field_text(reader, "controlvector.model_hint") == "llama"
    count = reader.get_field("controlvector.layer_count")
    assert count is not None and int(count.parts[-1][0]) == 3
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.2", "direction.3", "direction.7"]  # the default layers; N is the 0-based block
    for layer in (2, 3, 7):
        t = tensors[f"direction.{layer}"]
        assert t.data.dtype == np.float32 and t.data.shape == (24,) and len(t.shape) == 1 and int(t.n_elements) == 24
        np.testing.assert_allclose(t.data, (2.5 * v.directions[layer]).numpy(), rtol=1e-6)
    assert not list((tmp_path / "out").glob("*.tmp"))

    back = read_gguf(path)
    assert back.model_type == "llama" and sorted(back.directions) == [2, 3, 7]
    torch.testing.assert_close(back.directions[7], 2.5 * v.directions[7])

    export_gguf(v, tmp_path / "one.gguf", coefficient=-1.0, layers=[1])
    one = read_gguf(tmp_path / "one.gguf")
    assert sorted(one.directions) == [1]
    torch.testing.assert_close(one.directions[1], -v.directions[1])


def test_layer_zero_and_bad_files_are_refused(tmp_path: Path) -> None:
    v = SteeringVector({0: torch.ones(4), 1: torch.ones(4)})
    with pytest.raises(InputError, match="block 0"):
        export_gguf(v, tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()
    export_gguf(v, tmp_path / "v.gguf", layers=[1])
    with pytest.raises(InputError, match="no such file"):
        read_gguf(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(InputError, match="not a readable GGUF"):
        read_gguf(tmp_path / "junk.gguf")
