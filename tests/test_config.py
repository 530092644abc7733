"""Pipeline configs: building a pipeline, errors that name the file and the field (``middleware.config``)."""

from __future__ import annotations

import pytest

from middleware import InputError, Pipeline
from middleware.config import PipelineConfig, load_pipeline
from middleware.stages import IdentityPromptStage, IdentityResponseStage
from core_stages import echo_llm


def test_config_builds_pipeline(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("defaults: {max_tokens: 7}\nstages:\n  - type: identity_prompt\n  - type: identity_response\n    name: last\n")
    pipe = load_pipeline(f, llm=echo_llm())
    assert isinstance(pipe.stages[0], IdentityPromptStage) and isinstance(pipe.stages[1], IdentityResponseStage)
    assert pipe.stages[1].name == "last" and pipe.defaults == {"max_tokens": 7}
    assert [t.verdict for t in pipe.chat("x").trace] == ["passed", "passed"]


def test_config_errors_name_file_and_field(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("stages:\n  - name: x\n")
    with pytest.raises(InputError, match=rf"{f}: stages.0.type: Field required"):
        PipelineConfig.load(f)
    f.write_text("stages:\n  - type: nope\n")
    with pytest.raises(InputError, match="unknown stage type 'nope'"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("stages:\n  - type: identity_prompt\n    bogus: 1\n")
    with pytest.raises(InputError, match="stages.0 \\(identity_prompt\\).*bogus"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("lmm: x\n")
    with pytest.raises(InputError, match="lmm: Extra inputs are not permitted"):
        PipelineConfig.load(f)
    # a stage's own validation (ValueError), an unknown type and bad LLM options name the file and the entry
    f.write_text("stages:\n  - type: identity_prompt\n  - type: identity_response\n    on_error: fail\n")
    with pytest.raises(InputError, match=rf"{f}: stages.1 \(identity_response\): on_error must be 'pass' or 'raise'"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("stages:\n  - type: identity_prompt\n  - type: identiy_response\n")
    with pytest.raises(InputError, match=rf"{f}: stages.1 \(identiy_response\): unknown stage type"):
        load_pipeline(f, llm=echo_llm())
    f.write_text("llm: openai/gpt-4o-mini\nllm_options: {max_retries: -1}\n")
    with pytest.raises(InputError, match=rf"{f}: llm_options: max_retries must be 0 or more"):
        load_pipeline(f)
    # generation defaults are checked as a request's parameters would be, when the file loads
    f.write_text("defaults: {max_tokens: lots}\n")
    with pytest.raises(InputError, match=rf"{f}: defaults: max_tokens: Input should be a valid integer"):
        PipelineConfig.load(f)
    f.write_text("defaults: {temprature: 0.2}\n")
    with pytest.raises(InputError, match=rf"{f}: defaults: unknown key\(s\) 'temprature'; known: model, temperature"):
        PipelineConfig.load(f)
    with pytest.raises(InputError, match="defaults: max_tokens: max_tokens must be at least 1"):
        Pipeline(echo_llm(), defaults={"max_tokens": 0})
    assert Pipeline(echo_llm(), defaults={"stop": "END"}).defaults == {"stop": ["END"]}


def test_a_config_that_is_not_utf8_names_the_file_and_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_bytes(b"stages:\n  - type: identity_prompt\n    name: caf\xe9\n")
    with pytest.raises(InputError, match=rf"{f}:3: not UTF-8 text"):
        load_pipeline(f, llm=echo_llm())


def test_a_stage_module_that_raises_on_import_is_an_input_error_naming_it(tmp_path):
    (tmp_path / "broken_stages.py").write_text("raise RuntimeError('missing settings file')\n")
    f = tmp_path / "p.yaml"
    f.write_text("stages:\n  - type: broken_stages:Shout\n")
    with pytest.raises(InputError, match=r"broken_stages:Shout.*importing broken_stages raised RuntimeError: missing settings file"):
        load_pipeline(f, llm=echo_llm())


@pytest.mark.parametrize(
    "text, message",
    [
        ("llm: nosuchprovider/m\n", r"llm: model 'nosuchprovider/m': litellm does not know the provider 'nosuchprovider'"),
        ("llm: my-own-model\n", r"llm: model 'my-own-model': litellm does not know a bare model name"),
        ("llm: openai/m\nllm_options: {fallbacks: [openai/a, nosuch/b]}\n", r"llm_options: fallbacks\[1\]: model 'nosuch/b'"),
        ("llm: openai/m\nllm_options: {fallbacks: openai/a}\n", r"llm_options: fallbacks must be a list"),
        ("llm: openai/m\nllm_options: {timeout: soon}\n", r"llm_options: timeout must be a number, got 'soon'"),
        ("llm: openai/m\nllm_options: {max_retries: 1.5}\n", r"llm_options: max_retries must be a whole number"),
        ("llm: openai/m\nllm_options: {time_out: 5}\n", r"llm_options: unknown option 'time_out'; did you mean 'timeout'\?"),
        ("llm: openai/m\nllm_options: {backoff_base: 1}\n", r"llm_options: unknown option 'backoff_base'; did you mean 'backoff_max'\?"),
        ("llm: openai/m\nstages:\n  - {type: identity_prompt, timeout: soon}\n", r"stages.0 \(identity_prompt\): timeout must be positive seconds, got 'soon'"),
        ("llm: openai/m\nstages:\n  - {type: identity_prompt, skip_if: title}\n", r"stages.0 \(identity_prompt\): skip_if must be a function"),
    ],
)
def test_a_config_that_would_fail_every_request_is_refused_when_it_loads(tmp_path, text, message):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=rf"{f}: {message}"):
        load_pipeline(f)


def test_provider_options_the_backend_does_not_know_still_reach_litellm(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("llm: my-model\nllm_options: {custom_llm_provider: openai, api_base: 'http://127.0.0.1:9/v1', top_k: 5}\n")
    pipe = load_pipeline(f)
    assert isinstance(pipe, Pipeline) and pipe.llm.litellm_kwargs["top_k"] == 5
