"""One set of weights shared by many policies: the base model, its tokenizer and its LoRA adapters.

Policies built from one base (other prompts, other adapters) share a Backbone, so several
adapters live on one copy of the weights and a batch can mix them (one fused forward, `fused_lora.py`; PEFT's
mixed-adapter batches where that does not apply).

Threads: panels run their jobs in background threads while notebook cells keep using the same Backbone. One
re-entrant lock (`Backbone.lock`) serialises every forward, each training step (the training engine holds it
around a step's forward and backward) and every change of adapters or soft prompts. A lock, not thread-local
state, because much of the state that must not interleave is not ours to make thread-local: PEFT's mixed-adapter
batches hook `adapter_names` onto the shared LoRA layers for the length of a forward (a fused batch replaces
their forwards instead), and train/eval mode, the active adapter and the adapters-off switch live on the shared
modules. What a thread asks for (train mode inside `training()`, the adapters off for `through_base`) is kept per
thread and put on the model at the start of each of its forwards: a notebook cell's forward during a panel's
training run waits for the current step, then runs in eval mode with the adapters it names — the numbers it gives
with nothing training.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import functools
import gc
import json
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import _adapter_gate, _io, fused_lora
from ._io import read_json
from .chat import template_end_of_turn
from .errors import AdapterMismatchError, BackboneBusyError, ContextLengthError, InvalidArgumentError, ModelLoadError

BASE = "__base__"  # PEFT's adapter name for "no adapter" in mixed batches
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class _Mode:
    """What one thread's forwards need from the shared model: train mode, and the adapters off (`through_base`)."""

    train: bool = False
    through_base: bool = False


EVAL = _Mode()  # every thread's mode outside `training()`


@dataclass(eq=False)
class _Run:
    """A live training run (`Backbone.training_run`): its thread, the adapter and the other tensors it trains."""

    thread: int
    adapter: str | None
    tensors: tuple[torch.Tensor, ...]

    def trains(self, tensor: torch.Tensor) -> bool:
        return any(t is tensor for t in self.tensors)

    def what(self) -> str:
        return f"adapter {self.adapter!r}" if self.adapter is not None else "soft-prompt (or head) parameters"


@dataclass(eq=False)
class Registrations:
    """What one piece of work registered on a backbone (`Backbone.recording`), to `Backbone.release` it later.

    Attributes:
        adapters: adapter name -> its PEFT config object (which tells this adapter from a later one of that name).
        soft_prompts: the virtual ids of each soft prompt registered.
    """

    adapters: dict[str, object] = field(default_factory=dict)
    soft_prompts: list[tuple[int, ...]] = field(default_factory=list)


def _serialised(method: Callable[Concatenate[Backbone, P], R]) -> Callable[Concatenate[Backbone, P], R]:
    """Run a Backbone method with the backbone's lock held (see the module docstring)."""

    @functools.wraps(method)
    def locked(self: Backbone, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class Backbone:
    """A causal LM + tokenizer + named adapters. Policies hold a reference, never a copy."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 activation_checkpointing: bool = False) -> None:
        self.model: PreTrainedModel | PeftModel = model
        self.tokenizer = tokenizer
        self.name = name
        self.lock = threading.RLock()  # one forward, training step or (un)registration at a time (module docstring)
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

    @contextlib.contextmanager
    def training(self, *, through_base: bool = False) -> Iterator[None]:
        """Train mode for differentiable forwards (and their backward); eval mode again on exit, errors included.

        `through_base=True`: every forward in the block runs through π0 with the adapters off (a soft prompt
        trained on the base while a teacher adapter is loaded). The adapters stay off until the block ends, so
        the backward's recompute under activation checkpointing sees the same weights as the forward.

        The mode is the calling thread's only: forwards from other threads meanwhile run in eval mode with their own
        adapters (each forward puts its thread's mode on the model, lock held). The training engine holds the lock
        over each step's forward and backward; a hand-written loop that runs a backward outside that, with activation
        checkpointing on while other threads forward, should hold `backbone.lock` around its forward and backward.
        """
        outer = self._mode
        self._local.mode = _Mode(train=True, through_base=through_base)
        try:
            with self.lock:
                self._apply(self._local.mode)
            yield
        finally:
            self._local.mode = outer
            with self.lock:
                self._apply(outer)

    @property
    def _mode(self) -> _Mode:
        """The calling thread's mode (EVAL outside `training()`)."""
        return getattr(self._local, "mode", EVAL)

    def _apply(self, mode: _Mode) -> None:
        """Put the shared model in `mode` (lock held): train or eval, and the adapters off or on."""
        if self.model.training != mode.train:
            self.model.train(mode.train)
        if mode.through_base and self._off is None:
            self._off = contextlib.ExitStack()
            self._off.enter_context(self.adapters_disabled())
        elif not mode.through_base and self._off is not None:
            off, self._off = self._off, None
            off.close()

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

    @_serialised
    def add_adapter(self, name: str, config: PeftConfig | None = None) -> str:
        """Add a new trainable adapter (LoRA by default) and return its name."""
        config = config or default_lora_config()
        self._check_free_name(name)
        self._apply(EVAL)  # the layers as PEFT expects them; each thread's next forward puts its own mode back
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            with _quiet_peft():
                self.model = get_peft_model(self.model, config, adapter_name=name)
        self.model.eval()
        self._record_adapter(name)
        return name

    @_serialised
    def load_adapter(self, path: str | Path, name: str) -> str:
        """Load a saved LoRA adapter under a new `name`, through the loading gate (`_adapter_gate`): the config from
        an allow-list, the weights checked; PEFT never reads the folder. A refusal leaves nothing registered and the
        base untouched.

        Raises:
            ModelLoadError: no adapter_config.json, unreadable files, pickled weights only.
            AdapterMismatchError: made for another base, or a config or weights the gate does not accept.
            InvalidArgumentError: an adapter called `name` is already loaded.
        """
        path = Path(path)
        if (path.parent / _io.MARKER).is_file():  # a saved result's adapter/: confined to the result's folder
            _io.inside_adapter(path.parent, path.name, "adapter")
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"adapter path {str(path)!r} has no adapter_config.json: pass a folder saved by "
                "PEFT's save_pretrained or by a triangle_nb result's save()."
            )
        self._check_free_name(name)
        self._check_fingerprint(path)
        checked = _adapter_gate.read_adapter(path, self.base_model)
        with torch.random.fork_rng(devices=[]):  # PEFT's initialisation must not move the user's seeded stream
            self.add_adapter(name, checked.config)
        try:
            self._copy_lora(name, checked.tensors)
        except BaseException:
            self.remove_adapter(name)  # no half-loaded adapter left behind
            raise
        return name

    def _check_free_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or name == BASE or "." in name:
            raise InvalidArgumentError(f"adapter name={name!r} must be a non-empty string without dots (and not "
                                       f"{BASE!r}).")
        if name in self.adapters:
            raise InvalidArgumentError(f"adapter name={name!r} is already loaded on {self.name!r}; loading over it "
                                       "would change the policies using it. Pass another name= (or "
                                       "backbone.unique_adapter_name(stem)), or remove_adapter it first.")

    def _copy_lora(self, name: str, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy checked LoRA factors into adapter `name`'s fresh parameters (frozen: loaded adapters do not train)."""
        params = {n: p for n, p in self.model.named_parameters() if f".{name}." in n and ".lora_" in n}
        wanted = {f"base_model.model.{mod}.{part}.{name}.weight": t
                  for mod, (a, b) in tensors.items() for part, t in (("lora_A", a), ("lora_B", b))}
        if set(params) != set(wanted):
            raise AdapterMismatchError(f"adapter {name!r}: PEFT built {len(params)} LoRA weights, the file has "
                                       f"{len(wanted)}; load it on the base model it was trained for.")
        with torch.no_grad():
            for key, t in wanted.items():
                params[key].copy_(t.to(params[key].dtype))
                params[key].requires_grad_(False)

    def _check_fingerprint(self, path: Path) -> None:
        meta = path / "triangle_nb_base.json"
        if meta.is_file():
            theirs = read_json(meta)
            if theirs != self.fingerprint():
                raise AdapterMismatchError(
                    f"adapter {str(path)!r} was trained for a base with {theirs}, but this base has "
                    f"{self.fingerprint()}. Load it on the base model it was trained for."
                )

    @_serialised
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

    @_serialised
    def remove_adapter(self, name: str) -> None:
        """Remove adapter `name` from the backbone and free its weights; policies using it can no longer run.

        Raises:
            BackboneBusyError: a live training run (a panel's job) trains it.
            InvalidArgumentError: no adapter of that name is loaded.
        """
        if name not in self.adapters:
            raise InvalidArgumentError(f"remove_adapter({name!r}): no adapter of that name on {self.name!r} "
                                       f"(loaded: {self.adapters}).")
        if any(r.adapter == name for r in self._runs):
            raise BackboneBusyError(f"remove_adapter({name!r}): a running job is training it: wait for the panel's "
                                    "job or press Stop, then remove it.")
        self._apply(EVAL)
        if self.adapters == [name]:  # the last one: PEFT would keep it "active" and fail on the next forward;
            self.model = self.model.unload()  # unwrap to the plain model instead
        else:
            with warnings.catch_warnings():  # "was active which is now deleted": the next forward names its own
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                self.model.delete_adapter(name)
            self._live_active_adapter()

    def _live_active_adapter(self) -> None:
        """PEFT keeps a deleted adapter "active" when the remaining ones wrap other modules (a q/v adapter deleted
        beside an MLP one), and every later call fails on it: make a remaining adapter the active one (which
        weights train stays the caller's call)."""
        if self.model.active_adapter in self.model.peft_config:
            return
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.set_adapter(next(iter(self.model.peft_config)))
        for p, trainable in flags:
            p.requires_grad_(trainable)

    @contextlib.contextmanager
    def training_run(self, adapter: str | None = None, tensors: Iterable[torch.Tensor] = ()) -> Iterator[None]:
        """Mark a training run on this backbone (the training engine's `train` does): one thread's at a time.

        While it runs, its adapter and tensors (e.g. soft-prompt vectors) cannot be removed, and a forward from
        another thread through them raises BackboneBusyError (their weights change with every step); forwards from
        other threads through anything else wait for the current step and give their no-training numbers.

        Raises:
            BackboneBusyError: another thread's training run is live on this backbone.
        """
        run = _Run(threading.get_ident(), adapter, tuple(tensors))
        with self.lock:
            other = next((r for r in self._runs if r.thread != run.thread), None)
            if other is not None:
                raise BackboneBusyError(f"backbone {self.name!r} is already training {other.what()} in another thread "
                                        "(a panel's job): wait for the panel's job or press Stop, then train again.")
            self._runs.append(run)
        try:
            yield
        finally:
            with self.lock:
                self._runs.remove(run)

    @contextlib.contextmanager
    def recording(self) -> Iterator[Registrations]:
        """Collect what the calling thread registers on this backbone inside the block (adapters, soft prompts).

        >>> with pi0.backbone.recording() as made:  # doctest: +SKIP
        ...     res = tnb.reward_to_update(pi0, tnb.rewards.Length(), xs)
        >>> pi0.backbone.release(made)  # doctest: +SKIP
        """
        made = Registrations()
        stack = self._local.__dict__.setdefault("recorders", [])
        stack.append(made)
        try:
            yield made
        finally:
            stack.pop()

    @_serialised
    def release(self, made: Registrations) -> None:
        """Remove the adapters and soft prompts of `made` that are still registered (a panel's previous run)."""
        for name, config in made.adapters.items():
            if isinstance(self.model, PeftModel) and self.model.peft_config.get(name) is config:
                self.remove_adapter(name)
        for ids in made.soft_prompts:
            if ids[0] in self._soft:
                self.unregister_soft_tokens(ids)

    def _recorders(self) -> list[Registrations]:
        return getattr(self._local, "recorders", [])

    def _record_adapter(self, name: str) -> None:
        for made in self._recorders():
            made.adapters[name] = self.model.peft_config[name]

    # -- soft prompts: virtual token ids beyond the vocabulary -----------------------------------
    @_serialised
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
        start = max(emb.weight.shape[0], self._next_virtual)
        self._next_virtual = start + len(vectors)
        self._soft[start] = vectors
        ids = tuple(range(start, start + len(vectors)))
        for made in self._recorders():
            made.soft_prompts.append(ids)
        return ids

    @_serialised
    def unregister_soft_tokens(self, ids: Sequence[int]) -> None:
        """Forget the soft prompt behind virtual `ids` (a SoftPrompt's `virtual_ids`): forwards no longer read its
        vectors, and a prompt still holding these ids is an error. The other soft prompts keep their ids.

        Raises:
            BackboneBusyError: a live training run trains these vectors.
            InvalidArgumentError: `ids` are not the ids of one live soft prompt.
        """
        ids = tuple(int(i) for i in ids)
        vectors = self._soft.get(ids[0]) if ids else None
        if vectors is None or ids != tuple(range(ids[0], ids[0] + len(vectors))):
            raise InvalidArgumentError(f"unregister_soft_tokens: {list(ids)[:4]} are not the virtual ids of a soft prompt "
                                       f"registered on {self.name!r}: pass a SoftPrompt's virtual_ids.")
        if any(r.trains(vectors) for r in self._runs):
            raise BackboneBusyError("unregister_soft_tokens: a running job is training this soft prompt: wait for the "
                                    "panel's job or press Stop, then unregister it.")
        del self._soft[ids[0]]

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
        out = out.clone()
        for start, vectors in self._soft_blocks(ids[ids >= module.weight.shape[0]]):
            rows = (ids >= start) & (ids < start + len(vectors))
            out[rows] = vectors.to(out.device, out.dtype)[ids[rows] - start]
        return out

    def _soft_blocks(self, virtual: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """The live soft prompts (first id, vectors) that a forward's virtual ids use: only these are read."""
        starts, used = list(self._soft), {}  # ids only grow, so the starts are sorted
        for vid in virtual.unique().tolist():
            i = bisect.bisect_right(starts, vid) - 1
            if i < 0 or vid >= starts[i] + len(self._soft[starts[i]]):
                raise AdapterMismatchError("a prompt holds virtual token ids this backbone never registered (or has "
                                           "unregistered): build the SoftPrompt on the same policy's backbone "
                                           "(SoftPrompt.load(path, policy)).")
            used[starts[i]] = self._soft[starts[i]]
        me = threading.get_ident()
        if any(r.thread != me and r.trains(v) for r in self._runs for v in used.values()):
            raise BackboneBusyError("a forward through a soft prompt that a running job is training (its vectors change "
                                    "with every step): wait for the panel's job or press Stop, then use it.")
        return list(used.items())

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
        trains, it waits for the current training step (see the module docstring).
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


LORA_TARGETS = ("q_proj", "v_proj")  # PEFT's own default for Llama-family models (the LoRA paper's choice)


def default_lora_config(r: int = 8, alpha: int | None = None, dropout: float = 0.0,
                        targets: Sequence[str] = LORA_TARGETS) -> LoraConfig:
    """LoRA on the query and value projections, alpha = 2 r (one rule for every arrow): 1.8 MB for the embedded
    model at r = 8 (on all seven projections at r = 16 it was 19.6 MB), so that baked adapters ship in the package."""
    return LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=list(targets))


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
