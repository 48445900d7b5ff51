"""Helpers for tests and examples: a tiny random model with the real tokenizer (seconds, not minutes)."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .backbone import Backbone, default_lora_config
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


def perturbed_adapter(policy: Policy, name: str = "pert", scale: float = 0.2, seed: int = 0) -> Policy:
    """Add an adapter with random (non-zero) LoRA B to `policy`'s backbone, so π* ≠ π0; return π*."""
    policy.backbone.add_adapter(name, default_lora_config())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.backbone.model.named_parameters():
            if f".{name}." in n and "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return policy.with_adapter(name)
