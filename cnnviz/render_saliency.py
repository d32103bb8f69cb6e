"""The Saliency page's scoring figures: the layer advisor's chart, the methods' agreement
matrix, and deletion and insertion curves side by side (no computation of numbers)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

RANDOM_LABEL = "random order"


def advisor_figure(advice, random, best: str | None, height: int = 340) -> go.Figure:
    """Per layer (execution order): deletion area (lower is better) and insertion area
    (higher is better) as bars, the random order's as dotted lines, the best layer's
    name marked. Click a layer (its bars) to take it as the target layer."""
    names = [a.layer for a in advice]
    ticks = [f"<b>★ {n}</b>" if n == best else n for n in names]
    fig = go.Figure([
        go.Bar(x=ticks, y=[a.insertion_auc for a in advice], name="insertion area (higher: better)",
               marker_color="#2a9d8f", customdata=names, hovertemplate="%{customdata}: insertion %{y:.3f}<extra></extra>"),
        go.Bar(x=ticks, y=[a.deletion_auc for a in advice], name="deletion area (lower: better)",
               marker_color="#e76f51", customdata=names, hovertemplate="%{customdata}: deletion %{y:.3f}<extra></extra>"),
    ])
    for value, colour, what, where in ((random.insertion_auc, "#2a9d8f", "insertion", "top left"),
                                       (random.deletion_auc, "#e76f51", "deletion", "top right")):
        fig.add_hline(y=value, line_dash="dot", line_color=colour, annotation_font_color=colour,
                      annotation_text=f"random order, {what} {value:.2f}", annotation_position=where)
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(title="area under the curve", rangemode="tozero"),
                      legend=dict(orientation="h", y=1.12), clickmode="event+select")
    return fig


def agreement_figure(labels: list[str], rho: np.ndarray, height: int = 380) -> go.Figure:
    """Rank correlations of every pair of maps, numbers in the cells (-1 blue to 1 red)."""
    fig = go.Figure(go.Heatmap(z=rho, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu_r",
                               text=[[f"{v:.2f}" for v in row] for row in rho], texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: ρ = %{z:.3f}<extra></extra>",
                               colorbar=dict(title="ρ")))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10),
                      yaxis=dict(autorange="reversed", scaleanchor="x"), xaxis=dict(side="bottom"))
    return fig


def curves_figure(deletion: dict[str, list[float]], insertion: dict[str, list[float]],
                  areas: dict[str, dict[str, float]], label=lambda name: name, height: int = 460) -> go.Figure:
    """Deletion (left) and insertion (right) of every method, the random order dotted;
    each legend entry carries both areas."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("Deletion (blurred, most salient first)", "Insertion (restored, most salient first)"))
    palette = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#6a4c93", "#1982c4", "#8ac926", "#ff595e"]
    for k, name in enumerate(deletion):
        colour = "#888888" if label(name) == RANDOM_LABEL else palette[k % len(palette)]
        dash = "dot" if label(name) == RANDOM_LABEL else None
        a = areas[name]
        legend = f"{label(name)} (deletion {a['deletion']:.2f}, insertion {a['insertion']:.2f})"
        for col, ys in ((1, deletion[name]), (2, insertion[name])):
            xs = np.linspace(0, 1, len(ys))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=legend, legendgroup=name, showlegend=col == 1,
                                     line=dict(color=colour, dash=dash)), row=1, col=col)
    fig.update_xaxes(tickformat=".0%", title=dict(text="fraction of pixels", standoff=4))
    fig.update_yaxes(title="target probability", col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, font_size=11))
    return fig
