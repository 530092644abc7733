"""The BPO prompt rewriter: templates, safeguards through a real Pipeline, multi-turn requests, model
mode on a tiny checkpoint, and training data built with a teacher mocked at the litellm boundary."""

from __future__ import annotations

import json
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from middleware.errors import InputError
from middleware.llm import LLM, FunctionLLM
from middleware.pipeline import Pipeline
from middleware.types import ChatRequest, ChatResponse, PreferencePair, save_pairs
from rewriters.rewriter import (
    PromptRewriter,
    RewriteCheck,
    bpo_filter,
    build_rewriter_data,
    check_rewrite,
    clean_rewrite,
    parse_teacher_output,
    select_by_reward,
    teacher_prompt,
    train_main,
)
from rewriters.templates import Template, get_template

BPO_PUBLISHED = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
    "harmless response:\n{} [/INST]"
)
PROMPT = "how does photosynthesis work in plants?"


# -- helpers ------------------------------------------------------------------------------------------
@dataclass
class Gen:
    text: str
    finish_reason: str = "stop"
    n_tokens: int = 0


class RecordingGenerator:
    """Stands in for ``TextGenerator``: records the exact texts it is asked to continue."""

    def __init__(self, outputs: list[str], template: str = "bpo", finish_reason: str = "stop") -> None:
        self.template = get_template(template)
        self.outputs = list(outputs)
        self.finish_reason = finish_reason
        self.seen: list[str] = []
        self.kwargs: list[dict[str, Any]] = []

    def generate_ex(self, texts: list[str], **kw: Any) -> list[Gen]:
        self.seen.extend(texts)
        self.kwargs.append(kw)
        return [Gen(self.outputs.pop(0) if self.outputs else "", self.finish_reason) for _ in texts]


class FixedLLM(LLM):
    """Returns one text with a chosen finish reason (FunctionLLM always says ``stop``)."""

    def __init__(self, text: str, finish_reason: str = "stop") -> None:
        self.text, self.finish_reason, self.requests = text, finish_reason, []

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(text=self.text, finish_reason=self.finish_reason)


def echo_llm() -> FunctionLLM:
    """The chat model: answers with the conversation it received, as JSON, so tests see what reached it."""
    return FunctionLLM(lambda msgs: json.dumps(msgs), name="echo")


def received(resp: ChatResponse) -> list[dict[str, str]]:
    return json.loads(resp.text)


# -- templates ----------------------------------------------------------------------------------------
def test_bpo_template_round_trip_is_byte_for_byte() -> None:
    t = get_template("bpo")
    assert t.render(prompt=PROMPT) == BPO_PUBLISHED.format(PROMPT)
    assert Template.from_dict(json.loads(json.dumps(t.to_dict()))).render(prompt=PROMPT) == BPO_PUBLISHED.format(PROMPT)
    gen = RecordingGenerator(["Explain step by step how photosynthesis works in plants."])
    Pipeline(echo_llm(), [PromptRewriter(gen)]).chat(PROMPT)
    assert gen.seen == [BPO_PUBLISHED.format(PROMPT)]
    assert gen.kwargs[0]["temperature"] == 0.6 and gen.kwargs[0]["top_p"] == 0.9  # BPO's inference settings


def test_training_sources_use_the_published_template() -> None:
    pair = PreferencePair(prompt=PROMPT, chosen="good", rejected="bad", optimized_prompt="Explain photosynthesis in plants.")
    examples, report = build_rewriter_data([pair], progress=False)
    assert [(e.source, e.target) for e in examples] == [(BPO_PUBLISHED.format(PROMPT), "Explain photosynthesis in plants.")]
    assert report.kept == report.from_data == 1


def test_greedy_and_custom_decoding() -> None:
    gen = RecordingGenerator(["Explain how photosynthesis works in plants."])
    PromptRewriter(gen, temperature=0.0, max_new_tokens=64).rewrite(PROMPT)
    assert gen.kwargs[0]["temperature"] == 0.0 and gen.kwargs[0]["max_new_tokens"] == 64


# -- safeguards, through a real pipeline ------------------------------------------------------------------
FALLBACKS = {
    "empty": ("", "empty rewrite"),
    "whitespace": ("   \n ", "empty rewrite"),
    "too long": (" ".join(["photosynthesis"] * 80), "too long"),
    "too short": ("plants", "too short"),
    "answers (Sure)": ("Sure! Photosynthesis is how plants turn light into sugar.", "answers the prompt"),
    "answers (Here is)": ("Here is how photosynthesis works: light is absorbed by chlorophyll.", "answers the prompt"),
    "answers (refusal)": ("I'm sorry, but I cannot help with photosynthesis questions.", "answers the prompt"),
    "answers (statement)": ("Photosynthesis is the process by which plants turn light into sugar.", "a statement"),
    "lost key content": ("Describe your favourite holiday destination and why you like it.", "key content"),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_each_fallback_keeps_the_original_prompt_with_a_reason(case: str) -> None:
    output, reason = FALLBACKS[case]
    pipe = Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM(output))])
    resp = pipe.chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    (trace,) = resp.trace
    assert trace.stage == "PromptRewriter" and trace.verdict == "passed"
    assert trace.reason and "kept the original prompt" in trace.reason and reason in trace.reason


def test_truncated_rewrite_keeps_the_original_prompt() -> None:
    llm = FixedLLM("Explain step by step how photosynthesis works in plants and", finish_reason="length")
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(llm)]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    assert "cut off at max_new_tokens" in resp.trace[0].reason


def test_model_mode_fallback_is_traced_too() -> None:
    gen = RecordingGenerator(["Certainly! Plants use sunlight."])
    resp = Pipeline(echo_llm(), [PromptRewriter(gen)]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    assert resp.trace[0].verdict == "passed" and "answers the prompt" in resp.trace[0].reason


def test_good_rewrite_replaces_the_prompt_and_labels_are_stripped() -> None:
    out = 'Optimized prompt: "Explain how photosynthesis works in plants, step by step, for a beginner."'
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM(out))]).chat(PROMPT)
    assert received(resp)[-1]["content"] == "Explain how photosynthesis works in plants, step by step, for a beginner."
    assert resp.trace[0].verdict == "modified"
    assert resp.trace[0].before == PROMPT


def test_a_prompt_that_itself_opens_like_an_answer_may_keep_its_opening() -> None:
    original = "Yes or no: is photosynthesis done by plants?"
    assert check_rewrite(original, "Yes or no: do plants perform photosynthesis? Answer and explain briefly.") is None
    assert check_rewrite("hi", "Hello! Please greet me back warmly.", RewriteCheck(check_answer=False)) is None


def test_clean_rewrite() -> None:
    assert clean_rewrite("Here is an improved version of the prompt:\n\"Tell me about cats.\"") == "Tell me about cats."
    assert clean_rewrite("**Improved prompt:** Tell me about cats. [END] trailing") == "Tell me about cats."
    assert clean_rewrite("Tell me about cats: their food and habits.") == "Tell me about cats: their food and habits."


def test_failure_in_the_rewriter_llm_passes_the_prompt_through() -> None:
    def boom(msgs: list[dict]) -> str:
        raise RuntimeError("rewriter backend down")

    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(FunctionLLM(boom))]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    assert resp.trace[0].verdict == "failed" and "rewriter backend down" in resp.trace[0].reason


# -- multi-turn ---------------------------------------------------------------------------------------
def test_multi_turn_rewrites_the_last_user_message_only() -> None:
    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me about plants."},
        {"role": "assistant", "content": "Plants are living organisms."},
        {"role": "user", "content": PROMPT},
    ]
    llm = FixedLLM("Explain how photosynthesis works in plants, step by step.")
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(llm)]).chat(history)
    got = received(resp)
    assert got[:3] == history[:3]
    assert got[3] == {"role": "user", "content": "Explain how photosynthesis works in plants, step by step."}
    # the rewriter was asked about the last user message only
    (req,) = llm.requests
    assert PROMPT in req.messages[0].content and "Plants are living organisms" not in req.messages[0].content


async def test_async_pipeline_uses_the_same_rules() -> None:
    resp = await Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM("Sure, here you go."))]).achat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT and "answers the prompt" in resp.trace[0].reason
    good = FixedLLM("Explain how photosynthesis works in plants.")
    resp = await Pipeline(echo_llm(), [PromptRewriter.prompted(good)]).achat(PROMPT)
    assert received(resp)[-1]["content"] == "Explain how photosynthesis works in plants."


# -- construction ---------------------------------------------------------------------------------------
def test_from_config_prompted_through_litellm_mock() -> None:
    from middleware.config import load_pipeline

    pipe = load_pipeline(
        {
            "stages": [
                {
                    "type": "prompt_rewriter",
                    "mode": "prompted",
                    "llm": "openai/x",
                    "llm_options": {"mock_response": "Explain how photosynthesis works in plants.", "max_retries": 0},
                    "on_error": "raise",
                    "temperature": 0,
                }
            ]
        },
        llm=echo_llm(),
    )
    resp = pipe.chat(PROMPT)
    assert received(resp)[-1]["content"] == "Explain how photosynthesis works in plants."


def test_from_config_errors_name_the_problem() -> None:
    with pytest.raises(InputError, match="needs path"):
        PromptRewriter.from_config(mode="model")
    with pytest.raises(TypeError, match="unknown option"):
        PromptRewriter.from_config(mode="prompted", llm="openai/x", colour="blue")
    with pytest.raises(InputError, match="mode must be"):
        PromptRewriter.from_config(mode="magic", llm="openai/x")
    with pytest.raises(InputError, match="llm applies to mode 'prompted'"):
        PromptRewriter.from_config(mode="model", path="runs/rw", llm="openai/x")
    with pytest.raises(InputError, match="path applies to mode 'model'"):
        PromptRewriter.from_config(mode="prompted", path="runs/rw", llm="openai/x")
    with pytest.raises(InputError, match="exactly one"):
        PromptRewriter()
    with pytest.raises(InputError, match="exactly one field"):
        PromptRewriter.prompted(FixedLLM("x"), template="aligner-v1.0")
    with pytest.raises(InputError, match="temperature must be a finite number >= 0, got nan"):
        PromptRewriter.prompted(FixedLLM("x"), temperature=float("nan"))


def test_model_mode_on_a_tiny_checkpoint(tiny_model_dir: Path) -> None:
    from rewriters.generator import TextGenerator

    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    ids = gen.tokenizer(BPO_PUBLISHED.format(PROMPT))["input_ids"]
    assert gen.tokenizer.decode(ids, skip_special_tokens=True) == BPO_PUBLISHED.format(PROMPT)
    rw = PromptRewriter(gen, temperature=0.0, max_new_tokens=8)
    resp = Pipeline(echo_llm(), [rw]).chat(PROMPT)
    # a random model's rewrite never passes the safeguards: the prompt goes through, with the reason
    assert received(resp)[-1]["content"] == PROMPT
    assert resp.trace[0].verdict == "passed" and "kept the original prompt" in resp.trace[0].reason


def test_deterministic_only_when_greedy_without_timeout(tiny_model_dir: Path) -> None:
    from rewriters.generator import TextGenerator

    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    assert PromptRewriter(gen, temperature=0.0).deterministic()
    assert not PromptRewriter(gen).deterministic()  # BPO's published decoding samples (temperature 0.6)
    assert not PromptRewriter(gen, temperature=0.0, timeout=5).deterministic()
    # prompted mode: as deterministic as the LLM says its greedy requests are
    assert PromptRewriter.prompted(FunctionLLM(lambda m: "x", deterministic=True), temperature=0.0).deterministic()
    assert not PromptRewriter.prompted(FunctionLLM(lambda m: "x"), temperature=0.0).deterministic()
    assert not PromptRewriter.prompted(FunctionLLM(lambda m: "x", deterministic=True), temperature=0.7).deterministic()


# -- teacher output and filters -----------------------------------------------------------------------
TEACHER_OK = (
    "Detailed Comparison Result: The good response explains the mechanism; the bad one is vague.\n"
    "Optimized Instruction: Explain in detail how vaccines train the immune system, with one example. [END]"
)
OPTIMIZED = "Explain in detail how vaccines train the immune system, with one example."


@pytest.mark.parametrize(
    "text",
    [
        TEACHER_OK,
        TEACHER_OK.replace(" [END]", ""),
        TEACHER_OK.replace("Optimized Instruction:", "**Optimized Instruction:**"),
        TEACHER_OK.replace("Optimized Instruction: ", "Optimized Prompt: \"").replace(" [END]", "\" [END]"),
        TEACHER_OK.replace("Optimized Instruction: ", "## Optimized instruction:\n'").replace(" [END]", "'"),
    ],
)
def test_parse_teacher_output_is_robust(text: str) -> None:
    critique, prompt = parse_teacher_output(text)
    assert prompt == OPTIMIZED
    assert critique.startswith("The good response")


@pytest.mark.parametrize("text", ["I cannot do this.", "Optimized Instruction:   [END]", ""])
def test_parse_teacher_output_rejects_unusable_answers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_teacher_output(text)


def test_bpo_filters() -> None:
    assert bpo_filter("how do vaccines work", OPTIMIZED) is None
    assert bpo_filter("vaccines?", OPTIMIZED) == "length_ratio"  # more than 6x the words
    assert bpo_filter("a b c d e f g h i j k l m n o p q r s t u v w x y z", "short one") == "length_ratio"
    assert bpo_filter("How do vaccines work?", "how do vaccines work") == "unchanged"
    assert bpo_filter("how do vaccines work", "Explain how vaccines work [PROTECTED]") == "protected"
    chosen = "Vaccines show the immune system a harmless piece of a germ so it learns to recognise it later."
    leaky = "Explain how vaccines work: they show the immune system a harmless piece of a germ so it learns."
    assert bpo_filter("how do vaccines work", leaky, chosen) == "leaked_answer"
    assert bpo_filter("how do vaccines work", OPTIMIZED, chosen) is None


def test_teacher_prompt_follows_bpo_and_shows_history() -> None:
    pair = PreferencePair(
        prompt=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "how do vaccines work"}],
        chosen="GOOD ANSWER", rejected="BAD ANSWER",
    )
    text = teacher_prompt(pair)
    assert 'instruction: "how do vaccines work"' in text
    assert text.index("BAD ANSWER") < text.index("GOOD ANSWER")
    assert "Optimized Instruction: xxx [END]" in text and "user: Hi\nassistant: Hello!" in text


# -- data building with a teacher mocked at the litellm boundary ----------------------------------------
def _pairs() -> list[PreferencePair]:
    chosen = "Vaccines show the immune system a harmless piece of a germ so it learns to recognise it later."
    return [
        PreferencePair(prompt="how do vaccines work", chosen=chosen, rejected="They just do.",
                       optimized_prompt="Explain how vaccines work."),                                  # given
        PreferencePair(prompt="how do vaccines work exactly", chosen=chosen, rejected="No idea."),       # teacher: kept
        PreferencePair(prompt="vaccines?", chosen=chosen, rejected="Yes."),                              # length_ratio
        PreferencePair(prompt=OPTIMIZED, chosen=chosen, rejected="Hmm."),                                # unchanged
        PreferencePair(prompt="tell me how vaccines train the immune system", rejected="Magic.",
                       chosen="Explain in detail how vaccines train the immune system, with one example of it."),  # leaked
        PreferencePair(prompt="teacher fails on this one", chosen="ok", rejected="no"),                 # failure
        PreferencePair(prompt="teacher answers nonsense here", chosen="ok", rejected="no"),             # unparseable
    ]


class Router(LLM):
    """A teacher made of real ``LiteLLMBackend``s with ``mock_response``, picked by the row's instruction."""

    def __init__(self) -> None:
        from middleware.remote import LiteLLMBackend

        kw = {"max_retries": 0, "backoff_initial": 0.0}
        self.name = self.model = "openai/teacher-x"
        self.ok = LiteLLMBackend("openai/teacher-x", mock_response=TEACHER_OK, **kw)
        self.down = LiteLLMBackend("openai/teacher-x", mock_response="litellm.RateLimitError", **kw)
        self.nonsense = LiteLLMBackend("openai/teacher-x", mock_response="I would rather not.", **kw)

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        text = request.messages[-1].content
        if "teacher fails" in text:
            return self.down.complete(request)
        if "nonsense" in text:
            return self.nonsense.complete(request)
        return self.ok.complete(request)


@pytest.fixture
def litellm_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call that reaches ``litellm.completion`` (which still answers with its mock)."""
    import litellm

    calls: list[dict[str, Any]] = []
    real = litellm.completion

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(litellm, "completion", counting)
    return calls


def test_build_rewriter_data_with_teacher_filters_failures_and_cache(tmp_path: Path, litellm_calls: list) -> None:
    pairs = _pairs()
    examples, report = build_rewriter_data(pairs, Router(), cache_dir=tmp_path / "cache", max_concurrency=3, progress=False)
    assert [e.target for e in examples] == ["Explain how vaccines work.", OPTIMIZED]
    assert examples[1].source == BPO_PUBLISHED.format("how do vaccines work exactly")
    assert report.total == 7 and report.kept == 2 and report.from_data == 1 and report.from_teacher == 1
    assert dict(report.filtered) == {"length_ratio": 1, "unchanged": 1, "leaked_answer": 1}
    assert report.teacher_failures == 2 and report.teacher_calls == 6 and report.cache_hits == 0
    assert any("row 5" in f and "rate limit" in f for f in report.failures)
    assert any("row 6" in f and "unusable" in f for f in report.failures)
    assert len(litellm_calls) == 6 and all(c["model"] == "openai/teacher-x" for c in litellm_calls)
    assert "teacher: 6 calls, 0 cached, 2 failed" in report.summary()

    # second run: the good answers come from the disk cache; only the failed rows are asked again
    litellm_calls.clear()
    examples2, report2 = build_rewriter_data(pairs, Router(), cache_dir=tmp_path / "cache", progress=False)
    assert examples2 == examples
    assert report2.cache_hits == 4 and report2.teacher_calls == 2 and len(litellm_calls) == 2


def test_second_run_makes_no_teacher_calls(tmp_path: Path, litellm_calls: list) -> None:
    from middleware.remote import LiteLLMBackend

    pairs = [p for p in _pairs() if "teacher" not in p.question]
    teacher = LiteLLMBackend("openai/x", mock_response=TEACHER_OK, max_retries=0)
    first, r1 = build_rewriter_data(pairs, teacher, cache_dir=tmp_path, progress=False)
    assert r1.teacher_calls == len(litellm_calls) == 4 and r1.teacher_failures == 0
    litellm_calls.clear()
    second, r2 = build_rewriter_data(pairs, teacher, cache_dir=tmp_path, progress=False)
    assert litellm_calls == [] and r2.teacher_calls == 0 and r2.cache_hits == 4
    assert second == first
    # another teacher model does not reuse those answers
    other = LiteLLMBackend("openai/y", mock_response=TEACHER_OK, max_retries=0)
    _, r3 = build_rewriter_data(pairs, other, cache_dir=tmp_path, progress=False)
    assert r3.teacher_calls == 4 and r3.cache_hits == 0
    # nor do the same model behind another endpoint, or other teacher decoding settings
    elsewhere = LiteLLMBackend("openai/x", mock_response=TEACHER_OK, max_retries=0, api_base="http://127.0.0.1:9/v1")
    assert build_rewriter_data(pairs, elsewhere, cache_dir=tmp_path, progress=False)[1].cache_hits == 0
    cooler = build_rewriter_data(pairs, teacher, cache_dir=tmp_path, teacher_temperature=0.0, progress=False)[1]
    assert cooler.teacher_calls == 4 and cooler.cache_hits == 0


def test_teacher_cache_tells_functions_apart_and_survives_damaged_files(tmp_path: Path) -> None:
    pairs = [p for p in _pairs() if "teacher" not in p.question]

    def teacher_a(messages: Any) -> str:
        return TEACHER_OK

    def teacher_b(messages: Any) -> str:
        return TEACHER_OK

    _, first = build_rewriter_data(pairs, FunctionLLM(teacher_a), cache_dir=tmp_path, progress=False)
    _, again = build_rewriter_data(pairs, FunctionLLM(teacher_a), cache_dir=tmp_path, progress=False)
    _, other = build_rewriter_data(pairs, FunctionLLM(teacher_b), cache_dir=tmp_path, progress=False)
    assert (first.teacher_calls, again.cache_hits, other.cache_hits, other.teacher_calls) == (4, 4, 0, 4)
    for f in tmp_path.rglob("*.json"):
        f.write_text("null")  # valid JSON, not an entry: a miss, asked again
    _, damaged = build_rewriter_data(pairs, FunctionLLM(teacher_a), cache_dir=tmp_path, progress=False)
    assert damaged.teacher_calls == 4 and damaged.cache_hits == 0 and damaged.teacher_failures == 0


def test_without_teacher_rows_lacking_a_target_are_counted() -> None:
    examples, report = build_rewriter_data(_pairs(), None, progress=False)
    assert len(examples) == 1 and report.no_target == 6 and report.teacher_calls == 0


def test_bad_rows_are_reported_with_their_index() -> None:
    with pytest.raises(InputError, match=r"pairs\[1\]"):
        build_rewriter_data([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "x"}], progress=False)


# -- reward selection ---------------------------------------------------------------------------------
class WordJudge:
    """A judge that prefers longer answers, and records what it was asked to score."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, str]] = []

    def score_batch(self, items: list[tuple[Any, str]]) -> list[float]:
        self.items.extend(items)
        return [float(len(answer.split())) for _, answer in items]


def detail_app(calls: list[list[dict[str, str]]]) -> FunctionLLM:
    """A chat app that answers at length only when asked for detail."""

    def fn(msgs: list[dict[str, str]]) -> str:
        calls.append(msgs)
        last = msgs[-1]["content"]
        return "step one, then step two, then step three." if "detail" in last else "It depends."

    return FunctionLLM(fn, name="detail-app")


def _selection_pairs() -> list[PreferencePair]:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    return [
        PreferencePair(prompt="how do vaccines work", chosen="a", rejected="b",
                       optimized_prompt="Explain in detail how vaccines train the immune system."),
        PreferencePair(prompt="how do tides work", chosen="a", rejected="b",
                       optimized_prompt="How do ocean tides work?"),
        PreferencePair(prompt=history + [{"role": "user", "content": "why is the sky blue"}], chosen="a", rejected="b",
                       optimized_prompt="Explain in detail why the sky looks blue during the day."),
    ]


def test_select_by_reward_keeps_the_rewrites_that_raise_the_targets_reward(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    calls: list[list[dict[str, str]]] = []
    judge = WordJudge()
    rewrites = {i: p.optimized_prompt for i, p in enumerate(pairs)}
    choices = select_by_reward(pairs, rewrites, detail_app(calls), judge, cache_dir=tmp_path, progress=False)
    assert [c.kept for c in choices] == [True, False, True]
    assert [c.gain for c in choices] == [6.0, 0.0, 6.0]
    assert choices[0].rewritten_answer.startswith("step one") and choices[1].answer == "It depends."
    # the target saw the rewrite with the history kept; the judge scored against the original prompt
    assert calls[5] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": pairs[2].optimized_prompt}]
    assert [m.content for m in judge.items[5][0]] == ["hi", "Hello!", "why is the sky blue"]
    assert len(judge.items) == 6 and all(m[-1].content == p.question for (m, _), p in zip(judge.items[::2], pairs))

    # a margin keeps only clear gains; a rerun takes the answers from the cache
    calls.clear()
    strict = select_by_reward(pairs, rewrites, detail_app(calls), WordJudge(), margin=6.0, cache_dir=tmp_path, progress=False)
    assert calls == [] and [c.kept for c in strict] == [False, False, False]
    # another answer length is another cache entry
    select_by_reward(pairs, {0: rewrites[0]}, detail_app(calls), WordJudge(), max_tokens=64, cache_dir=tmp_path, progress=False)
    assert len(calls) == 2
    with pytest.raises(InputError, match="max_tokens"):
        select_by_reward(pairs, rewrites, detail_app(calls), WordJudge(), max_tokens=0, progress=False)


class SamplingApp(LLM):
    """A chat app whose answer depends on the request's seed: asked for detail, it answers with 1 + seed
    words more than otherwise; it records each request's seed and temperature."""

    name = "sampling-app"

    def __init__(self) -> None:
        self.requests: list[tuple[int | None, float | None]] = []

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        self.requests.append((request.seed, request.temperature))
        base = 3 if "tides" in request.last_user_message else 2
        extra = 1 + (request.seed or 0) if "detail" in request.last_user_message else 0
        return ChatResponse(text=" ".join(["word"] * (base + extra)), model=self.name)


def test_select_by_reward_compares_mean_rewards_over_samples(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    rewrites = {i: p.optimized_prompt for i, p in enumerate(pairs)}
    app = SamplingApp()
    choices = select_by_reward(pairs, rewrites, app, WordJudge(), samples=3, temperature=0.7, seed=4,
                               margin=5.5, cache_dir=tmp_path, progress=False)
    # seeds 4, 5, 6 at temperature 0.7, for both sides of every row
    assert sorted(set(app.requests)) == [(4, 0.7), (5, 0.7), (6, 0.7)] and len(app.requests) == 18
    first, tides, sky = choices
    assert first.rewards == [2.0, 2.0, 2.0] and first.rewritten_rewards == [7.0, 8.0, 9.0]
    assert (first.reward, first.rewritten_reward, first.gain) == (2.0, 8.0, 6.0) and first.kept
    assert first.rewritten_answer == "word " * 6 + "word"  # the first sample's answer
    assert tides.gain == 0.0 and not tides.kept
    assert sky.gain == 6.0 and sky.kept
    # the samples are cached per seed and temperature: a rerun asks nothing, another temperature asks again
    app.requests.clear()
    select_by_reward(pairs, rewrites, app, WordJudge(), samples=3, temperature=0.7, seed=4, cache_dir=tmp_path, progress=False)
    assert app.requests == []
    select_by_reward(pairs, {0: rewrites[0]}, app, WordJudge(), samples=2, temperature=0.9, seed=4, cache_dir=tmp_path, progress=False)
    assert len(app.requests) == 4
    with pytest.raises(InputError, match="samples=3 needs a temperature above 0"):
        select_by_reward(pairs, rewrites, app, WordJudge(), samples=3, progress=False)
    with pytest.raises(InputError, match="samples must be at least 1, got 0"):
        select_by_reward(pairs, rewrites, app, WordJudge(), samples=0, progress=False)


def test_build_rewriter_data_with_a_judge_drops_rewrites_without_gain(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    choices: list = []
    examples, report = build_rewriter_data(
        pairs, judge=WordJudge(), target=detail_app([]), cache_dir=tmp_path / "teacher", progress=False, choices_out=choices,
    )
    assert [e.target for e in examples] == [pairs[0].optimized_prompt, pairs[2].optimized_prompt]
    assert report.kept == 2 and report.selection_judged == 3 and report.selection_dropped == 1
    assert report.selection_mean_gain == pytest.approx(4.0) and len(choices) == 3
    assert "3 rewrites judged" in report.summary() and "1 dropped (no gain)" in report.summary()


def test_teacher_and_target_answers_go_to_their_own_default_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNWARE_CACHE", str(tmp_path))
    pairs = [PreferencePair(prompt="how do vaccines work exactly", chosen="They train the immune system.", rejected="No idea.")]
    examples, report = build_rewriter_data(
        pairs, FunctionLLM(lambda msgs: TEACHER_OK, name="teacher"), judge=WordJudge(), target=detail_app([]), progress=False,
    )
    assert report.from_teacher == 1 and report.selection_judged == 1 and [e.target for e in examples] == [OPTIMIZED]
    assert len(list((tmp_path / "teacher").rglob("*.json"))) == 1
    assert len(list((tmp_path / "answers").rglob("*.json"))) == 2


def test_a_target_failure_drops_only_that_row(tmp_path: Path) -> None:
    pairs = _selection_pairs()
    app = detail_app([])

    def flaky(msgs: list[dict[str, str]]) -> str:
        if "tides" in msgs[-1]["content"]:
            raise ConnectionError("target unreachable")
        return app.fn(msgs)

    examples, report = build_rewriter_data(
        pairs, judge=WordJudge(), target=FunctionLLM(flaky, name="flaky"), cache_dir=tmp_path, progress=False
    )
    assert [e.target for e in examples] == [pairs[0].optimized_prompt, pairs[2].optimized_prompt]
    assert report.selection_judged == 2 and report.selection_failures == 1 and report.selection_dropped == 0
    assert report.failures == ["row 1: target failed: ConnectionError: target unreachable"]
    assert "1 dropped (target failed)" in report.summary()


def test_train_rewriter_cli_selects_with_a_reward_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from steering.reward import RewardConfig, RewardModel

    RewardModel.create(RewardConfig(backbone=str(tiny_model_dir), max_length=64, train="head")).save(tmp_path / "judge")
    data = tmp_path / "pairs.jsonl"
    save_pairs(
        [PreferencePair(prompt=f"question {i} about plants", chosen="good", rejected="bad",
                        optimized_prompt=f"Explain question {i} about plants, step by step.") for i in range(6)],
        data,
    )
    out = tmp_path / "rw"
    args = [
        "--data", str(data), "--out", str(out), "--base-model", str(tiny_model_dir), "--data-only",
        "--judge", str(tmp_path / "judge"), "--target", f"local:{tiny_model_dir}", "--select-max-tokens", "4",
        "--cache-dir", str(tmp_path / "cache"),
    ]
    assert train_main(args + ["--select-margin", "-1000"]) == 0
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == 12 and all(json.loads(p.read_text())["model"].startswith(str(tiny_model_dir.resolve())) for p in cached)
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["gain"] == pytest.approx(r["rewritten_reward"] - r["reward"]) for r in rows)
    assert all(r["kept"] and r["answer"] and r["rewritten_answer"] for r in rows)
    assert len((out / "rewriter_data.jsonl").read_text().splitlines()) == 6
    with pytest.raises(InputError, match="no training examples"):
        train_main(args + ["--select-margin", "1000"])
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and not any(r["kept"] for r in rows)

    # sampled answers from the local model: two per side, mean rewards in selection.jsonl
    assert train_main(args + ["--select-margin", "-1000", "--select-samples", "2"]) == 0
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert all(len(r["rewards"]) == 2 and r["reward"] == pytest.approx(sum(r["rewards"]) / 2) for r in rows)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 12 + 24


# -- training -----------------------------------------------------------------------------------------
def test_train_main_then_from_pretrained(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    save_pairs(
        [
            PreferencePair(prompt=f"question number {i} about plants", chosen="good", rejected="bad",
                           optimized_prompt=f"Explain question number {i} about plants in detail.")
            for i in range(6)
        ],
        data,
    )
    out = tmp_path / "rewriter"
    rc = train_main([
        "--data", str(data), "--out", str(out), "--base-model", str(tiny_model_dir),
        "--max-steps", "2", "--batch-size", "2", "--lora-r", "2", "--lora-alpha", "4", "--eval-fraction", "0.2",
    ])
    assert rc == 0
    manifest = json.loads((out / "alignware.json").read_text())
    assert manifest["kind"] == "rewriter" and manifest["template"] == "bpo"
    rw = PromptRewriter.from_pretrained(out, max_new_tokens=4)
    assert rw.mode == "model" and rw.template.name == "bpo" and rw.params["top_p"] == 0.9
    resp = Pipeline(echo_llm(), [rw]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT  # four random tokens never make a valid rewrite


def test_prompted_example_runs_offline(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = Path(__file__).resolve().parents[1] / "examples" / "rewriter_prompted.py"
    spec = importlib.util.spec_from_file_location("rewriter_prompted_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    out = capsys.readouterr().out
    assert "modified" in out and "kept the original prompt: rewrite answers the prompt" in out


@pytest.mark.parametrize(
    "rewrite",
    [
        "What are the main steps of photosynthesis in plants, and why does each matter?",
        "Explain how photosynthesis works in plants, with the chemical equation.",
        "In plants, photosynthesis turns light into sugar. Could you describe each stage in detail?",
    ],
)
def test_questions_and_requests_pass_the_statement_rule(rewrite: str) -> None:
    assert check_rewrite(PROMPT, rewrite) is None


def test_the_statement_rule_only_applies_to_questions() -> None:
    assert check_rewrite("Photosynthesis in plants", "Photosynthesis in plants, from light to sugar, step by step.") is None


def test_no_optimized_prompt_of_a_bpo_question_is_taken_for_an_answer(shared_data: Path) -> None:
    from middleware.types import load_pairs

    questions = [p for p in load_pairs(shared_data / "bpo_pairs.jsonl") if p.question.rstrip().endswith("?")]
    assert len(questions) > 50
    flagged = [p.optimized_prompt for p in questions if "statement" in (check_rewrite(p.question, p.optimized_prompt) or "")]
    assert flagged == []


@pytest.mark.parametrize(
    "original, rewrite, reason",
    [
        (
            "If the endpoints of a line segment are (2, -2) and (10, 4), what is the length of the segment?",
            "Please provide a detailed explanation of the segment's length based on the given endpoints.",
            "drops numbers the prompt gives (2, 10, 4)",
        ),
        ("Summarize the article in 1-2 sentences.", "Summarize the article briefly and clearly.", "drops numbers"),
        (
            "As a pirate captain, what would you say to your crew to motivate them to search for hidden treasure?",
            "What would you say to your crew to motivate them to search for hidden treasure?",
            "drops the role the prompt sets ('pirate captain')",
        ),
        (
            "Imagine you are a time traveler from the year 3000. What would you tell people?",
            "What would you tell people in the year 3000 about technology? Explain in detail.",
            "drops the role",
        ),
    ],
)
def test_rewrites_that_drop_details_keep_the_original(original: str, rewrite: str, reason: str) -> None:
    assert reason in (check_rewrite(original, rewrite) or "")


def test_details_kept_in_another_form_pass() -> None:
    assert check_rewrite("How far is 3,000 km in miles?", "Convert 3000 km to miles and show the calculation.") is None
    assert check_rewrite(
        "As a pirate captain, what would you say to motivate your crew?",
        "You are a pirate captain. Write a rousing speech that motivates your crew to find the treasure.",
    ) is None
    assert check_rewrite("Summarize it in 1-2 sentences.", "Summarize it in 2 sentences.", RewriteCheck(keep_numbers=False)) is None

