"""Checkpoints: atomic, checksummed folders (safetensors, no pickle) and the manager that numbers,
finds and prunes them.

A checkpoint is a folder ``step-000120/`` holding ``model.safetensors`` (the trainable tensors),
``optimizer.safetensors`` (AdamW moments, flattened), ``rng.safetensors`` and ``state.json``
(step, history, config, and the SHA-256 of every file). It is written into a temporary folder and
renamed into place, so an interrupted save never replaces a good checkpoint; ``state.json`` is
written last, so a folder without it (or with a wrong checksum) is reported as half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError

log = logging.getLogger("alignware")

STATE = "state.json"
FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


# -- optimizer state <-> tensors (no pickle) ------------------------------------------------
def optimizer_to_tensors(optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flatten a torch optimizer's state dict into named tensors plus JSON-able metadata."""
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def tensors_to_optimizer(optimizer: Any, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, Any]:
    import torch

    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def set_rng_state(tensors: dict[str, Any]) -> None:
    import torch

    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)


# -- checkpoints ---------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]


def read_format_manifest(file: Path, fmt: str, what: str) -> dict[str, Any]:
    """The JSON object in ``file`` whose ``format`` is ``fmt`` (the manifest of a saved ``what``, e.g. "steering
    vector"). ``CheckpointError`` names the file when it is missing, not JSON, or another format."""
    if not file.is_file():
        raise CheckpointError(f"{file}: no such file: not a {what} folder")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: corrupt JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else None
        raise CheckpointError(f"{file}: not a {what} manifest (format {found!r})")
    return data


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check a checkpoint folder is whole; return its ``state.json``. Raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    state_file = path / STATE
    if not state_file.is_file():
        raise CheckpointError(f"{path}: {STATE} is missing: the checkpoint was not finished (half-written)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{state_file}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    for name, digest in state.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing (listed in {STATE})")
        if sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch: the file is corrupt or was changed after saving")
    return state


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    model_tensors: dict[str, Any],
    optimizer: Any = None,
    state: dict[str, Any] | None = None,
    extra_files: dict[str, str] | None = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return where it lies. ``extra_files`` maps file names to
    text content. ``rng`` is the random state to store (default: the current one); a trainer passes the
    state it captured at the start of a step when it saves that step's starting point.

    When ``path`` already exists (a corrupt or stale checkpoint of the same step) it is replaced so that
    a complete checkpoint of the step is visible at every moment from the first rename on: the new folder
    is renamed in beside it (``<name>.<k>``, which sorts after ``<name>``), the old one is moved aside and
    deleted, and the new one takes the name. If that last swap fails, the new checkpoint stays under its
    side name, which is returned.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_tensors.items()}, str(tmp / FILES[0]))
        opt_meta: dict[str, Any] = {}
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            save_file(opt_tensors, str(tmp / FILES[1]))
        rng_tensors = rng if rng is not None else rng_state()
        save_file({k: v.detach().cpu().contiguous() for k, v in rng_tensors.items()}, str(tmp / FILES[2]))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        files = [f.name for f in tmp.iterdir() if f.is_file()]
        full = dict(state or {}, step=step, optimizer_meta=opt_meta, sha256={n: sha256(tmp / n) for n in sorted(files)})
        (tmp / STATE).write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
        if not path.exists():
            os.replace(tmp, path)
            return path
        k = 1
        while path.with_name(f"{path.name}.{k}").exists():
            k += 1
        side = path.with_name(f"{path.name}.{k}")
        os.replace(tmp, side)  # the new checkpoint is complete and visible from here on
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside: Path | None = None
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, aside / "old")
        os.replace(side, path)
    except OSError as e:
        log.warning("checkpoint %s kept as %s: could not replace the old folder: %s", path.name, side.name, e)
        return side
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint. Raises ``CheckpointError`` naming the problem."""
    from safetensors.torch import load_file

    path = Path(path)
    state = verify_checkpoint(path)
    try:
        model = load_file(str(path / FILES[0]))
        opt = load_file(str(path / FILES[1])) if (path / FILES[1]).is_file() else {}
        rng = load_file(str(path / FILES[2])) if (path / FILES[2]).is_file() else {}
    except Exception as e:  # safetensors raises its own error types on truncation
        raise CheckpointError(f"{path}: cannot read tensors: {e}") from None
    return Checkpoint(path=path, step=int(state["step"]), model=model, optimizer=opt, rng=rng, state=state)


def _step_of(path: Path) -> int:
    """The step number in a checkpoint folder name ``step-0000120`` (or ``step-0000120.1``); -1 if none."""
    try:
        return int(path.name[len("step-") :].split(".", 1)[0])
    except ValueError:
        return -1


def _stamp(folder: Path) -> tuple[Any, ...]:
    """The names, sizes and modification times of a folder's files: a cheap sign that none changed."""
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
    except OSError:
        return ()


class CheckpointManager:
    """Numbered checkpoints under ``root/checkpoints``; keeps the newest ``keep`` good ones."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root) / "checkpoints"
        self.keep = max(1, keep)
        # checkpoints this manager wrote or verified, with their files' sizes and times then: pruning does
        # not hash them again unless a file changed
        self._verified: dict[Path, tuple[Any, ...]] = {}

    def path_for(self, step: int) -> Path:
        return self.root / f"step-{step:07d}"

    def all(self) -> list[Path]:
        """Checkpoint folders, oldest step first (whether or not they verify)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step-")]
        return sorted(found, key=lambda p: (_step_of(p), p.name))

    def latest(self) -> Path | None:
        """The newest checkpoint that verifies; corrupt or half-written ones are skipped with a warning."""
        for p in reversed(self.all()):
            try:
                verify_checkpoint(p)
                return p
            except CheckpointError as e:
                log.warning("skipping checkpoint: %s", e)
        return None

    def save(self, step: int, **kw: Any) -> Path:
        """Write checkpoint ``step`` (replacing a folder of that step atomically), then prune.

        Pruning never deletes the checkpoint just written and counts only checkpoints that verify
        towards ``keep``: it keeps the just-written one and the newest ``keep - 1`` other good ones.
        Corrupt or half-written folders are removed only when a newer good checkpoint exists.
        """
        p = save_checkpoint(self.path_for(step), step=step, **kw)
        self._verified[p] = _stamp(p)
        self.prune(p)
        return p

    def prune(self, written: Path) -> None:
        """Prune around ``written``, a checkpoint just saved (see :meth:`save`)."""
        at = _step_of(written)
        good: list[Path] = []
        bad: list[Path] = []
        for q in self.all():
            if q == written:
                continue
            if _step_of(q) == at:  # an older folder of the step just written: replaced by it
                shutil.rmtree(q, ignore_errors=True)
                self._verified.pop(q, None)
                continue
            try:
                if self._verified.get(q) != _stamp(q):
                    verify_checkpoint(q)
                    self._verified[q] = _stamp(q)
                good.append(q)
            except CheckpointError as e:
                bad.append(q)
                log.debug("checkpoint %s does not verify: %s", q, e)
        keep = good[max(0, len(good) - (self.keep - 1)) :]
        for q in good:
            if q not in keep:
                shutil.rmtree(q, ignore_errors=True)
                self._verified.pop(q, None)
        newest_good = max([at] + [_step_of(q) for q in keep])
        for q in bad:
            if _step_of(q) < newest_good:
                log.warning("removing checkpoint %s: it does not verify and a newer good one exists", q.name)
                shutil.rmtree(q, ignore_errors=True)

