"""Several ``alignware serve`` replicas behind a gateway: each request is answered whole by one replica (no
state is kept between requests), so the LiteLLM router (the library behind the LiteLLM gateway's load
balancing) spreads them over the replicas and every answer is the one a single server gives."""

from __future__ import annotations

from typing import Any

import pytest

from middleware import FunctionLLM, Pipeline
from middleware.server import create_app
from middleware.stages import IdentityPromptStage

litellm = pytest.importorskip("litellm")
pytest.importorskip("uvicorn")

from test_server import _serve  # noqa: E402


def test_replicas_behind_the_litellm_router_share_the_requests() -> None:
    served = {"a": 0, "b": 0}

    def replica(name: str) -> Any:
        def answer(messages: list[dict[str, Any]]) -> str:
            served[name] += 1
            return "echo: " + messages[-1]["content"]

        return create_app(Pipeline(FunctionLLM(answer, name="chat-app"), [IdentityPromptStage()]))

    with _serve(replica("a")) as url_a, _serve(replica("b")) as url_b:
        router = litellm.Router(
            model_list=[{"model_name": "aligned", "litellm_params": {"model": "openai/alignware", "api_base": url, "api_key": "unused"}}
                        for url in (url_a, url_b)],
            routing_strategy="simple-shuffle", num_retries=0,
        )
        answers = [router.completion(model="aligned", messages=[{"role": "user", "content": f"q{i}"}]).choices[0].message.content
                   for i in range(24)]
        # a follow-up turn carries the whole conversation, so whichever replica gets it answers it alike
        follow_up = router.completion(model="aligned", messages=[
            {"role": "user", "content": "q0"}, {"role": "assistant", "content": answers[0]}, {"role": "user", "content": "and then?"},
        ]).choices[0].message.content
    assert answers == [f"echo: q{i}" for i in range(24)] and follow_up == "echo: and then?"
    assert served["a"] > 0 and served["b"] > 0 and served["a"] + served["b"] == 25
