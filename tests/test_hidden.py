"""``steering.hidden``: block outputs read by hooks, answer-token states, layer indices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from middleware.errors import InputError
from middleware.types import PreferencePair
from steering.hidden import block_hidden, capture_blocks, layer_indices, pair_states, response_states, with_block_hidden
from tiny import make_tiny_model_dir

ITEMS = [("What is the capital of France?", "Paris is the capital of France."),
         ("Hello!", "Hello! How can I help you today?"),
         ("Please improve this prompt.", "I cannot help with that.")]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp(f"tiny-{request.param}"), arch=request.param, layers=3)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_block_hidden_reads_and_replaces_tensors_and_tuples() -> None:
    h, other = torch.ones(2), object()
    assert block_hidden(h) is h and block_hidden((h, other)) is h
    new = torch.zeros(2)
    assert with_block_hidden(h, new) is new
    out = with_block_hidden((h, other), new)
    assert isinstance(out, tuple) and out[0] is new and out[1] is other


def test_layer_indices(model_tok) -> None:
    model, _ = model_tok
    assert layer_indices(model, None) == [0, 1, 2]
    assert layer_indices(model, [-1, 0, 2]) == [0, 2]
    with pytest.raises(InputError, match="3 decoder blocks"):
        layer_indices(model, [3])
    with pytest.raises(InputError, match="empty"):
        layer_indices(model, [])


def test_capture_matches_the_models_hidden_states_and_unhooks(model_tok) -> None:
    model, tok = model_tok
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    hooks = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    with torch.no_grad():
        model(ids, output_hidden_states=True)  # transformers adds its own recording hooks on first use
    before = hooks()
    with capture_blocks(model, [0, 1]) as seen, torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for i in (0, 1):  # hidden_states[i + 1] is block i's output (the last one is after the final norm)
        torch.testing.assert_close(seen[i], out.hidden_states[i + 1])
    assert hooks() == before


def test_states_do_not_depend_on_batching(model_tok) -> None:
    model, tok = model_tok
    together = response_states(model, tok, ITEMS, [1, 2], batch_size=3)
    alone = [response_states(model, tok, [it], [1, 2], batch_size=1) for it in ITEMS]
    for layer in (1, 2):
        assert together[layer].shape == (3, 32)
        torch.testing.assert_close(together[layer], torch.cat([a[layer] for a in alone]), atol=1e-5, rtol=1e-4)


def test_reductions_agree(model_tok) -> None:
    model, tok = model_tok
    full = response_states(model, tok, ITEMS, [0], reduce="none")[0]
    mean = response_states(model, tok, ITEMS, [0], reduce="mean")[0]
    last = response_states(model, tok, ITEMS, [0], reduce="last")[0]
    for k, span in enumerate(full):
        torch.testing.assert_close(mean[k], span.mean(0))
        torch.testing.assert_close(last[k], span[-1])


def test_pair_states_and_empty_input(model_tok) -> None:
    model, tok = model_tok
    pairs = [PreferencePair(prompt=p, chosen=a, rejected="No.") for p, a in ITEMS]
    chosen, rejected = pair_states(model, tok, pairs, [0])
    assert chosen[0].shape == rejected[0].shape == (3, 32)
    assert not torch.allclose(chosen[0], rejected[0])
    with pytest.raises(InputError, match="no items"):
        response_states(model, tok, [], [0])
