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

Modules: ``stage`` (what both stages share: the two modes, constructors, generation), ``prompt_rewriter``
and ``response_corrector`` (the stages), ``rewrite_checks`` and ``correction_checks`` (their safeguards,
on the word helpers of ``text``), ``sentences`` (the corrector's question and sentence groups),
``teacher``, ``answer_cache``, ``selection``, ``pairs``, ``rewriter_data`` and ``corrector_data`` (the
training data), ``cli`` (``alignware train rewriter`` / ``corrector``), ``sft``, ``generator`` (a trained
stage model on a ``middleware.shared_base.SharedBase``), ``templates``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    # stages
    "PromptRewriter": ".prompt_rewriter",
    "ResponseCorrector": ".response_corrector",
    # safeguards and text shaping
    "RewriteCheck": ".rewrite_checks",
    "check_rewrite": ".rewrite_checks",
    "clean_rewrite": ".rewrite_checks",
    "CorrectionCheck": ".correction_checks",
    "check_correction": ".correction_checks",
    "degeneration": ".correction_checks",
    "flatten_question": ".sentences",
    "split_sentences": ".sentences",
    "split_chunks": ".sentences",
    "ChunkSplitter": ".sentences",
    # training data
    "build_rewriter_data": ".rewriter_data",
    "RewriterDataReport": ".rewriter_data",
    "parse_teacher_output": ".teacher",
    "teacher_prompt": ".teacher",
    "bpo_filter": ".teacher",
    "build_corrector_data": ".corrector_data",
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
    "SFTExample": ".sft_data",
    "SFTConfig": ".sft_data",
    "SFTResult": ".sft",
    "train_sft": ".sft",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from middleware.shared_base import SharedBase

    from .correction_checks import CorrectionCheck, check_correction, degeneration
    from .corrector_data import build_corrector_data
    from .generator import Generation, TextGenerator
    from .prompt_rewriter import PromptRewriter
    from .response_corrector import ResponseCorrector
    from .rewrite_checks import RewriteCheck, check_rewrite, clean_rewrite
    from .rewriter_data import RewriterDataReport, build_rewriter_data
    from .sentences import ChunkSplitter, flatten_question, split_chunks, split_sentences
    from .sft import SFTResult, train_sft
    from .sft_data import SFTConfig, SFTExample
    from .teacher import bpo_filter, parse_teacher_output, teacher_prompt
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
