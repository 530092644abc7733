"""OpenAI request and reply fields end to end: the real ``openai`` client against ``alignware serve``
(``create_app`` on uvicorn) in front of the loopback fake upstream, reached through litellm.

Forwarded by ``LiteLLMBackend``: tools and tool calls (streamed too), ``n`` choices, ``response_format``,
logprobs, penalties, ``logit_bias``, ``user``, tool/developer messages and non-text parts. Refused with a
400 naming the field by backends that cannot do them (a ``FunctionLLM``, the local model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from fake_upstream import FakeOpenAI, ok, tool_call
from middleware import FunctionLLM, Pipeline, PromptStage, ResponseStage
from middleware.remote import LiteLLMBackend

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from middleware.server import create_app  # noqa: E402
from test_server import _serve  # noqa: E402

UP = "gpt-4o-mini"
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "description": "The weather in a city.",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}


class Noop(PromptStage):
    def process(self, request):
        return request


class Shout(ResponseStage):
    """Upper-cases the answer: shows which texts went through the response stages."""

    def process(self, request, response):
        return response.model_copy(update={"text": response.text.upper()})


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    """conftest's loopback upstream, cleared."""
    return server


def _backend(fake: FakeOpenAI) -> LiteLLMBackend:
    # a model litellm knows from its catalogue: for others it sends developer messages as system ones, and no user
    return LiteLLMBackend(f"openai/{UP}", api_base=fake.base, api_key="sk-up", timeout=10.0, max_retries=0)


@pytest.fixture(scope="module")
def shouting(_upstream: FakeOpenAI) -> Iterator[Any]:
    """A server whose pipeline has a response stage (``Shout``)."""
    with _serve(create_app(Pipeline(_backend(_upstream), [Noop(), Shout()]), model_name="m", trace=True)) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def plain(_upstream: FakeOpenAI) -> Iterator[Any]:
    """A server whose pipeline has only a prompt stage: replies reach the client as the upstream sent them."""
    with _serve(create_app(Pipeline(_backend(_upstream), [Noop()]), model_name="m", trace=True)) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0)


def _trace(resp: Any) -> list[dict[str, Any]]:
    return resp.model_extra["alignware_trace"]


# -- forwarded --------------------------------------------------------------------------------
def test_tools_reach_the_upstream_and_tool_calls_come_back(shouting: Any, fake: FakeOpenAI) -> None:
    fake.script(UP, tool_call("weather", '{"city": "Paris"}'))
    resp = shouting.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER], tool_choice="auto"
    )
    sent = fake.requests[-1]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto"
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "weather", {"city": "Paris"})
    shout = [t for t in _trace(resp) if t["stage"] == "Shout"]
    assert shout == [dict(shout[0], verdict="skipped", reason="no text to act on: the reply is tool calls only")]


def test_streamed_tool_call_deltas_are_forwarded(shouting: Any, fake: FakeOpenAI) -> None:
    fake.script(UP, tool_call("weather", '{"city": "Paris, France"}', call_id="call_9"))
    chunks = list(shouting.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], stream=True
    ))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) > 2, "the arguments arrive in pieces, as upstream sent them"
    assert deltas[0].id == "call_9" and deltas[0].function.name == "weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris, France"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
    trace = chunks[-1].model_extra["alignware_trace"]
    assert [(t["stage"], t["verdict"]) for t in trace] == [("Noop", "passed"), ("Shout", "skipped")]


def test_n_choices_each_go_through_the_response_stages(shouting: Any, fake: FakeOpenAI) -> None:
    fake.script(UP, ok("a fine answer"))
    resp = shouting.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=3)
    assert fake.requests[-1]["n"] == 3
    assert [c.message.content for c in resp.choices] == ["A FINE ANSWER", "A FINE ANSWER (2)", "A FINE ANSWER (3)"]
    assert [c.index for c in resp.choices] == [0, 1, 2]
    shout = [t for t in _trace(resp) if t["stage"] == "Shout"]
    assert [(t["choice"], t["verdict"], t["before"]) for t in shout] == [
        (0, "modified", "a fine answer"), (1, "modified", "a fine answer (2)"), (2, "modified", "a fine answer (3)")
    ]
    with pytest.raises(openai.BadRequestError, match="n > 1") as e:
        shouting.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2, stream=True)
    assert e.value.body["param"] == "n"


def test_response_format_reaches_the_upstream_and_parse_works(plain: Any, fake: FakeOpenAI) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    fake.script(UP, ok('{"name": "Paris", "country": "France"}'))
    resp = plain.chat.completions.parse(model="m", messages=[{"role": "user", "content": "A city?"}], response_format=City)
    assert fake.requests[-1]["response_format"]["type"] == "json_schema"
    assert fake.requests[-1]["response_format"]["json_schema"]["name"] == "City"
    assert resp.choices[0].message.parsed == City(name="Paris", country="France")


def test_logprobs_come_back_streamed_and_not(plain: Any, fake: FakeOpenAI) -> None:
    fake.script(UP, ok("Paris is nice"))
    messages = [{"role": "user", "content": "hi"}]
    resp = plain.chat.completions.create(model="m", messages=messages, logprobs=True, top_logprobs=2)
    assert fake.requests[-1]["logprobs"] is True and fake.requests[-1]["top_logprobs"] == 2
    content = resp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == "Paris is nice"
    assert [len(t.top_logprobs) for t in content] == [2] * len(content)
    chunks = list(plain.chat.completions.create(model="m", messages=messages, logprobs=True, top_logprobs=1, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in streamed) == "Paris is nice" and all(len(t.top_logprobs) == 1 for t in streamed)


def test_streamed_logprobs_follow_the_text_a_response_stage_rewrote(shouting: Any, fake: FakeOpenAI) -> None:
    fake.script(UP, ok("Paris is nice"))
    chunks = list(shouting.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], logprobs=True, stream=True
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "PARIS IS NICE"
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in streamed) == "Paris is nice"  # what the model generated


def test_penalties_logit_bias_and_user_are_forwarded(plain: Any, fake: FakeOpenAI) -> None:
    plain.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}],
        frequency_penalty=0.5, presence_penalty=-0.25, logit_bias={"50256": -100}, user="user-42",
    )
    sent = fake.requests[-1]
    assert (sent["frequency_penalty"], sent["presence_penalty"]) == (0.5, -0.25)
    assert sent["logit_bias"] == {"50256": -100} and sent["user"] == "user-42"


def test_tool_turns_and_developer_messages_reach_the_upstream_intact(plain: Any, fake: FakeOpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "user", "content": "So?"},
    ]
    resp = plain.chat.completions.create(model="m", messages=messages, tools=[WEATHER])
    sent = fake.requests[-1]["messages"]
    # litellm sends a developer message with the role every OpenAI-compatible endpoint takes, and an
    # assistant turn with no content without the key (``content: null`` and absent mean the same)
    assert sent[0] == {"role": "system", "content": "Answer in one line."}
    assert sent[2].get("content") is None
    assert {k: v for k, v in sent[2].items() if k != "content"} == {"role": "assistant", "tool_calls": [call]}
    assert sent[1] == messages[1] and sent[3:] == messages[3:]
    assert resp.choices[0].message.content == "echo: So?"


def test_text_parts_are_joined_with_a_newline_and_images_forwarded(plain: Any, fake: FakeOpenAI) -> None:
    text_parts = [{"type": "text", "text": "Name a"}, {"type": "text", "text": "colour."}]
    resp = plain.chat.completions.create(model="m", messages=[{"role": "user", "content": text_parts}])
    assert resp.choices[0].message.content == "echo: Name a\ncolour."
    assert _trace(resp)[0]["before"] == "Name a\ncolour."
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    plain.chat.completions.create(model="m", messages=[{"role": "user", "content": [text_parts[0], image]}])
    assert fake.requests[-1]["messages"][0]["content"] == [text_parts[0], image]


# -- refused ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def function_client() -> Iterator[Any]:
    llm = FunctionLLM(lambda messages, temperature=None: f"t={temperature}", name="fn")
    with _serve(create_app(Pipeline(llm), model_name="m")) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": [WEATHER]}, "tools"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"frequency_penalty": 1.0}, "frequency_penalty"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[1]"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "user", "content": "b"}]},
         "messages[1].tool_calls"),
    ],
)
def test_a_function_backend_refuses_what_it_cannot_do(function_client: Any, extra: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as e:
        function_client.chat.completions.create(**body)
    assert e.value.body["param"] == param and param.split("[")[0] in e.value.body["message"]


def test_neutral_values_and_sampling_parameters_pass(function_client: Any) -> None:
    resp = function_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], n=1, logprobs=False, frequency_penalty=0,
        temperature=0.25, max_tokens=5, user="u1",
    )
    assert resp.choices[0].message.content == "t=0.25"


def test_the_local_model_refuses_tools_and_images_and_takes_developer_messages(tiny_model_dir: Path) -> None:
    from middleware.local import LocalBackend

    with _serve(create_app(Pipeline(LocalBackend(tiny_model_dir, max_tokens=4)), model_name="m")) as url:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        resp = c.chat.completions.create(
            model="m", messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        )
        assert resp.choices[0].finish_reason in ("stop", "length")
        for extra, param in [({"tools": [WEATHER]}, "tools"), ({"n": 3}, "n"), ({"top_logprobs": 2, "logprobs": True}, "logprobs")]:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], **extra)
            assert e.value.body["param"] == param
        image = [{"type": "image_url", "image_url": {"url": "x"}}]
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": image}], stream=stream)
            assert e.value.body["param"] == "messages[0].content[0]"
