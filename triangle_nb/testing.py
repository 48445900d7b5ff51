"""Helpers for tests and examples: a tiny random model with the real tokenizer (seconds, not minutes)."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .backbone import Backbone
from .loading import converted_gguf, default_gguf_path
from .policy import Policy


def tiny_policy(seed: int = 0, *, layers: int = 2, hidden: int = 64) -> Policy:
    """A randomly initialised Llama of the default model's family, with the real tokenizer and chat template."""
    folder = converted_gguf(default_gguf_path())
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return Policy(Backbone(LlamaForCausalLM(cfg).eval(), tok, name=f"tiny-llama-{seed}"))
