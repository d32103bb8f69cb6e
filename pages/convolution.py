import json

import numpy as np
import streamlit as st

from cnnviz import activations as A
from cnnviz import arithmetic, bounds, hooks, render, tokens
from cnnviz import render_convolution as RC
from cnnviz import unit as U
from cnnviz.app import cache
from cnnviz.app.clicks import new_click
from cnnviz.app.lecture import big_type, is_on
from cnnviz.app.router import selection
from cnnviz.app.url import note, restore, restore_number, shown
from cnnviz.contract import CnnvizError
from cnnviz.predict import PredictSpec

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

# Playground knobs: (session key, URL parameter, widget range, default). The arithmetic
# itself takes any real layer (bounds.CONV_*); the drawing stops at bounds.DRAW_SIDE.
KNOBS = {
    "size": ("cv_size", 1, 1024, 7), "kernel": ("cv_kernel", 1, 11, 3), "pad": ("cv_pad", 0, 10, 0),
    "stride": ("cv_stride", 1, 8, 2), "dil": ("cv_dil", 1, 4, 1),
    "cin": ("cv_cin", 1, 4096, 64), "cout": ("cv_cout", 1, 4096, 128),
}
restore("cv_lecture", "lecture", lambda v: True, is_on)
ss.setdefault("cv_lecture", False)
for param, (key, lo, hi, default) in KNOBS.items():
    restore_number(key, param, lo, hi)
    ss.setdefault(key, default)
restore("cv_toy", "toy", lambda v: v in arithmetic.TOY_KERNELS, why=f"choose one of {', '.join(arithmetic.TOY_KERNELS)}")
ss.setdefault("cv_toy", "edges")
restore_number("cv_temp", "t", bounds.TEMPERATURE[0], 10.0, integer=False)
ss.setdefault("cv_temp", 1.0)
lecture = bool(ss["cv_lecture"])
kind, patch = tokens.family(model.net), tokens.patch_size(model.net)  # a transformer: "vit" / "swin"
NET = {"vit": "a ViT", "swin": "Swin"}.get(kind, "")
if lecture:
    big_type()

head, toggle = st.columns([3, 1], vertical_alignment="bottom")
head.title("How a convolution computes")
toggle.toggle("Lecture mode", key="cv_lecture", help="Big type for the projector.")
qp["lecture"] = "1" if lecture else "0"
if not lecture:
    st.markdown(
        "A convolution unit's value is a dot product: the input patch under the filter (F x F, across all the "
        "input channels it reads), times the filter's weights, summed, plus one bias; then whatever the network "
        "applies next (BatchNorm, ReLU or another activation). Start with the arithmetic on a small grid, then "
        "open one unit of the real network and check the sum against the value it recorded." if kind is None else
        "A convolution unit's value is a dot product: the input patch under the filter (F x F, across all the "
        f"input channels it reads), times the filter's weights, summed, plus one bias. In {NET} the only "
        f"convolution is the patch embedding: {patch}x{patch} filters moved {patch} pixels at a time, so the windows "
        "never overlap and each unit is one patch of the image times one filter, a linear embedding of that patch. "
        "Start with the arithmetic on a small grid, then open one unit of the patch embedding and check the sum "
        "against the value it recorded.")

tab_play, tab_unit, tab_soft = st.tabs(["Arithmetic playground", "One unit of the network", "Softmax"],
                                       key="cv_view", bind="query-params")


def _playground() -> None:
    c = st.columns(5)
    labels = {"size": "Input size W", "kernel": "Kernel F", "pad": "Padding P", "stride": "Stride S",
              "dil": "Dilation D"}
    for col, param in zip(c, labels):
        key, lo, hi, _ = KNOBS[param]
        col.number_input(labels[param], lo, hi, key=key)
    W, Fk, P, S, D = (int(ss[KNOBS[k][0]]) for k in labels)
    qp.update({k: str(int(ss[KNOBS[k][0]])) for k in labels})
    try:
        size = arithmetic.output_size(W, Fk, P, S, D)
    except arithmetic.NoOutput as e:
        st.error(str(e))
        return
    st.markdown(f"**Output size** `{size.formula}`")
    if size.exact:
        st.success(f"The window tiles the padded input exactly: {size.output} x {size.output} outputs, every "
                   f"input column read.", icon=":material/check:")
    else:
        st.warning(arithmetic.drop_sentence(size), icon=":material/content_cut:")
    if RC.can_draw(size):
        k1, _ = st.columns([1, 3])
        k1.selectbox("Kernel values", list(arithmetic.TOY_KERNELS), key="cv_toy",
                     format_func=arithmetic.TOY_KERNELS.get)
        qp["toy"] = ss["cv_toy"]
        st.plotly_chart(RC.playground_figure(size, ss["cv_toy"], 520 if lecture else 440), key="cv_play",
                        config={"displaylogo": False})
        st.caption("Press Play, or drag the slider: the red window steps by the stride; each output cell is the sum "
                   "of the window's values times the kernel's. Grey cells are the zero padding"
                   + ("; red bands are columns and rows the window never reaches." if size.dropped else ".")
                   + (f" With dilation {D} the kernel's taps sit {D} apart: a {Fk}x{Fk} kernel spans "
                      f"{size.span}x{size.span}." if D > 1 else ""))
    else:
        st.info(f"The drawing shows padded inputs up to {bounds.DRAW_SIDE} cells a side and up to "
                f"{bounds.DRAW_FRAMES} output units; the numbers above hold for any size (this one: "
                f"{size.padded} padded, {size.output ** 2:,} units).")
    st.subheader("What the layer costs")
    a, b, _ = st.columns([1, 1, 2])
    a.number_input("Input channels", 1, 4096, key="cv_cin")
    b.number_input("Output channels", 1, 4096, key="cv_cout")
    cin, cout = int(ss["cv_cin"]), int(ss["cv_cout"])
    qp.update({"cin": str(cin), "cout": str(cout)})
    full = arithmetic.conv_cost(cin, cout, Fk, size.output, size.output)
    sep = arithmetic.separable_cost(cin, cout, Fk, size.output, size.output)
    st.dataframe([
        {"layer": f"{Fk}x{Fk} convolution, {cin} -> {cout}", "weights": f"{full.params:,}",
         "multiply-adds": f"{full.mult_adds:,}"},
        {"layer": f"depthwise {Fk}x{Fk} ({cin} filters) + 1x1 ({cin} -> {cout})", "weights": f"{sep.params:,}",
         "multiply-adds": f"{sep.mult_adds:,}"},
    ], hide_index=True, width="stretch")
    st.caption(f"Weights: F x F x C_in x C_out (+ one bias per output channel). Multiply-adds: that times the "
               f"{size.output}x{size.output} output positions. The depthwise-separable version (MobileNet) needs "
               f"{sep.mult_adds / max(full.mult_adds, 1):.1%} of the multiply-adds (about 1/C_out + 1/F²): each "
               "channel is filtered on its own, then a 1x1 convolution mixes them.")


def _label(info: dict, name: str, names: list[str]) -> str:
    m = model.layer_modules[hooks.split_call(name)[0]]
    kind = U.kind_of(m)
    k = getattr(m, "kernel_size", None)
    k = f" {k[0]}x{k[1]}" if isinstance(k, tuple) else f" {k}x{k}" if isinstance(k, int) else ""
    s = getattr(m, "stride", None)
    s = s[0] if isinstance(s, (tuple, list)) else s
    c, h, w = info[name]
    return f"{names.index(name) + 1}. {name} · {kind}{k}{f' stride {s}' if s and s != 1 else ''} · {c}x{h}x{w}"


def _unit() -> None:
    if not lecture:
        st.markdown(
            "Pick a convolution or pooling layer and click an output unit. Its number is the input patch under "
            "the filter, times the filter's weights, summed over every input channel it reads (a grouped or "
            "depthwise layer reads only its group's channels), plus one bias; then the network's next steps. "
            "Everything below is redone here in float64 from the layer's real input and weights, and checked "
            "against the value the network itself recorded." if kind is None else
            f"The patch embedding is the only convolution in {NET}: click an output unit, one "
            f"patch of the image. Its number is the {patch}x{patch} patch in its 3 colour channels times one "
            "filter's weights, summed, plus one bias. Everything below is redone here in float64 from the layer's "
            "real input and weights, and checked against the value the network itself recorded.")
    names = U.unit_layers(model)
    if not names:
        st.error(f"{model.label} has no convolution or pooling layer with a spatial map.")
        return
    info = {l.name: l.shape for l in model.layers if l.name in names}
    restore("cv_layer", "layer", lambda v: v in info, why=f"not a convolution or pooling layer of {model.label}")
    from_url = {k: restore(f"cv_{k}", k, lambda v: v >= 0, int, why="rows, columns and channels count from 0")
                for k in ("y", "x", "channel", "ich")}
    if ss.get("cv_layer") not in info:
        ss["cv_layer"] = names[0]
    if isinstance(ij := new_click("cv_map"), list) and len(ij) == 2:
        ss["cv_y"], ss["cv_x"] = int(ij[0]), int(ij[1])
    if (ch := new_click("cv_sums")) is not None:
        ss["cv_ich"] = int(ch)
    C, H, W = info[ss["cv_layer"]]
    for key, n, dim in (("cv_y", H, "row"), ("cv_x", W, "column"), ("cv_channel", C, "channel")):
        v = ss.get(key)
        if v is None or not 0 <= v < n:
            centre = n // 2 if key != "cv_channel" else 0
            if v is not None and from_url[key[3:]]:
                note(f"The link's {key[3:]}={shown(v)} is outside {ss['cv_layer']}'s {C}x{H}x{W} output; "
                     f"showing {dim} {centre}.")
            ss[key] = centre
    c_layer, c_y, c_x, c_c = st.columns([4, 1, 1, 1], vertical_alignment="bottom")
    c_layer.selectbox("Layer (convolutions and pooling, execution order)", names, key="cv_layer",
                      format_func=lambda n: _label(info, n, names))
    C, H, W = info[ss["cv_layer"]]
    for key, n in (("cv_y", H), ("cv_x", W), ("cv_channel", C)):  # the layer may just have changed
        ss[key] = min(int(ss[key]), n - 1)
    c_y.number_input(f"Row (0 to {H - 1})", 0, H - 1, key="cv_y")
    c_x.number_input(f"Column (0 to {W - 1})", 0, W - 1, key="cv_x")
    c_c.number_input(f"Channel (0 to {C - 1})", 0, C - 1, key="cv_channel")
    layer, i, j, c = ss["cv_layer"], int(ss["cv_y"]), int(ss["cv_x"]), int(ss["cv_channel"])
    qp.update({"layer": layer, "y": str(i), "x": str(j), "channel": str(c)})
    try:
        u = cache.run(U.UnitSpec(layer, i, j, c), model, sel.image, sel.image_sha, label="Working out the unit:")
        rec = cache.run_shared(A.ActivationsSpec((layer,)), model, sel.image, sel.image_sha,
                               label="Recording the layer:")
    except CnnvizError as e:
        st.error(str(e))
        return
    pooling = u.weights is None
    if pooling and not lecture:
        st.caption("Pooling has no weights: it shrinks the map and keeps the strongest response of each window "
                   "(max) or its mean (average; what LeNet used). Each channel is pooled on its own.")
    left, right = st.columns(2)
    with left:
        st.markdown(f"**{layer}**, channel {c} (click a unit)")
        st.plotly_chart(render.unit_map_figure(rec.channel_map(layer, c), (i, j), height=380), key="cv_map",
                        on_select="rerun",
                        selection_mode="points", config={"displaylogo": False})
    first = u.input_shape[1:] == tuple(model.input_size) and u.channels == [0, 1, 2] and not pooling
    with right:
        what = "the image the network sees" if first else (
            f"its input, channel {u.channels[0]}" if len(u.channels) == 1
            else f"its input, mean of the {len(u.channels)} channels it reads")
        st.markdown(f"**The window on {what}** (red; grey: padding)")
        base = np.asarray(model.input_image(sel.image)) if first else u.input_map
        st.plotly_chart(RC.window_figure(base, u.box, u.input_shape[1:], u.winner), key="cv_window",
                        config={"displaylogo": False})
    _worked(u, pooling)
    if not pooling and len(u.channels) > 1:
        if ss.get("cv_ich") not in u.channels:
            if from_url["ich"] and ss.get("cv_ich") is not None:
                note(f"The link's ich={shown(ss['cv_ich'])} is not a channel this unit reads; showing the largest.")
            ss["cv_ich"] = u.channels[int(np.argmax(np.abs(u.channel_sums)))]
        st.markdown("**Each input channel's sum** (largest first; click a bar to see its arithmetic)")
        st.plotly_chart(RC.channel_sums_figure(u.channel_sums, u.channels, ss["cv_ich"]), key="cv_sums",
                        on_select="rerun", selection_mode="points", config={"displaylogo": False})
    ich = ss.get("cv_ich") if ss.get("cv_ich") in u.channels else u.channels[0]
    qp["ich"] = str(ich)
    k = u.channels.index(ich)
    if pooling:
        st.markdown(f"**The window** of input channel {ich}" + (" (blue: the winner)" if u.winner else ""))
        st.plotly_chart(RC.patch_figure(u.patch[0], None, u.box, u.input_shape[1:], u.dilation, u.winner),
                        key="cv_patch", config={"displaylogo": False})
    else:
        st.markdown(f"**Input channel {ich}**: patch x kernel = products, summing to **{u.channel_sums[k]:.6g}**")
        st.plotly_chart(RC.patch_figure(u.patch[k], u.weights[k], u.box, u.input_shape[1:], u.dilation),
                        key="cv_patch", config={"displaylogo": False})
    _stride(u)
    st.download_button("This unit (JSON)", json.dumps(u.to_dict(), indent=1), f"unit-{layer}-{c}-{i}-{j}.json",
                       "application/json")


def _worked(u: U.Unit, pooling: bool) -> None:
    lines = []
    if pooling:
        n = u.patch[0].size
        if u.kind == "max pooling":
            lines.append(f"max of the {n} values in the {u.kernel[0]}x{u.kernel[1]} window = **{u.steps[0]['value']:.6g}**"
                         + (f" (input row {u.winner[0]}, column {u.winner[1]})" if u.winner else ""))
        else:
            lines.append(f"sum of the window {u.channel_sums[0]:.6g} / {u.divisor} = **{u.steps[0]['value']:.6g}**")
    else:
        sums = u.channel_sums
        terms = " + ".join(f"{s:.4g}" for s in sums[:6]) + (f" + ... ({len(sums)} channels)" if len(sums) > 6 else "")
        per = f"{u.kernel[0]}x{u.kernel[1]}" + (f", dilation {u.dilation[0]}" if u.dilation != (1, 1) else "")
        reads = (f"input channel {u.channels[0]}" if len(u.channels) == 1 else
                 f"input channels {u.channels[0]} to {u.channels[-1]}")
        lines.append(f"{u.kind}: {reads}, a {per} patch each ({u.patch.size:,} products)")
        lines.append(f"sum over the channels: {terms} = {sum(sums):.6g}")
        lines.append(f"plus the bias {u.bias:.6g}: **{u.pre_activation:.6g}**")
    for s in u.steps[1:]:
        lines.append(f"{s['formula']} = **{s['value']:.6g}**")
    st.markdown("  \n".join(lines))
    verdict = (f"Recorded by the network (what the Activations page shows at {u.steps[-1]['name']}, unit "
               f"({u.y}, {u.x}), channel {u.channel}): **{u.recorded:.6g}**; worked out here in float64: "
               f"{u.worked:.8g} (relative difference {u.error:.1e}).")
    (st.success if u.agrees else st.error)(verdict, icon=":material/check:" if u.agrees else ":material/error:")
    if u.box[0] < 0 or u.box[1] < 0 or u.box[2] > u.input_shape[1] or u.box[3] > u.input_shape[2]:
        t, l, b, r = u.padding
        st.caption(f"The window reaches into the padding (top {t}, left {l}, bottom {b}, right {r}, as this layer "
                   "pads): those cells count as " + ("minus infinity, so they never win." if u.kind == "max pooling"
                                                     else "zeros."))


def _stride(u: U.Unit) -> None:
    if u.stride == (1, 1) and not u.skipped:
        return
    total = u.coverage.size
    st.markdown(f"**Stride {u.stride[0]}**: the window moves {u.stride[0]} positions per unit, so the output is about "
                f"1/{u.stride[0] * u.stride[1]} the input's area.")
    if u.skipped:
        st.warning(f"{u.skipped:,} of the {total:,} input positions ({u.skipped / total:.0%}) are never read by any "
                   f"unit of this layer (red): a {u.kernel[0]}x{u.kernel[1]} window moving {u.stride[0]} at a time "
                   "skips them.", icon=":material/visibility_off:")
    st.plotly_chart(RC.coverage_figure(u.coverage), key="cv_cover", config={"displaylogo": False})
    st.caption("How many units of this layer read each input position: windows overlap where the stride is shorter "
               "than the kernel.")


def _softmax() -> None:
    pred = cache.run(PredictSpec(), model, sel.image, sel.image_sha)
    st.markdown("The network's last layer gives one number per class, a **logit**. Softmax turns them into "
                "probabilities; dividing the logits by a temperature T above 1 flattens them, below 1 sharpens them.")
    st.latex(r"p_i = \frac{e^{z_i / T}}{\sum_j e^{z_j / T}}")
    st.slider("Temperature T", bounds.TEMPERATURE[0], 10.0, step=0.05, key="cv_temp")
    t = float(ss["cv_temp"])
    qp["t"] = f"{t:g}"
    tab = arithmetic.softmax_table(pred.logits, t, 5)
    one = arithmetic.softmax(pred.logits, 1.0)
    cat = model.categories
    st.dataframe([{"class": cat[r["index"]], "logit z": round(r["logit"], 4), "z / T": round(r["scaled"], 4),
                   "exp(z / T - m)": f"{r['exp']:.4g}", "probability": f"{r['prob']:.2%}",
                   "at T = 1": f"{one[r['index']]:.2%}"} for r in tab["rows"]], hide_index=True, width="stretch")
    top = tab["rows"][0]
    st.markdown(
        f"For **{cat[top['index']]}**: exp({top['scaled']:.4g} - {tab['max_scaled']:.4g}) / {tab['denominator']:.4g} "
        f"= **{top['prob']:.2%}**. The denominator sums exp(z_j / T - m) over all {tab['classes']:,} classes; "
        f"m = {tab['max_scaled']:.4g}, the largest z / T, is subtracted first (the same probabilities, no overflow). "
        f"Entropy: {tab['entropy_bits']:.2f} bits (0: certain; {np.log2(tab['classes']):.2f}: uniform).")
    ten = arithmetic.softmax_table(pred.logits, t, 10)["rows"]
    st.plotly_chart(RC.softmax_figure([cat[r["index"]] for r in ten], [r["prob"] for r in ten],
                                      [float(one[r["index"]]) for r in ten], t), key="cv_soft",
                    config={"displaylogo": False})


if tab_play.open:
    with tab_play:
        _playground()
if tab_unit.open:
    with tab_unit:
        _unit()
if tab_soft.open:
    with tab_soft:
        _softmax()
