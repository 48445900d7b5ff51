"""One set of weights shared by many policies: the base model, its tokenizer and its LoRA adapters.

Policies built from one base (other prompts, other adapters) share a Backbone, so several
adapters live on one copy of the weights and a batch can mix them (PEFT mixed-adapter batches).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ._io import read_json
from .errors import AdapterMismatchError, ContextLengthError, InvalidArgumentError, ModelLoadError

BASE = "__base__"  # PEFT's adapter name for "no adapter" in mixed batches


class Backbone:
    """A causal LM + tokenizer + named adapters. Policies hold a reference, never a copy."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 activation_checkpointing: bool = False) -> None:
        self.model: PreTrainedModel | PeftModel = model
        self.tokenizer = tokenizer
        self.name = name
        if tokenizer.pad_token_id is None:  # pad == eos is fine: masks carry the padding, never the id
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id: int = int(tokenizer.pad_token_id)
        self.stop_ids: tuple[int, ...] = _stop_ids(tokenizer, self.base_model)
        self._soft: list[torch.Tensor] = []  # soft-prompt vectors, one block per registered soft prompt
        self._virtual: torch.Tensor | None = None  # virtual ids of the current forward (between the hooks)
        emb = self.base_model.get_input_embeddings()
        self._soft_hooks = (emb.register_forward_pre_hook(self._mask_virtual),
                            emb.register_forward_hook(self._fill_virtual))
        self.activation_checkpointing = activation_checkpointing
        self._through_base = False

    # -- training mode -------------------------------------------------------------------------
    @property
    def activation_checkpointing(self) -> bool:
        """Recompute each layer's activations in the backward pass instead of keeping them: a LoRA step's peak
        memory about halves and it runs ~25% slower. Applies to forwards inside `training()` only."""
        return self._checkpointing

    @activation_checkpointing.setter
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

    @contextlib.contextmanager
    def training(self, *, through_base: bool = False) -> Iterator[None]:
        """Train mode for differentiable forwards (and their backward); eval mode again on exit, errors included.

        `through_base=True`: every forward in the block runs through π0 with the adapters off (a soft prompt
        trained on the base while a teacher adapter is loaded). The adapters stay off until the block ends, so
        the backward's recompute under activation checkpointing sees the same weights as the forward.
        """
        self.model.train()
        self._through_base = through_base
        try:
            with self.adapters_disabled() if through_base else contextlib.nullcontext():
                yield
        finally:
            self._through_base = False
            self.model.eval()

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

    # -- adapters ------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self.model.peft_config) if isinstance(self.model, PeftModel) else []

    def unique_adapter_name(self, stem: str) -> str:
        i, name = 0, stem
        while name in self.adapters:
            i, name = i + 1, f"{stem}_{i + 1}"
        return name

    def add_adapter(self, name: str, config: PeftConfig | None = None) -> str:
        """Add a new trainable adapter (LoRA by default) and return its name."""
        config = config or default_lora_config()
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            with _quiet_peft():
                self.model = get_peft_model(self.model, config, adapter_name=name)
        self.model.eval()
        return name

    def load_adapter(self, path: str | Path, name: str) -> str:
        """Load a saved PEFT adapter under `name`, checking it was made for this base."""
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"adapter path {str(path)!r} has no adapter_config.json: pass a folder saved by "
                "PEFT's save_pretrained or by a triangle_nb result's save()."
            )
        self._check_fingerprint(path)
        _check_readable(path)
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            else:
                with _quiet_peft():
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            if isinstance(self.model, PeftModel) and name in self.model.peft_config:
                self.model.delete_adapter(name)  # no half-loaded adapter left behind
            raise AdapterMismatchError(
                f"adapter {str(path)!r} does not fit base model {self.name!r} ({str(exc)[:200]}). "
                "Load it on the base model it was trained for."
            ) from exc
        self.model.eval()
        return name

    def _check_fingerprint(self, path: Path) -> None:
        meta = path / "triangle_nb_base.json"
        if meta.is_file():
            theirs = read_json(meta)
            if theirs != self.fingerprint():
                raise AdapterMismatchError(
                    f"adapter {str(path)!r} was trained for a base with {theirs}, but this base has "
                    f"{self.fingerprint()}. Load it on the base model it was trained for."
                )

    def save_adapter(self, name: str, folder: Path) -> None:
        """Write adapter `name` (safetensors) plus the base fingerprint into `folder`."""
        assert isinstance(self.model, PeftModel)
        self.model.save_pretrained(str(folder), selected_adapters=[name], safe_serialization=True)
        sub = folder / name  # PEFT nests non-default adapters in a subfolder
        if sub.is_dir():
            for f in sub.iterdir():
                f.replace(folder / f.name)
            sub.rmdir()
        (folder / "triangle_nb_base.json").write_text(json.dumps(self.fingerprint()))

    def delete_adapter(self, name: str) -> None:
        if name in self.adapters and self.adapters == [name]:  # the last one: PEFT would keep it "active" and
            self.model = self.model.unload()  # fail on the next forward; unwrap to the plain model instead
        elif name in self.adapters:
            self.model.delete_adapter(name)

    # -- soft prompts: virtual token ids beyond the vocabulary -----------------------------------
    def register_soft_tokens(self, vectors: torch.Tensor) -> tuple[int, ...]:
        """Give soft-prompt vectors [n, d] virtual token ids (V, V+1, ... past the vocabulary).

        Prompt ids may then contain these ids; the input embedding returns `vectors` at their
        positions (by reference: a trainable Parameter receives gradients), so scoring, generation
        and KV caching need no other change.
        """
        emb = self.base_model.get_input_embeddings()
        if vectors.ndim != 2 or vectors.shape[1] != emb.weight.shape[1]:
            raise AdapterMismatchError(
                f"soft prompt vectors must be [n, {emb.weight.shape[1]}], got {list(vectors.shape)}.")
        start = emb.weight.shape[0] + sum(len(v) for v in self._soft)
        self._soft.append(vectors)
        return tuple(range(start, start + len(vectors)))

    def _mask_virtual(self, module: torch.nn.Embedding,
                      args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        ids = args[0]
        virtual = ids >= module.weight.shape[0]
        self._virtual = ids if bool(virtual.any()) else None
        return (ids.masked_fill(virtual, 0), *args[1:]) if self._virtual is not None else None

    def _fill_virtual(self, module: torch.nn.Embedding, args: object, out: torch.Tensor) -> torch.Tensor | None:
        if self._virtual is None:
            return None
        ids, self._virtual = self._virtual, None
        virtual = ids >= module.weight.shape[0]
        offset = ids[virtual] - module.weight.shape[0]
        if int(offset.max()) >= sum(len(v) for v in self._soft):
            raise AdapterMismatchError("a prompt holds virtual token ids this backbone never registered: build "
                                       "the SoftPrompt on the same policy's backbone (SoftPrompt.load(path, policy)).")
        out = out.clone()
        out[virtual] = torch.cat(self._soft).to(out.device, out.dtype)[offset]
        return out

    # -- forward -------------------------------------------------------------------------------
    def check_length(self, n_tokens: int, what: str) -> None:
        if n_tokens > self.context_length:
            raise ContextLengthError(
                f"{what} has {n_tokens} tokens but the model's context window is {self.context_length}: "
                "shorten it, or pass truncate=True to keep the last tokens."
            )

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
        """
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        layered = exit_layers is not None and any(layer is not None for layer in exit_layers)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache=past_key_values, use_cache=use_cache,
                      output_hidden_states=layered, logits_to_keep=logits_to_keep)
        if isinstance(self.model, PeftModel) and self.model.training:
            out = self._train_forward(adapters, kwargs)
        elif isinstance(self.model, PeftModel) and (any(a is not None for a in adapters) or self._base_rows_cheap()):
            kwargs["adapter_names"] = [a or BASE for a in adapters]
            out = self.model(**kwargs)
        else:
            with self.adapters_disabled():
                out = self.model(**kwargs)
        logits = out.logits.float()
        if layered:
            logits = self._early_exit(logits, out.hidden_states, exit_layers)  # type: ignore[arg-type]
        return logits, out.cache

    def _train_forward(self, adapters: Sequence[str | None], kwargs: dict[str, object]) -> object:
        """Inside `training()` PEFT refuses mixed-adapter batches: one adapter for the whole batch, made active."""
        if len(set(adapters)) != 1:
            raise InvalidArgumentError(f"a training forward takes one adapter for all rows, got {sorted(map(str, set(adapters)))}; "
                                       "run one forward per adapter.")
        if adapters[0] is None:
            if self._through_base:
                return self.model(**kwargs)
            if self._checkpointing and self.adapters and torch.is_grad_enabled():  # the recompute would see the adapters
                raise InvalidArgumentError("a training forward through the base with activation checkpointing on: run it "
                                           "inside Backbone.training(through_base=True), which keeps the adapters off "
                                           "for the backward's recompute too.")
            with self.adapters_disabled():
                return self.model(**kwargs)
        if self._through_base:
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
        """Replace row i's logits by the LM head applied to (normed) layer `exit_layers[i]` (DoLa)."""
        base = self.base_model
        logits = logits.clone()
        for i, layer in enumerate(exit_layers):
            if layer is not None and layer < self.num_layers:
                h = base.model.norm(hidden[layer][i, -logits.shape[1]:])  # hidden[0] is the embedding output
                logits[i] = base.lm_head(h).float()
        return logits

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        if isinstance(self.model, PeftModel) and self.adapters:
            with self.model.disable_adapter():
                yield
        else:
            yield


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Wrapping a model, PEFT reads `is_gradient_checkpointing`, deprecated in transformers 5: a FutureWarning (with
    the reader's site-packages path) in every notebook that trains, about nothing the user can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _check_readable(path: Path) -> None:
    """Open each safetensors file of an adapter before touching the model: corruption is a ModelLoadError."""
    for f in path.glob("*.safetensors"):
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"adapter file {str(f)!r} is unreadable ({exc}): it is corrupted or cut short; "
                                 "save the adapter again (result.save(dir)).") from exc


def default_lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.0) -> LoraConfig:
    """LoRA on every attention and MLP projection: small, fast on CPU, enough to move a 135M model."""
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> tuple[int, ...]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return tuple(sorted(i for i in ids if i is not None))
