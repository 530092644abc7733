"""Adapter folders (``middleware.adapters``): the manifest, its checksums, and how a base model is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.adapters import ADAPTER_FILES, MANIFEST, adapter_base, base_label, read_manifest, verify_adapter
from middleware.errors import CheckpointError, InputError
from middleware.checkpoints import sha256


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "some/base"}))
    manifest = {"kind": "rewriter", "files": {name: sha256(folder / name) for name in ADAPTER_FILES}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_read_manifest(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    assert read_manifest(folder)["kind"] == "rewriter"  # type: ignore[index]
    assert read_manifest(tmp_path) is None
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"alignware.json: corrupt JSON \(.* at line 1\)"):
        read_manifest(folder)
    (folder / MANIFEST).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        read_manifest(folder)


def test_verify_adapter_names_the_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    verify_adapter(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"half-written")
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: checksum mismatch with alignware.json"):
        verify_adapter(folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors is missing: not a complete adapter folder"):
        verify_adapter(folder)


def test_base_label_and_adapter_base(tmp_path: Path) -> None:
    assert base_label(None) == base_label("local") == base_label("embedded") == "embedded"
    assert base_label(tmp_path) == str(tmp_path.resolve())
    assert base_label("org/not-a-folder") == "org/not-a-folder"
    folder = _folder(tmp_path)
    assert adapter_base(folder) == "some/base"
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="does not name its base model"):
        adapter_base(folder)
    (folder / "adapter_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="adapter_config.json: unreadable"):
        adapter_base(folder)
