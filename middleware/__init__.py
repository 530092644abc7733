"""alignware middleware: types, stages, the pipeline, LLM backends, configuration and the CLI."""

from __future__ import annotations

from .config import PipelineConfig, load_pipeline, register_stage
from .errors import AlignwareError, BackendError, CheckpointError, InputError, StageError
from .evaluate import EvalReport, evaluate_pipeline
from .lazy import lazy_exports
from .llm import LLM, FunctionLLM, make_llm
from .local import LocalBackend
from .pipeline import Pipeline
from .shared_base import SharedBase
from .stages import (
    IdentityPromptStage,
    IdentityResponseStage,
    ModelStage,
    PromptStage,
    ResponseStage,
    Stage,
    batch_item,
    is_title_request,
    note,
)
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

# litellm takes seconds to import: LiteLLMBackend loads on first use
__getattr__, __dir__ = lazy_exports(__name__, globals(), {"LiteLLMBackend": ".remote"})

__all__ = [
    "AlignwareError", "BackendError", "CheckpointError", "InputError", "StageError",
    "LLM", "FunctionLLM", "make_llm", "Pipeline", "PipelineConfig", "load_pipeline", "register_stage",
    "LocalBackend", "LiteLLMBackend", "SharedBase",
    "ModelStage", "PromptStage", "ResponseStage", "Stage", "IdentityPromptStage", "IdentityResponseStage",
    "batch_item", "is_title_request", "note",
    "ChatChunk", "ChatRequest", "ChatResponse", "Message", "PreferencePair", "PromptRecord", "StageTrace",
    "Usage", "load_pairs", "load_prompts", "save_pairs",
    "evaluate_pipeline", "EvalReport",
]
