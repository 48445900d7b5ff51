"""Token heatmap: a value per token (e.g. a per-token log-ratio reward), hover shows the value.

The live view is widgets/heatmap.js; `to_html()` writes a standalone HTML snippet with the same
colours for export (and for `_repr_html_` where widgets are not rendered).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import anywidget
import numpy as np
import traitlets

from ..chat import readable_tokens  # noqa: F401  (re-exported: panels.readable_tokens)
from ..errors import InvalidArgumentError
from ._assets import asset

POS, NEG = (33, 102, 172), (178, 24, 43)


class TokenHeatmap(anywidget.AnyWidget):
    """Tokens coloured by value: blue above zero, red below; the strongest colour at |value| ≥ vmax.

    Args:
        tokens: the token strings, in order (use `readable_tokens` to turn ids into text pieces).
        values: one finite number per token.
        vmax: the |value| that gets the full colour; 0 scales to the largest |value|.
        label: a caption shown above the tokens.

    >>> TokenHeatmap(["Hello", " world"], [0.5, -1.0]).to_html().count("<span")
    2
    """

    _esm = asset("heatmap.js")
    _css = asset("heatmap.css")
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    values = traitlets.List(traitlets.Float()).tag(sync=True)
    vmax = traitlets.Float(0.0).tag(sync=True)
    label = traitlets.Unicode("").tag(sync=True)

    def __init__(self, tokens: Sequence[str] = (), values: Sequence[float] = (), *, vmax: float = 0.0,
                 label: str = "", **kwargs: Any) -> None:
        super().__init__(vmax=vmax, label=label, **kwargs)
        self.show(tokens, values)

    def show(self, tokens: Sequence[str], values: Sequence[float], *, label: str | None = None) -> None:
        """Replace the tokens and values at once (checked: same length, finite values)."""
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(tokens) != len(vals):
            raise InvalidArgumentError(f"TokenHeatmap needs one value per token: {len(tokens)} tokens, "
                                       f"{len(vals)} values.")
        if not np.all(np.isfinite(vals)):
            raise InvalidArgumentError("TokenHeatmap values must be finite numbers (got NaN or inf).")
        with self.hold_trait_notifications():
            self.tokens = [str(t) for t in tokens]
            self.values = [float(v) for v in vals]
            if label is not None:
                self.label = label

    def to_html(self) -> str:
        """A standalone HTML snippet (inline styles, no JavaScript) of the heatmap."""
        scale = self.vmax if self.vmax > 0 else max([abs(v) for v in self.values] + [1e-9])
        spans = "".join(_span(t, v, scale) for t, v in zip(self.tokens, self.values, strict=True))
        box = ("font-family:monospace;font-size:15px;line-height:1.9;white-space:pre-wrap;"
               "padding:8px 10px;border:1px solid #d9e2ec;border-radius:6px")
        head = f"<div style='font-weight:600;font-size:13px'>{html.escape(self.label)}</div>" if self.label else ""
        return f"<div class='tnb-heatmap-export'>{head}<div style='{box}'>{spans}</div></div>"

    def __repr__(self) -> str:
        """Plain text of the heatmap (what a saved notebook shows without its widget): each token and its value."""
        pairs = " ".join(f"{t!r}:{v:+.2f}" for t, v in zip(self.tokens[:40], self.values[:40], strict=True))
        more = f" … (+{len(self.tokens) - 40} tokens)" if len(self.tokens) > 40 else ""
        return f"token heatmap{f' ({self.label})' if self.label else ''}: {pairs}{more}"

    def _repr_html_(self) -> str:
        return self.to_html()


def _span(token: str, value: float, scale: float) -> str:
    alpha = 0.85 * min(abs(value) / scale, 1.0)
    r, g, b = POS if value >= 0 else NEG
    fg = "color:#fff;" if alpha > 0.5 else ""
    return (f"<span title='{html.escape(repr(token))}: {value:+.3f}' "
            f"style='background:rgba({r},{g},{b},{alpha:.3f});{fg}border-radius:3px'>{html.escape(token)}</span>")
