"""Plot builders: pure functions from numbers to plotly figures (panels and results call these)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

TEMPLATE = "plotly_white"


def history_figure(history: pd.DataFrame, *, title: str = "", x: str = "step") -> go.Figure:
    """Every numeric column of a per-step history against `x`."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "xaxis_title": x, "height": 360})
    if history.empty:
        return fig
    xs = history[x] if x in history else history.index
    for col in history.select_dtypes("number").columns:
        if col != x:
            fig.add_trace(go.Scatter(x=xs, y=history[col], mode="lines+markers", name=col))
    return fig
