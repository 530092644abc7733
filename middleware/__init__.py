"""alignware middleware: types, stages, the pipeline, LLM backends, configuration and the CLI."""

from __future__ import annotations

from typing import Any

from .errors import AlignwareError, BackendError, CheckpointError, InputError, StageError
from .llm import LLM, FunctionLLM, make_llm
from .pipeline import Pipeline
from .stages import ModelStage, PromptStage, ResponseStage, Stage, batch_item, is_title_request, note
from .types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Message,
    PreferencePair,
    PromptRecord,
    StageTrace,
    Usage,
    load_pairs,
    load_prompts,
    save_pairs,
)

__version__ = "0.1.0"

_LAZY = {
    "LocalBackend": ".local",
    "LiteLLMBackend": ".remote",
    "load_pipeline": ".config",
    "register_stage": ".config",
}


def __getattr__(name: str) -> Any:  # heavy backends import torch / litellm only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'middleware' has no attribute {name!r}")


__all__ = [
    "AlignwareError", "BackendError", "CheckpointError", "InputError", "StageError",
    "LLM", "FunctionLLM", "make_llm", "Pipeline",
    "ModelStage", "PromptStage", "ResponseStage", "Stage", "batch_item", "is_title_request", "note",
    "ChatChunk", "ChatRequest", "ChatResponse", "Message", "PreferencePair", "PromptRecord", "StageTrace",
    "Usage", "load_pairs", "load_prompts", "save_pairs", "LocalBackend", "LiteLLMBackend", "load_pipeline",
    "register_stage",
]
