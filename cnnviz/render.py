"""Figures: Plotly for what users hover and click; PIL for image overlays; static HTML for
Home's top-5, which every browser of a class draws at once."""
from __future__ import annotations

import html

import plotly.graph_objects as go

from .predict import Top


TOPK_COLOUR = "#ff4b4b"  # the light theme's primary colour, as Streamlit's own bars


def topk_html(top: list[Top], title: str | None = None) -> str:
    """The top-k as labelled bars, most likely first, in one static HTML block (`st.html`),
    under `title` if given: no script and no animation. Five `st.progress` bars were five
    elements whose widths animate, each drawn again on every rerun, and a Plotly chart's
    script doubled a browser's work to load Home, the page a whole class opens at once
    (ARCHITECTURE: "A class on one server"). Labels may come from an uploaded labels file:
    escaped, as the title."""
    rows = "".join(
        f'<div class="cnnviz-topk-row" data-index="{t.index}" data-p="{t.prob:.6f}" style="margin:0 0 0.45rem">'
        f'<div>{html.escape(t.label)}: {t.prob:.1%}</div>'
        '<div style="background:rgba(151,166,195,0.25);height:0.5rem;border-radius:0.25rem">'
        f'<div style="background:{TOPK_COLOUR};height:100%;border-radius:0.25rem;width:{100 * t.prob:.2f}%"></div>'
        "</div></div>"
        for t in top)
    head = (f'<div class="cnnviz-topk-title" style="font-weight:600;margin:0 0 0.6rem">{html.escape(title)}</div>'
            if title else "")
    return f'<div class="cnnviz-topk">{head}{rows}</div>'


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


# ---------------------------------------------------------------- CNN limits

def thumb_strip(sweep, per_row: int = 12):
    """The sweep's thumbnails in rows, each captioned with its value and top-1 (uint8 RGB)."""
    import numpy as np
    from PIL import Image, ImageDraw

    n, t = len(sweep.points), sweep.thumbs.shape[1]
    per_row = sweep.grid[1] if sweep.grid else min(per_row, n)
    rows = -(-n // per_row)
    cell_h = t + 30
    canvas = Image.new("RGB", (per_row * (t + 4), rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, p in enumerate(sweep.points):
        x, y = (i % per_row) * (t + 4), (i // per_row) * cell_h
        canvas.paste(Image.fromarray(sweep.thumbs[i]), (x, y))
        colour = (0, 0, 0) if p.top1.index == sweep.original.index else (200, 30, 30)
        draw.text((x + 1, y + t + 1), _short(p.value), fill=(90, 90, 90))
        draw.text((x + 1, y + t + 14), f"{p.top1.label[:13]} {p.top1.prob:.0%}", fill=colour)
    return np.asarray(canvas)


def _short(v) -> str:
    return f"[{v[0]}, {v[1]}]" if isinstance(v, tuple) else f"{v:g}"


def limits_figure(sweeps: list, names: list[str], highlight: int | None = None, thumbs: bool = True,
                  height: int = 520) -> go.Figure:
    """The original class's probability (top) and rank (bottom, log, 1 on top) across
    the sweep, one line per model; red markers where the top-1 is another class, dotted
    lines where the first model's label changes; the thumbnails as a film strip on top.
    x is the point index (ticks show the values), so uneven grids stay readable."""
    from plotly.subplots import make_subplots

    first = sweeps[0]
    n = len(first.points)
    xs = list(range(n))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.62, 0.38])
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    for k, (sw, name) in enumerate(zip(sweeps, names)):
        text = [f"{_short(p.value)}<br>top-1: {p.top1.label} ({p.top1.prob:.1%})<br>"
                f"{sw.original.label}: {p.orig_prob:.1%}, rank {p.orig_rank}" for p in sw.points]
        red = ["#d62728" if p.top1.index != sw.original.index else colours[k % 3] for p in sw.points]
        common = dict(x=xs, mode="lines+markers", customdata=xs, text=text, hovertemplate="%{text}<extra>" + name + "</extra>",
                      line=dict(color=colours[k % 3], dash=("solid", "dash", "dot")[k % 3]), legendgroup=name)
        fig.add_trace(go.Scatter(y=[p.orig_prob for p in sw.points], name=f"{name}: p({sw.original.label})",
                                 marker=dict(color=red, size=9, line=dict(width=1, color="white")), **common), 1, 1)
        fig.add_trace(go.Scatter(y=[p.orig_rank for p in sw.points], name=f"{name}: rank", showlegend=False,
                                 marker=dict(color=red, size=6), **common), 2, 1)
    for i in first.changes:
        fig.add_vline(x=i - 0.5, line=dict(color="#999", dash="dot", width=1))
        fig.add_annotation(x=i - 0.5, y=1.0, yref="y domain", text=first.points[i].top1.label[:18], showarrow=False,
                           textangle=-90, xanchor="right", yanchor="top", font=dict(size=10, color="#d62728"))
    if highlight is not None and 0 <= highlight < n:
        fig.add_vrect(x0=highlight - 0.5, x1=highlight + 0.5, fillcolor="#ffd54f", opacity=0.35, line_width=0)
    top_margin = 10
    if thumbs:  # the film strip: each thumbnail above its point
        top_margin = 90
        for i in xs:
            fig.add_layout_image(source=png_data_uri(first.thumbs[i]), xref="x", yref="paper", x=i, y=1.0,
                                 sizex=0.9, sizey=0.16, xanchor="center", yanchor="bottom", layer="above")
    fig.update_yaxes(title_text="probability of the original class", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="its rank", type="log", autorange="reversed", row=2, col=1)
    fig.update_xaxes(tickvals=xs, ticktext=[_short(p.value) for p in first.points], row=2, col=1)
    fig.update_xaxes(range=[-0.5, n - 0.5])
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=top_margin, b=10), hovermode="closest",
                      clickmode="event+select", legend=dict(orientation="h", y=-0.12), dragmode=False)
    return fig


def occlusion_figure(base, sweep, highlight: int | None = None, width: int = 560) -> go.Figure:
    """Zeiler and Fergus's map: the drop of the original class's probability wherever the
    grey patch sat, over the network's input; hover a patch position for its top-1."""
    import numpy as np

    drop = sweep.drop_map((base.height, base.width))
    shown = np.asarray(overlay(base, np.clip(drop, 0, None), 0.55, "jet"))
    h, w = shown.shape[:2]
    s = sweep.patch
    cy = [p.value[0] + s / 2 for p in sweep.points]
    cx = [p.value[1] + s / 2 for p in sweep.points]
    text = [f"patch at {_short(p.value)}<br>top-1: {p.top1.label} ({p.top1.prob:.1%})<br>"
            f"{sweep.original.label}: {p.orig_prob:.1%}, rank {p.orig_rank}" for p in sweep.points]
    fig = go.Figure(go.Image(source=png_data_uri(shown), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=cx, y=cy, mode="markers", customdata=list(range(len(cx))), text=text, hovertemplate="%{text}<extra></extra>",
        marker=dict(size=14, symbol=["x" if p.top1.index != sweep.original.index else "circle" for p in sweep.points],
                    color="white", opacity=0.5, line=dict(width=1, color="black")), showlegend=False))
    if highlight is not None and 0 <= highlight < len(sweep.points):
        y0, x0 = sweep.points[highlight].value
        fig.add_shape(type="rect", x0=x0, x1=x0 + s, y0=y0, y1=y0 + s, line=dict(color="white", width=3))
    fig.update_layout(height=int(width * h / w), margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(visible=False),
                      yaxis=dict(visible=False), hovermode="closest", clickmode="event+select", dragmode=False)
    return fig


# ---------------------------------------------------------------- receptive fields

RF_COLOURS = {"box": (214, 39, 40), "box50": (0, 190, 255), "box90": (60, 220, 60)}


def rf_canvas(base, box, heat=None, box50=None, box90=None, max_margin: int | None = None):
    """The input image on a grey border wide enough to show the part of the theoretical
    `box` that falls into padding, the effective field `heat` blended in, and the boxes
    (half-open, input pixels): red = theoretical, blue = 50% and green = 90% of the
    effective field's mass. Returns (PIL RGB, margin in pixels)."""
    from PIL import Image, ImageDraw

    w, h = base.size
    t, l, b, r = box
    cap = max(h, w) // 4 if max_margin is None else max_margin
    margin = min(max(0, -t, -l, b - h, r - w), cap)
    img = base.convert("RGB")
    if heat is not None:  # opacity follows the map, so the image stays visible where the field is weak
        import matplotlib
        import numpy as np

        norm = np.asarray(heat, np.float64) / max(float(np.max(heat)), 1e-12)
        alpha = (0.85 * np.sqrt(np.clip(norm, 0, 1)))[..., None]
        colored = matplotlib.colormaps["inferno"](norm)[..., :3] * 255
        img = Image.fromarray((np.asarray(img) * (1 - alpha) + colored * alpha).astype(np.uint8))
    canvas = Image.new("RGB", (w + 2 * margin, h + 2 * margin), (128, 128, 128))
    canvas.paste(img, (margin, margin))
    draw = ImageDraw.Draw(canvas)
    for name, bx in (("box90", box90), ("box50", box50), ("box", box)):
        if bx is not None:
            t, l, b, r = (v + margin for v in bx)
            draw.rectangle([l, t, r - 1, b - 1], outline=RF_COLOURS[name], width=2)
    return canvas, margin


def unit_markers(fig, centres, hover: str, size: float = 6, max_side: int = 64) -> None:
    """Invisible markers at unit positions that carry the click (customdata [i, j]);
    Plotly returns no points for image or heatmap clicks. Large maps get every k-th unit."""
    ys, xs = centres
    step = max(1, -(-max(len(ys), len(xs)) // max_side))
    pts = [(ys[i], xs[j], i, j) for i in range(0, len(ys), step) for j in range(0, len(xs), step)]
    fig.add_trace(go.Scatter(
        x=[p[1] for p in pts], y=[p[0] for p in pts], mode="markers", customdata=[[p[2], p[3]] for p in pts],
        marker=dict(size=max(size * step, 6), symbol="square", opacity=0), showlegend=False,
        hovertemplate=hover + "<extra></extra>",
    ))


def rf_figure(canvas, margin: int, unit_centres, height: int = 460) -> go.Figure:
    """`rf_canvas` as a clickable figure: a click anywhere picks the nearest unit."""
    fig = go.Figure(go.Image(source=png_data_uri(__import__("numpy").asarray(canvas)), hoverinfo="skip",
                             x0=-margin, y0=-margin))
    ys, xs = unit_centres
    unit_markers(fig, ([min(max(y, 0), canvas.size[1] - 2 * margin - 1) for y in ys],
                       [min(max(x, 0), canvas.size[0] - 2 * margin - 1) for x in xs]),
                 "unit (%{customdata[0]}, %{customdata[1]})", size=height / max(len(ys), 1))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(visible=False),
                      yaxis=dict(visible=False, scaleanchor="x"), dragmode=False, clickmode="event+select",
                      hovermode="closest")
    return fig


def unit_map_figure(m, selected: tuple[int, int] | None = None, height: int = 460) -> go.Figure:
    """A layer's map (channel mean or one channel) to click a unit on."""
    h, w = m.shape
    fig = go.Figure(go.Heatmap(z=m, colorscale="gray", showscale=False, hoverinfo="skip"))
    unit_markers(fig, (list(range(h)), list(range(w))), "unit (%{customdata[0]}, %{customdata[1]})",
                 size=height / max(h, 1))
    if selected is not None:
        i, j = selected
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line=dict(color="#d62728", width=2))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0), dragmode=False, clickmode="event+select",
                      xaxis=dict(visible=False, range=[-0.5, w - 0.5]),
                      yaxis=dict(visible=False, autorange="reversed", scaleanchor="x"), hovermode="closest")
    return fig


def rf_depth_figure(rows: list[dict], input_size: tuple[int, int], current: str | None = None, *,
                    label: str = "field size", other: tuple[str, list[dict]] | None = None,
                    effective: dict[str, list[tuple[str, int | None]]] | None = None) -> go.Figure:
    """Theoretical field size (height) of every layer against depth, with the input size
    drawn: where the curve crosses it, a unit first can see the whole image. `other`:
    (label, rows) of a second network on the same axes, both then against relative depth
    (% of each network's layers, so networks of different lengths line up; its points
    carry no click). `effective`: per network label, (layer, side of the effective field's
    90% box) drawn dashed."""
    curves = [(label, [r for r in rows if r["layer"] and r["size"]])]
    if other is not None:
        curves.append((other[0], [r for r in other[1] if r["layer"] and r["size"]]))
    fig = go.Figure()
    for k, (name, layers) in enumerate(curves):
        n, colour = len(layers), ("#1f77b4", "#ff7f0e")[k]
        x = [100 * (i + 1) / n for i in range(n)] if other is not None else list(range(1, n + 1))
        where = "%{x:.0f}% of the depth" if other is not None else "%{x}."
        fig.add_trace(go.Scatter(
            x=x, y=[r["size"][0] for r in layers], mode="lines+markers", name=name, line=dict(color=colour),
            customdata=[r["name"] for r in layers] if k == 0 else None, text=[r["name"] for r in layers],
            marker=dict(size=5), hovertemplate=f"{name}<br>{where} %{{text}}<br>field %{{y}} px<extra></extra>",
        ))
        first = next((i for i, r in enumerate(layers) if r["size"][0] >= input_size[0]), None)
        if first is not None:
            fig.add_vline(x=x[first], line=dict(color=colour if other is not None else "#888", dash="dot"),
                          annotation_text=f"{name + ' ' if other is not None else ''}sees the whole image: "
                                          f"{layers[first]['name']}",
                          annotation_position="bottom right" if k == 0 else "top right")
        names = [r["name"] for r in layers]
        points = [(x[names.index(a)], side) for a, side in (effective or {}).get(name, ()) if a in names and side]
        if points:
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                     name=f"{name}: effective", line=dict(color=colour, dash="dash"),
                                     hovertemplate="effective field %{y} px<extra></extra>"))
        if k == 0 and current is not None and current in names:
            i = names.index(current)
            fig.add_trace(go.Scatter(x=[x[i]], y=[layers[i]["size"][0]], mode="markers", showlegend=False,
                                     marker=dict(size=12, color="#d62728"), hoverinfo="skip"))
    fig.add_hline(y=input_size[0], line=dict(color="#d62728", dash="dash"),
                  annotation_text=f"input {input_size[0]} px", annotation_position="top left")
    fig.update_layout(height=320 if other is None and not effective else 380, margin=dict(l=0, r=0, t=10, b=0),
                      showlegend=other is not None or bool(effective), legend=dict(orientation="h", y=-0.25),
                      xaxis_title="depth (% of each network's layers)" if other is not None else "layer (execution order)",
                      yaxis_title="receptive field (px)", clickmode="event+select")
    return fig


# ---------------------------------------------------------------- filters and feature visualization

def tiles_figure(rgb, grid, texts: list[str], selected: int | None = None, width: int = 620) -> go.Figure:
    """Weight tiles as one image; an invisible marker per tile carries its hover text
    and click (customdata = the filter or channel index it shows)."""
    h, w = rgb.shape[:2]
    centres = [grid.centre(k) for k in range(len(grid.order))]
    idx = [int(c) for c in grid.order]
    fig = go.Figure(go.Image(source=png_data_uri(rgb), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=[c[1] for c in centres], y=[c[0] for c in centres], mode="markers", customdata=idx,
        marker=dict(size=max(6.0, min(grid.tile_w, grid.tile_h) * width / max(w, 1)), symbol="square", opacity=0),
        text=texts, hovertemplate="%{text}<extra></extra>", showlegend=False,
    ))
    if selected is not None and selected in idx:
        y, x = centres[idx.index(selected)]
        fig.add_shape(type="rect", x0=x - grid.tile_w / 2, x1=x + grid.tile_w / 2, y0=y - grid.tile_h / 2,
                      y1=y + grid.tile_h / 2, line=dict(color="#d62728", width=2))
    fig.update_layout(height=int(width * h / max(w, 1)) + 20, margin=dict(l=0, r=0, t=0, b=0),
                      xaxis=dict(visible=False), yaxis=dict(visible=False), hovermode="closest", dragmode=False,
                      clickmode="event+select")
    return fig


def curve_figure(curve, natural_max: float | None = None, natural_mean: float | None = None) -> go.Figure:
    """The objective over the optimization steps, with the sample images' level for scale."""
    fig = go.Figure(go.Scatter(x=list(range(1, len(curve) + 1)), y=[float(v) for v in curve], mode="lines",
                               name="synthetic image", hovertemplate="step %{x}<br>%{y:.4g}<extra></extra>"))
    for value, name, dash in ((natural_max, "best sample image", "dash"), (natural_mean, "sample mean", "dot")):
        if value is not None:
            fig.add_hline(y=value, line=dict(dash=dash, color="#d62728"), annotation_text=name)
    fig.update_layout(xaxis_title="step", yaxis_title="objective", height=260, margin=dict(l=10, r=10, t=10, b=10))
    return fig


# ---------------------------------------------------------------- adversarial

def perturbation_image(delta):
    """An int perturbation [H, W, 3] (1/255 units) amplified around mid-grey so its
    largest value reaches the full range; returns (uint8 RGB, amplification factor)."""
    import numpy as np

    peak = int(np.abs(delta).max())
    gain = 127 / peak if peak else 1.0
    return (128 + delta.astype(np.float64) * gain).round().clip(0, 255).astype(np.uint8), gain


def budget_figure(sweep, label: str, target: str | None = None, current: float | None = None) -> go.Figure:
    """Probability of the original answer (and of the target) against the budget,
    with the smallest budget that flips the decision marked."""
    fig = go.Figure(go.Scatter(x=sweep.budgets, y=sweep.p_label, mode="lines+markers", name=f"{label} (original)",
                               hovertemplate="eps %{x:g}/255<br>p = %{y:.3f}<extra></extra>"))
    if sweep.p_target is not None:
        fig.add_trace(go.Scatter(x=sweep.budgets, y=sweep.p_target, mode="lines+markers", name=f"{target} (target)",
                                 hovertemplate="eps %{x:g}/255<br>p = %{y:.3f}<extra></extra>"))
    if sweep.smallest is not None:
        fig.add_vline(x=sweep.smallest, line=dict(color="#d62728", dash="dash"),
                      annotation_text=f"flips at {sweep.smallest:g}/255", annotation_position="top right")
    if current is not None:
        fig.add_vline(x=current, line=dict(color="#888", dash="dot", width=1))
    fig.update_layout(xaxis=dict(title="budget (L-infinity, in 1/255)", dtick=1 if len(sweep.budgets) <= 17 else None),
                      yaxis=dict(title="probability", range=[0, 1.02]), height=360,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


# ---------------------------------------------------------------- a ViT's class token

def class_token_figure(values, selected: int | None = None, height: int = 240) -> go.Figure:
    """A class token's value in each channel, bars in channel order, the selected channel
    red and labelled; a click on a bar gives its channel (customdata). Plain lists, so the
    figure's JSON holds one number per channel."""
    values = [float(v) for v in values]
    c = len(values)
    hit = selected is not None and 0 <= selected < c
    colours = ["#1f77b4"] * c
    if hit:
        colours[selected] = "#d62728"
    fig = go.Figure(go.Bar(x=list(range(c)), y=values, customdata=list(range(c)), marker=dict(color=colours, line_width=0),
                           hovertemplate="channel %{x}<br>class token %{y:.4g}<extra></extra>"))
    if hit:
        fig.add_annotation(x=selected, y=values[selected], text=f"channel {selected}", arrowhead=2,
                           arrowcolor="#d62728", font=dict(color="#d62728"))
    fig.update_layout(height=height, bargap=0, margin=dict(l=10, r=10, t=20, b=10), hovermode="x",
                      clickmode="event+select", dragmode=False, showlegend=False,
                      xaxis=dict(title="channel", range=[-0.5, c - 0.5]), yaxis=dict(title="value"))
    return fig
