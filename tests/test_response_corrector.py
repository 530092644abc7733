"""The Aligner response corrector stage: its template and flattened question, safeguards through a real
Pipeline, buffer/chunked streaming equal to the non-streamed correction, and construction."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import sys
from pathlib import Path
from typing import Any

import pytest

from middleware.errors import InputError, StageError
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from middleware.types import ChatRequest, ChatResponse, PreferencePair
from rewriters.correction_checks import CorrectionCheck
from rewriters.corrector_data import build_corrector_data
from rewriters.response_corrector import ResponseCorrector
from rewriters.sentences import split_chunks, split_sentences
from rewriters.templates import get_template
from text_stage_fakes import ALIGNER_V1, ANSWER, LONG_ANSWER, QUESTION, FixedLLM, Gen, RecordingGenerator, streamed

ROOT = Path(__file__).resolve().parents[1]


# -- template and question ----------------------------------------------------------------------------
def test_aligner_template_round_trip_is_byte_for_byte() -> None:
    expected = ALIGNER_V1.format(QUESTION, ANSWER)
    assert get_template("aligner-v1.0").render(question=QUESTION, answer=ANSWER) == expected
    assert expected.endswith("ASSISTANT:")  # no space after ASSISTANT:
    gen = RecordingGenerator(["The capital of France is Paris."])
    Pipeline(FixedLLM(ANSWER), [ResponseCorrector(gen)]).chat(QUESTION)
    assert gen.seen == [expected]
    examples, warmup = build_corrector_data([PreferencePair(prompt=QUESTION, chosen="Paris.", rejected=ANSWER)])
    assert examples[0].source == expected and examples[0].target == "Paris."
    assert warmup[0].source == ALIGNER_V1.format(QUESTION, "Paris.")


def test_later_aligner_format_is_available_per_checkpoint() -> None:
    gen = RecordingGenerator(["Paris."], template="aligner-correction")
    ResponseCorrector(gen).correct(QUESTION, "paris")
    assert gen.seen == [f"BEGINNING OF CONVERSATION: USER: ##Question: {QUESTION}\n##Answer: paris\n##Correction:  ASSISTANT:"]


def test_multi_turn_question_reaches_the_corrector_flattened() -> None:
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUESTION}]
    gen = RecordingGenerator(["Paris is the capital of France."])
    resp = Pipeline(FixedLLM(ANSWER), [ResponseCorrector(gen)]).chat(conv)
    assert gen.seen == [ALIGNER_V1.format(f"User: Hi\nAssistant: Hello!\nUser: {QUESTION}", ANSWER)]
    assert resp.text == "Paris is the capital of France." and resp.trace[-1].verdict == "modified"


# -- safeguards ---------------------------------------------------------------------------------------
DEGENERATE = {
    "empty": ("", "stop", "empty correction"),
    "truncated": ("The capital of France is Paris. It is known for the Eiffel", "length", "cut off"),
    "repeated lines": ("Paris.\nThe capital is Paris.\nThe capital is Paris.\nThe capital is Paris.", "stop", "the line"),
    "loop": ("The capital of France is Paris" + "!!!!" * 10, "stop", "in a row"),
    "repeated phrase": (" ".join(f"the capital of france is paris {w}" for w in ["and", "so", "yes", "ok", "then"]), "stop", "phrase"),
    "low diversity": (" ".join(f"paris is nice {w} indeed" for w in ["a", "b", "a", "b"] * 6), "stop", "degenerate"),
    "template leak": ("Paris. ASSISTANT: anything else? USER: no", "stop", "template marker"),
    "bare turn marker": ("The capital of France is Paris, a city of museums ASSISTANT.", "stop", "'ASSISTANT'"),
    "section header": ("Paris.\n## Correction: Paris is the capital.", "stop", "Correction"),
    "dropped tail": ("The capital of France is Paris.", "stop", "drops the end"),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_each_degenerate_correction_keeps_the_original_answer(case: str) -> None:
    output, finish, reason = DEGENERATE[case]
    corrector = ResponseCorrector(RecordingGenerator([output], finish_reason=finish))
    resp = Pipeline(FixedLLM(ANSWER), [corrector]).chat(QUESTION)
    assert resp.text == ANSWER
    trace = resp.trace[-1]
    assert trace.stage == "ResponseCorrector" and trace.verdict == "passed"
    assert "kept the original answer" in trace.reason and reason in trace.reason


def test_prompted_mode_safeguards_too() -> None:
    resp = Pipeline(FixedLLM(ANSWER), [ResponseCorrector.prompted(FixedLLM("", "stop"))]).chat(QUESTION)
    assert resp.text == ANSWER and "empty correction" in resp.trace[-1].reason
    cut = FixedLLM("The capital of France is Paris and", "length")
    resp = Pipeline(FixedLLM(ANSWER), [ResponseCorrector.prompted(cut)]).chat(QUESTION)
    assert resp.text == ANSWER and "cut off" in resp.trace[-1].reason


def test_empty_answer_is_left_alone() -> None:
    gen = RecordingGenerator(["something"])
    resp = Pipeline(FixedLLM("   "), [ResponseCorrector(gen)]).chat(QUESTION)
    assert resp.text == "   " and gen.seen == [] and "nothing to correct" in resp.trace[-1].reason


# -- streaming ----------------------------------------------------------------------------------------------
def test_chunked_prompted_mode_corrects_piece_by_piece_and_keeps_spacing() -> None:
    def upper_piece(msgs: list[dict]) -> str:
        return msgs[-1]["content"].rsplit("Next piece of the original answer:\n", 1)[1].upper()

    corrector = ResponseCorrector.prompted(FunctionLLM(upper_piece), streaming="chunked", chunk_min_chars=30)
    pipe = Pipeline(FixedLLM(LONG_ANSWER, piece=4), [corrector])
    text, pieces, trace = streamed(pipe, QUESTION)
    expected = "".join(c.upper() for c in split_chunks(LONG_ANSWER, 30))
    assert text == expected == pipe.chat(QUESTION).text
    assert len(pieces) == len(split_chunks(LONG_ANSWER, 30)) > 1
    assert trace[-1].verdict == "modified"


def test_chunked_context_window_puts_corrected_text_in_the_models_mouth() -> None:
    gen = RecordingGenerator(["THE CAPITAL OF FRANCE IS PARIS.", "IT IS KNOWN FOR THE EIFFEL TOWER AND ITS MUSEUMS!", "ANYTHING ELSE?"])
    corrector = ResponseCorrector(gen, streaming="chunked", chunk_min_chars=1, context_chunks=1, chunk_max_new_tokens=64)
    text, _ = corrector.correct(QUESTION, ANSWER)
    assert text == "THE CAPITAL OF FRANCE IS PARIS. IT IS KNOWN FOR THE EIFFEL TOWER AND ITS MUSEUMS! ANYTHING ELSE?"
    s1, s2, s3 = split_sentences(ANSWER)
    assert gen.seen[0] == ALIGNER_V1.format(QUESTION, s1.strip())
    assert gen.seen[1] == ALIGNER_V1.format(QUESTION, (s1 + s2).strip()) + "THE CAPITAL OF FRANCE IS PARIS."
    assert gen.seen[2] == ALIGNER_V1.format(QUESTION, (s2 + s3).strip()) + "IT IS KNOWN FOR THE EIFFEL TOWER AND ITS MUSEUMS!"


def test_chunked_fallback_is_per_chunk() -> None:
    gen = RecordingGenerator(["FIRST.", "", "THIRD?"])
    corrector = ResponseCorrector(gen, streaming="chunked", chunk_min_chars=1, chunk_max_new_tokens=64)
    resp = Pipeline(FixedLLM(ANSWER), [corrector]).chat(QUESTION)
    s1, s2, s3 = split_sentences(ANSWER)
    assert resp.text == "FIRST. " + s2 + "THIRD?"
    assert "chunk 2: kept the original: empty correction" in resp.trace[-1].reason


RELAXED = CorrectionCheck(reject_truncated=False, check_degenerate=False, check_dropped_tail=False, check_template_leak=False)


@pytest.mark.parametrize("check", [CorrectionCheck(), RELAXED], ids=["default-checks", "relaxed-checks"])
@pytest.mark.parametrize("mode", ["buffer", "chunked"])
def test_streaming_equals_non_streamed_under_greedy(tiny_model_dir: Path, mode: str, check: CorrectionCheck) -> None:
    from rewriters.generator import TextGenerator

    gen = TextGenerator.untrained(tiny_model_dir, template="aligner-v1.0", kind="corrector")
    rendered = ALIGNER_V1.format(QUESTION, LONG_ANSWER)
    assert gen.tokenizer.decode(gen.tokenizer(rendered)["input_ids"], skip_special_tokens=True) == rendered
    corrector = ResponseCorrector(gen, streaming=mode, check=check, temperature=0.0, max_new_tokens=12, chunk_max_new_tokens=6)
    plain = Pipeline(FixedLLM(LONG_ANSWER), [corrector]).chat(QUESTION)
    for piece in (1, 7):
        text, pieces, trace = streamed(Pipeline(FixedLLM(LONG_ANSWER, piece=piece), [corrector]), QUESTION)
        assert text == plain.text
        assert trace[-1].stage == "ResponseCorrector"
        if mode == "buffer":
            assert len(pieces) == 1
        else:
            assert len(pieces) == len(split_chunks(LONG_ANSWER, corrector.chunk_min_chars))
    if check is RELAXED:
        assert plain.text != LONG_ANSWER  # the random model's text went through: equality is not trivial


async def test_async_streaming_matches_too() -> None:
    def upper_piece(msgs: list[dict]) -> str:
        return msgs[-1]["content"].rsplit("Next piece of the original answer:\n", 1)[1].upper()

    for mode in ("buffer", "chunked"):
        llm = FunctionLLM(upper_piece if mode == "chunked" else (lambda m: "CORRECTED."))
        corrector = ResponseCorrector.prompted(llm, streaming=mode)
        pipe = Pipeline(FixedLLM(LONG_ANSWER, piece=5), [corrector])
        pieces = [c.delta async for c in pipe.astream(QUESTION) if c.delta]
        assert "".join(pieces) == (await pipe.achat(QUESTION)).text == pipe.chat(QUESTION).text


def test_chunked_mode_answers_sooner() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import corrector_streaming as ex
    finally:
        sys.path.remove(str(ROOT / "examples"))

    class SlowEcho:
        """A corrector model that takes 20 ms per call and returns the text unchanged."""

        template = get_template("aligner-v1.0")

        def generate_ex(self, texts: list[str], **kw: Any) -> list[Gen]:
            import time

            time.sleep(0.02)
            out = []
            for t in texts:
                answer = t.rsplit(" | ", 1)[1].removesuffix(" ASSISTANT:")
                out.append(Gen(answer.split(" ASSISTANT:")[0]))
            return out

    results = ex.run(SlowEcho(), delay=0.01, max_new_tokens=64)
    assert results["chunked"]["ttft"] < results["buffer"]["ttft"]
    assert all(r["same_as_non_streamed"] for r in results.values())


def test_chunked_correction_failing_midway_passes_the_rest_through() -> None:
    """The model fails on the second sentence group: the first group stays corrected, the failing group
    and all later ones pass through as they were, streamed or not; nothing is lost or repeated."""

    def flaky(fail_on: int) -> FunctionLLM:
        calls = {"n": 0}

        def fn(messages: list[dict[str, str]]) -> str:
            calls["n"] += 1
            if calls["n"] == fail_on:
                raise ConnectionError("backend hiccup")
            return messages[-1]["content"].split("Next piece of the original answer:\n", 1)[1].upper()

        return FunctionLLM(fn)

    answer = "Cats are small mammals. They like to sleep a lot. They purr when happy. The end."
    pieces = [w + " " for w in answer.split(" ")]
    pieces[-1] = pieces[-1].rstrip()
    expected = "CATS ARE SMALL MAMMALS. They like to sleep a lot. They purr when happy. The end."
    request = ChatRequest.build("Tell me about cats.")
    traces: list[Any] = []
    streamed = "".join(ResponseCorrector.prompted(flaky(2), streaming="chunked", chunk_min_chars=10).run_stream(request, iter(pieces), traces))
    assert streamed == expected
    assert traces[0].verdict == "modified" and "chunk 2: ConnectionError: backend hiccup" in traces[0].reason
    whole, trace = ResponseCorrector.prompted(flaky(2), streaming="chunked", chunk_min_chars=10).run(request, ChatResponse(text=answer))
    assert whole.text == expected and trace.verdict == "modified"
    strict = ResponseCorrector.prompted(flaky(2), streaming="chunked", chunk_min_chars=10, on_error="raise")
    with pytest.raises(StageError, match="backend hiccup"):
        "".join(strict.run_stream(request, iter(pieces), []))


# -- construction ----------------------------------------------------------------------------------------
def test_from_config_prompted_through_litellm_mock() -> None:
    from middleware.config import load_pipeline

    pipe = load_pipeline(
        {"stages": [{"type": "response_corrector", "llm": "openai/x", "streaming": "buffer", "on_error": "raise",
                     "llm_options": {"mock_response": "Paris is the capital of France.", "max_retries": 0}}]},
        llm=FixedLLM(ANSWER),
    )
    assert pipe.chat(QUESTION).text == "Paris is the capital of France."


def test_constructor_errors() -> None:
    with pytest.raises(InputError, match="streaming"):
        ResponseCorrector.prompted(FixedLLM("x"), streaming="live")
    with pytest.raises(InputError, match="question"):
        ResponseCorrector.prompted(FixedLLM("x"), template="bpo")
    with pytest.raises(InputError, match="needs path"):
        ResponseCorrector.from_config(mode="model")
    with pytest.raises(TypeError, match="response_corrector: unknown option"):
        ResponseCorrector.from_config(llm="openai/x", stream="yes")
    with pytest.raises(InputError, match="response_corrector: llm applies to mode 'prompted'"):
        ResponseCorrector.from_config(mode="model", path="runs/c", llm="openai/x")
    corrector = ResponseCorrector.from_config(llm="openai/x", ngram=4, streaming="chunked", context_chunks=1)
    assert corrector.mode == "prompted" and corrector.streaming == "chunked" and corrector.context_chunks == 1
    assert corrector.check == CorrectionCheck(ngram=4)


def test_deterministic_when_greedy() -> None:
    gen = RecordingGenerator(["Paris."])
    assert ResponseCorrector(gen).deterministic()  # Aligner decodes greedily
    assert not ResponseCorrector(gen, temperature=0.7).deterministic()
    assert not ResponseCorrector(gen, timeout=3).deterministic()
