"""Figures of the Train page: the digits, the curves as they grow, the first layer's filters,
the confusion matrix. Drawing only: the numbers come from `cnnviz.lenet`."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def digits_grid(x: np.ndarray, y: np.ndarray, per_class: int = 8, gap: int = 2) -> np.ndarray:
    """uint8 [H, W] grid of `per_class` samples of each digit (a row per digit) from pixels
    [N, 3, 32, 32] in [0, 1] and labels [N]."""
    side = x.shape[-1]
    out = np.full((10 * (side + gap), per_class * (side + gap)), 255, np.uint8)
    for d in range(10):
        for k, i in enumerate(np.flatnonzero(y == d)[:per_class]):
            out[d * (side + gap): d * (side + gap) + side, k * (side + gap): k * (side + gap) + side] = \
                (x[i, 0] * 255).round().astype(np.uint8)
    return out


def filters_strip(weights: np.ndarray, scale: int = 12, gap: int = 4) -> np.ndarray:
    """uint8 [H, W] of the first layer's filters [6, 5, 5] side by side, each stretched on its
    own (grey is zero, white the largest weight), enlarged without blur."""
    n, h, w = weights.shape
    out = np.full((h * scale, n * (w * scale + gap) - gap), 255, np.uint8)
    for k, f in enumerate(weights):
        top = float(np.abs(f).max()) or 1.0
        tile = ((f / top) * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
        out[:, k * (w * scale + gap): k * (w * scale + gap) + w * scale] = np.kron(tile, np.ones((scale, scale), np.uint8))
    return out


def curves_figure(epochs: list[dict], total: int, height: int = 340) -> go.Figure:
    """Loss (left) and train and test accuracy (right) per epoch, the x axis fixed to the
    whole run so the curves grow into it."""
    fig = make_subplots(1, 2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.1)
    e = [r["epoch"] for r in epochs]
    fig.add_trace(go.Scatter(x=e, y=[r["loss"] for r in epochs], mode="lines+markers", name="training loss"), 1, 1)
    fig.add_trace(go.Scatter(x=e, y=[r["train_accuracy"] for r in epochs], mode="lines+markers", name="train"), 1, 2)
    fig.add_trace(go.Scatter(x=e, y=[r["test_accuracy"] for r in epochs], mode="lines+markers", name="test"), 1, 2)
    fig.update_xaxes(range=[0.5, total + 0.5], title="epoch", dtick=max(1, total // 10))
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0), legend=dict(orientation="h", y=-0.25))
    return fig


def confusion_figure(confusion: list[list[int]], selected: tuple[int, int] | None = None,
                     height: int = 420) -> go.Figure:
    """Test digits by true (rows) and predicted (columns) class; click a cell for its digits."""
    c = np.asarray(confusion)
    cells = [[[t, p] for p in range(10)] for t in range(10)]
    fig = go.Figure(go.Heatmap(z=np.log1p(c), text=c, texttemplate="%{text}", customdata=cells, colorscale="Blues",
                               showscale=False, xgap=1, ygap=1,
                               hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>"))
    if selected is not None:
        t, p = selected
        fig.add_shape(type="rect", x0=p - 0.5, x1=p + 0.5, y0=t - 0.5, y1=t + 0.5, line=dict(color="#d62728", width=3))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0), dragmode=False, clickmode="event+select",
                      xaxis=dict(title="predicted", dtick=1, range=[-0.5, 9.5]),
                      yaxis=dict(title="true", dtick=1, range=[9.5, -0.5], scaleanchor="x"))
    return fig
