import io

import numpy as np
import streamlit as st

from cnnviz import render
from cnnviz import saliency as S
from cnnviz import trust
from cnnviz.app import cache
from cnnviz.app.router import selection
from cnnviz.app.url import restore

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

st.title("Saliency")
st.markdown(
    "Which parts of the image drove the decision? Grad-CAM weighs a layer's maps by how much "
    "the class score depends on them; gradient methods ask which pixels would change the score "
    "most. They can mislead, so compare several methods before trusting one."
)

LABELS = {
    "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM (slow: one pass per channel)",
    "guided_gradcam": "Guided Grad-CAM", "gradients": "Vanilla gradients", "smoothgrad": "SmoothGrad",
    "ig": "Integrated Gradients", "occlusion": "Occlusion", "guided_backprop": "Guided Backprop",
}
top5 = sel.top(5)
n = len(model.categories)


restore("sal_method", "method", lambda v: v in S.METHODS)
restore("sal_target", "target", lambda v: 0 <= v < n, int)
restore("sal_contrast", "contrast", lambda v: 0 <= v < n, int)
restore("sal_layer", "layer", lambda v: v in S.cam_layers(model))
if ss.get("sal_target") is None or not 0 <= ss["sal_target"] < n:
    ss["sal_target"] = top5[0].index
layers = S.cam_layers(model)
if ss.get("sal_layer") not in layers:
    ss["sal_layer"] = model.gradcam_layer


def _class_label(i: int) -> str:
    return f"{model.categories[i]} ({i})"


c1, c2 = st.columns([1, 2])
method = c1.selectbox("Method", S.METHODS, key="sal_method", format_func=LABELS.get)
with c2:
    st.markdown("**Explain the class** (top-5 in one click, or search any class)")
    cols = st.columns(5)
    for col, t in zip(cols, top5):
        col.button(f"{t.label} {t.prob:.0%}", key=f"sal_top_{t.index}", width="stretch",
                   type="primary" if t.index == ss["sal_target"] else "secondary",
                   on_click=ss.__setitem__, args=("sal_target", t.index))
c3, c4, c5 = st.columns([2, 1, 2])
c3.selectbox("Target class", range(n), key="sal_target", format_func=_class_label)
contrastive = c4.toggle("Rather than...", key="sal_contrastive", value="contrast" in qp,
                        help="Contrast: the gradient of logit A minus logit B shows what favours A over B.")
contrast = None
if contrastive:
    ss.setdefault("sal_contrast", next(t.index for t in top5 if t.index != ss["sal_target"]))
    contrast = c5.selectbox("...this class", range(n), key="sal_contrast", format_func=_class_label)
uses_layer = method in S.CAM_METHODS + ("guided_gradcam",)
layer = st.selectbox("Layer (Grad-CAM-style methods)", layers, key="sal_layer", disabled=not uses_layer,
                     help="Default: the last layer with a spatial output.") if uses_layer else None
o1, o2 = st.columns(2)
opacity = o1.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="sal_opacity")
cmap = o2.selectbox("Colour map", ["jet", "inferno", "viridis", "magma"], key="sal_cmap")

target = int(ss["sal_target"])
params = {"method": method, "target": str(target)}
if layer:
    params["layer"] = layer
if contrast is not None:
    params["contrast"] = str(contrast)
for k in ("layer", "contrast"):
    if k not in params and k in qp:
        del qp[k]
qp.update(params)

what = model.categories[target] + (f" rather than {model.categories[contrast]}" if contrast is not None else "")
# Bound to the URL and lazy: only the open tab computes (the grid runs four methods).
tab_one, tab_grid, tab_sweep, tab_trust = st.tabs(["Map", "Methods side by side", "Layer sweep", "Trust checks"],
                                                  key="view", bind="query-params")

if tab_one.open:
    with tab_one:
        try:
            with st.spinner(f"Computing {LABELS[method]}..."):
                att = cache.attribution(model.id, sel.image_sha, method, target, layer, contrast, model, sel.image,
                                        LABELS[method])
        except S.SaliencyError as e:
            st.warning(str(e))
            att = None
        if att is not None:
            base = model.input_image(sel.image)
            st.caption(f"**{LABELS[method]}** for **{what}**" + (f" at `{att.layer}`" if att.layer else "")
                       + (f". Integrated Gradients convergence delta: {att.delta:.3g}" if att.delta is not None else ""))
            if att.empty:
                st.info("The map is empty: nothing in this layer supports the class (the ReLU removed every "
                        "negative contribution). Try a higher-ranked class or an earlier layer.")
            m1, m2 = st.columns(2)
            shown = render.overlay(base, att.map, opacity, cmap)
            m1.image(shown, caption="Map over the network's input", width="stretch")
            m2.plotly_chart(render.map_heatmap(att.map, "raw map (hover for values)"), key="sal_raw")
            png, npy = io.BytesIO(), io.BytesIO()
            shown.save(png, "PNG")
            np.save(npy, att.map)
            d1, d2 = st.columns(2)
            d1.download_button("Overlay (PNG)", png.getvalue(), f"{method}-{target}.png", "image/png")
            d2.download_button("Map (.npy)", npy.getvalue(), f"{method}-{target}.npy", "application/octet-stream")

if tab_grid.open:
    with tab_grid:
        chosen = st.multiselect("Methods", S.METHODS, default=["gradcam", "gradcampp", "gradients", "ig"],
                                key="sal_grid", format_func=LABELS.get)
        if chosen:
            cols = st.columns(min(len(chosen), 4))
            bar = st.progress(0.0, text="Computing...")
            base = model.input_image(sel.image)
            for i, m in enumerate(chosen):
                with cols[i % len(cols)]:
                    try:
                        a = cache.attribution(model.id, sel.image_sha, m, target,
                                              layer or model.gradcam_layer if m in S.CAM_METHODS + ("guided_gradcam",) else None,
                                              contrast, model, sel.image)
                        st.image(render.overlay(base, a.map, opacity, cmap), caption=LABELS[m], width="stretch")
                    except S.SaliencyError:
                        st.caption(f"{LABELS[m]}: not valid for this model (see the Map tab)")
                bar.progress((i + 1) / len(chosen), text=f"{i + 1} of {len(chosen)} methods")
            bar.empty()

if tab_sweep.open:
    with tab_sweep:
        st.caption("Grad-CAM at the last layer of every stage, from one forward and one backward pass: "
                   "early layers are sharp but literal, late layers coarse but about the class.")
        sweep = cache.gradcam_sweep(model.id, sel.image_sha, target, contrast, model, sel.image)
        base = model.input_image(sel.image)
        cols = st.columns(len(sweep))
        for col, (name, cam) in zip(cols, sweep.items()):
            shape = next(l.shape for l in model.layers if l.name == name)
            col.image(render.overlay(base, cam, opacity, cmap), caption=f"{name} ({shape[1]}x{shape[2]})", width="stretch")

if tab_trust.open:
    with tab_trust:
        st.markdown(
            "**Model randomization** (Adebayo et al. 2018): the weights are re-drawn from the top "
            "block down; a method whose map stays the same is not explaining what the model learned. "
            "**Deletion**: the most salient pixels are blurred away first; a faithful map makes the "
            "probability fall faster (smaller area) than a random order."
        )
        valid = [m for m in S.METHODS if m not in S.GUIDED and m != "scorecam"]
        checked = st.multiselect("Methods to check", valid, default=["gradcam", "gradients", "ig"], key="sal_trust_methods",
                                 format_func=LABELS.get)
        key = (model.id, sel.image_sha, target, tuple(checked))
        if st.button("Run the checks", key="sal_trust_run", disabled=not checked):
            bar = st.progress(0.0, text="Randomizing the model, top block first...")
            rand = trust.randomization_check(model, sel.image, checked, target,
                                             progress=lambda f, text: bar.progress(f * 0.8, text=text))
            curves, areas = {}, {}
            for i, m in enumerate(checked + ["random order"]):
                sal = None if m == "random order" else cache.attribution(
                    model.id, sel.image_sha, m, target, model.gradcam_layer if m in S.CAM_METHODS else None,
                    None, model, sel.image).map
                curve = trust.deletion_curve(model, sel.image, sal, target)
                curves[LABELS.get(m, m)], areas[LABELS.get(m, m)] = curve.tolist(), trust.area(curve)
                bar.progress(0.8 + 0.2 * (i + 1) / (len(checked) + 1), text=f"Deletion curve: {LABELS.get(m, m)}")
            bar.empty()
            ss["sal_trust"] = (key, rand, curves, areas)
        if ss.get("sal_trust") and ss["sal_trust"][0] == key:
            _, rand, curves, areas = ss["sal_trust"]
            rand = {**rand, "correlation": {LABELS[m]: v for m, v in rand["correlation"].items()}}
            t1, t2 = st.columns(2)
            t1.plotly_chart(render.randomization_figure(rand), key="sal_rand_chart")
            t2.plotly_chart(render.deletion_figure(curves, areas), key="sal_del_chart")
        else:
            st.caption("The checks run about a dozen attributions; press the button to start.")
