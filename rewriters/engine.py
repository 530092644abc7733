"""The text-to-text engine shared by the prompt rewriter and the response corrector.

``SharedBase`` keeps one base causal LM in memory with any number of named LoRA adapters on it
(peft multi-adapter, through transformers' adapter integration) and switches between them per call,
under a lock. ``TextGenerator`` maps rendered template text to a continuation with one adapter (or
none, or a full released checkpoint), batched with left padding, or streamed.

An adapter folder written by ``rewriters.sft.train_sft`` holds ``adapter_config.json``,
``adapter_model.safetensors`` and the manifest ``alignware.json``::

    {"kind": "rewriter", "base_model": "embedded", "template": "bpo",
     "template_spec": {"name": ..., "text": ..., "fields": [...], "generation": {...}},
     "generation": {"temperature": 0.6, "top_p": 0.9}, "files": {"adapter_model.safetensors": "<sha256>", ...}}
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import logging
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Sequence

from middleware.errors import AlignwareError, CheckpointError, InputError
from middleware.local import REPLACEMENT_CHAR, check_sampling, eos_ids
from middleware.models import EMBEDDED_NAME, load_causal_lm, resolve_model_path
from middleware.training import sha256

from .templates import DEFAULT_TEMPLATES, Template, get_template

if TYPE_CHECKING:  # pragma: no cover
    from middleware.local import LocalBackend

log = logging.getLogger("alignware")

MANIFEST = "alignware.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
KINDS = ("rewriter", "corrector")

__all__ = ["SharedBase", "TextGenerator", "Generation", "AdapterScopedModel", "read_manifest", "MANIFEST"]


@dataclass
class Generation:
    """One generated continuation.

    Attributes:
        text: the decoded continuation, special tokens removed, surrounding whitespace stripped.
        finish_reason: ``"stop"`` (the model ended it) or ``"length"`` (cut at ``max_new_tokens``).
        n_tokens: generated tokens, not counting the end-of-sequence token.
        prompt_tokens: tokens of the prompt.
    """

    text: str
    finish_reason: Literal["stop", "length"]
    n_tokens: int
    prompt_tokens: int = 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


class SharedBase:
    """One base causal LM in memory with any number of named LoRA adapters (peft multi-adapter).

    Get instances with ``SharedBase.get(path)``: there is one per resolved model folder and device in
    a process. Calls pick their adapter with ``using(name)`` (or ``using(None)`` for the plain base);
    the adapters are switched in place on the same weights, under a re-entrant lock, so rewriter,
    corrector and chat model can share one copy of the base.

    Attributes:
        model: the transformers model (adapter layers are injected into it; the object never changes).
        tokenizer: its tokenizer (pad token set, left padding).
        path: the resolved model folder.
        base_model: ``"embedded"`` or the folder path, as written into manifests.
    """

    _instances: ClassVar[dict[tuple[str, str], "SharedBase"]] = {}
    _class_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, model: Any, tokenizer: Any, *, path: Path | None = None, base_model: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.base_model = base_model or (str(path) if path else "custom")
        self._lock = threading.RLock()
        self._adapters: dict[str, Path] = {}
        self._layers: list[Any] = []
        self._active: str | None = None

    def __repr__(self) -> str:
        return f"SharedBase({self.base_model!r}, adapters={list(self._adapters)})"

    # -- instances ---------------------------------------------------------------------------
    @classmethod
    def get(cls, base: "str | Path | SharedBase | None" = None, *, device: Any = None) -> "SharedBase":
        """The process-wide instance for ``base`` (``None``/``"embedded"``: the embedded model), loading it once."""
        if isinstance(base, SharedBase):
            return base
        path = resolve_model_path(base).resolve()
        dev = str(device) if device is not None else _default_device()
        key = (str(path), dev)
        with cls._class_lock:
            inst = cls._instances.get(key)
            if inst is None:
                model, tok = load_causal_lm(path, device=dev)
                inst = cls(model, tok, path=path, base_model=base_label(base))
                cls._instances[key] = inst
            return inst

    @classmethod
    def clear(cls) -> None:
        """Forget every cached instance (their memory is freed once nothing else refers to them)."""
        with cls._class_lock:
            cls._instances.clear()

    # -- adapters ----------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters: name -> folder."""
        return dict(self._adapters)

    @property
    def active_adapter(self) -> str | None:
        """The adapter the weights are switched to right now (``None``: all disabled)."""
        return self._active

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load the PEFT adapter folder ``path`` under ``name``. Loading the same folder under the same name
        again is a no-op; a different folder under a taken name raises ``InputError``."""
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise InputError(f"adapter name {name!r}: use letters, digits, '_' and '-' only")
        folder = Path(path).expanduser().resolve()
        if not (folder / "adapter_config.json").is_file():
            raise InputError(f"{folder}: no adapter_config.json: not a PEFT adapter folder")
        with self._lock:
            if name in self._adapters:
                if self._adapters[name] == folder:
                    return
                raise InputError(f"adapter name {name!r} is already used for {self._adapters[name]}")
            verify_adapter(folder)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                    self.model.load_adapter(str(folder), adapter_name=name)
            except Exception as e:
                cleanup = self._discard_adapter(name)
                raise AlignwareError(
                    f"cannot load adapter {folder} onto base model {self.base_model}: {type(e).__name__}: {e}"
                    + (f" (and removing the half-loaded adapter failed: {cleanup})" if cleanup else "")
                ) from e
            self._adapters[name] = folder
            self._refresh_layers()
            self._reapply()

    def _reapply(self) -> None:
        """Switch every adapter layer to the current setting again (after peft changed which is active)."""
        current, self._active = self._active, "\0"
        self._apply(current)

    def _discard_adapter(self, name: str) -> str | None:
        """Remove whatever a failed ``load_adapter`` put into the model under ``name`` and switch the layers
        back to the current setting, so the model computes exactly what it did before the attempt.

        Returns ``None``, or a description of what could not be cleaned up."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        problem: str | None = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            for module in list(self.model.modules()):
                if isinstance(module, BaseTunerLayer):
                    try:
                        module.delete_adapter(name)  # a no-op on layers the load never reached
                    except Exception as e:  # pragma: no cover - peft internals
                        problem = problem or f"{type(e).__name__}: {e}"
        configs = getattr(self.model, "peft_config", None)
        if isinstance(configs, dict):
            configs.pop(name, None)
            if not configs and getattr(self.model, "_hf_peft_config_loaded", False):
                del self.model.peft_config
                self.model._hf_peft_config_loaded = False
        self._refresh_layers()
        self._reapply()
        return problem

    def _refresh_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]

    def _apply(self, adapter: str | None) -> None:
        if adapter == self._active:
            return
        for layer in self._layers:
            if adapter is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(adapter, inference_mode=True)
        self._active = adapter

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[Any]:
        """Run the block with ``adapter`` active (``None``: every adapter disabled, the plain base).

        Holds the base's re-entrant lock for the whole block, so calls from other threads wait;
        the previous setting is restored on exit. Yields the model.
        """
        if adapter is not None and adapter not in self._adapters:
            raise InputError(f"no adapter named {adapter!r} on {self.base_model}; loaded: {list(self._adapters) or 'none'}")
        with self._lock:
            previous = self._active
            self._apply(adapter)
            try:
                yield self.model
            finally:
                self._apply(previous)

    def scoped(self, adapter: str | None = None) -> "AdapterScopedModel":
        """The model as seen with ``adapter`` (``None``: no adapter): every call on it runs under ``using``."""
        return AdapterScopedModel(self, adapter)

    def chat_backend(self, **kw: Any) -> "LocalBackend":
        """A ``LocalBackend`` chatting with this base model, adapters disabled for its calls.

        Keyword arguments go to ``LocalBackend`` (``max_tokens``, ``system_prompt``, ``batch_size``).
        The backend shares this base's lock, so a chat generation (with any model stages attached)
        never interleaves with a rewriter or corrector call on the same weights.
        """
        from middleware.local import LocalBackend

        return LocalBackend(model_obj=self.scoped(None), tokenizer=self.tokenizer, lock=self._lock, **kw)


class AdapterScopedModel:
    """A view of a ``SharedBase`` model with one adapter setting.

    Attribute access goes to the shared model; calling it, ``forward`` and ``generate`` run under
    ``SharedBase.using(adapter)``. Hooks registered on its submodules are registered on the shared model.
    """

    def __init__(self, shared: SharedBase, adapter: str | None = None) -> None:
        object.__setattr__(self, "_shared", shared)
        object.__setattr__(self, "_adapter", adapter)

    @property
    def unwrap(self) -> Any:
        """The shared model itself."""
        return self._shared.model

    def __getattr__(self, name: str) -> Any:
        if name in ("_shared", "_adapter"):
            raise AttributeError(name)
        return getattr(self._shared.model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._shared.model, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._shared.using(self._adapter) as model:
            return model(*args, **kwargs)

    @property
    def forward(self) -> Any:
        inner = self._shared.model.forward

        @functools.wraps(inner)
        def forward(*args: Any, **kwargs: Any) -> Any:
            with self._shared.using(self._adapter):
                return inner(*args, **kwargs)

        return forward

    @property
    def generate(self) -> Any:
        inner = self._shared.model.generate

        @functools.wraps(inner)
        def generate(*args: Any, **kwargs: Any) -> Any:
            with self._shared.using(self._adapter):
                return inner(*args, **kwargs)

        return generate

    def __repr__(self) -> str:
        return f"AdapterScopedModel({self._shared.base_model!r}, adapter={self._adapter!r})"


def _adapter_name(kind: str, folder: Path) -> str:
    digest = hashlib.sha1(str(folder).encode("utf-8")).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{kind}-{folder.name}")[:60] + f"-{digest}"


def _template_from_manifest(manifest: dict[str, Any], where: Path) -> Template:
    name = manifest.get("template")
    spec = manifest.get("template_spec")
    if spec:
        own = Template.from_dict(spec)
        try:
            known = get_template(own.name)
        except InputError:
            return own
        if (known.text, known.fields) != (own.text, own.fields):
            log.warning("%s: template %r differs from the registered one; using the checkpoint's own", where, own.name)
            return own
        return known
    if not name:
        raise CheckpointError(f"{where / MANIFEST}: no template recorded")
    return get_template(name)


class TextGenerator:
    """A causal LM (+ optional adapter) mapping rendered template text to a continuation.

    The rendered template *is* the prompt: no chat template is applied. Build one with
    ``from_pretrained`` (a trained adapter folder, or a released full checkpoint) or ``untrained``.

    Attributes:
        template: the prompt template the checkpoint was trained with.
        manifest: kind, base model, template and generation defaults.
        shared: the ``SharedBase`` the model lives on.
        adapter: the adapter name on ``shared`` (``None``: the plain model).
    """

    def __init__(
        self,
        shared: SharedBase,
        *,
        template: "Template | str",
        manifest: dict[str, Any] | None = None,
        adapter: str | None = None,
        path: Path | None = None,
    ) -> None:
        self.shared = shared
        self.template = get_template(template)
        self.adapter = adapter
        self.path = path
        m = dict(manifest or {})
        m.setdefault("kind", None)
        m.setdefault("base_model", shared.base_model)
        m.setdefault("template", self.template.name)
        m.setdefault("generation", dict(self.template.generation))
        self.manifest = m
        self._eos_ids = _eos_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(self._eos_ids))
        self._context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        try:
            self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            self._keeps_logits = False

    def __repr__(self) -> str:
        return (
            f"TextGenerator(kind={self.kind!r}, template={self.template.name!r}, base={self.shared.base_model!r}, "
            f"adapter={self.adapter!r})"
        )

    @property
    def model(self) -> Any:
        """The (shared) model object."""
        return self.shared.model

    @property
    def tokenizer(self) -> Any:
        return self.shared.tokenizer

    @property
    def kind(self) -> str | None:
        return self.manifest.get("kind")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: "str | os.PathLike[str]",
        *,
        base: "SharedBase | str | Path | None" = None,
        template: "str | Template | None" = None,
        kind: str | None = None,
        device: Any = None,
        adapter_name: str | None = None,
    ) -> "TextGenerator":
        """Load a trained stage model.

        ``path`` is either an adapter folder written by ``train_sft`` (it has ``alignware.json``), loaded
        as a named adapter onto the shared base the manifest names (or ``base``), or a full model
        folder (a released BPO / Aligner checkpoint), loaded as its own model. A PEFT adapter folder
        without manifest works too, on ``base`` or the base its ``adapter_config.json`` names.

        ``template`` overrides the checkpoint's template; a folder without manifest needs it, or a
        ``kind`` (``"rewriter"`` -> ``"bpo"``, ``"corrector"`` -> ``"aligner-v1.0"``).
        """
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (expected an adapter folder or a model folder)")
        folder = folder.resolve()
        manifest = read_manifest(folder)
        if kind is not None and kind not in KINDS:
            raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")

        if manifest is not None or (folder / "adapter_config.json").is_file():
            manifest = dict(manifest or {})
            if manifest.get("kind") and kind and manifest["kind"] != kind:
                raise InputError(f"{folder} holds a {manifest['kind']} model, not a {kind}")
            kind = manifest.get("kind") or kind
            if base is None:
                base = manifest.get("base_model") or _adapter_base(folder)
            if isinstance(base, str) and base == "embedded":
                base = None
            shared = SharedBase.get(base, device=device)
            named = manifest.get("base_model")
            if named and named != shared.base_model:
                log.warning("%s was trained on %s; loading it onto %s", folder, named, shared.base_model)
            if template is not None:
                tmpl = get_template(template)
            elif manifest.get("template") or manifest.get("template_spec"):
                tmpl = _template_from_manifest(manifest, folder)
            elif kind:
                tmpl = get_template(DEFAULT_TEMPLATES[kind])
            else:
                raise InputError(f"{folder} has no {MANIFEST}: pass template=... or kind='rewriter'|'corrector'")
            verify_adapter(folder, manifest)
            name = adapter_name or _adapter_name(kind or "adapter", folder)
            shared.add_adapter(name, folder)
            manifest.update(kind=kind, base_model=shared.base_model, template=tmpl.name)
            manifest.setdefault("generation", dict(tmpl.generation))
            return cls(shared, template=tmpl, manifest=manifest, adapter=name, path=folder)

        if not (folder / "config.json").is_file():
            raise InputError(f"{folder}: neither an adapter folder ({MANIFEST} / adapter_config.json) nor a model folder (config.json)")
        if base is not None:
            raise InputError(f"{folder} is a full model: it is loaded as its own model, so base= does not apply")
        if template is None:
            if kind is None:
                raise InputError(
                    f"{folder} is a full model without {MANIFEST}: pass template= (e.g. 'bpo', 'aligner-v1.0') or kind="
                )
            template = DEFAULT_TEMPLATES[kind]
        tmpl = get_template(template)
        shared = SharedBase.get(folder, device=device)
        manifest = {"kind": kind, "base_model": shared.base_model, "template": tmpl.name, "generation": dict(tmpl.generation)}
        return cls(shared, template=tmpl, manifest=manifest, adapter=None, path=folder)

    @classmethod
    def untrained(
        cls, base: "SharedBase | str | Path | None" = None, *, template: "str | Template", kind: str, device: Any = None
    ) -> "TextGenerator":
        """The plain base model (no adapter) with ``template``: a baseline, or a starting point."""
        if kind not in KINDS:
            raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        shared = SharedBase.get(base, device=device)
        tmpl = get_template(template)
        manifest = {"kind": kind, "base_model": shared.base_model, "template": tmpl.name, "generation": dict(tmpl.generation)}
        return cls(shared, template=tmpl, manifest=manifest, adapter=None)

    # -- generation ------------------------------------------------------------------------------
    def render(self, **values: str) -> str:
        """``self.template.render(**values)``."""
        return self.template.render(**values)

    def _params(self, max_new_tokens: int | None, temperature: float | None, top_p: float | None) -> tuple[int, float, float]:
        g = self.manifest.get("generation") or {}
        mnt = int(max_new_tokens if max_new_tokens is not None else g.get("max_new_tokens", 256))
        temp = float(temperature if temperature is not None else g.get("temperature", 0.0) or 0.0)
        tp = float(top_p if top_p is not None else g.get("top_p", 1.0) or 1.0)
        if mnt < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {mnt}")
        check_sampling(temp, None)
        if not 0 < tp <= 1:
            raise InputError(f"top_p must be in (0, 1], got {tp}")
        return mnt, temp, tp

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}] must be a string, got {type(t).__name__}")
            ids = list(self.tokenizer(t)["input_ids"])
            eos = self.tokenizer.eos_token_id
            if len(ids) > 1 and ids[-1] == eos and not t.endswith(str(self.tokenizer.eos_token)):
                ids = ids[:-1]  # as in training: the prompt must stay open
            if not ids:
                raise InputError(f"texts[{i}] is empty: nothing to continue from")
            if self._context and len(ids) >= self._context:
                raise InputError(f"texts[{i}] is {len(ids)} tokens long; the model's context is {self._context} tokens")
            out.append(ids)
        return out

    def _batch_tensors(self, rows: list[list[int]]) -> tuple[Any, Any]:
        import torch

        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        return ids.to(device), mask.to(device)

    def _rows(self, encoded: list[list[int]], max_new: int, temperature: float, top_p: float, seed: int | None) -> list[_Row]:
        import torch

        check_sampling(None, seed)
        rows = []
        for ids in encoded:
            room = min(max_new, self._context - len(ids)) if self._context else max_new
            gen = None
            if temperature > 0 and seed is not None:
                gen = torch.Generator(device=next(self.model.parameters()).device).manual_seed(int(seed))
            rows.append(_Row(prompt=ids, room=room, temperature=temperature, top_p=top_p, generator=gen))
        return rows

    def _decode(self, rows: list[_Row]) -> Iterator[None]:
        """Generate ``rows`` as one left-padded batch over a KV cache, updating them in place; yield after
        every token. The adapter is switched on for each forward pass under the base's lock, so
        generations on other threads (other adapters) interleave with this one safely."""
        import torch

        input_ids, mask = self._batch_tensors([r.prompt for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}
        past = None
        for _ in range(max(r.room for r in rows)):
            with self.shared.using(self.adapter), torch.inference_mode():
                out = self.model(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                    use_cache=True, **extra,
                )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            chosen = []
            for i, r in enumerate(rows):
                if r.finish is not None:
                    chosen.append(self._pad_id)
                    continue
                tok = _choose(r, logits[i])
                chosen.append(tok)
                if tok in self._eos_ids:
                    r.finish = "stop"
                else:
                    r.out.append(tok)
                    if len(r.out) >= r.room:
                        r.finish = "length"
            yield
            if all(r.finish is not None for r in rows):
                return
            input_ids = torch.tensor(chosen, dtype=torch.long, device=input_ids.device).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_ex(
        self,
        texts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Continue each text; return text, finish reason and token counts for each.

        ``None`` parameters take the checkpoint's defaults (manifest ``generation``), else greedy decoding
        and 256 new tokens. Texts run ``batch_size`` at a time, sorted by length and left-padded; every
        row stops on its own at EOS, and under greedy decoding a batched result equals the one-by-one
        result. With ``seed``, each text is sampled from its own generator seeded with it, so sampled
        results are repeatable and do not depend on batching (the global random state is not touched).
        """
        items: list[str] = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            return []
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        max_new, temp, tp = self._params(max_new_tokens, temperature, top_p)
        encoded = self._encode(items)
        rows = self._rows(encoded, max_new, temp, tp, seed)
        order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
        try:
            for start in range(0, len(order), batch_size):
                for _ in self._decode([rows[i] for i in order[start : start + batch_size]]):
                    pass
        except AlignwareError:
            raise
        except Exception as e:
            raise AlignwareError(f"generation with {self!r} failed: {type(e).__name__}: {e}") from e
        return [
            Generation(text=self._text(r.out).strip(), finish_reason=r.finish or "length", n_tokens=len(r.out),
                       prompt_tokens=len(r.prompt))
            for r in rows
        ]

    def generate(
        self,
        texts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """Continue each text (a string counts as a list of one); return the continuations.

        See ``generate_ex`` for the parameters and for whether an output was cut at the length limit.
        """
        return [
            g.text
            for g in self.generate_ex(
                texts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size
            )
        ]

    def stream(
        self,
        text: str,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the continuation of ``text`` in decoded pieces as tokens come.

        The pieces joined equal ``generate(text, ...)[0]`` under the same settings (surrounding whitespace
        and incomplete characters are held back). Generation runs in the consuming thread, one token per
        step; closing the iterator early stops it.
        """
        max_new, temp, tp = self._params(max_new_tokens, temperature, top_p)
        (row,) = self._rows(self._encode([text]), max_new, temp, tp, seed)
        sent = ""
        for _ in self._decode([row]):
            if row.finish is not None:
                break
            safe = self._text(row.out).lstrip().rstrip(REPLACEMENT_CHAR).rstrip()
            if len(safe) > len(sent) and safe.startswith(sent):
                yield safe[len(sent) :]
                sent = safe
        final = self._text(row.out).strip()
        if len(final) > len(sent) and final.startswith(sent):
            yield final[len(sent) :]


@dataclass
class _Row:
    """One text while it is being generated."""

    prompt: list[int]
    room: int
    temperature: float
    top_p: float
    generator: Any = None
    out: list[int] = field(default_factory=list)
    finish: Literal["stop", "length"] | None = None


def _choose(row: _Row, logits: Any) -> int:
    """Greedy when ``temperature`` is 0; else sample with temperature and nucleus (``top_p``) filtering."""
    import torch

    if not row.temperature:
        return int(torch.argmax(logits))
    logits = logits / row.temperature
    if row.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > row.top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=row.generator))


def _adapter_base(folder: Path) -> str | None:
    """The base model a bare PEFT adapter folder names (``base_model_name_or_path``)."""
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'adapter_config.json'}: unreadable: {e}") from None
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise InputError(f"{folder}: the adapter does not name its base model; pass base=")
    return base


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids = eos_ids(model, tokenizer)
    if not ids:
        raise AlignwareError("the model and tokenizer define no end-of-sequence token")
    return ids
