"""A tiny randomly initialised Llama with a byte-level BPE tokenizer and a ChatML chat template.

Built from a config and saved as a normal checkpoint folder, so tests exercise the real loading
code with no downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How can I help you today? Here is a helpful and harmless answer.",
    "Please improve this prompt to get a more helpful response.",
    "Edit the following question answer pair to make it more helpful and harmless.",
    "What is the capital of France? Paris is the capital of France.",
    "I cannot help with that, but here is something safe you could try instead.",
] * 20


def make_tiny_model_dir(path: str | Path, *, seed: int = 0, hidden_size: int = 32, layers: int = 2, arch: str = "llama") -> Path:
    """Write a tiny checkpoint (config, safetensors weights, tokenizer) to ``path``: a Llama, or with
    ``arch="qwen2"`` / ``"gpt2"`` a Qwen2 / GPT-2 of the same size and tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator(CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    tok.save_pretrained(path)

    torch.manual_seed(seed)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model: Any
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=hidden_size, n_layer=layers, n_head=4, n_positions=512, **ids))
    else:
        cls, cfg_cls = (Qwen2ForCausalLM, Qwen2Config) if arch == "qwen2" else (LlamaForCausalLM, LlamaConfig)
        config = cfg_cls(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **ids,
        )
        model = cls(config)
    model.save_pretrained(path)
    return path
