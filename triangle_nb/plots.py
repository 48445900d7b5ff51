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


# -- panel builders (triangle_nb.panels): each takes plain numbers and returns a go.Figure -----------------

_BLUE, _ORANGE, _RED, _PURPLE = "#2b6cb0", "#dd6b20", "#b2182b", "#6b46c1"


def reward_histograms(before: list[float], after: list[float], *, title: str = "Reward before / after",
                      labels: tuple[str, str] = ("π0 (before)", "π* (after)")) -> go.Figure:
    """Two overlaid reward histograms with their means as dashed lines (arrow 1)."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "barmode": "overlay", "height": 340,
                            "xaxis_title": "reward r(x, y)", "yaxis_title": "responses"})
    for values, name, colour in ((before, labels[0], _BLUE), (after, labels[1], _ORANGE)):
        mean = f", mean {sum(values) / len(values):.3f}" if len(values) else ""
        fig.add_trace(go.Histogram(x=list(values), name=name + mean, opacity=0.6, marker_color=colour, nbinsx=12,
                                   bingroup=1))
    return fig


def reward_kl_curve(betas: list[float], rewards: list[float], kls: list[float], *,
                    title: str = "Reward vs KL over a β sweep") -> go.Figure:
    """The reward–KL trade-off: one point per β, labelled (arrow 1, Eq. 1)."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "height": 340,
                            "xaxis_title": "KL[π* ‖ π0] (nats)", "yaxis_title": "mean held-out reward"})
    fig.add_trace(go.Scatter(x=list(kls), y=list(rewards), mode="lines+markers+text", marker_color=_PURPLE,
                             text=[f"β={b:g}" for b in betas], textposition="top center", name="π*"))
    return fig


def token_reward_bars(tokens: list[str], values: list[float], *, title: str = "Per-token reward") -> go.Figure:
    """One bar per token (blue > 0, red < 0) and the running sum (arrows 2 and 5)."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "height": 320, "yaxis_title": "reward",
                            "xaxis": {"tickangle": -45}, "legend": {"orientation": "h", "y": 1.1}})
    labels = [f"{i}:{t!r}"[:18] for i, t in enumerate(tokens)]
    fig.add_trace(go.Bar(x=labels, y=list(values), name="per token",
                         marker_color=[_BLUE if v >= 0 else _RED for v in values]))
    running = [sum(values[: i + 1]) for i in range(len(values))]
    fig.add_trace(go.Scatter(x=labels, y=running, mode="lines", name="running sum", line_color=_PURPLE))
    return fig


def score_bars(labels: list[str], scores: list[float], *, title: str = "Scores",
               reference: list[float] | None = None, reference_name: str = "reference") -> go.Figure:
    """Bars of one score per item, optionally next to a reference score (arrow 5: agreement)."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "height": 360, "barmode": "group",
                            "yaxis_title": "score", "legend": {"orientation": "h", "y": 1.12, "x": 0.5}})
    short = [f"#{i} " + (s if len(s) <= 26 else s[:24] + "…") for i, s in enumerate(labels)]
    fig.add_trace(go.Bar(x=short, y=list(scores), name="score", marker_color=_PURPLE, hovertext=labels,
                         offsetgroup=0))
    if reference is not None:  # its own axis on the right, its bars beside the scores (not on top)
        fig.add_trace(go.Bar(x=short, y=list(reference), name=reference_name, marker_color=_ORANGE,
                             hovertext=labels, yaxis="y2", offsetgroup=1))
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": reference_name, "showgrid": False,
                                  "range": _symmetric(reference)}, yaxis_range=_symmetric(scores))
    return fig


def _symmetric(values: list[float]) -> list[float]:
    """An axis range centred on 0 (two axes then share their zero line)."""
    top = 1.15 * max([abs(float(v)) for v in values] + [1e-9])
    return [-top, top]


def kl_bars(labels: list[str], values: list[float], *, title: str = "KL", yaxis_title: str = "KL (nats/token)",
            highlight: int | None = None) -> go.Figure:
    """One bar per setting (before/after, or per candidate prompt); `highlight` marks the best (arrows 3, 4)."""
    colours = [_PURPLE if i == highlight else _BLUE for i in range(len(values))]
    short = [s if len(s) <= 40 else s[:38] + "…" for s in labels]
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "height": 340, "yaxis_title": yaxis_title})
    fig.add_trace(go.Bar(x=short, y=list(values), marker_color=colours, hovertext=labels,
                         text=[f"{v:.3g}" for v in values], textposition="outside"))
    return fig


def trajectory(rounds: list[float], best: list[float], *, mean: list[float] | None = None,
               title: str = "Prompt search", yaxis_title: str = "reward") -> go.Figure:
    """Best (and mean) score per optimisation round (arrows 4 and 6)."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "height": 340, "xaxis_title": "round",
                            "yaxis_title": yaxis_title})
    fig.add_trace(go.Scatter(x=list(rounds), y=list(best), mode="lines+markers", name="best", line_color=_PURPLE))
    if mean is not None:
        fig.add_trace(go.Scatter(x=list(rounds), y=list(mean), mode="lines+markers", name="mean",
                                 line_color=_BLUE, line_dash="dot"))
    return fig


def control_curve(requested: list[float], achieved: list[float], *, baseline: list[float] | None = None,
                  title: str = "Reward-conditioned control", yaxis_title: str = "achieved reward") -> go.Figure:
    """Achieved mean reward per requested level s (arrow 6, Eq. 17), optionally next to the untuned π0."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "height": 340, "xaxis_title": "requested s",
                            "yaxis_title": yaxis_title})
    fig.add_trace(go.Scatter(x=list(requested), y=list(achieved), mode="lines+markers", name="tuned π"))
    if baseline is not None:
        fig.add_trace(go.Scatter(x=list(requested), y=list(baseline), mode="lines+markers", name="π0 + z(s)",
                                 line_dash="dot"))
    return fig


def placeholder(text: str, *, height: int = 340) -> go.Figure:
    """A figure that says what will appear once the panel runs (instead of empty axes)."""
    fig = go.Figure(layout={"template": TEMPLATE, "height": height, "xaxis": {"visible": False},
                            "yaxis": {"visible": False}})
    fig.add_annotation(text=text, x=0.0, y=0.5, xref="paper", yref="paper", xanchor="left", showarrow=False,
                       font={"size": 15, "color": "#4a5568"})  # left-aligned: right wherever the width ends up
    return fig


_NOT_CURVES = ("step", "seconds", "epoch", "learning_rate", "grad_norm")
IMPLICIT = ("chosen_reward", "rejected_reward", "margin")  # DPO's β·log π/π_ref on y+ and y−, and their difference


def _reward_axis(curves: list[str]) -> str:
    """The left axis says exactly what its curves are: the task's reward r, DPO's implicit reward, or the loss."""
    if not curves or curves == ["loss"]:
        return "loss" if curves else ""
    implicit = [c in IMPLICIT for c in curves]
    if all(implicit):
        return "DPO implicit reward β·log π/π_ref (not r)"
    return "reward" if any(implicit) else "reward r(x, y) of the samples"


def training_curve(history: pd.DataFrame, *, title: str = "training: reward and KL per step") -> go.Figure:
    """The Trainer's logged rows as curves against the step: rewards (and DPO's margin) on the left axis, KL
    estimates on the right one; the loss when a method logs neither (arrow 1, drawn live while it trains)."""
    fig = go.Figure(layout={"template": TEMPLATE, "title": title, "height": 300, "xaxis_title": "step",
                            "legend": {"orientation": "h", "y": -0.25}})
    if history.empty or "step" not in history:
        return fig
    cols = [c for c in history.select_dtypes("number").columns if c not in _NOT_CURVES]
    kls = [c for c in cols if "kl" in c]
    rewards = [c for c in cols if c not in kls and ("reward" in c or c == "margin")] or (
        [] if kls else [c for c in cols if c == "loss"])
    for col in rewards:
        fig.add_trace(go.Scatter(x=list(history["step"]), y=list(history[col]), mode="lines+markers", name=col))
    for col in kls:
        fig.add_trace(go.Scatter(x=list(history["step"]), y=list(history[col]), mode="lines+markers", name=col,
                                 yaxis="y2", line_dash="dot"))
    fig.update_layout(yaxis_title=_reward_axis(rewards))
    if kls:
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "KL (nats)", "showgrid": False})
    return fig
