"""The Adversarial page's "Where the attack takes over" figures (no computation of numbers:
they come from `cnnviz.divergence`)."""
from __future__ import annotations

import plotly.graph_objects as go

ATTACK_COLOUR, NOISE_COLOUR, MARK_COLOUR = "#d62728", "#7f7f7f", "#1f77b4"


def divergence_figure(rows: list[dict], fastest: str | None, current: str | None = None, k: int = 10,
                      attack: str = "attack") -> go.Figure:
    """Relative change per layer (execution order) for the attack and the noise control, and
    how many of the top-k channels changed; the fastest-rising layer and the `current` one
    marked. Every point is clickable (`customdata`: the layer's call name)."""
    from plotly.subplots import make_subplots

    names = [r["layer"] for r in rows]
    x = list(range(len(rows)))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.7, 0.3],
                        subplot_titles=("relative change: ||perturbed - clean|| / ||clean||",
                                        f"of the top {k} channels, how many changed"))
    common = dict(mode="lines+markers", customdata=names, marker=dict(size=5))
    for key, top, label, colour, dash in (("adversarial", "top_changed", attack, ATTACK_COLOUR, None),
                                          ("noise", "noise_top_changed", "random noise, same size", NOISE_COLOUR,
                                           "dot")):
        fig.add_trace(go.Scatter(x=x, y=[r[key] for r in rows], name=label, line=dict(color=colour, dash=dash),
                                 hovertemplate=f"%{{customdata}}<br>{label}: %{{y:.3g}}<extra></extra>",
                                 legendgroup=key, **common), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=[r[top] for r in rows], name=label, line=dict(color=colour, dash=dash),
                                 hovertemplate=f"%{{customdata}}<br>{label}: %{{y}} of {k} top channels "
                                               "changed<extra></extra>",
                                 legendgroup=key, showlegend=False, **common), 2, 1)
    if fastest in names:
        i = names.index(fastest)
        fig.add_trace(go.Scatter(x=[i], y=[rows[i]["adversarial"]], mode="markers", customdata=[fastest],
                                 marker=dict(symbol="star", size=16, color=ATTACK_COLOUR,
                                             line=dict(color="black", width=1)),
                                 name="fastest rise", hovertemplate="%{customdata}<br>fastest rise<extra></extra>"),
                      1, 1)
        fig.add_annotation(x=i, y=rows[i]["adversarial"], text=f"fastest rise: {fastest}", showarrow=True,
                           arrowhead=2, ax=-60, ay=-30, row=1, col=1)
    if current in names:
        fig.add_vline(x=names.index(current), line=dict(color=MARK_COLOUR, width=1))
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40, b=10), clickmode="event+select",
                      hovermode="closest", legend=dict(orientation="h", y=1.12, x=0))
    fig.update_xaxes(title_text="layer (execution order); click a point to open the layer", row=2, col=1)
    fig.update_yaxes(rangemode="tozero")
    return fig


def channel_change_bars(channels: list[dict]) -> go.Figure:
    """The channels that changed most (L2 of the difference), largest on top."""
    rows = channels[::-1]
    fig = go.Figure(go.Bar(
        x=[c["change"] for c in rows], y=[f"ch {c['index']} " for c in rows], orientation="h",
        marker_color=ATTACK_COLOUR, customdata=[[c["share"], c["mean_clean"], c["mean_adversarial"]] for c in rows],
        hovertemplate="%{y}<br>||change|| %{x:.3g} (%{customdata[0]:.1%} of the layer's)<br>"
                      "mean %{customdata[1]:.3g} -> %{customdata[2]:.3g}<extra></extra>",
    ))
    fig.update_layout(height=80 + 18 * len(rows), margin=dict(l=10, r=10, t=10, b=10),
                      xaxis_title="L2 of the channel's change")
    return fig
