"""Text-to-text stages and their trainers: the BPO prompt rewriter and the Aligner response corrector.

``import rewriters`` loads no model library: torch, transformers and peft load only when a model is.

- ``PromptRewriter`` (``PromptStage``): rewrites the user's last message (trained model or any LLM).
- ``ResponseCorrector`` (``ResponseStage``): edits the LLM's answer (trained model or any LLM); buffer or
  chunked streaming. Both build on ``TextStage`` (the two modes, constructors, generation settings).
- ``RewriteCheck`` / ``check_rewrite`` and ``CorrectionCheck`` / ``check_correction``: their safeguards.
- ``build_rewriter_data`` / ``build_corrector_data``: SFT examples from preference pairs;
  ``select_by_reward``: keep the rewrites that raise a judge's reward of the target's answer.
- ``build_rewrite_pairs`` / ``build_correction_pairs``: DPO examples without a teacher (``PairReport``);
  ``build_keep_pairs``: the corrector's changes of answers that needed none, as rejected (``KeepReport``).
- ``train_sft``, ``SFTExample``, ``SFTResult`` (from ``middleware.sft``): the one LoRA SFT trainer behind both;
  ``SFTConfig``: its settings with the stages' kinds and templates. ``train_dpo``, ``DPOExample``,
  ``DPOSettings``, ``DPOResult`` (from ``middleware.dpo``): preference optimisation of the same adapters.
- ``TextGenerator``: a trained stage model continuing rendered templates; ``SharedBase`` (from
  ``middleware.shared_base``): one base model, LoRA adapters switched per call.
- ``Template``, ``get_template``, ``register_template``, ``list_templates``: the prompt templates.

Modules: ``stage`` (what both stages share), ``prompt_rewriter`` and ``response_corrector`` (the stages),
``rewrite_checks`` and ``correction_checks`` (their safeguards, on the word helpers of ``text``),
``sentences`` (the corrector's question and sentence groups), ``teacher``, ``answer_cache``,
``selection``, ``pairs``, ``rewriter_data`` and ``corrector_data`` (the training data), ``preference_pairs``,
``rewrite_pairs`` and ``correction_pairs`` (the DPO data), ``cli`` and ``dpo_cli``
(``alignware train rewriter`` / ``corrector``, ``--method sft|dpo``), ``harm_terms`` (the harmful-term safeguard),
``remote_generator`` (a stage model served by an inference engine), ``sft_config`` (the trainer's settings and flags for the two stages),
``generator`` (a trained stage model on a ``SharedBase``), ``templates``.
"""

from __future__ import annotations

from middleware.dpo import DPOResult, train_dpo
from middleware.dpo_data import DPOExample
from middleware.dpo_loss import DPOSettings
from middleware.sft import SFTResult, train_sft
from middleware.sft_data import SFTExample
from middleware.shared_base import SharedBase

from .correction_checks import CorrectionCheck, check_correction, degeneration
from .correction_pairs import build_correction_pairs
from .keep_pairs import KeepReport, build_keep_pairs
from .corrector_data import build_corrector_data
from .generator import Generation, TextGenerator
from .preference_pairs import PairReport
from .prompt_rewriter import PromptRewriter
from .response_corrector import ResponseCorrector
from .rewrite_checks import RewriteCheck, check_rewrite, clean_rewrite
from .rewrite_pairs import build_rewrite_pairs
from .rewriter_data import RewriterDataReport, build_rewriter_data
from .selection import RewardChoice, select_by_reward
from .sentences import ChunkSplitter, flatten_question, split_chunks, split_sentences
from .sft_config import SFTConfig
from .stage import TextStage
from .teacher import bpo_filter, parse_teacher_output, teacher_prompt
from .templates import Template, get_template, list_templates, register_template

__all__ = [
    "PromptRewriter", "ResponseCorrector", "TextStage",
    "RewriteCheck", "check_rewrite", "clean_rewrite", "CorrectionCheck", "check_correction", "degeneration",
    "flatten_question", "split_sentences", "split_chunks", "ChunkSplitter",
    "build_rewriter_data", "RewriterDataReport", "build_corrector_data", "select_by_reward", "RewardChoice",
    "parse_teacher_output", "teacher_prompt", "bpo_filter",
    "build_rewrite_pairs", "build_correction_pairs", "PairReport", "build_keep_pairs", "KeepReport",
    "train_sft", "SFTConfig", "SFTExample", "SFTResult", "train_dpo", "DPOExample", "DPOSettings", "DPOResult",
    "TextGenerator", "Generation", "SharedBase",
    "Template", "get_template", "register_template", "list_templates",
]
