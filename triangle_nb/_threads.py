"""The Backbone's thread model: its lock, each thread's mode, live training runs and what a piece of work registered.

Panels run their jobs in background threads while notebook cells keep using the same Backbone. One re-entrant lock
(`Backbone.lock`) serialises every forward, each training step (the training engine holds it around a step's forward
and backward) and every change of adapters or soft prompts. A lock, not thread-local state, because much of the state
that must not interleave is not ours to make thread-local: PEFT's mixed-adapter batches hook `adapter_names` onto the
shared LoRA layers for the length of a forward (a fused batch replaces their forwards instead), and train/eval mode,
the active adapter and the adapters-off switch live on the shared modules. What a thread asks for (train mode inside
`training()`, the adapters off for `through_base`) is kept per thread and put on the model at the start of each of its
forwards: a notebook cell's forward during a panel's training run waits for the current step, then runs in eval mode
with the adapters it names — the numbers it gives with nothing training.

`ThreadModel` is a mixin of `backbone.Backbone`: the state it uses (the lock, `_local`, `_runs`, ...) is set by
`Backbone.__init__` and declared at the top of the class. This module never imports backbone.py.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from .errors import BackboneBusyError


class _Locked(Protocol):
    """What `_serialised` asks of the object whose methods it wraps: a re-entrant `lock`."""

    lock: threading.RLock


P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=_Locked)


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


def _serialised(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run a method with its object's lock held (a Backbone's: see the module docstring)."""

    @functools.wraps(method)
    def locked(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class ThreadModel:
    """Mixin of Backbone: each thread's train/eval mode, the live training runs, and recording / releasing what a
    piece of work registered (the other mixins' methods it calls are marked where it calls them)."""

    # set by Backbone.__init__ (see it for what each holds)
    lock: threading.RLock
    name: str
    model: PreTrainedModel | PeftModel
    _local: threading.local
    _runs: list[_Run]
    _off: contextlib.ExitStack | None
    _soft: dict[int, torch.Tensor]  # the live soft prompts (`_soft_tokens.py`)

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
            self._off.enter_context(self.adapters_disabled())  # _adapters.Adapters
        elif not mode.through_base and self._off is not None:
            off, self._off = self._off, None
            off.close()

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
                self.remove_adapter(name)  # _adapters.Adapters
        for ids in made.soft_prompts:
            if ids[0] in self._soft:
                self.unregister_soft_tokens(ids)  # _soft_tokens.SoftTokens

    def _recorders(self) -> list[Registrations]:
        return getattr(self._local, "recorders", [])
