"""Text-to-text stages and their trainers: the BPO prompt rewriter and the Aligner response corrector.

``import rewriters`` is cheap: every name below is imported on first use (torch, transformers and peft
load only when a model is).

- ``PromptRewriter`` (``PromptStage``): rewrites the user's last message (trained model or any LLM).
- ``ResponseCorrector`` (``ResponseStage``): edits the LLM's answer (trained model or any LLM); buffer or
  chunked streaming.
- ``build_rewriter_data`` / ``build_corrector_data``: SFT examples from preference pairs.
- ``train_sft``, ``SFTConfig``, ``SFTExample``: the one LoRA SFT trainer behind both.
- ``TextGenerator``: a trained stage model continuing rendered templates; ``SharedBase`` (from
  ``middleware.shared_base``): one base model, LoRA adapters switched per call.
- ``Template``, ``get_template``, ``register_template``, ``list_templates``: the prompt templates.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    # stages and data
    "PromptRewriter": ".rewriter",
    "RewriteCheck": ".rewriter",
    "check_rewrite": ".rewriter",
    "clean_rewrite": ".rewriter",
    "build_rewriter_data": ".rewriter",
    "RewriterDataReport": ".rewriter",
    "parse_teacher_output": ".rewriter",
    "teacher_prompt": ".rewriter",
    "bpo_filter": ".rewriter",
    "ResponseCorrector": ".corrector",
    "CorrectionCheck": ".corrector",
    "check_correction": ".corrector",
    "degeneration": ".corrector",
    "flatten_question": ".corrector",
    "split_sentences": ".corrector",
    "split_chunks": ".corrector",
    "ChunkSplitter": ".corrector",
    "build_corrector_data": ".corrector",
    # templates
    "Template": ".templates",
    "get_template": ".templates",
    "register_template": ".templates",
    "list_templates": ".templates",
    # generation
    "SharedBase": "middleware.shared_base",
    "TextGenerator": ".generator",
    "Generation": ".generator",
    # training
    "SFTExample": ".sft",
    "SFTConfig": ".sft",
    "SFTResult": ".sft",
    "train_sft": ".sft",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .corrector import (
        ChunkSplitter,
        CorrectionCheck,
        ResponseCorrector,
        build_corrector_data,
        check_correction,
        degeneration,
        flatten_question,
        split_chunks,
        split_sentences,
    )
    from middleware.shared_base import SharedBase

    from .generator import Generation, TextGenerator
    from .rewriter import (
        PromptRewriter,
        RewriteCheck,
        RewriterDataReport,
        bpo_filter,
        build_rewriter_data,
        check_rewrite,
        clean_rewrite,
        parse_teacher_output,
        teacher_prompt,
    )
    from .sft import SFTConfig, SFTExample, SFTResult, train_sft
    from .templates import Template, get_template, list_templates, register_template


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rewriters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
