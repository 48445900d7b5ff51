"""What every arrow panel shares: a header, a Run/Stop bar with progress, an error line, a figure.

Long work runs in a background thread so the notebook stays responsive and the Stop button can
be clicked. Training asks the Trainer to stop through a callback (`training.stop_when`, after the current
step); other work (generation, search) gets a KeyboardInterrupt inside that thread (the arrows then return the last good
result). Errors are shown inside the panel as a readable message; the kernel survives. A field whose text cannot be used (an
empty input list, a word where a number belongs) raises a `FieldError` naming it, and the field is outlined in red.

A panel keeps on the backbone only what it shows: a run's adapters and soft prompts (`Backbone.recording`) are
released when the next run's result replaces it, or at once when the run fails.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import anywidget
import ipywidgets as w
import plotly.graph_objects as go
import traitlets

from .. import plots
from ..chat import marked_cut
from ..control import Report, controlled
from ..errors import InvalidArgumentError
from ..policy import BasePolicy, Policy
from ._assets import asset
from ._maths import render

STYLE = {"description_width": "130px"}


def wide() -> w.Layout:
    """A fresh full-width layout (fresh: hiding one widget must not hide the others)."""
    return w.Layout(width="98%")


def slider() -> w.Layout:
    return w.Layout(width="420px")


_LOAD_LOCK = threading.Lock()


@cache
def _load_default() -> Policy:
    from ..loading import load_policy

    return load_policy()


def default_policy() -> Policy:
    """The embedded default model, loaded on first use and shared by every panel (thread-safe)."""
    with _LOAD_LOCK:
        return _load_default()


def text_area(value: str, description: str, rows: int = 2) -> w.Textarea:
    return w.Textarea(value=value, description=description, rows=rows, layout=wide(), style=STYLE)


def lines(text: str) -> list[str]:
    """Non-empty lines of a text area (one input per line)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def figure_widget(placeholder: str = "", height: int = 220) -> go.FigureWidget:
    """A panel's live figure, saying what it will show (`placeholder`) instead of empty axes.

    Built with it, not updated to it: a FigureWidget inside a box starts its views from its constructor's state
    (plotly refreshes that state only when the figure itself is displayed); later updates reach the live views."""
    return go.FigureWidget(placeholder_figure(placeholder, height))


def placeholder_figure(placeholder: str = "", height: int = 220) -> go.Figure:
    """The figure a panel shows before its first result (and after a failed run): words, not empty axes."""
    fig = plots.placeholder(placeholder, height=height) if placeholder else go.Figure(layout={"height": height})
    fig.update_layout(template="plotly_white", margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def _swap(box: w.Box, old: w.Widget, new: w.Widget) -> bool:
    """Put `new` where `old` is among the children of `box` (or of a box inside it)."""
    for child in box.children:
        if child is old:
            box.children = tuple(new if c is old else c for c in box.children)
            return True
        if isinstance(child, w.Box) and _swap(child, old, new):
            return True
    return False


class ScrollAnchor(anywidget.AnyWidget):
    """A zero-height mark above a panel's results; each `tick` brings them into view when they are below the window
    (widgets/scroll.js). It also brings the panels' stylesheet (widgets/panel.css: labels wrap, never cut)."""

    _esm = asset("scroll.js")
    _css = asset("panel.css")
    tick = traitlets.Int(0).tag(sync=True)


class FieldError(InvalidArgumentError):
    """A panel field holds text the panel cannot use; `field` is the widget (outlined in red in the panel)."""

    def __init__(self, field: w.Widget, message: str) -> None:
        super().__init__(f"the field '{field.description}' {message}")
        self.field = field


def field_lines(field: w.Textarea | w.Text, what: str = "one input per line") -> list[str]:
    """The non-empty lines of a field; an empty field is a `FieldError` naming it."""
    found = lines(field.value)
    if not found:
        raise FieldError(field, f"is empty: write {what}.")
    return found


def field_int(field: w.Text, low: int, high: int, what: str) -> int:
    """The whole number in a text field, low ≤ n ≤ high; anything else (a letter, a fraction, out of range) is a
    `FieldError` that says what the field holds and what it takes — never clamped, never silently dropped."""
    text = field.value.strip()
    try:
        n = int(text)
    except ValueError:
        raise FieldError(field, f"holds {text!r}: write {what}, a whole number from {low} to {high}.") from None
    if not low <= n <= high:
        raise FieldError(field, f"holds {n}: write {what}, from {low} to {high}.")
    return n


def field_numbers(field: w.Text, *, positive: bool = True) -> list[float]:
    """The numbers of a comma- or space-separated field (e.g. a β sweep); a word or an empty field is a
    `FieldError` naming the field and the entry."""
    import math

    parts = field.value.replace(",", " ").split()
    if not parts:
        raise FieldError(field, "is empty: write numbers separated by commas, e.g. 0.03, 0.1, 0.3.")
    values = []
    for part in parts:
        try:
            v = float(part)
        except ValueError:
            raise FieldError(field, f"holds {part!r}, which is not a number: write numbers separated by commas, "
                                    "e.g. 0.03, 0.1, 0.3.") from None
        if not math.isfinite(v) or (positive and v <= 0):
            raise FieldError(field, f"holds {part!r}: every entry must be a positive number.")
        values.append(v)
    return values


def phase_text(desc: str, n: int, total: int, elapsed: float) -> str:
    """What the panel's status says while a run works: the phase, its step out of the total and, once a step has
    been timed, the time left at the pace so far ("training step 3/8 · about 25 s left")."""
    text = f"{html.escape(desc or 'working')} {n}/{total}"
    if 0 < n < total and elapsed > 0:
        left = elapsed / n * (total - n)
        text += f" · about {left:.0f} s left" if left < 90 else f" · about {left / 60:.0f} min left"
    return text


def notice(text: str) -> str:
    """The line under a result that says what to look at in it (HTML; `text` is HTML too)."""
    return f"<p class='tnb-notice' style='margin:6px 0;color:#2d3748'><b>What to notice:</b> {text}</p>"


_CELL = "border:1px solid #d9e2ec;padding:6px 10px;vertical-align:top;text-align:left;line-height:1.4"
CURSOR = " ▌"  # after a text still being generated


def _shown(text: str) -> str:
    """A table cell's text: " …" after an answer that stops mid-sentence (the token limit), none while streaming."""
    return text if text.endswith(CURSOR) else marked_cut(text)


def samples_table(columns: dict[str, list[str]]) -> str:
    """An HTML table of texts side by side (one column per policy); an answer cut mid-sentence ends in " …"."""
    head = "".join(f"<th style='{_CELL};background:#f0f4f8'>{html.escape(k)}</th>" for k in columns)
    rows = zip(*columns.values(), strict=True)
    body = "".join("<tr>" + "".join(f"<td style='{_CELL};white-space:pre-wrap'>{html.escape(_shown(str(c)))}</td>"
                                    for c in r) + "</tr>" for r in rows)
    return (f"<table class='tnb-samples' style='border-collapse:collapse;width:100%;table-layout:fixed;"
            f"font-size:14px;margin-top:6px'><tr>{head}</tr>{body}</table>")


class Job:
    """One piece of work in a daemon thread, run under `control.controlled`: `stop()` sets `stop_event`, which the
    library's loops check once per step (a decoded token, an optimiser step, a search round: triangle_nb/control.py),
    and each of those steps reports its progress to `report`. Nothing is injected into the thread."""

    def __init__(self, work: Callable[[], Any], done: Callable[[Any], None], failed: Callable[[BaseException], None],
                 report: Report | None = None):
        self.stopped = False
        self.ended = False
        self.stop_event = threading.Event()
        self.reported = 0.0  # when a step last reported (monotonic seconds)
        self.made: tuple[Any, Any] | None = None  # (backbone, Registrations): what the work registered on it
        self._work, self._done, self._failed, self._report = work, done, failed, report
        self.thread = threading.Thread(target=self._run, daemon=True, name="triangle_nb-panel")

    def _run(self) -> None:
        try:
            with controlled(self.stop_event, self._report):
                result = self._work()
        except BaseException as exc:  # noqa: BLE001 — shown in the panel, never kills the kernel
            self._failed(exc)
        else:
            self._done(result)

    def stop(self) -> None:
        self.stopped = True
        self.stop_event.set()


class ArrowPanel(w.VBox):
    """Base of the six panels: subclasses build `controls`, implement `_work()` (one library call)
    and `_show(result)` (one plot builder + texts).

    Args:
        policy: the model to use; None loads the embedded default model on first use.
    """

    title = "arrow"
    equation = ""  # HTML with LaTeX between $…$, shown as MathML (panels/_maths.py: no MathJax, no CDN needed)
    placeholder = ""  # what the figure says before the first run (instead of empty axes)

    def __init__(self, policy: BasePolicy | None = None, *, controls: list[w.Widget], run_label: str = "Run",
                 stoppable: bool = True) -> None:
        self._policy = policy
        self.job: Job | None = None
        self._show_next: Callable[[Any], None] = self._show
        self._last_step = ""
        self._lock = threading.Lock()
        self._held: list[tuple[Any, Any]] = []  # (backbone, Registrations) of the shown result (see `_keep`)
        self.result: Any = None
        self.error: BaseException | None = None
        self.run_button = w.Button(description=run_label, button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    layout=w.Layout(display="" if stoppable else "none"))
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="260px"))
        self.status = w.HTML("")
        self.figure = figure_widget(self.placeholder)
        self.output = w.HTML("")
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        self._marked: list[w.Widget] = []
        self._placeholders: dict[str, str] = {}
        # plain HTML: the equation is MathML already, and HTMLMath would make Voilà fetch MathJax from a CDN
        header = w.HTML(f"<div class='tnb-panel-title'><b style='font-size:16px'>{html.escape(self.title)}</b>"
                        f"<br><span class='tnb-equation' style='color:#44337a;font-size:15px'>"
                        f"{render(self.equation)}</span></div>")
        bar = w.HBox([self.run_button, self.stop_button, self.progress, self.status])
        self.anchor = ScrollAnchor()
        super().__init__([header, *controls, bar, self.anchor, self.figure, self.output],
                         layout=w.Layout(border="1px solid #d9e2ec", padding="10px", width="100%"))
        self.add_class("tnb-panel")

    def __repr__(self) -> str:
        """What a saved notebook shows where the panel cannot render (no kernel), instead of its widget tree."""
        return f"{self.title} — an interactive panel: run the cell to use it."

    @property
    def policy(self) -> BasePolicy:
        """The panel's model (the embedded default when none was given)."""
        if self._policy is None:
            self._policy = default_policy()
        return self._policy

    # -- running ---------------------------------------------------------------------------
    def run(self, work: Callable[[], Any] | None = None, show: Callable[[Any], None] | None = None) -> None:
        """Start `work` (default `_work`) in the background, then `show` (default `_show`) its result."""
        if self.busy:
            return
        self.error = None
        self._last_step = ""
        self._unmark()
        self._show_next = show or self._show
        todo = work or self._work
        job = Job(lambda: self._recorded(todo, job), self._finished, self._failed, self._report)
        self.job = job
        self._set_busy(True, "working… (loading the model on first use)")
        self.job.thread.start()
        threading.Thread(target=self._watch, args=(self.job,), daemon=True).start()

    def stop(self) -> None:
        """Ask the running work to stop at its next step (control.py: training and searches keep what they did)."""
        if self.job is not None:
            self.status.value = "stopping…"
            self.job.stop()

    def wait(self, timeout: float = 600.0) -> Any:
        """Block until the work ends, follow-up work included (for tests and scripts); returns the result."""
        deadline = time.monotonic() + timeout
        while self.job is not None and self.job.thread.is_alive() and time.monotonic() < deadline:
            self.job.thread.join(max(0.0, deadline - time.monotonic()))
        return self.result

    @property
    def busy(self) -> bool:
        """True from Run until the result (or error) is shown."""
        return self.job is not None and not self.job.ended

    def _finished(self, result: Any) -> None:
        if self._show_next == self._show:  # side tasks (e.g. a live generation) keep the main result
            self.result = result
        try:
            self._show_next(result)
            self._keep(self._show_next == self._show)
        except Exception as exc:  # noqa: BLE001
            self._release([self.job.made] if self.job is not None and self.job.made else [])
            self._failed(exc)
            return
        note = " (stopped early: showing the last good result)" if self.job and self.job.stopped else ""
        main = self._show_next == self._show
        if main:
            self.anchor.tick += 1  # bring the result into view
        self._set_busy(False, f"<span style='color:#2f855a'>done{note}</span>")
        self._after(main)

    def _after(self, main: bool) -> None:
        """Hook run once a result is shown and the panel is free again (e.g. to start follow-up work)."""

    def _recorded(self, work: Callable[[], Any], job: Job) -> Any:
        """Run `work`, noting on `job` the adapters and soft prompts it registers on the panel's backbone; a run that
        fails (or is stopped before any result) releases them at once."""
        backbone = getattr(self.policy, "backbone", None)
        if not hasattr(backbone, "recording"):
            return work()
        with backbone.recording() as made:
            job.made = (backbone, made)
            try:
                return work()
            except BaseException:
                backbone.release(made)
                raise

    def _keep(self, main: bool) -> None:
        """A shown main result replaces the previous one: release what the previous runs registered, keep this
        run's (a β sweep or a re-run leaves only what the panel shows). Side work's registrations join the kept."""
        made = [self.job.made] if self.job is not None and self.job.made else []
        if main:
            previous, self._held = self._held, made
            self._release(previous)
        else:
            self._held += made

    @staticmethod
    def _release(held: list[tuple[Any, Any]]) -> None:
        for backbone, made in held:
            backbone.release(made)

    def _unmark(self, _: Any = None) -> None:
        """Remove the red outline (called on the next run, and as soon as the user edits the marked field)."""
        for field in self._marked:
            field.layout.border = ""
            field.unobserve(self._unmark, names="value")
        self._marked = []

    def _mark(self, field: w.Widget) -> None:
        field.layout.border = "2px solid #b91c1c"
        field.observe(self._unmark, names="value")
        self._marked.append(field)

    def _failed(self, exc: BaseException) -> None:
        """A failed main run clears what the previous run showed (a stale result under an error misleads), resets the
        bar, and says what went wrong in words; a failed side task (e.g. a live generation) keeps the shown result."""
        self.error = exc
        if isinstance(exc, FieldError) and hasattr(exc.field, "layout"):
            self._mark(exc.field)
        if isinstance(exc, KeyboardInterrupt):
            msg = "<span style='color:#c05621'>stopped before any result.</span>"
        else:
            msg = (f"<span style='color:#b91c1c' title='{html.escape(type(exc).__name__)}'><b>Not run:</b> "
                   f"{html.escape(str(exc), quote=False)}</span>")
        if self._show_next == self._show:
            self.result = None
            self._clear()
        self._set_busy(False, msg)
        self.progress.value, self.progress.bar_style = 0.0, "danger"

    def _clear(self) -> None:
        """Back to the state before the first run: the placeholder figure, no texts, no heatmap values."""
        self.output.value = ""
        self.show_figure(placeholder_figure(self.placeholder))
        if hasattr(self, "heatmap"):
            self.show_heatmap([], [], label=self._placeholders.get("heatmap", self.heatmap.label))

    def _set_busy(self, busy: bool, message: str) -> None:
        with self._lock:
            if self.job is not None:
                self.job.ended = not busy
            self._set_bar(busy, message)

    def _set_bar(self, busy: bool, message: str) -> None:
        self.run_button.disabled = busy
        self.stop_button.disabled = not busy
        self.progress.bar_style = "info" if busy else ""
        self.progress.value = 0.0 if busy else 1.0
        self.status.value = message

    def _report(self, phase: str, n: int, total: int, seconds: float) -> None:
        """A step of the running work (control.py): the bar and "phase n/total · about N s left", at most ~4 times a
        second (a decode reports every token)."""
        job, now = self.job, time.monotonic()
        if job is None or (now - job.reported < 0.25 and 0 < n < total):
            return
        job.reported = now
        with self._lock:
            if job.ended or job.stopped:
                return
            self.progress.value = min(n / total, 1.0) if total else 0.0
            self.status.value = phase_text(phase, n, total, seconds) + (
                f" · {self._last_step}" if self._last_step else "")

    def _watch(self, job: Job) -> None:
        """Count the seconds while no step reports (loading the model, scoring): "working… 12 s"."""
        start = time.monotonic()
        while job.thread.is_alive():
            time.sleep(0.5)
            with self._lock:
                if job.ended or job.stopped:
                    break
                if time.monotonic() - job.reported > 1.5:
                    self.status.value = f"working… {time.monotonic() - start:.0f} s" + (
                        f" · {self._last_step}" if self._last_step else "")

    def training_callbacks(self) -> list[Any]:
        """The `callbacks=` of a training call made by `_work`: each logged step shows next to the progress bar (Stop
        and the step count come through triangle_nb.control, for every call)."""
        from .. import training

        return [training.on_row(self.on_step)]

    def on_step(self, row: dict[str, Any]) -> None:
        """The arrows' `callback`: show the newest history row (step or round) next to the progress bar."""
        first = sorted(row, key=lambda k: k not in ("step", "round"))  # the step / round leads
        shown = [f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}" for k in first
                 if isinstance(row[k], int | float) and k != "seconds"][:4]
        self._last_step = html.escape(", ".join(shown))

    # -- subclasses ------------------------------------------------------------------------
    def _work(self) -> Any:
        raise NotImplementedError

    def _show(self, result: Any) -> None:
        raise NotImplementedError

    def show_heatmap(self, tokens: Sequence[str], values: Sequence[float], *, label: str, vmax: float = 0.0,
                     name: str = "heatmap") -> Any:
        """Show tokens coloured by values in the panel's heatmap `name`: a new TokenHeatmap replaces the old one, as
        `show_figure` does for figures. Voilà's front end now and then dropped the in-place update (the heatmap kept
        its placeholder while the rest of the panel showed the result); a new widget renders from its own state."""
        from .heatmap import TokenHeatmap

        old = getattr(self, name)
        self._placeholders.setdefault(name, old.label)  # what it said before the first result (see `_clear`)
        new = TokenHeatmap(tokens, values, vmax=vmax, label=label, layout=w.Layout(display=old.layout.display))
        setattr(self, name, new)
        _swap(self, old, new)
        old.close()
        return new

    def show_figure(self, fig: go.Figure, name: str = "figure") -> go.FigureWidget:
        """Show a plot builder's figure in the panel's live figure `name` (an attribute: "figure", or another one).

        The FigureWidget is replaced by a new one built from `fig`, not updated in place: Voilà's front end drops
        plotly's in-place update messages (JupyterLab applies them), while a new widget renders from its own state
        everywhere. The old widget is closed."""
        old = getattr(self, name)
        fig = go.Figure(fig)
        fig.update_layout(height=fig.layout.height or 340, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                          title_x=0.01, title_xanchor="left")  # clear of plotly's toolbar, which sits top right
        new = go.FigureWidget(fig)
        setattr(self, name, new)
        _swap(self, old, new)
        old.close()
        return new

    @staticmethod
    def stream_text(policy: BasePolicy, x: str, show: Callable[[str], None], *, max_new_tokens: int,
                    every: float = 0.15, **sampling: Any) -> str:
        """Generate the response to `x` token by token (`policy.stream`), calling `show(text so far + '▌')` at most
        every `every` seconds and `show(text)` at the end; returns the text (equal to `policy.generate([x])[0]`)."""
        text, last = "", 0.0
        for piece in policy.stream(x, max_new_tokens=max_new_tokens, **sampling):
            text += piece
            if time.monotonic() - last >= every:
                show(text + CURSOR)
                last = time.monotonic()
        show(text)
        return text
