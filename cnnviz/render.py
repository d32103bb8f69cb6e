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


# ---------------------------------------------------------------- activations

def png_data_uri(rgb) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mosaic_figure(rgb, grid, stats, selected: int | None = None, width: int = 760) -> go.Figure:
    """The mosaic as one image, with an invisible marker per tile that carries the
    hover text and the click (Plotly returns no points for image/heatmap clicks)."""
    h, w = rgb.shape[:2]
    centres = [grid.centre(k) for k in range(len(grid.order))]
    ch = [int(c) for c in grid.order]
    px = max(6.0, min(grid.tile_w, grid.tile_h) * width / max(w, 1))
    fig = go.Figure(go.Image(source=png_data_uri(rgb), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=[c[1] for c in centres], y=[c[0] for c in centres], mode="markers",
        marker=dict(size=px, symbol="square", opacity=0), customdata=ch,
        text=[f"channel {c}<br>mean {stats.mean[c]:.3g}<br>max {stats.max[c]:.3g}<br>zeros {stats.zeros[c]:.0%}" for c in ch],
        hovertemplate="%{text}<extra></extra>", showlegend=False,
    ))
    if selected is not None and selected in ch:
        y, x = centres[ch.index(selected)]
        fig.add_shape(type="rect", x0=x - grid.tile_w / 2, x1=x + grid.tile_w / 2, y0=y - grid.tile_h / 2,
                      y1=y + grid.tile_h / 2, line=dict(color="#d62728", width=2))
    fig.update_layout(
        width=None, height=int(width * h / max(w, 1)) + 20, margin=dict(l=0, r=0, t=0, b=0),
        xaxis=dict(visible=False), yaxis=dict(visible=False), hovermode="closest", dragmode=False,
        clickmode="event+select",
    )
    return fig


def map_heatmap(m, title: str = "", zmin=None, zmax=None) -> go.Figure:
    """One activation map, white = strong, with the value under the cursor."""
    fig = go.Figure(go.Heatmap(z=m, colorscale="gray", zmin=zmin, zmax=zmax,
                               hovertemplate="row %{y}, col %{x}<br>value %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title or None, margin=dict(l=0, r=0, t=30 if title else 0, b=0), height=360,
                      yaxis=dict(autorange="reversed", scaleanchor="x", visible=False), xaxis=dict(visible=False))
    return fig


def histogram(values, title: str = "values") -> go.Figure:
    fig = go.Figure(go.Histogram(x=values.ravel(), nbinsx=50, marker_color="#1f77b4"))
    fig.update_layout(xaxis_title=title, yaxis_title="count", height=260, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def depth_figure(summary: list[dict], current: str | None = None) -> go.Figure:
    """Mean activation, sparsity and map size over all layers; points are clickable."""
    from plotly.subplots import make_subplots

    x = list(range(len(summary)))
    names = [r["layer"] for r in summary]
    shape = [f"{r['channels']}x{r['height']}x{r['width']}" for r in summary]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=("mean activation", "fraction of zeros", "map size (pixels per side) and channels"))
    common = dict(mode="lines+markers", customdata=names, marker=dict(size=5),
                  text=shape, hovertemplate="%{customdata}<br>%{text}<br>%{y:.3g}<extra></extra>")
    fig.add_trace(go.Scatter(x=x, y=[r["mean"] for r in summary], name="mean", **common), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=[r["zeros"] for r in summary], name="zeros", **common), 2, 1)
    fig.add_trace(go.Scatter(x=x, y=[r["height"] for r in summary], name="size", **common), 3, 1)
    fig.add_trace(go.Scatter(x=x, y=[r["channels"] for r in summary], name="channels", line=dict(dash="dot"),
                             **common), 3, 1)
    fig.update_yaxes(type="log", row=3, col=1)
    if current in names:
        fig.add_vline(x=names.index(current), line=dict(color="#d62728", width=1))
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=30, b=10), showlegend=False, clickmode="event+select",
                      hovermode="closest")
    fig.update_xaxes(title_text="layer (execution order)", row=3, col=1)
    return fig


def diff_bars(rows: list[dict], k: int = 20, labels=("A", "B")) -> go.Figure:
    rows = rows[:k][::-1]
    fig = go.Figure(go.Bar(
        x=[r["diff"] for r in rows], y=[f"ch {r['index']} " for r in rows], orientation="h",
        marker_color=["#d62728" if r["diff"] > 0 else "#1f77b4" for r in rows],
        hovertemplate=f"%{{y}}<br>mean {labels[1]} - mean {labels[0]} = %{{x:.3g}}<extra></extra>",
    ))
    fig.update_layout(height=80 + 18 * len(rows), margin=dict(l=10, r=10, t=10, b=10),
                      xaxis_title=f"mean activation: {labels[1]} minus {labels[0]}")
    return fig


def overlay(base, heat, opacity: float = 0.5, cmap: str = "inferno"):
    """A map upsampled to the image (bilinear) and blended over it; PIL RGB."""
    import matplotlib
    import numpy as np
    from PIL import Image

    lo, hi = float(heat.min()), float(heat.max())
    norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    big = Image.fromarray((norm * 255).astype(np.uint8)).resize(base.size, Image.BILINEAR)
    colored = (matplotlib.colormaps[cmap](np.asarray(big) / 255.0)[..., :3] * 255).astype(np.uint8)
    return Image.blend(base.convert("RGB"), Image.fromarray(colored), opacity)


# ---------------------------------------------------------------- trust checks

def randomization_figure(result: dict) -> go.Figure:
    fig = go.Figure()
    for method, rho in result["correlation"].items():
        fig.add_trace(go.Scatter(x=result["steps"], y=rho, mode="lines+markers", name=method))
    fig.update_layout(yaxis=dict(title="rank correlation with the trained model's map", range=[-0.2, 1.05]),
                      xaxis_title="weights randomized, from the top", height=380, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def deletion_figure(curves: dict[str, list[float]], areas: dict[str, float]) -> go.Figure:
    fig = go.Figure()
    for name, ys in curves.items():
        xs = [i / (len(ys) - 1) for i in range(len(ys))]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{name} (area {areas[name]:.3f})",
                                 line=dict(dash="dot") if name == "random order" else None))
    fig.update_layout(xaxis=dict(title="fraction of pixels removed (most salient first)", tickformat=".0%"),
                      yaxis_title="target probability", height=380, margin=dict(l=10, r=10, t=10, b=10))
    return fig
