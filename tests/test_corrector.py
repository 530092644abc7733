"""The Aligner response corrector: template, flattening, safeguards through a real Pipeline, training
data with the identity warm-up, and buffer/chunked streaming equal to the non-streamed correction."""

from __future__ import annotations

import json
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from middleware.errors import InputError, StageError
from middleware.llm import LLM, FunctionLLM
from middleware.pipeline import Pipeline
from middleware.types import ChatChunk, ChatRequest, ChatResponse, PreferencePair, save_pairs
from rewriters.corrector import (
    ChunkSplitter,
    CorrectionCheck,
    ResponseCorrector,
    build_corrector_data,
    check_correction,
    degeneration,
    flatten_question,
    split_chunks,
    split_sentences,
    train_main,
)
from rewriters.templates import get_template

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris. It is known for the Eiffel Tower and its museums! Anything else?"
ALIGNER_V1 = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
    "harmless: {} | {} ASSISTANT:"
)
LONG_ANSWER = (
    "Water them when the top of the soil feels dry. Most houseplants like bright, indirect light! "
    "Use a pot with drainage holes, e.g. a terracotta one, because standing water rots the roots.\n\n"
    "1. Feed them monthly in spring.\n2. Wipe dust off the leaves. Is that all? Mostly, yes... Good luck"
)


# -- helpers ----------------------------------------------------------------------------------------
@dataclass
class Gen:
    text: str
    finish_reason: str = "stop"
    n_tokens: int = 0


class RecordingGenerator:
    """Stands in for ``TextGenerator``: records the exact texts it is asked to continue."""

    def __init__(self, outputs: list[str], template: str = "aligner-v1.0", finish_reason: str = "stop") -> None:
        self.template = get_template(template)
        self.outputs = list(outputs)
        self.finish_reason = finish_reason
        self.seen: list[str] = []

    def generate_ex(self, texts: list[str], **kw: Any) -> list[Gen]:
        self.seen.extend(texts)
        return [Gen(self.outputs.pop(0) if self.outputs else "", self.finish_reason) for _ in texts]


class FixedLLM(LLM):
    """The chat model (a fixed answer, streamed in small pieces) or a corrector backend."""

    def __init__(self, text: str, finish_reason: str = "stop", piece: int = 3) -> None:
        self.text, self.finish_reason, self.piece = text, finish_reason, piece
        self.requests: list[ChatRequest] = []

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(text=self.text, finish_reason=self.finish_reason)

    def stream(self, request: ChatRequest, *, model_stages: Any = ()) -> Iterator[ChatChunk]:
        for i in range(0, len(self.text), self.piece):
            yield ChatChunk(delta=self.text[i : i + self.piece])
        yield ChatChunk(finish_reason="stop")


def streamed(pipe: Pipeline, messages: Any) -> tuple[str, list[str], Any]:
    pieces, trace = [], None
    for ch in pipe.stream(messages):
        if ch.delta:
            pieces.append(ch.delta)
        if ch.trace is not None:
            trace = ch.trace
    return "".join(pieces), pieces, trace


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


def test_flatten_question() -> None:
    assert flatten_question([{"role": "system", "content": "Be nice."}, {"role": "user", "content": QUESTION}]) == QUESTION
    conv = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": QUESTION},
    ]
    assert flatten_question(conv) == f"User: Hi\nAssistant: Hello! How can I help?\nUser: {QUESTION}"
    with pytest.raises(InputError):
        flatten_question([{"role": "system", "content": "x"}])


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


def test_legitimate_corrections_pass() -> None:
    harmful = "First, buy the following chemicals from a hardware store and mix them in a closed room. " * 3
    assert check_correction(harmful, "I can't help with that, but I can explain household chemical safety.") is None
    listy = "Steps:\n- Preheat.\n- Preheat.\n- Preheat.\nDone."
    assert degeneration(listy, reference=listy) is None  # repetition already in the original does not count
    assert check_correction(ANSWER, ANSWER) is None
    assert check_correction(ANSWER, "x", finish_reason="length", check=CorrectionCheck(reject_truncated=False)) is None


def test_empty_answer_is_left_alone() -> None:
    gen = RecordingGenerator(["something"])
    resp = Pipeline(FixedLLM("   "), [ResponseCorrector(gen)]).chat(QUESTION)
    assert resp.text == "   " and gen.seen == [] and "nothing to correct" in resp.trace[-1].reason


# -- training data -------------------------------------------------------------------------------------
def test_build_corrector_data_with_identity_warmup() -> None:
    pairs = [
        PreferencePair(prompt=QUESTION, chosen=" Paris. ", rejected="Lyon."),
        PreferencePair(prompt=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
                               {"role": "user", "content": "Help me"}], chosen="Sure, with what?", rejected="No."),
        PreferencePair(prompt="skip me", chosen="  ", rejected="x"),
    ]
    examples, warmup = build_corrector_data(pairs)
    assert [(e.source, e.target) for e in examples] == [
        (ALIGNER_V1.format(QUESTION, "Lyon."), "Paris."),
        (ALIGNER_V1.format("User: Hi\nAssistant: Hey\nUser: Help me", "No."), "Sure, with what?"),
    ]
    assert [(e.source, e.target) for e in warmup] == [
        (ALIGNER_V1.format(QUESTION, "Paris."), "Paris."),
        (ALIGNER_V1.format("User: Hi\nAssistant: Hey\nUser: Help me", "Sure, with what?"), "Sure, with what?"),
    ]
    assert [e.group for e in examples] == [e.group for e in warmup] == [0, 1]  # the pair each came from
    examples2, none = build_corrector_data(pairs, identity_warmup=False)
    assert examples2 == examples and none == []
    ex3, _ = build_corrector_data(pairs[:1], template="aligner-correction")
    assert "##Answer: Lyon." in ex3[0].source
    with pytest.raises(InputError, match="question and answer"):
        build_corrector_data(pairs, template="bpo")


def test_train_main_with_warmup_then_from_pretrained(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    save_pairs([PreferencePair(prompt=f"question {i}", chosen=f"good answer {i}.", rejected=f"bad {i}") for i in range(6)], data)
    out = tmp_path / "corrector"
    rc = train_main([
        "--data", str(data), "--out", str(out), "--base-model", str(tiny_model_dir), "--batch-size", "4",
        "--lora-r", "2", "--lora-alpha", "4", "--epochs", "1", "--warmup-epochs", "1", "--eval-fraction", "0.2",
    ])
    assert rc == 0
    manifest = json.loads((out / "alignware.json").read_text())
    assert manifest["kind"] == "corrector" and manifest["template"] == "aligner-v1.0"
    assert manifest["training"]["warmup_examples"] == 6 and manifest["training"]["examples"] == 6
    history = json.loads((out / "history.json").read_text())
    assert any(row.get("warmup") for row in history)
    corrector = ResponseCorrector.from_pretrained(out, max_new_tokens=4)
    assert corrector.mode == "model" and corrector.template.name == "aligner-v1.0"
    resp = Pipeline(FixedLLM(ANSWER), [corrector]).chat(QUESTION)
    assert resp.text == ANSWER  # four random tokens are cut off: the answer is kept


def test_held_out_pairs_are_not_trained_on_in_the_warm_up(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rewriters.sft as sft

    pairs = [PreferencePair(prompt=f"question {i}", chosen=f"good answer number {i}.", rejected=f"bad {i}") for i in range(10)]
    examples, warmup = build_corrector_data(pairs)
    # record the target tokens of every batch the trainer scores: training batches vs held-out evaluation
    seen: dict[str, set[tuple[int, ...]]] = {"train": set(), "eval": set()}
    real = sft._LossFn.__call__

    def recording(self, batch):
        for labels in batch["labels"]:
            seen["train" if self.model.training else "eval"].add(tuple(labels[labels != -100].tolist()))
        return real(self, batch)

    monkeypatch.setattr(sft._LossFn, "__call__", recording)
    cfg = sft.SFTConfig(
        base_model=str(tiny_model_dir), kind="corrector", template="aligner-v1.0", lora_r=2, lora_alpha=4,
        batch_size=4, epochs=1, warmup_epochs=1, eval_fraction=0.3, save_every=100, eval_every=100,
    )
    res = sft.train_sft(examples, cfg, tmp_path / "c", warmup_examples=warmup, progress=False)
    assert len(seen["eval"]) == 3  # three pairs held out, each with its own target
    assert not seen["eval"] & seen["train"], "a held-out pair's target was trained on"
    assert len(seen["train"]) == 7  # the other pairs' targets, in both phases
    warm_steps = [r for r in res.history if r.get("warmup")]
    assert len(warm_steps) == 2 and sum(r["target_tokens"] for r in warm_steps) > 0  # ceil(7 / 4) warm-up steps
    manifest = json.loads((tmp_path / "c" / "alignware.json").read_text())
    assert manifest["training"]["warmup_examples_held_out"] == 3


# -- segmentation ---------------------------------------------------------------------------------------
def test_split_sentences_and_chunks_give_the_text_back() -> None:
    sents = split_sentences(LONG_ANSWER)
    assert "".join(sents) == LONG_ANSWER
    assert sents[0] == "Water them when the top of the soil feels dry. "
    assert any(s.startswith("Use a pot with drainage holes, e.g. a terracotta one") for s in sents)  # e.g. kept
    assert any(s.startswith("1. Feed them") for s in sents)  # list numbers kept
    for min_chars in (1, 40, 10_000):
        assert "".join(split_chunks(LONG_ANSWER, min_chars)) == LONG_ANSWER
    assert len(split_chunks(LONG_ANSWER, 10_000)) == 1


@pytest.mark.parametrize("min_chars", [1, 25, 60])
def test_incremental_chunks_do_not_depend_on_piece_sizes(min_chars: int) -> None:
    expected = split_chunks(LONG_ANSWER, min_chars)
    rng = random.Random(min_chars)
    for _ in range(200):
        sp, got, i = ChunkSplitter(min_chars), [], 0
        while i < len(LONG_ANSWER):
            k = rng.randint(1, 9)
            got += sp.feed(LONG_ANSWER[i : i + k])
            i += k
        got += sp.finish()
        assert got == expected


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


def test_template_markers_already_in_the_answer_do_not_count() -> None:
    answer = "Type USER and then your password at the prompt."
    assert check_correction(answer, "Type USER, then your password, at the login prompt.") is None
    assert "ASSISTANT" in (check_correction(answer, "Type USER at the prompt. ASSISTANT") or "")
    assert check_correction("Paris.", "The assistant said the user was right: Paris.") is None  # ordinary words



def test_deterministic_when_greedy() -> None:
    gen = RecordingGenerator(["Paris."])
    assert ResponseCorrector(gen).deterministic()  # Aligner decodes greedily
    assert not ResponseCorrector(gen, temperature=0.7).deterministic()
    assert not ResponseCorrector(gen, timeout=3).deterministic()


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
