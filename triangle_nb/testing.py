"""Helpers for tests and examples: a tiny random model with the real tokenizer (seconds, not minutes)."""

from __future__ import annotations

import enum
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .backbone import Backbone, default_lora_config
from .errors import InvalidArgumentError
from .loading import converted_gguf, default_gguf_path
from .policy import Policy


class Family(enum.StrEnum):
    """Model families `tiny_policy` builds: each with the default model's tokenizer and chat template."""

    LLAMA = "llama"  # the default model's own family (SmolLM2)
    QWEN2 = "qwen2"
    GEMMA = "gemma"  # scales its input embeddings by √d inside the embedding
    GEMMA2 = "gemma2"  # soft-caps its final logits: cap · tanh(logits / cap)


# family -> (config class, model class, options beyond the shared ones)
_FAMILIES: dict[Family, tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]] = {
    Family.LLAMA: (LlamaConfig, LlamaForCausalLM, {}),
    Family.QWEN2: (Qwen2Config, Qwen2ForCausalLM, {}),
    Family.GEMMA: (GemmaConfig, GemmaForCausalLM, {"head_dim": 16}),
    Family.GEMMA2: (Gemma2Config, Gemma2ForCausalLM, {"head_dim": 16, "query_pre_attn_scalar": 16}),
}


def tiny_policy(seed: int = 0, *, layers: int = 2, hidden: int = 64, family: Family | str = Family.LLAMA) -> Policy:
    """A randomly initialised model (the default model's family, Llama, unless `family` says another), with the
    real tokenizer and chat template.

    >>> tiny_policy(family="qwen2").backbone.name  # doctest: +SKIP
    'tiny-qwen2-0'
    """
    config_cls, model_cls, extra = _FAMILIES[_family(family)]
    folder = converted_gguf(default_gguf_path())
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    return Policy(Backbone(model_cls(cfg).eval(), tok, name=f"tiny-{Family(family).value}-{seed}"))


def _family(family: Family | str) -> Family:
    try:
        return Family(family)
    except ValueError:
        raise InvalidArgumentError(f"family must be one of {[f.value for f in Family]}, got {family!r}.") from None


def perturbed_adapter(policy: Policy, name: str = "pert", scale: float = 0.2, seed: int = 0) -> Policy:
    """Add an adapter with random (non-zero) LoRA B to `policy`'s backbone, so π* ≠ π0; return π*."""
    policy.backbone.add_adapter(name, default_lora_config())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.backbone.model.named_parameters():
            if f".{name}." in n and "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return policy.with_adapter(name)
