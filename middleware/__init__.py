"""alignware middleware: types, stages, the pipeline, LLM backends, configuration and the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import AlignwareError, BackendError, CheckpointError, InputError, StageError
from .lazy import lazy_exports
from .llm import LLM, FunctionLLM, make_llm
from .pipeline import Pipeline
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

if TYPE_CHECKING:  # pragma: no cover
    from .config import PipelineConfig, load_pipeline, register_stage
    from .evaluate import EvalReport, evaluate_pipeline
    from .local import LocalBackend
    from .remote import LiteLLMBackend
    from .openai_backend import OpenAIBackend
    from .shared_base import SharedBase

__version__ = "0.1.0"

# loaded on first use: litellm takes seconds to import, and configs, local models and evaluation are more
# than a pipeline needs to start (together about 100 ms of `import middleware`)
__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "LiteLLMBackend": ".remote",
        "OpenAIBackend": ".openai_backend",
        "PipelineConfig": ".config",
        "load_pipeline": ".config",
        "register_stage": ".config",
        "LocalBackend": ".local",
        "SharedBase": ".shared_base",
        "evaluate_pipeline": ".evaluate",
        "EvalReport": ".evaluate",
    },
)

__all__ = [
    "AlignwareError", "BackendError", "CheckpointError", "InputError", "StageError",
    "LLM", "FunctionLLM", "make_llm", "Pipeline", "PipelineConfig", "load_pipeline", "register_stage",
    "LocalBackend", "LiteLLMBackend", "SharedBase",
    "ModelStage", "PromptStage", "ResponseStage", "Stage", "IdentityPromptStage", "IdentityResponseStage",
    "batch_item", "is_title_request", "note",
    "ChatChunk", "ChatRequest", "ChatResponse", "Message", "PreferencePair", "PromptRecord", "StageTrace",
    "Usage", "load_pairs", "load_prompts", "save_pairs",
    "evaluate_pipeline", "EvalReport",
    "OpenAIBackend",
]
