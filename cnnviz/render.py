"""Figures: Plotly for what users hover and click; PIL for image overlays."""
from __future__ import annotations

import plotly.graph_objects as go

from .predict import Top


def topk_bar(top: list[Top], title: str | None = None) -> go.Figure:
    """Horizontal bars of the top-k probabilities, the most likely class on top."""
    rows = list(reversed(top))
    fig = go.Figure(go.Bar(
        x=[t.prob for t in rows], y=[f"{t.label} " for t in rows], orientation="h",
        text=[f"{t.prob:.1%}" for t in rows], textposition="auto",
        customdata=[t.index for t in rows],
        hovertemplate="%{y}<br>class %{customdata}<br>p = %{x:.4f}<extra></extra>",
        marker_color=["#1f77b4"] * (len(rows) - 1) + ["#d62728"],
    ))
    fig.update_layout(
        title=title, xaxis=dict(range=[0, 1], tickformat=".0%", title="probability"),
        margin=dict(l=10, r=10, t=40 if title else 10, b=10), height=60 + 40 * len(rows),
    )
    return fig
