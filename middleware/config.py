"""Pipelines from YAML/JSON files, validated by pydantic.

Example (``pipeline.yaml``)::

    llm: embedded                 # or a litellm model string ("openai/gpt-4o-mini") or a local model path
    llm_options: {max_tokens: 256}
    defaults: {max_tokens: 128}   # generation parameters for every request
    stages:
      - type: prompt_rewriter     # a registered name, or "package.module:Class"
        mode: prompted
        llm: openai/gpt-4o-mini
      - type: response_corrector
        path: runs/corrector
        on_error: pass

Each stage entry's ``type`` picks the class; the other keys go to ``Class.from_config(**params)`` when
the class has it, else to its constructor.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import InputError
from .llm import LLM, make_llm
from .pipeline import Pipeline, check_defaults
from .stages import Stage

STAGE_TYPES: dict[str, str] = {
    "identity_prompt": "middleware.stages.prompt:IdentityPromptStage",
    "identity_response": "middleware.stages.response:IdentityResponseStage",
    "append_to_prompt": "middleware.stages.prompt:AppendToPrompt",
    "prompt_rewriter": "rewriters.prompt_rewriter:PromptRewriter",
    "response_corrector": "rewriters.response_corrector:ResponseCorrector",
    "steering_vector": "steering.stage:SteeringStage",
    "recontrol": "steering.recontrol:ValueGuidedEditor",
    "rahf": "steering.rahf:RAHF",
}


def register_stage(name: str) -> Callable[[type], type]:
    """Class decorator: make a stage class available to configs as ``type: name``."""

    def deco(cls: type) -> type:
        STAGE_TYPES[name] = f"{cls.__module__}:{cls.__qualname__}"
        return cls

    return deco


def _import_stage_module(mod_name: str, base_dir: Path | None) -> Any:
    """Import ``mod_name`` from the installed packages and ``sys.path``; failing that, from ``base_dir``
    (the folder holding the config file), so a stage module can sit beside its config."""
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        top = mod_name.partition(".")[0]
        beside = base_dir is not None and ((base_dir / f"{top}.py").is_file() or (base_dir / top / "__init__.py").is_file())
        if e.name != top or not beside:
            raise
    assert base_dir is not None
    sys.path.insert(0, str(base_dir))
    try:
        return importlib.import_module(mod_name)
    finally:
        sys.path.remove(str(base_dir))


def resolve_stage_type(name: str, base_dir: "str | Path | None" = None) -> type:
    """The stage class a config's ``type`` names: a registered name, or ``"package.module:Class"``.

    The module is imported as Python would (installed packages, ``PYTHONPATH``, the current folder when
    running a script from it); a module that is not found there is looked for in ``base_dir``, the folder
    of the config file, so ``type: my_stages:Shout`` finds ``my_stages.py`` beside ``pipeline.yaml``.
    """
    target = STAGE_TYPES.get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(STAGE_TYPES))
        raise InputError(f"unknown stage type {name!r}; known: {known} (or 'package.module:Class')")
    mod_name, _, attr = target.partition(":")
    try:
        mod = _import_stage_module(mod_name, Path(base_dir) if base_dir is not None else None)
        cls = getattr(mod, attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"stage type {name!r} ({target}) cannot be loaded: {e}") from None
    except Exception as e:  # the module itself raised while it was imported
        raise InputError(
            f"stage type {name!r} ({target}): importing {mod_name} raised {type(e).__name__}: {e}"
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise InputError(f"stage type {name!r} ({target}) is not a Stage class")
    return cls


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineConfig(BaseModel):
    """A pipeline as data: the LLM, generation defaults and the stage chain."""

    model_config = ConfigDict(extra="forbid")

    llm: str | None = None
    llm_options: dict[str, Any] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageSpec] = Field(default_factory=list)
    source: str | None = Field(default=None, exclude=True)
    _base_dir: Path | None = PrivateAttr(default=None)  # the config file's folder: stage modules beside it

    @field_validator("defaults")
    @classmethod
    def _check_defaults(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            return check_defaults(v)
        except InputError as e:
            raise ValueError(str(e).removeprefix("defaults: ")) from None

    @classmethod
    def load(cls, src: "str | Path | dict[str, Any] | PipelineConfig") -> "PipelineConfig":
        """Read a YAML/JSON file or a dict; errors name the file and the field."""
        if isinstance(src, PipelineConfig):
            return src
        where = "config"
        if isinstance(src, dict):
            data: Any = src
        else:
            path = Path(src)
            where = str(path)
            if not path.is_file():
                raise InputError(f"{path}: no such pipeline config file")
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                data_before = path.read_bytes()[: e.start]
                line = data_before.count(b"\n") + 1
                raise InputError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start + 1} of the file)") from None
            try:
                if path.suffix == ".json":
                    data = json.loads(text)
                else:
                    import yaml

                    data = yaml.safe_load(text)
            except Exception as e:
                raise InputError(f"{path}: cannot parse: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            cfg = cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise InputError(f"{where}: {loc}: {err['msg'].removeprefix('Value error, ')}") from None
        cfg.source = where
        if not isinstance(src, dict):
            cfg._base_dir = Path(src).resolve().parent
        return cfg

    def build_llm(self, model: "str | None" = None) -> LLM:
        """The config's LLM with its ``llm_options``; ``model`` replaces only the model name
        (``alignware serve --pipeline P --model M`` keeps the file's api_base and api_key)."""
        try:
            return make_llm(model or self.llm, **self.llm_options)
        except (TypeError, ValueError) as e:  # InputError is a ValueError
            where = "llm_options" if self.llm_options else "llm"
            raise InputError(f"{self.source or 'config'}: {where}: {e}") from None

    def build_stage(self, i: int) -> Stage:
        """Build stage ``i``; a bad type or option raises ``InputError`` naming the file and ``stages.i``."""
        spec = self.stages[i]
        try:
            cls = resolve_stage_type(spec.type, self._base_dir)
            factory = getattr(cls, "from_config", None) or cls
            return factory(**spec.params)
        except (TypeError, ValueError) as e:  # InputError is a ValueError
            raise InputError(f"{self.source or 'config'}: stages.{i} ({spec.type}): {e}") from None

    def build_stages(self) -> list[Stage]:
        return [self.build_stage(i) for i in range(len(self.stages))]

    def build(self, llm: LLM | None = None) -> Pipeline:
        return Pipeline(llm or self.build_llm(), self.build_stages(), defaults=self.defaults)


def load_pipeline(src: "str | Path | dict[str, Any] | PipelineConfig", *, llm: LLM | None = None) -> Pipeline:
    """Build a ``Pipeline`` from a YAML/JSON file, a dict or a ``PipelineConfig``."""
    return PipelineConfig.load(src).build(llm)
