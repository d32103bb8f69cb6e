"""Figures of the Convolution page (Plotly): the playground's sliding window, one unit's
window on its input, its patch x kernel = products, the channels' sums, which inputs a
layer reads, and the softmax. Drawing only: the numbers come from `cnnviz.arithmetic`
and `cnnviz.unit`.
"""
from __future__ import annotations

import functools

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import arithmetic, bounds
from .contract import CnnvizError

RED, BLUE, GREY = "#d62728", "#1f77b4", "#b0b0b0"
_NUM = "%{z:.3g}"


def _fmt(v: float) -> str:
    return f"{v:g}" if float(v).is_integer() else f"{v:.2f}"


def _sum_text(patch: np.ndarray, kernel: np.ndarray, value: float) -> str:
    """'3x1 + 0x0 + ... = 7' for the playground's window (up to 9 terms written out)."""
    terms = [f"{_fmt(k)}x{_fmt(x)}" for k, x in zip(kernel.ravel(), patch.ravel())]
    shown = " + ".join(terms[:9]) + (f" + ... ({len(terms)} products)" if len(terms) > 9 else "")
    return f"{shown} = {_fmt(value)}"


def can_draw(size: arithmetic.OutputSize) -> bool:
    """Whether the playground draws this layer: a small padded grid and few enough frames."""
    return size.padded <= bounds.DRAW_SIDE and size.output ** 2 <= bounds.DRAW_FRAMES


@functools.lru_cache(maxsize=16)  # a class opening the same link builds it once (<= 0.3 MB each)
def playground_figure(size: arithmetic.OutputSize, toy: str, height: int = 460) -> go.Figure:
    """The padded input (`arithmetic.toy_input`: numbers in the cells, padding grey) beside
    the output map, and a frame per output unit: the window on the input, the unit on the
    output, the sum written out with kernel `toy`. Play/Pause and a slider (drag) step
    through the frames in the browser; columns the window never reaches (an inexact
    division) are shaded red. Read-only: the figure is shared."""
    if not can_draw(size):
        raise CnnvizError(f"The playground draws padded inputs up to {bounds.DRAW_SIDE} cells a side and up to "
                          f"{bounds.DRAW_FRAMES} output units.")
    x, kernel = arithmetic.toy_input(size.input), arithmetic.toy_kernel(toy, size.kernel)
    P, span, d = size.padding, size.span, size.dilation
    n = size.padded
    padded = np.pad(x, P)
    out = arithmetic.toy_conv(x, kernel, P, size.stride, d)
    is_pad = np.ones((n, n), bool)
    is_pad[P: P + size.input, P: P + size.input] = False
    fig = make_subplots(1, 2, column_widths=[n / (n + size.output + 1), (size.output + 1) / (n + size.output + 1)],
                        subplot_titles=(f"input {size.input}x{size.input}, padding {P} (grey)",
                                        f"output {size.output}x{size.output}"), horizontal_spacing=0.06)
    text = [[("" if n > 24 else _fmt(v)) for v in row] for row in padded]
    light_blue, light_orange = [[0, "#f7fbff"], [1, "#6baed6"]], [[0, "#fff5eb"], [1, "#fd8d3c"]]
    fig.add_trace(go.Heatmap(z=np.where(is_pad, np.nan, padded), text=text, texttemplate="%{text}",
                             colorscale=light_blue, showscale=False, hovertemplate="row %{y}, column %{x}: %{z}<extra></extra>",
                             xgap=1, ygap=1), 1, 1)
    fig.add_trace(go.Heatmap(z=np.where(is_pad, 0, np.nan), colorscale=[[0, GREY], [1, GREY]], showscale=False,
                             hoverinfo="skip", xgap=1, ygap=1), 1, 1)
    otext = [[("" if size.output > 24 else _fmt(v)) for v in row] for row in out]
    fig.add_trace(go.Heatmap(z=out, text=otext, texttemplate="%{text}", colorscale=light_orange, showscale=False,
                             hovertemplate="unit (%{y}, %{x}): %{z:.3g}<extra></extra>", xgap=1, ygap=1), 1, 2)
    fixed = []
    if size.dropped:  # the columns (and rows) no window reaches
        r0 = n - size.dropped - 0.5
        for kw in (dict(x0=r0, x1=n - 0.5, y0=-0.5, y1=n - 0.5), dict(x0=-0.5, x1=n - 0.5, y0=r0, y1=n - 0.5)):
            fixed.append(dict(type="rect", xref="x", yref="y", fillcolor=RED, opacity=0.18, line=dict(width=0), **kw))
    frames, steps = [], []
    starts = size.starts()
    for i, top in enumerate(starts):
        for j, left in enumerate(starts):
            win = padded[top: top + span: d, left: left + span: d]
            shapes = list(fixed)
            if d == 1:
                shapes.append(dict(type="rect", xref="x", yref="y", x0=left - 0.5, x1=left + span - 0.5,
                                   y0=top - 0.5, y1=top + span - 0.5, line=dict(color=RED, width=3)))
            else:  # a dilated kernel's taps, each its own square, in one path (one shape a frame: fast)
                path = "".join(f"M{c - 0.5},{r - 0.5}H{c + 0.5}V{r + 0.5}H{c - 0.5}Z"
                               for r in range(top, top + span, d) for c in range(left, left + span, d))
                shapes.append(dict(type="path", xref="x", yref="y", path=path, line=dict(color=RED, width=3)))
            shapes.append(dict(type="rect", xref="x2", yref="y2", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                               line=dict(color=RED, width=3)))
            name = f"{i},{j}"
            title = f"unit ({i}, {j}): " + _sum_text(win, kernel, out[i, j])
            frames.append(dict(name=name, layout=dict(shapes=shapes, title=dict(text=title))))  # validated once, below
            steps.append(dict(method="animate", label=f"({i}, {j})",
                              args=[[name], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                 transition=dict(duration=0))]))
    fig.frames = frames
    first = frames[0]["layout"]
    fig.update_layout(
        height=height, margin=dict(l=0, r=0, t=70, b=10), shapes=first["shapes"],
        title=dict(text=first["title"]["text"], font=dict(size=14)),
        updatemenus=[dict(type="buttons", direction="left", x=0, y=-0.02, xanchor="left", yanchor="top",
                          buttons=[dict(label="Play", method="animate",
                                        args=[None, dict(frame=dict(duration=450, redraw=True), fromcurrent=True,
                                                         transition=dict(duration=0))]),
                                   dict(label="Pause", method="animate",
                                        args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False))])])],
        sliders=[dict(active=0, steps=steps, x=0.14, y=-0.02, len=0.86, xanchor="left", yanchor="top",
                      currentvalue=dict(prefix="unit ", font=dict(size=12)), pad=dict(t=0),
                      ticklen=0, font=dict(color="rgba(0,0,0,0)"))],  # one label per frame would pile up
    )
    for k in (1, 2):
        fig.update_xaxes(visible=False, row=1, col=k)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{'' if k == 1 else 2}", row=1, col=k)
    return fig


def window_figure(base, box: tuple[int, int, int, int], shape: tuple[int, int], winner=None,
                  height: int = 420) -> go.Figure:
    """The layer's input (an RGB image, or a map [H, W]) with the unit's window (red); the
    window may reach into the padding (grey band around the input)."""
    H, W = shape
    top, left, bottom, right = box
    fig = go.Figure()
    if getattr(base, "ndim", 0) == 3:
        fig.add_trace(go.Image(z=base, hoverinfo="skip"))
    else:
        fig.add_trace(go.Heatmap(z=base, colorscale="gray", showscale=False,
                                 hovertemplate="row %{y}, column %{x}: %{z:.3g}<extra></extra>"))
    lo_y, lo_x, hi_y, hi_x = min(top, 0), min(left, 0), max(bottom, H), max(right, W)
    if (lo_y, lo_x, hi_y, hi_x) != (0, 0, H, W):  # the padding the window reaches into
        fig.add_shape(type="rect", x0=lo_x - 0.5, x1=hi_x - 0.5, y0=lo_y - 0.5, y1=hi_y - 0.5, fillcolor=GREY,
                      opacity=0.5, line=dict(width=0), layer="below")
    fig.add_shape(type="rect", x0=-0.5, x1=W - 0.5, y0=-0.5, y1=H - 0.5, line=dict(color="#555", width=1))
    fig.add_shape(type="rect", x0=left - 0.5, x1=right - 0.5, y0=top - 0.5, y1=bottom - 0.5,
                  line=dict(color=RED, width=2))
    if winner is not None:
        r, c = winner
        fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color=BLUE, width=2))
    # a ring around a window too small to find on a large map
    fig.add_trace(go.Scatter(x=[(left + right - 1) / 2], y=[(top + bottom - 1) / 2], mode="markers", hoverinfo="skip",
                             marker=dict(size=28, color="rgba(0,0,0,0)", line=dict(color=RED, width=2))))
    fig.update_layout(height=height, showlegend=False, margin=dict(l=0, r=0, t=0, b=0), dragmode="pan",
                      xaxis=dict(visible=False, range=[lo_x - 0.5, hi_x - 0.5]),
                      yaxis=dict(visible=False, range=[hi_y - 0.5, lo_y - 0.5], scaleanchor="x"))
    return fig


def patch_figure(patch: np.ndarray, weights: np.ndarray | None, box: tuple[int, int, int, int],
                 shape: tuple[int, int], dilation: tuple[int, int] = (1, 1), winner=None,
                 height: int = 300) -> go.Figure:
    """One input channel of a unit: its patch, times the kernel, equals the products
    (numbers in the cells; padding cells marked "pad"). Pooling: the window, the winner outlined."""
    kh, kw = patch.shape
    top, left = box[0], box[1]
    rows = [top + r * dilation[0] for r in range(kh)]
    cols = [left + c * dilation[1] for c in range(kw)]
    pad = np.array([[not (0 <= r < shape[0] and 0 <= c < shape[1]) for c in cols] for r in rows])
    small = kh * kw <= 64

    def cells(a, mark_pad: bool):
        return [["pad" if mark_pad and pad[i, j] else f"{a[i, j]:.3g}" if small and np.isfinite(a[i, j]) else ""
                 for j in range(kw)] for i in range(kh)]

    panels = [("input patch", patch)] if weights is None else [
        ("input patch", patch), ("x kernel", weights), ("= products", patch * weights)]
    fig = make_subplots(1, len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.04)
    for k, (name, a) in enumerate(panels, 1):
        shown = np.where(np.isfinite(a), a, np.nan)
        text = cells(a, name == "input patch")
        lim = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
        fig.add_trace(go.Heatmap(z=shown, text=text, texttemplate="%{text}", colorscale="RdBu", zmid=0,
                                 zmin=-lim or -1, zmax=lim or 1, showscale=False, xgap=1, ygap=1,
                                 hovertemplate=f"{name}<br>row %{{y}}, column %{{x}}: {_NUM}<extra></extra>"), 1, k)
        fig.update_xaxes(visible=False, row=1, col=k)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{'' if k == 1 else k}", row=1, col=k)
    if winner is not None:
        i, j = (winner[0] - top) // dilation[0], (winner[1] - left) // dilation[1]
        fig.add_shape(type="rect", xref="x", yref="y", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                      line=dict(color=BLUE, width=3))
    fig.update_layout(height=min(height, 90 + 36 * max(kh, kw)), margin=dict(l=0, r=0, t=30, b=0))
    return fig


def channel_sums_figure(sums: list[float], channels: list[int], selected: int | None = None,
                        most: int = 48, height: int = 260) -> go.Figure:
    """Each input channel's sum of products, the largest |sum| first (the `most` largest):
    which channels make this unit's number. Click a bar to show its arithmetic."""
    s = np.asarray(sums)
    order = np.argsort(-np.abs(s), kind="stable")[:most]
    colours = [RED if channels[k] == selected else (BLUE if s[k] >= 0 else "#ff7f0e") for k in order]
    fig = go.Figure(go.Bar(x=[f"c{channels[k]}" for k in order], y=s[order], marker_color=colours,
                           customdata=[channels[k] for k in order],
                           hovertemplate="input channel %{customdata}: %{y:.4g}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=10, b=0), clickmode="event+select", dragmode=False,
                      xaxis=dict(type="category", title=None), yaxis=dict(title="sum of products"))
    return fig


def coverage_figure(counts: np.ndarray, height: int = 320) -> go.Figure:
    """How many units read each input position; positions no unit reads in red."""
    never = counts == 0
    fig = go.Figure(go.Heatmap(z=counts, colorscale="Greens", showscale=True,
                               colorbar=dict(title="reads", thickness=10),
                               hovertemplate="row %{y}, column %{x}: read by %{z} units<extra></extra>"))
    if never.any():
        fig.add_trace(go.Heatmap(z=np.where(never, 1, np.nan), colorscale=[[0, RED], [1, RED]], showscale=False,
                                 hovertemplate="row %{y}, column %{x}: never read<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0),
                      xaxis=dict(visible=False), yaxis=dict(visible=False, autorange="reversed", scaleanchor="x"))
    return fig


def softmax_figure(labels: list[str], at_t: list[float], at_one: list[float], temperature: float,
                   height: int = 320) -> go.Figure:
    """Probabilities of the same classes at temperature T and at T = 1."""
    fig = go.Figure([go.Bar(name="T = 1", x=labels, y=at_one, marker_color=GREY),
                     go.Bar(name=f"T = {temperature:g}", x=labels, y=at_t, marker_color=BLUE)])
    fig.update_layout(height=height, barmode="group", margin=dict(l=0, r=0, t=10, b=0),
                      yaxis=dict(title="probability", range=[0, 1], tickformat=".0%"), legend=dict(orientation="h"))
    return fig
