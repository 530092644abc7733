"""Adapter folders: the ``alignware.json`` manifest, its checksums, and how a base model is named in it.

An adapter folder written by ``middleware.sft.train_sft`` holds ``adapter_config.json``,
``adapter_model.safetensors`` and the manifest ``alignware.json``::

    {"kind": "rewriter", "base_model": "embedded", "template": "bpo",
     "template_spec": {"name": ..., "text": ..., "fields": [...], "generation": {...}},
     "generation": {"temperature": 0.6, "top_p": 0.9}, "files": {"adapter_model.safetensors": "<sha256>", ...}}

Any stage family that puts a LoRA adapter on a ``SharedBase`` reads and checks its folder with these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError
from .models import EMBEDDED_NAME
from .checkpoints import sha256

MANIFEST = "alignware.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")

__all__ = ["ADAPTER_FILES", "MANIFEST", "adapter_base", "base_label", "read_manifest", "verify_adapter"]


def base_label(base: "str | Path | None") -> str:
    """How a base model is named in manifests: ``"embedded"`` or an absolute path."""
    if base is None or str(base) in ("embedded", "local", EMBEDDED_NAME):
        return "embedded"
    p = Path(base).expanduser()
    return str(p.resolve()) if p.exists() else str(base)


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The ``alignware.json`` manifest of an adapter folder, or ``None`` when there is none."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    return data


def verify_adapter(path: str | Path, manifest: dict[str, Any] | None = None) -> None:
    """Check an adapter folder is whole: the files exist and match the manifest's checksums.

    Raises ``CheckpointError`` naming the file.
    """
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    for name in ADAPTER_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing: not a complete adapter folder")
    for name, digest in ((manifest or {}).get("files") or {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing (listed in {MANIFEST})")
        if sha256(f) != digest:
            raise CheckpointError(
                f"{f}: checksum mismatch with {MANIFEST}: the adapter is corrupt or half-written; "
                f"re-run training into {path} to resume from its last good checkpoint"
            )


def adapter_base(folder: Path) -> str | None:
    """The base model a bare PEFT adapter folder names (``base_model_name_or_path``)."""
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'adapter_config.json'}: unreadable: {e}") from None
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise InputError(f"{folder}: the adapter does not name its base model; pass base=")
    return base
