"""Requests, messages and data files: validation with named problems (``middleware.types``)."""

from __future__ import annotations

import json

import pytest

from middleware import ChatChunk, ChatRequest, InputError, Message, load_pairs, load_prompts


def test_request_rejects_bad_input_with_named_problem():
    with pytest.raises(InputError, match="messages is empty"):
        ChatRequest.build([])
    with pytest.raises(InputError, match=r"messages\[1\].*unknown role 'robot'"):
        ChatRequest.build([{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}])
    with pytest.raises(InputError, match="content part 1 is of type 'text' but its 'text' is not a string") as e:
        ChatRequest.build([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": 3}]}])
    assert e.value.field == "messages[0].content[1]"
    with pytest.raises(InputError, match="tool_call_id") as e:
        ChatRequest.build([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}])
    assert e.value.field == "messages[1].tool_call_id"
    req = ChatRequest.build([{"role": "user", "content": [{"type": "text", "text": "Name a"}, {"type": "text", "text": "colour."}]}])
    assert req.messages[0].content == "Name a\ncolour." and req.messages[0].parts is None
    assert req.messages[0].model_dump() == {"role": "user", "content": "Name a\ncolour."}  # plain messages dump as before
    with pytest.raises(InputError, match="max_tokens"):
        ChatRequest.build("hi", max_tokens=0)


def test_messages_keep_tool_fields_and_non_text_parts():
    """Tool turns and images are kept for a backend that takes them; stages see and rewrite the text."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    req = ChatRequest.build([
        {"role": "developer", "content": "Be brief."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "What is"}, image, {"type": "text", "text": "this?"}]},
    ])
    assert req.messages[1].tool_calls == [call] and req.messages[1].content == ""
    assert req.messages[2].tool_call_id == "call_1"
    assert req.last_user_message == "What is\nthis?" and req.messages[3].parts is not None
    new = req.with_last_user_message("WHAT IS THIS?")
    assert new.messages[3].parts == [{"type": "text", "text": "WHAT IS THIS?"}, image]
    assert new.messages[3].content == "WHAT IS THIS?" and new.messages[:3] == req.messages[:3]
    with pytest.raises(InputError) as e:
        ChatRequest.build([{"role": "user", "content": "x", "tool_calls": [call]}])
    assert e.value.field == "messages[0].tool_calls"


def test_with_last_user_message_keeps_history():
    req = ChatRequest.build(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    )
    new = req.with_last_user_message("C")
    assert [m.content for m in new.messages] == ["a", "b", "C"]
    assert req.messages[2].content == "c"


def test_load_pairs_reports_file_line_field(tmp_path):
    f = tmp_path / "pairs.jsonl"
    good = {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(InputError, match=rf"{f}:3: rejected: Field required"):
        load_pairs(f)
    f.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(InputError, match=rf"{f}:2: invalid JSON"):
        load_pairs(f)
    bad_role = dict(good, prompt=[{"role": "bot", "content": "q"}])
    f.write_text(json.dumps(bad_role) + "\n")
    with pytest.raises(InputError, match=rf"{f}:1: prompt.0.role: unknown role 'bot'"):
        load_pairs(f)
    last_assistant = dict(good, prompt=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}])
    f.write_text(json.dumps(last_assistant) + "\n")
    with pytest.raises(InputError, match="last message of prompt must be the user's"):
        load_pairs(f)
    with pytest.raises(InputError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    f.write_bytes(json.dumps(good).encode() + b"\n" + json.dumps(dict(good, chosen="caf\u00e9")).encode().replace(b"\\u00e9", b"\xe9") + b"\n")
    with pytest.raises(InputError, match=rf"{f}:2: not UTF-8 text"):
        load_pairs(f)
    f.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert len(load_pairs(f, limit=1)) == 1
    for limit in (0, -5):
        with pytest.raises(InputError, match=f"limit must be at least 1, got {limit}"):
            load_pairs(f, limit=limit)
    f.write_text(json.dumps({"prompt": "q"}) + "\n" + json.dumps({"prompt": last_assistant["prompt"]}) + "\n")
    with pytest.raises(InputError, match=rf"{f}:2: the last message of prompt must be the user's"):
        load_prompts(f)


def test_shared_data_loads(shared_data):
    pairs = load_pairs(shared_data / "hh_harmless.jsonl")
    assert len(pairs) == 2003 and all(p.prompt[-1].role == "user" for p in pairs)
    bpo = load_pairs(shared_data / "bpo_pairs.jsonl")
    assert len(bpo) == 300 and bpo[0].optimized_prompt
    assert len(load_prompts(shared_data / "vicuna_eval_prompts.jsonl")) == 80


def test_message_is_immutable():
    m = Message(role="user", content="x")
    with pytest.raises(Exception):
        m.content = "y"  # type: ignore[misc]


def test_stage_trace_of_skips_validation_only_for_values_of_the_right_type():
    from pydantic import ValidationError

    from middleware.types import StageTrace

    fast = StageTrace.of("s", "prompt", "modified", 1.5, "a", "b", "why")
    assert fast == StageTrace(stage="s", kind="prompt", verdict="modified", latency_ms=1.5, before="a", after="b", reason="why")
    assert fast.model_dump() == {"stage": "s", "kind": "prompt", "verdict": "modified", "latency_ms": 1.5,
                                 "before": "a", "after": "b", "reason": "why", "choice": None}
    assert StageTrace.of("s", "response", "passed", 0.0) == StageTrace(stage="s", kind="response", verdict="passed")
    with pytest.raises(ValidationError):  # a value of another type is validated as before
        StageTrace.of(["not", "a", "name"], "prompt", "passed", 0.0)
    assert StageTrace.of("s", "prompt", "passed", 2).latency_ms == 2.0


def test_with_trace_copies_the_reply():
    from middleware.types import ChatResponse, StageTrace

    reply = ChatResponse(text="hi", model="m")
    trace = [StageTrace.of("s", "prompt", "passed", 0.1)]
    copy = reply.with_trace(trace)
    assert copy == reply.model_copy(update={"trace": trace}) and copy.trace is trace
    assert reply.trace == [] and copy.id == reply.id and copy.text == "hi"
    copy.text = "changed"
    assert reply.text == "hi"


def test_chat_response_of_skips_validation_only_for_values_of_the_right_type():
    from pydantic import ValidationError

    from middleware.types import ChatResponse, Usage

    kw = dict(id="chatcmpl-1", created=7, text="hi", finish_reason="stop", model="m", usage=Usage(prompt_tokens=1))
    fast = ChatResponse.of(**kw)
    assert fast == ChatResponse(**kw) and fast.trace == [] and fast.model_dump() == ChatResponse(**kw).model_dump()
    assert ChatResponse.of(**dict(kw, model=None)).model is None
    with pytest.raises(ValidationError):  # a value of another type is validated as before
        ChatResponse.of(**dict(kw, usage={"prompt_tokens": "many"}))


def test_a_one_string_request_is_what_validation_would_build() -> None:
    fast, checked = ChatRequest.build("hi"), ChatRequest(messages=[{"role": "user", "content": "hi"}])
    assert fast == checked and fast.model_dump_json() == checked.model_dump_json()
    assert fast.model_fields_set == checked.model_fields_set and fast.messages[0].model_fields_set == {"role", "content"}
    other = ChatRequest.build("hi")
    other.metadata["task"] = "title"  # each request has its own metadata
    assert fast.metadata == {} and ChatRequest.build("") == ChatRequest(messages=[{"role": "user", "content": ""}])


def test_a_text_piece_built_on_the_fast_path_equals_a_validated_chunk() -> None:
    fast, checked = ChatChunk.piece("Par", "m"), ChatChunk(delta="Par", model="m")
    assert fast == checked and fast.model_dump() == checked.model_dump()
    assert fast.model_fields_set == checked.model_fields_set
    with pytest.raises(Exception):  # a value of the wrong type still goes through validation
        ChatChunk.piece(3, "m")  # type: ignore[arg-type]


def test_a_directory_given_as_data_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match=rf"{tmp_path}: is a directory, not a JSONL file"):
        load_pairs(tmp_path)
