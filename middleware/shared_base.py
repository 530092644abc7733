"""``SharedBase``: one base causal LM in memory with named LoRA adapters switched per call.

The adapters are loaded with peft multi-adapter (through transformers' adapter integration) and
switched in place on the same weights under a re-entrant lock, so a rewriter, a corrector, a steering
stage and the chat model can share one copy of the base. ``AdapterScopedModel`` is the model as seen
with one adapter setting: every call on it runs with that adapter switched on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterator

from .adapters import base_label, verify_adapter
from .errors import AlignwareError, InputError
from .local import LocalBackend
from .models import load_causal_lm, resolve_model_path

__all__ = ["AdapterScopedModel", "SharedBase"]


def _default_device() -> str:
    import torch  # heavy dependency

    return "cuda" if torch.cuda.is_available() else "cpu"


class _NoLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _without_load_report() -> Iterator[None]:
    """Keep transformers' load report out of the log while an adapter loads: with one adapter already in the
    model it lists that adapter's weights as missing from the next one's checkpoint (it expects every
    adapter's keys). ``add_adapter`` checks the keys of the adapter being loaded itself."""
    logger = logging.getLogger("transformers.integrations.peft")
    quiet = _NoLoadReport()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


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
    def owning(cls, model: Any) -> "SharedBase | None":
        """The ``SharedBase`` whose weights ``model`` is: an ``AdapterScopedModel`` of it (as in
        ``chat_backend()``), or the very model object of a cached instance; ``None`` otherwise."""
        if isinstance(model, AdapterScopedModel):
            return model._shared
        with cls._class_lock:
            return next((inst for inst in cls._instances.values() if inst.model is model), None)

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
                with warnings.catch_warnings(), _without_load_report():
                    warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                    info = self.model.load_adapter(str(folder), adapter_name=name)
                missing = sorted(k for k in getattr(info, "missing_keys", None) or () if f".{name}." in k)
                if missing:
                    raise AlignwareError(f"the checkpoint lacks {len(missing)} of the adapter's weights, such as {missing[0]}")
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

    def _scoped(self, inner: Any) -> Any:
        """``inner`` wrapped to run under ``SharedBase.using(adapter)``."""

        @functools.wraps(inner)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._shared.using(self._adapter):
                return inner(*args, **kwargs)

        return call

    @property
    def forward(self) -> Any:
        return self._scoped(self._shared.model.forward)

    @property
    def generate(self) -> Any:
        return self._scoped(self._shared.model.generate)

    def __repr__(self) -> str:
        return f"AdapterScopedModel({self._shared.base_model!r}, adapter={self._adapter!r})"
