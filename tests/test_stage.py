"""The base both text-to-text stages share: backend resolution, decoding settings, seeds and modes."""

from __future__ import annotations

import pytest

from middleware.errors import InputError
from middleware.llm import FunctionLLM
from middleware.types import ChatRequest
from rewriters.prompt_rewriter import PromptRewriter
from rewriters.response_corrector import ResponseCorrector
from rewriters.stage import TextStage, generation_defaults, resolve_llm
from rewriters.templates import get_template
from text_stage_fakes import BPORecordingGenerator, FixedLLM, RecordingGenerator


def test_both_stages_are_text_stages_with_their_own_modes() -> None:
    rewriter = PromptRewriter(BPORecordingGenerator(["x"]))
    corrector = ResponseCorrector.prompted(FixedLLM("x"))
    assert isinstance(rewriter, TextStage) and isinstance(corrector, TextStage)
    assert (rewriter.mode, corrector.mode) == ("model", "prompted")
    assert rewriter.template.name == "bpo" and corrector.template.name == "aligner-instruction"
    with pytest.raises(InputError, match="ResponseCorrector needs exactly one of generator"):
        ResponseCorrector(RecordingGenerator(["x"]), llm=FixedLLM("x"))


def test_the_stage_seed_wins_over_the_requests() -> None:
    request = ChatRequest.build("hi")
    seeded = request.model_copy(update={"seed": 7})
    assert PromptRewriter.prompted(FixedLLM("x"))._seed(seeded) == 7
    assert PromptRewriter.prompted(FixedLLM("x"), seed=3)._seed(seeded) == 3
    assert ResponseCorrector.prompted(FixedLLM("x"))._seed(None) is None


def test_generation_defaults_take_the_given_values_and_check_them() -> None:
    bpo = get_template("bpo")
    assert generation_defaults(bpo) == {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 512}
    assert generation_defaults(bpo, temperature=0.0, top_p=None)["temperature"] == 0.0
    with pytest.raises(InputError, match=r"top_p must be in \(0, 1\], got 1.5"):
        generation_defaults(bpo, top_p=1.5)
    with pytest.raises(InputError, match="max_new_tokens must be at least 1, got 0"):
        generation_defaults(bpo, max_new_tokens=0)


def test_resolve_llm_keeps_backends_and_refuses_other_objects() -> None:
    llm = FunctionLLM(lambda m: "x")
    assert resolve_llm(llm) is llm
    with pytest.raises(InputError, match="llm must be an LLM backend or a model string, got int"):
        resolve_llm(42)  # type: ignore[arg-type]
