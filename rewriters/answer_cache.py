"""Model answers kept on disk while training data is built: the teacher's optimized prompts and the
target model's answers for reward selection, a stage model's sampled texts and a judge's scores for
preference pairs. :class:`TextCache` stores one JSON file per model and prompt; :func:`cache_identity`
names the model in its key (:func:`generator_identity` a stage model, :func:`judge_identity` a reward
model); :func:`failure_message` is how a failed model call is reported instead of cached;
:func:`progress_bar` shows the calls going out.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from middleware.errors import BackendError
from middleware.llm import LLM

__all__ = ["TextCache", "cache_identity", "failure_message", "generator_identity", "judge_identity", "progress_bar"]


def cache_identity(given: Any, llm: LLM) -> str:
    """What names a model in the answer caches: a local folder by its full path (two folders may share a
    name), a function by its module and qualified name, a remote model by its model string and endpoint."""
    if isinstance(given, (str, os.PathLike)):
        path = Path(str(given).removeprefix("local:")).expanduser()
        if path.exists():
            return str(path.resolve())
    fn = getattr(llm, "fn", None)
    if callable(fn):
        return f"{llm.name}:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    name = str(getattr(llm, "model", None) or llm.name)
    extra = getattr(llm, "litellm_kwargs", None)
    base = extra.get("api_base") if isinstance(extra, dict) else None
    return f"{name}@{base}" if base else name


def generator_identity(generator: Any) -> str | None:
    """What names a stage model (a ``TextGenerator``) in the sample caches: an adapter by the checksums
    its manifest records (retraining into the same folder is another model), a full model folder or the
    plain base by its path; ``None`` (do not cache) for an adapter whose manifest records no checksums and
    for anything that is not a model in this process (an engine-served adapter may change behind its name)."""
    if getattr(generator, "served", False) or getattr(generator, "shared", None) is None:
        return None
    manifest = getattr(generator, "manifest", None)
    manifest = manifest if isinstance(manifest, dict) else {}
    template = getattr(getattr(generator, "template", None), "name", "?")
    base = str(manifest.get("base_model") or getattr(generator.shared, "base_model", "?"))
    if getattr(generator, "adapter", None) is not None:
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            return None
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode("utf-8")).hexdigest()
        return f"adapter:{digest}|base={base}|template={template}"
    path = getattr(generator, "path", None)
    return f"model:{path if path is not None else base}|template={template}"


def judge_identity(judge: Any) -> str | None:
    """What names a reward model in the score caches: a saved reward model folder by the checksum its
    ``reward_config.json`` records; ``None`` (do not cache) for a judge object or a folder without one."""
    if not isinstance(judge, (str, os.PathLike)):
        return None
    try:
        meta = json.loads((Path(judge).expanduser() / "reward_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digests = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(digests, dict) or not digests:
        return None
    return "judge:" + json.dumps(digests, sort_keys=True)


class TextCache:
    """Model answers on disk (the teacher's, or the target's for reward selection), one JSON file per
    ``sha256(model + NUL + prompt)``; written atomically."""

    def __init__(self, root: Path, model: str) -> None:
        self.root = root
        self.model = model

    def _path(self, prompt: str) -> Path:
        key = hashlib.sha256(f"{self.model}\0{prompt}".encode("utf-8")).hexdigest()
        return self.root / key[:2] / f"{key}.json"

    def get(self, prompt: str) -> str | None:
        p = self._path(prompt)
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(obj, dict) or obj.get("model") != self.model or obj.get("prompt") != prompt:
            return None  # another entry, or a damaged file: a miss, answered again
        if not isinstance(obj.get("response"), str):
            return None
        return obj["response"]

    def put(self, prompt: str, response: str) -> None:
        p = self._path(prompt)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"model": self.model, "prompt": prompt, "response": response}, f, ensure_ascii=False)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def failure_message(e: BaseException) -> str:
    """What a failed model call says: the provider's own message for backend errors."""
    return e.provider_message if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"


def progress_bar(total: int, desc: str, unit: str) -> Any:
    """A tqdm bar over ``total`` model calls, or ``None`` when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm  # optional dependency
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit=unit)
