"""One set of weights shared by many policies: the base model, its tokenizer and its LoRA adapters.

Policies built from one base (other prompts, other adapters) share a Backbone, so several
adapters live on one copy of the weights and a batch can mix them (one fused forward, `fused_lora.py`; PEFT's
mixed-adapter batches where that does not apply).

`Backbone` is assembled from three mixins, each in its own file: the adapters (`_adapters.py`), the soft prompts
(`_soft_tokens.py`) and the thread model — the lock, each thread's mode, training runs (`_threads.py`, whose docstring
says why one lock). This file keeps the weights, activation checkpointing and the forward.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import warnings
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import fused_lora
from ._adapters import BASE, LORA_TARGETS, Adapters, default_lora_config  # noqa: F401  (the last two re-exported)
from ._soft_tokens import SoftTokens
from ._threads import Registrations, ThreadModel, _Run, _serialised  # noqa: F401  (Registrations: re-exported)
from .chat import template_end_of_turn
from .errors import BackboneBusyError, ContextLengthError, InvalidArgumentError


class Backbone(Adapters, SoftTokens, ThreadModel):
    """A causal LM + tokenizer + named adapters. Policies hold a reference, never a copy."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 activation_checkpointing: bool = False) -> None:
        self.model: PreTrainedModel | PeftModel = model
        self.tokenizer = tokenizer
        self.name = name
        self.lock = threading.RLock()  # one forward, training step or (un)registration at a time (`_threads.py`)
        self._local = threading.local()  # per thread: .mode (a _Mode), .recorders (open `recording()` blocks)
        self._runs: list[_Run] = []  # live training runs, all in one thread (`training_run`)
        self._off: contextlib.ExitStack | None = None  # open while the adapters are off for a through_base mode
        if tokenizer.pad_token_id is None:  # pad == eos is fine: masks carry the padding, never the id
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id: int = int(tokenizer.pad_token_id)
        self.stop_ids: tuple[int, ...] = _stop_ids(tokenizer, self.base_model)
        self._soft: dict[int, torch.Tensor] = {}  # first virtual id -> vectors, one entry per live soft prompt
        self._next_virtual = 0  # virtual ids are never reused: a released soft prompt's ids stay unknown
        self._virtual: torch.Tensor | None = None  # virtual ids of the current forward (between the hooks, lock held)
        emb = self.base_model.get_input_embeddings()
        self._soft_hooks = (emb.register_forward_pre_hook(self._mask_virtual),
                            emb.register_forward_hook(self._fill_virtual))
        self.activation_checkpointing = activation_checkpointing

    # -- training mode -------------------------------------------------------------------------
    @property
    def activation_checkpointing(self) -> bool:
        """Recompute each layer's activations in the backward pass instead of keeping them: a LoRA step's peak
        memory about halves and it runs ~25% slower. Applies to forwards inside `training()` only."""
        return self._checkpointing

    @activation_checkpointing.setter
    @_serialised
    def activation_checkpointing(self, on: bool) -> None:
        base = self.base_model
        if on and not base.supports_gradient_checkpointing:
            raise InvalidArgumentError(f"activation_checkpointing=True: model {self.name!r} does not support it; "
                                       "leave it off (use smaller batches to save memory instead).")
        with warnings.catch_warnings():  # the gradient_* names work in every transformers 5.x (newer ones alias them)
            warnings.simplefilter("ignore", FutureWarning)
            if on:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            elif base.is_gradient_checkpointing:
                base.gradient_checkpointing_disable()
        self._checkpointing = bool(on)

    def release_memory(self) -> None:
        """After a training loop: hand the freed activation memory back to the system. glibc keeps freed blocks
        for reuse, so a notebook's resident memory would otherwise stay at its highest point (Binder counts it)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    # -- the weights ---------------------------------------------------------------------------
    @property
    def base_model(self) -> PreTrainedModel:
        """The underlying transformers model (adapters, if any, are injected into it)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.base_model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int:
        cfg = self.base_model.config
        return int(getattr(cfg, "max_position_embeddings", None) or self.tokenizer.model_max_length)

    @property
    def num_layers(self) -> int:
        return int(self.base_model.config.num_hidden_layers)

    def fingerprint(self) -> dict[str, int | str]:
        """What an adapter must agree with to be loaded on this base."""
        cfg = self.base_model.config
        return {"model_type": cfg.model_type, "hidden_size": cfg.hidden_size,
                "num_hidden_layers": cfg.num_hidden_layers, "vocab_size": self.vocab_size}

    # -- forward -------------------------------------------------------------------------------
    def check_length(self, n_tokens: int, what: str) -> None:
        if n_tokens > self.context_length:
            raise ContextLengthError(
                f"{what} has {n_tokens} tokens but the model's context window is {self.context_length}: "
                "shorten it, or pass truncate=True to keep the last tokens."
            )

    @_serialised
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        adapters: Sequence[str | None],
        exit_layers: Sequence[int | None] | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: object = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, object]:
        """One batched forward; row i uses adapter `adapters[i]` and (optionally) exits at layer `exit_layers[i]`.

        Returns logits [B, T, V] in float32 and the updated KV cache. `logits_to_keep=k` (k > 0) applies the LM
        head to the last k positions only (T = k): a decoder's prefill needs one, and full-vocabulary float32
        logits at every prompt position are most of its memory.

        Thread-safe: it runs with `lock` held, in the calling thread's mode (`training()`); while another thread
        trains, it waits for the current training step (see `_threads.py`).
        """
        self._check_adapters(adapters)
        self._apply(self._mode)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        layered = exit_layers is not None and any(layer is not None for layer in exit_layers)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache=past_key_values, use_cache=use_cache,
                      output_hidden_states=layered, logits_to_keep=logits_to_keep)
        if isinstance(self.model, PeftModel) and self.model.training:
            out = self._train_forward(adapters, kwargs)
        elif isinstance(self.model, PeftModel) and (any(a is not None for a in adapters) or self._base_rows_cheap()):
            fused = fused_lora.rows(self.model, adapters)  # one op pair per LoRA layer; None: PEFT's own path
            if fused is None:
                kwargs["adapter_names"] = [a or BASE for a in adapters]
            with fused or contextlib.nullcontext():
                out = self.model(**kwargs)
        else:
            with self.adapters_disabled():
                out = self.model(**kwargs)
        logits = out.logits.float()
        if layered:
            logits = self._early_exit(logits, out.hidden_states, exit_layers)  # type: ignore[arg-type]
        return logits, out.cache

    def _check_adapters(self, adapters: Sequence[str | None]) -> None:
        """Every named adapter is loaded, and none is being trained by another thread's live run."""
        missing = sorted({a for a in adapters if a is not None} - set(self.adapters))
        if missing:
            raise InvalidArgumentError(f"adapter(s) {missing} are not loaded on {self.name!r} (loaded: {self.adapters}): "
                                       "removed by remove_adapter or by a panel's next run? Load them again "
                                       "(policy.with_adapter(folder)).")
        me = threading.get_ident()
        busy = next((r for r in self._runs if r.thread != me and r.adapter is not None and r.adapter in adapters), None)
        if busy is not None:
            raise BackboneBusyError(f"adapter {busy.adapter!r} is being trained by a running job (its weights change "
                                    "with every step): wait for the panel's job or press Stop, then use it.")

    def _train_forward(self, adapters: Sequence[str | None], kwargs: dict[str, object]) -> object:
        """Inside `training()` PEFT refuses mixed-adapter batches: one adapter for the whole batch, made active."""
        if len(set(adapters)) != 1:
            raise InvalidArgumentError(f"a training forward takes one adapter for all rows, got {sorted(map(str, set(adapters)))}; "
                                       "run one forward per adapter.")
        if adapters[0] is None:
            if self._mode.through_base:
                return self.model(**kwargs)
            if self._checkpointing and self.adapters and torch.is_grad_enabled():  # the recompute would see the adapters
                raise InvalidArgumentError("a training forward through the base with activation checkpointing on: run it "
                                           "inside Backbone.training(through_base=True), which keeps the adapters off "
                                           "for the backward's recompute too.")
            with self.adapters_disabled():
                return self.model(**kwargs)
        if self._mode.through_base:
            raise InvalidArgumentError(f"adapter {adapters[0]!r} in a Backbone.training(through_base=True) block, "
                                       "where the adapters are off: use training() for adapter forwards.")
        if self.model.active_adapter != adapters[0]:
            flags = [(p, p.requires_grad) for p in self.model.parameters()]
            self.model.set_adapter(adapters[0])
            for p, trainable in flags:  # set_adapter marks the adapter trainable: which weights train is the caller's call
                p.requires_grad_(trainable)
        return self.model(**kwargs)

    def _base_rows_cheap(self) -> bool:
        """Run base-only batches as PEFT "__base__" rows: the same numbers as `disable_adapter()`, which walks
        every module on each call (get_model_status) and made a CPU decoding step ~1.6x slower. PEFT allows
        mixed batches only in eval mode and for LoRA."""
        return not self.model.training and all(isinstance(c, LoraConfig) for c in self.model.peft_config.values())

    def _early_exit(self, logits: torch.Tensor, hidden: tuple[torch.Tensor, ...],
                    exit_layers: Sequence[int | None]) -> torch.Tensor:
        """Replace row i's logits by the model's own head applied to (normed) layer `exit_layers[i]` (DoLa)."""
        norm = self.final_norm()
        logits = logits.clone()
        for i, layer in enumerate(exit_layers):
            if layer is not None and layer < self.num_layers:
                h = norm(hidden[layer][i, -logits.shape[1]:])  # hidden[0] is the embedding output
                logits[i] = self.output_head(h).float()
        return logits

    def final_norm(self) -> torch.nn.Module:
        """The norm the decoder applies after its last layer (Llama's `model.norm`, Phi's `final_layernorm`,
        GPT-2's `ln_f`, ...): an early exit applies it to an earlier layer's hidden states, as the model does."""
        norm = _find_final_norm(self.base_model)
        if norm is None:
            raise InvalidArgumentError(
                f"exit_layer (DoLa's candidate_layers): model {self.name!r} ({type(self.base_model).__name__}) has no "
                f"final norm triangle_nb can find (a decoder attribute {', '.join(_NORM_NAMES)} or a last *Norm "
                "module), so an earlier layer cannot be read out. Use the final layer (exit_layer=None, no DoLa) "
                "or a model family that has one (Llama, Qwen2, Gemma, Phi, GPT-2, ...).")
        return norm

    def output_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own LM head on hidden states [..., d] -> logits [..., V]: its output embedding, then the
        final logit soft-cap of families that have one (Gemma 2 and 3: cap · tanh(logits / cap))."""
        logits = self.base_model.get_output_embeddings()(hidden)
        cap = getattr(self.base_model.config.get_text_config(), "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def _stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> tuple[int, ...]:
    """The ids that end a response, read from the model: its eos ids (generation config, config, tokenizer)
    and the end-of-turn token its chat template writes after an assistant message."""
    found = (getattr(model.generation_config, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
             tokenizer.eos_token_id, template_end_of_turn(tokenizer))
    return tuple(sorted({int(i) for ids in found for i in _as_ids(ids)}))


def _as_ids(ids: int | Sequence[int] | None) -> list[int]:
    """A config's token id field (one id, a list of ids, or None) as a list."""
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")  # the final norm across families


def _find_final_norm(model: PreTrainedModel) -> torch.nn.Module | None:
    """The decoder's final norm: a known attribute name, else its last direct child that is a norm; or None."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in _NORM_NAMES:
        if isinstance(getattr(decoder, name, None), torch.nn.Module):
            return getattr(decoder, name)
    norms = [m for m in decoder.children() if "norm" in type(m).__name__.lower()]
    return norms[-1] if norms else None
