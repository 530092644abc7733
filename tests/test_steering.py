"""``steering.decoder_layers``: the decoder blocks of tiny random models built from configs."""

from __future__ import annotations

import pytest
import torch

from middleware.errors import InputError
from middleware.models import decoder_layers_path
from steering import decoder_layers


def _llama(layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _gpt2(layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=16, n_layer=layers, n_head=2))


def test_llama_blocks_bare_and_headless() -> None:
    model = _llama(3)
    blocks = decoder_layers(model)
    assert blocks is model.model.layers and len(blocks) == 3
    assert decoder_layers_path(model)[1] == "model.layers"
    assert decoder_layers(model.model) is model.model.layers


def test_gpt2_blocks() -> None:
    model = _gpt2(2)
    assert decoder_layers(model) is model.transformer.h
    assert decoder_layers_path(model)[1] == "transformer.h"


def test_blocks_through_a_peft_wrapper() -> None:
    from peft import LoraConfig, get_peft_model

    model = _llama(2)
    layers = model.model.layers
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert decoder_layers(wrapped) is layers


def test_a_model_without_blocks_is_an_input_error_naming_its_type() -> None:
    class NoBlocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Cfg", (), {"num_hidden_layers": 4, "model_type": "oddball"})()
            self.proj = torch.nn.Linear(2, 2)

    with pytest.raises(InputError, match="oddball"):
        decoder_layers(NoBlocks())
