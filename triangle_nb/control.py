"""Stop and progress through the library: what a panel (or a script) uses to stop a long call and watch it.

A caller wraps the work in `controlled(stop=event, report=fn)`. The loops that take time say where they are once
per step: the decode loop once per token (`decoding.steps`), the training engine once per optimiser step (a
TrainerCallback in `training.train`), the prompt searches and sweeps once per round. Each of those calls
`checkpoint(phase, n, total)` (or `progress`, where the loop stops itself), which hands (phase, n, total) to
`report` and, when `stop` is set, clears it and raises `Stopped`.

So one press of Stop ends the innermost loop that checks, within one step. Loops that can keep what they did catch
it and return it: training keeps its last completed step (`training._fit`), a prompt search keeps the best prompt
found so far and still evaluates it. Anything else gives up, and the panel says "stopped". A second press stops
what runs after (that evaluation). Loops over whole runs (a β sweep) ask `stopped()` after each run and end there.

Why our own: transformers' callbacks cover the Trainer only, and tqdm's bars are a display, not an interface (a
panel that reads `tqdm._instances` reads private state). The decode loop and the searches are ours, so they carry
the check. Stop used to raise KeyboardInterrupt inside the job's thread (`PyThreadState_SetAsyncExc`). That
could land anywhere, even inside a torch call or a lock's `finally`. A checkpoint lands only between steps.

The control lives in a context variable: each thread has its own, so two panels' jobs never see each other's Stop.
Work outside `controlled` pays one lookup per step.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

Report = Callable[[str, int, int, float], None]  # (phase, n, total, seconds since the phase began)


class Stopped(KeyboardInterrupt):
    """The caller asked the work to stop (raised at a step boundary by `checkpoint`). A KeyboardInterrupt, so that
    what keeps its work on Ctrl-C (training's last good step) keeps it on Stop too."""


@dataclass
class Control:
    """What `controlled` installs: the stop request and where progress goes."""

    stop: threading.Event = field(default_factory=threading.Event)
    report: Report | None = None
    phase: str = ""
    began: float = 0.0
    honoured: bool = False  # a stop request was taken by some loop (it stays so: outer loops end too)
    stage: str = ""  # what the steps serve ("evaluating"), named by the caller of a loop (`stage`)


_CONTROL: ContextVar[Control | None] = ContextVar("triangle_nb_control", default=None)


@contextlib.contextmanager
def controlled(stop: threading.Event | None = None, report: Report | None = None) -> Iterator[Control]:
    """Run the body under a stop event and a progress report (this thread only)."""
    token = _CONTROL.set(Control(stop if stop is not None else threading.Event(), report))
    try:
        yield _CONTROL.get()  # type: ignore[misc]
    finally:
        _CONTROL.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name what the steps inside serve: "evaluating · generating token 3/24" instead of the bare step."""
    control = _CONTROL.get()
    if control is None:
        yield
        return
    outer, control.stage = control.stage, name
    try:
        yield
    finally:
        control.stage = outer


def progress(phase: str, n: int, total: int) -> bool:
    """Report that `phase` is at step n of `total`; True (once: the request is cleared) when a stop was asked.
    For loops that end themselves on a stop (the Trainer: `should_training_stop`)."""
    control = _CONTROL.get()
    if control is None:
        return False
    now = time.monotonic()
    phase = f"{control.stage} · {phase}" if control.stage else phase
    if phase != control.phase or n == 0:  # a new phase, or the same loop again (the next chunk of a batch)
        control.phase, control.began = phase, now
    if control.report is not None:
        control.report(phase, n, total, now - control.began)
    if control.stop.is_set():
        control.stop.clear()
        control.honoured = True
        return True
    return False


def stopped() -> bool:
    """True once a stop was taken in this control: a loop of whole runs (a β sweep, self-improvement rounds) ends
    after the run that took it, which kept its own work and evaluated it."""
    control = _CONTROL.get()
    return control is not None and control.honoured


def checkpoint(phase: str, n: int, total: int) -> None:
    """`progress`, raising `Stopped` when a stop was asked."""
    if progress(phase, n, total):
        raise Stopped(f"stopped during {phase} ({n}/{total})")
