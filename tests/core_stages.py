"""Stages and an echo LLM shared by the core tests (types, stages, streaming, pipeline, config)."""

from __future__ import annotations

import time

from middleware import FunctionLLM, PromptStage, ResponseStage, note


def echo_llm() -> FunctionLLM:
    return FunctionLLM(lambda msgs: f"echo: {msgs[-1]['content']}", name="echo")


class Upper(PromptStage):
    def process(self, request):
        return request.with_last_user_message(request.last_user_message.upper())


class Boom(PromptStage):
    def process(self, request):
        raise RuntimeError("rewriter crashed")


class Slow(PromptStage):
    def process(self, request):
        time.sleep(0.5)
        return request.with_last_user_message("too late")


class Exclaim(ResponseStage):
    def process(self, request, response):
        return response.model_copy(update={"text": response.text + "!"})


class BoomResponse(ResponseStage):
    def process(self, request, response):
        raise ValueError("corrector crashed")


class Noting(ResponseStage):
    def process(self, request, response):
        note("kept the original: looked fine")
        return response
