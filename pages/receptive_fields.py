import io
import json

import numpy as np
import streamlit as st

from cnnviz import activations as A
from cnnviz import models
from cnnviz import receptive as R
from cnnviz import render, tokens
from cnnviz.app import cache
from cnnviz.app.clicks import new_click
from cnnviz.app.router import selection
from cnnviz.app.sidebar import comparable
from cnnviz.app.url import note, restore, shown
from cnnviz.contract import CnnvizError
from cnnviz.pixels import png_bytes

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

family = tokens.family(model.net)
INTRO = {
    None: "A unit sees only part of the input, and that part grows with depth: two stacked 3x3 "
          "convolutions see 5x5 (the same field as one 5x5, with fewer weights), and every stride-2 "
          "step doubles how fast it grows. Click a unit to see its **theoretical field** (red box, "
          "also the part that falls into the zero padding around the image) and its **effective "
          "field**: where the gradient of that unit really flows. The effective field is much smaller "
          "and roughly Gaussian (Luo et al. 2016).",
    "vit": "A vision transformer cuts the image into patches (16 x 16 px for ViT-B/16) and makes each a "
           "token. Its first attention lets every token see every patch, so from the first block on a "
           "token's **theoretical field** (red box) is the whole image: nothing grows with depth, unlike a "
           "CNN's stacked small windows. The **effective field**, the gradient of one token with respect to "
           "the input, still shows where that token really looks: click a token (a cell of the patch grid).",
    "swin": "Swin cuts the image into 4 x 4 px patches and lets a token attend only inside its 7 x 7 window "
            "of tokens, shifting the windows every other block and merging 2 x 2 patches between stages: "
            "its **theoretical field** (red box) grows window by window, like a CNN's, until the last "
            "stage fits in one window and every token sees the whole image. The table's fields for the "
            "windows are bounds (a token at a window's edge sees farther to one side only). The **effective "
            "field**, the gradient of one token, shows where it really looks: click a token.",
}

st.title("Receptive fields")
st.markdown(INTRO[family])

try:
    table = cache.run(R.TableSpec(), model, label="Tracing the network:")
except CnnvizError as e:
    st.error(str(e))
    st.stop()
named = table.spatial
names = list(named)
if not names:
    st.error(f"{model.label} has no layer with a spatial map whose field could be computed.")
    st.stop()


# ---------------------------------------------------------------- state (URL first)

restore("rf_layer", "layer", lambda v: v in named, why=f"not a layer of {model.label} with a spatial map")
from_url = {k: restore(f"rf_{k}", k, lambda v: v >= 0, int, why="rows, columns and channels count from 0")
            for k in ("y", "x", "channel")}
if ss.get("rf_layer") not in named:
    ss["rf_layer"] = table.default_layer()

# The depth chart's second model: the models the sidebar offers (a link may name any other).
others = comparable(model.id)
if restore("rf_compare", "compare", lambda v: v in others,
           why="not one of the models this page can compare with now (pick one under Architecture)"):
    ss["rf_compare_on"] = True
    if "rf_view" not in qp:  # a comparison's link opens the tab that draws it
        ss["rf_view"] = "Architecture"
if ss.get("rf_compare") not in others:  # the lesson: a CNN against ViT-B/16, a transformer against a CNN
    vit = next((i for i in ("torchvision:vit_b_16", "torchvision:vit_b_16@random") if i in others), None)
    ss["rf_compare"] = vit if family is None and vit else (models.BUNDLED_ID if models.BUNDLED_ID in others
                                                          else next(iter(others)))


def _follow() -> None:
    """A new layer keeps looking at the same place: the unit nearest the old unit's centre."""
    if (ij := table.follow(ss.get("rf_shown"), ss["rf_layer"])) is not None:
        ss["rf_y"], ss["rf_x"] = ij


if (name := new_click("rf_depth_chart")) in named:
    ss["rf_layer"] = name
    _follow()
for chart in ("rf_map", "rf_image"):
    if isinstance(ij := new_click(chart), list) and len(ij) == 2:
        ss["rf_y"], ss["rf_x"] = int(ij[0]), int(ij[1])

row = named[ss["rf_layer"]]
C, H, W = row.shape
asked = (ss.get("rf_y"), ss.get("rf_x"))
ss["rf_y"], ss["rf_x"] = table.place(ss["rf_layer"], *asked)
for k, was, now in (("y", asked[0], ss["rf_y"]), ("x", asked[1], ss["rf_x"])):
    if from_url[k] and was != now:
        note(f"The link's {k}={shown(was)} is outside {ss['rf_layer']}'s {H}x{W} map; showing the centre, {k}={now}.")
if not 0 <= ss.get("rf_channel", 0) < C:
    if from_url["channel"]:
        note(f"The link's channel={shown(ss['rf_channel'])} is not a channel of {ss['rf_layer']} (0 to {C - 1}); showing 0.")
    ss["rf_channel"] = 0
ss.setdefault("rf_channel", 0)


def _label(name: str) -> str:
    r = named[name]
    kind = f"{r.type} (block)" if r.block else r.type  # a block's output: its branches' union
    return f"{names.index(name) + 1}. {name} · {kind} · field {r.field.size[0]}x{r.field.size[1]}"


c_layer, c_y, c_x = st.columns([4, 1, 1], vertical_alignment="bottom")
c_layer.selectbox("Layer (execution order)", names, key="rf_layer", format_func=_label, on_change=_follow)
row = named[ss["rf_layer"]]
C, H, W = row.shape
for key, n in (("rf_y", H), ("rf_x", W)):  # the layer may just have changed
    ss[key] = min(ss[key], n - 1)
c_y.number_input(f"Row (0 to {H - 1})", 0, H - 1, key="rf_y")
c_x.number_input(f"Column (0 to {W - 1})", 0, W - 1, key="rf_x")
c_t, c_c = st.columns([4, 2], vertical_alignment="bottom")
c_t.radio("Effective field of", ("unit", "channel"), key="rf_target", horizontal=True,
          format_func={"unit": "all channels at this position", "channel": "one channel at this position"}.get)
one = ss["rf_target"] == "channel"
c_c.number_input(f"Channel (0 to {C - 1})", 0, C - 1, key="rf_channel", disabled=not one)
layer, i, j = ss["rf_layer"], int(ss["rf_y"]), int(ss["rf_x"])
channel = int(ss["rf_channel"]) if one else None
qp.update({"layer": layer, "y": str(i), "x": str(j)})
if one:
    qp["channel"] = str(channel)
elif "channel" in qp:
    del qp["channel"]

u = table.unit(layer, i, j)
ss["rf_shown"] = (layer, i, j)
f = u.field
centres = table.centres(layer)

# Keyed and bound to the URL (`rf_view`): a rerun (the comparison's toggle) keeps the open tab, and a
# link can open the Architecture tab's comparison. Lazy: only the open tab computes and sends its
# figures (the Architecture tab's table of every layer went to the browser with every click on a unit).
tab_unit, tab_avg, tab_arch = st.tabs(["Unit on this image", "Averaged effective field", "Architecture"],
                                      key="rf_view", bind="query-params")


def _numbers(eff) -> None:
    s = R.summary(u, eff)
    a, b, c = st.columns(3)
    th, tw = s["theoretical"]
    a.metric("Theoretical field (in the image)", f"{th} x {tw} px", help=f"full field {f.size[0]} x {f.size[1]} px")
    if s["effective"]:
        eh, ew = s["effective"]
        b.metric("Effective field (90% of mass)", f"{eh} x {ew} px")
        c.metric("Effective / theoretical", f"{s['ratio']:.2f}", help="square root of the ratio of the areas")
    else:
        b.metric("Effective field (90% of mass)", "empty")
    t, l, bt, r = u.box
    pad = u.box != u.box_clipped
    st.caption(
        f"Unit ({i}, {j}) of **{layer}** ({row.type}, map {H}x{W}): centre at pixel "
        f"({u.centre[0]:g}, {u.centre[1]:g}); neighbouring units are {f.jump[0]} px apart. "
        f"Box rows {t}..{bt - 1}, columns {l}..{r - 1}"
        + (" (the red box reaches into the padding: grey border)." if pad else ".")
        + (" After attention every unit of this layer sees the whole image, so the red box is the image."
           if f.whole else "")
        + " Red: theoretical field; blue: 50% and green: 90% of the effective field's mass."
    )


if tab_unit.open:
    with tab_unit:
        rec = cache.run_shared(A.ActivationsSpec((layer,)), model, sel.image, sel.image_sha, label="Recording the layer:")
        m = rec.channel_map(layer, channel)
        left, right = st.columns(2)
        with left:
            st.markdown(f"**{layer}**: {'channel ' + str(channel) if one else 'mean of all channels'} "
                        "(click a unit)")
            st.plotly_chart(render.unit_map_figure(m, (i, j)), key="rf_map", on_select="rerun",
                            selection_mode="points", config={"displaylogo": False})
        field, error = R.UnitField(u), None
        try:
            field = cache.run(R.EffectiveSpec(layer, i, j, channel), model, sel.image, sel.image_sha,
                              label="Effective field:")
        except CnnvizError as e:
            error = str(e)
        eff = field.effective
        canvas, margin = field.canvas(R.backdrop(model, sel.image))
        with right:
            st.markdown("**On the image** (click to pick the nearest unit)")
            st.plotly_chart(render.rf_figure(canvas, margin, centres), key="rf_image", on_select="rerun",
                            selection_mode="points", config={"displaylogo": False})
        if error:
            st.error(error)
        elif eff.empty:
            st.info("The gradient of this unit is zero everywhere: nothing in the input changes it (its activation "
                    "functions are off for this image, or a normalization makes its channels' sum constant, as an "
                    "untrained LayerNorm does). Pick another unit, channel or layer.")
        _numbers(eff)
        d1, d2 = st.columns(2)
        d1.download_button("Overlay (PNG)", png_bytes(canvas), f"rf-{layer}-{i}-{j}.png", "image/png", width="stretch")
        if eff is not None:
            npy = io.BytesIO()
            np.save(npy, eff.map)
            d2.download_button("Effective field (.npy)", npy.getvalue(), f"erf-{layer}-{i}-{j}.npy",
                               "application/octet-stream", width="stretch",
                               help=f"float32 {list(eff.map.shape)}: |gradient| summed over colours")

if tab_avg.open:
    with tab_avg:
        st.markdown(
            "One image gives a noisy effective field. Averaged over many inputs its shape shows: "
            "over random noise a smooth bump around the unit's centre, close to a Gaussian, far "
            "inside the theoretical box."
        )
        a1, a2 = st.columns([2, 2], vertical_alignment="bottom")
        source = a1.radio("Average over", R.SOURCES, key="rf_avg_source", horizontal=True,
                          format_func={"samples": "the bundled sample images", "noise": "random noise"}.get)
        n = a2.slider("Noise inputs", 4, 64, 16, step=4, key="rf_avg_n", disabled=source != "noise")
        request = (model.id, layer, i, j, channel, source, n)
        if st.button("Compute the average", key="rf_avg_go"):
            ss["rf_avg_request"] = request
        if ss.get("rf_avg_request") == request:
            try:
                avg = cache.run(R.AverageSpec(layer, i, j, channel, source, n), model, label="Averaging:")
            except CnnvizError as e:
                st.error(str(e))
            else:
                avg_canvas, avg_margin = avg.canvas(R.backdrop(model, sel.image, source))
                st.plotly_chart(render.rf_figure(avg_canvas, avg_margin, centres), key="rf_avg_chart",
                                config={"displaylogo": False})
                s = avg.summary()
                st.caption(f"Mean |gradient| of unit ({i}, {j}) over {avg.effective.samples} inputs. 90% of the mass lies in "
                           f"{s['effective'][0]} x {s['effective'][1]} px, {s['ratio']:.2f} of the theoretical side."
                           if s["effective"] else "The averaged gradient is zero everywhere.")
        else:
            st.caption("Runs one forward and one backward pass per input, in batches.")

if tab_arch.open:
    with tab_arch:
        st.markdown(
            f"Every layer of **{model.label}** in execution order, from the network's graph (torch.fx), "
            f"at input {model.input_size[0]}x{model.input_size[1]}. *Field* is the size of the input region "
            "one unit sees, *jump* how far apart neighbouring units' fields are, *start* the centre of the "
            "first unit's field. Merges (residual adds, concatenations) take the union of their branches; "
            "a block's row (residual, Inception, dense block, stage) is the field of what it returns."
            + (" Attention rows (not layers you can pick) say how attention changes the field; token outputs are "
               "shown on the patch grid, [channels, rows, columns]." if table.transformer else "")
        )
        c_on, c_other = st.columns([2, 3], vertical_alignment="center")
        comparing = c_on.toggle("Compare the depth curve with", key="rf_compare_on",
                                help="The lesson: a CNN's field grows layer by layer; a ViT's covers the image "
                                     "from its first attention.")
        other_id = c_other.selectbox("Second model", list(others), key="rf_compare", format_func=others.get,
                                     disabled=not comparing, label_visibility="collapsed")
        if comparing:
            qp["compare"] = other_id
        elif "compare" in qp:
            del qp["compare"]
        other = other_table = None
        if comparing:
            try:
                other = cache.model(other_id)
                other_table = cache.run(R.TableSpec(), other, label=f"Tracing {other.label}:")
            except CnnvizError as e:  # ModelError (offline, not cached) included
                st.error(str(e))
                other = None
        dicts = [r.to_dict() for r in table.rows]
        curves = [(model, table)] + ([(other, other_table)] if other is not None else [])
        effective = {}
        asked = (model.id, other_id if other is not None else None, sel.image_sha)
        e1, e2 = st.columns([2, 3], vertical_alignment="center")
        if e1.button("Add the effective fields", key="rf_depth_go",
                     help="The centre unit's effective field (90% of its mass) at 8 layers of each network, on this "
                          "image: one forward pass and 8 backward passes a network."):
            ss["rf_depth_request"] = asked
        if ss.get("rf_depth_request") == asked:
            for m, _ in curves:
                try:
                    d = cache.run(R.DepthSpec(), m, sel.image, sel.image_sha, label=f"Effective fields, {m.label}:")
                except CnnvizError as e:
                    st.error(str(e))
                else:
                    effective[m.label] = list(zip(d.layers, d.effective))
        e2.caption("Solid: the theoretical field; dashed (after the button): where the gradient of the centre "
                   "unit really reaches on this image (90% of its mass).")
        fig = render.rf_depth_figure(
            dicts, model.input_size, layer, label=model.label,
            other=(other.label, [r.to_dict() for r in other_table.rows]) if other is not None else None,
            effective=effective)
        st.plotly_chart(fig, key="rf_depth_chart", on_select="rerun", selection_mode="points",
                        config={"displaylogo": False})
        if other is not None:
            st.caption(f"Against relative depth (each network's layers from first to last), so networks of different "
                       f"lengths line up; the dashed red line is the input ({model.input_size[0]} px). "
                       + " ".join(t.depth_sentence(m.label) for m, t in curves))

        def _s(v):
            return "" if v is None else " x ".join(f"{x:g}" for x in v)

        listing = [{"#": k + 1, "layer": d["name"],
                    "type": d["type"] + (" (block)" if d["block"] else " (attention)" if d["attention"] else ""),
                    "kernel": _s(d["kernel"]),
                  "stride": _s(d["stride"]), "dilation": _s(d["dilation"]), "padding": _s(d["padding"]),
                  "output": _s(d["shape"]), "params": d["params"], "field": _s(d["size"]), "jump": _s(d["jump"]),
                  "start": _s(d["start"]), "note": d["note"]} for k, d in enumerate(dicts)]
        st.dataframe(listing, hide_index=True, width="stretch", height=420)
        # A block's note says what it merges, an attention's what it sees: neither is a warning.
        if notes := sorted({d["note"] for d in dicts if d["note"] and not d["block"] and not d["attention"]}):
            st.warning("Notes: " + "; ".join(notes))
        if said := "; ".join(dict.fromkeys(d["note"] for d in dicts if d["attention"])):
            st.info(said[0].upper() + said[1:] + ".")
        st.download_button("Table (JSON)", json.dumps(dicts, indent=1), f"architecture-{model.id.replace(':', '_')}.json",
                           "application/json")
