"""Stages: ``PromptStage``, ``ModelStage``, ``ResponseStage`` and what runs them.

A stage has one job. Its failure policy defaults to fail-open: a stage that raises or times out
passes its input through unchanged and its trace entry says ``failed`` with the reason. Set
``on_error="raise"`` to raise ``StageError`` instead.

Modules: ``base`` (settings, failure policy, trace, ``note``), ``batch`` (the batch runner,
``batch_item``), ``prompt``, ``response``, ``streaming`` (the streaming runner, sync and async),
``model`` (model stages and ``attached``).
"""

from .base import OnError, SkipIf, Stage, is_title_request, note
from .batch import batch_item
from .model import ModelStage, attached
from .prompt import AppendToPrompt, IdentityPromptStage, PromptStage
from .response import IdentityResponseStage, ResponseStage

__all__ = [
    "AppendToPrompt",
    "IdentityPromptStage",
    "IdentityResponseStage",
    "ModelStage",
    "OnError",
    "PromptStage",
    "ResponseStage",
    "SkipIf",
    "Stage",
    "attached",
    "batch_item",
    "is_title_request",
    "note",
]
