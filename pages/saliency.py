import io

import numpy as np
import streamlit as st

from cnnviz import agreement as AG
from cnnviz import attention as ATT
from cnnviz import bounds, models, render, tokens
from cnnviz import render_saliency as RS
from cnnviz import saliency as S
from cnnviz import trust
from cnnviz.app import cache
from cnnviz.app.clicks import new_click
from cnnviz.app.router import selection
from cnnviz.app.sidebar import comparable
from cnnviz.app.url import restore, restore_number
from cnnviz.contract import CnnvizError
from cnnviz.predict import PredictSpec, top_k

M = S.METHODS
sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

st.title("Saliency")
st.markdown(
    "Which parts of the image drove the decision? Grad-CAM weighs a layer's maps by how much "
    "the class score depends on them; gradient methods ask which pixels would change the score "
    "most. They can mislead, so compare several methods before trusting one."
)

top5 = sel.top(5)
n = len(model.categories)


classes = f"{model.label}'s classes are 0 to {n - 1}"
restore("sal_method", "method", lambda v: v in M, why=f"the methods are {', '.join(M)}")
restore("sal_target", "target", lambda v: 0 <= v < n, int, why=classes)
restore("sal_contrast", "contrast", lambda v: 0 <= v < n, int, why=classes)
restore("sal_layer", "layer", lambda v: v in S.cam_layers(model), why=f"not a layer of {model.label} with a spatial map")
restore("sal_advise", "advise", lambda v: v in (True, False), lambda t: t == "1")
# A layer clicked on the advisor's chart (or its button) is the target layer of every CAM method.
advised = new_click("sal_advice")
if advised in S.cam_layers(model):
    ss["sal_layer"] = advised
    if not M[ss.get("sal_method", "gradcam")].takes_layer:
        ss["sal_method"] = "gradcam"
if ss.get("sal_target") is None or not 0 <= ss["sal_target"] < n:
    ss["sal_target"] = top5[0].index
layers = S.cam_layers(model)
if ss.get("sal_layer") not in layers:
    ss["sal_layer"] = model.gradcam_layer


def _class_label(i: int) -> str:
    return f"{model.categories[i]} ({i})"


def _p(prob: float) -> str:
    return f"p = {prob:.1%}" if prob >= 0.001 else "p < 0.1%"


def _label(m: str) -> str:
    return M[m].label if m in M else "random order"  # the trust checks' deletion curve of a random order


c1, c2 = st.columns([1, 2])
method = c1.selectbox("Method", list(M), key="sal_method", format_func=_label)
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
uses_layer = M[method].takes_layer
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
tab_one, tab_grid, tab_sweep, tab_trust, tab_att = st.tabs(
    ["Map", "Methods side by side", "Layer sweep", "Trust checks", "Attention (transformers)"],
    key="view", bind="query-params")


def _partners() -> dict[str, str]:
    """Second models for the comparison: the picker's (untrained twins included, pretrained
    ones whether or not their weights are here), and an id a link names that the sidebar
    would load too (with its twin)."""
    out = comparable(model.id, cached_only=False)
    wanted = qp.get("compare")
    if wanted not in out and models.servable(wanted):
        for i in (wanted, wanted.removesuffix("@random") + "@random"):
            out[i] = i.removeprefix("torchvision:").replace("@random", " · untrained (random weights)")
    out.pop(model.id, None)
    return out


def _refused(raw) -> str:
    """Why a link's compare= is not offered, for `restore`'s sentence."""
    if raw == model.id:
        return "that is the model already selected in the sidebar"
    if models.known(raw):
        return f"it is larger than this server loads (at most {bounds.MAX_MODEL_PARAMS / 1e6:.0f} M parameters)"
    return "it is not a model this app knows; give an id such as torchvision:vit_b_16 or torchvision:vit_b_16@random"


def _second_model():
    """The comparison's widgets (bound to the URL's compare=ID) and the second model, or
    None (off, or its weights not here: said, with the untrained twin one click away)."""
    partners = _partners()
    # The lecture's point: a CNN beside a vision transformer (a transformer beside the bundled CNN).
    default = "torchvision:vit_b_16" if tokens.family(model.net) is None else models.BUNDLED_ID
    if restore("sal_compare", "compare", lambda v: v in partners, why=_refused(qp.get("compare"))):
        ss["sal_compare_on"] = True
    if ss.get("sal_compare") not in partners:
        ss["sal_compare"] = default
    k1, k2 = st.columns([1, 2], vertical_alignment="center")
    on = k1.toggle("Compare with another model", key="sal_compare_on",
                   help="The same image and class explained by a second network, drawn the same way.")
    other_id = k2.selectbox("Second model", list(partners), key="sal_compare", format_func=partners.get,
                            disabled=not on, label_visibility="collapsed")
    if not on:
        if "compare" in qp:
            del qp["compare"]
        return None
    qp["compare"] = other_id
    if not models.is_available(other_id):
        st.info(models.fetch_hint([other_id]) + " Meanwhile its untrained twin (the same architecture with "
                "random weights) works offline.")
        st.button("Compare with the untrained twin", key="sal_twin", on_click=ss.__setitem__,
                  args=("sal_compare", other_id + "@random"))
        return None
    try:
        return cache.model(other_id)
    except CnnvizError as e:
        st.error(str(e))
        return None


def _side_by_side(spec: S.SaliencySpec, att: S.Attribution, other: models.Model):
    """The second model's map of the same image and class, or None (its job failed: said)."""
    pairing = AG.pair(model, other, spec)
    try:
        with st.spinner(f"{other.label}: computing..."):
            theirs = cache.run(pairing.spec, other, sel.image, sel.image_sha, label=f"{other.label}:")
            top = top_k(other, cache.run(PredictSpec(), other, sel.image, sel.image_sha).probs, 1)[0]
    except CnnvizError as e:
        st.warning(f"{other.label}: {e}")
        return None
    return AG.side_by_side(model, att.map, other, theirs, pairing, top)


if tab_one.open:
    with tab_one:
        spec = S.SaliencySpec(method, target, layer, contrast)
        other = _second_model()
        try:
            with st.spinner(f"Computing {M[method].label}..."):
                att = cache.run(spec, model, sel.image, sel.image_sha, label=f"{M[method].label}:")
        except CnnvizError as e:  # a method this model cannot take, or a job over the server's budget
            st.warning(str(e))
            att = None
        both = _side_by_side(spec, att, other) if att is not None and other is not None else None
        if att is not None:
            base = model.input_image(sel.image)
            st.caption(f"**{M[method].label}** for **{what}**" + (f" at `{att.layer}`" if att.layer else "")
                       + (f". Integrated Gradients convergence delta: {att.delta:.3g}" if att.delta is not None else ""))
            if att.empty:
                st.info("The map is empty: nothing in this layer supports the class (the ReLU removed every "
                        "negative contribution). Try a higher-ranked class or an earlier layer.")
            m1, m2 = st.columns(2)
            shown_map = render.overlay(base, att.map, opacity, cmap)
            if both is None:
                m1.image(shown_map, caption="Map over the network's input", width="stretch")
                m2.plotly_chart(render.map_heatmap(att.map, "raw map (hover for values)"), key="sal_raw")
            else:
                # One overlay, opacity and colour map for both; each map spans its own minimum to maximum.
                mine, theirs = sel.top(1)[0], both.top1
                b = both.attribution
                m1.markdown(f"**{model.label}** · its top-1: {mine.label} ({mine.prob:.0%})")
                m1.image(shown_map, caption=f"{M[method].label} for {att.label} ({_p(att.prob)})", width="stretch")
                m2.markdown(f"**{other.label}** · its top-1: {theirs.label} ({theirs.prob:.0%})")
                used = M[b.method].label + (f" (instead of {M[method].label})" if b.method != method else "")
                m2.image(render.overlay(other.input_image(sel.image), b.map, opacity, cmap),
                         caption=f"{used} for {b.label} ({_p(b.prob)})" + (f" at {b.layer}" if b.layer else ""),
                         width="stretch")
                for n in both.notes:
                    st.info(n)
                r1, r2 = st.columns([1, 4], vertical_alignment="center")
                r1.metric("Spearman ρ of the two maps", f"{both.rho:.3f}")
                r2.markdown(both.sentence + " Both maps are drawn the same way, each from its own minimum to its "
                            "maximum: compare where they look, not how strongly.")
            png, npy = io.BytesIO(), io.BytesIO()
            shown_map.save(png, "PNG")
            np.save(npy, att.map)
            d1, d2 = st.columns(2)
            d1.download_button("Overlay (PNG)", png.getvalue(), f"{method}-{target}.png", "image/png")
            d2.download_button("Map (.npy)", npy.getvalue(), f"{method}-{target}.npy", "application/octet-stream")

if tab_grid.open:
    with tab_grid:
        st.caption("The same class explained by several methods, how alike their maps are (rank correlation: 1 the "
                   "same order of pixels, 0 unrelated), and how faithful each is: blur its most salient pixels first "
                   "(deletion: the probability should fall fast) or restore them first onto a blurred copy "
                   "(insertion: it should rise fast), against a random order.")
        chosen = st.multiselect("Methods", AG.comparable_methods(), default=list(AG.DEFAULT_METHODS),
                                key="sal_grid", format_func=_label)
        comparison = None
        if len(chosen) < 2:
            st.info("Choose at least two methods to compare.")
        else:
            try:
                comparison = cache.run(AG.AgreementSpec(tuple(chosen), target, layer, contrast), model, sel.image,
                                       sel.image_sha, label="Methods side by side:")
            except CnnvizError as e:
                st.warning(str(e))
        if comparison is not None:
            base = model.input_image(sel.image)
            cols = st.columns(min(len(comparison.methods), 4) or 1)
            for i, m in enumerate(comparison.methods):
                cols[i % len(cols)].image(render.overlay(base, comparison.maps[m], opacity, cmap), caption=M[m].label,
                                          width="stretch")
            for m, why in comparison.skipped.items():
                st.caption(f"{M[m].label}: not valid for this model. {why}")
            if len(comparison.methods) >= 2:
                st.markdown(comparison.summary)
                a1, a2 = st.columns([2, 3])
                with a1:
                    st.markdown("**Agreement** (Spearman rank correlation of the maps)")
                    st.plotly_chart(RS.agreement_figure([M[m].label for m in comparison.methods], comparison.matrix),
                                    key="sal_agree_chart")
                with a2:
                    st.markdown("**Faithfulness** (deletion: lower area is better; insertion: higher)")
                    st.plotly_chart(RS.curves_figure(comparison.deletion, comparison.insertion, comparison.areas,
                                                     _label), key="sal_curves_chart")

if tab_sweep.open:
    with tab_sweep:
        st.caption("Grad-CAM at the last layer of every stage, from one forward and one backward pass: "
                   "early layers are sharp but literal, late layers coarse but about the class.")
        advise = st.toggle("Which layer should I use? Score each one (deletion and insertion, a few hundred "
                           "images)", key="sal_advise")
        if advise:
            qp["advise"] = "1"
        elif "advise" in qp:
            del qp["advise"]
        sweep = None
        try:
            sweep = cache.run(S.SweepSpec(target, contrast, advise=advise), model, sel.image, sel.image_sha,
                              label="Layer advisor:" if advise else "")
        except CnnvizError as e:
            st.warning(str(e))
        if sweep is not None:
            base = model.input_image(sel.image)
            cols = st.columns(len(sweep.maps))
            for col, (name, cam) in zip(cols, sweep.maps.items()):
                shape = next(l.shape for l in model.layers if l.name == name)
                star = "★ " if name == sweep.best else ""
                col.image(render.overlay(base, cam, opacity, cmap), caption=f"{star}{name} ({shape[1]}x{shape[2]})",
                          width="stretch")
        if sweep is not None and sweep.advice:
            best = next(a for a in sweep.advice if a.layer == sweep.best)
            st.markdown(
                f"**Best here: `{sweep.best}`**: its most salient pixels carry the decision best (insertion area "
                f"{best.insertion_auc:.2f} against {sweep.random.insertion_auc:.2f} for a random order) and take it "
                f"away (deletion area {best.deletion_auc:.2f} against {sweep.random.deletion_auc:.2f}); the score is "
                "insertion minus deletion. It holds for this image and class: try another. Click a layer's bars to "
                "use it.")
            st.plotly_chart(RS.advisor_figure(sweep.advice, sweep.random, sweep.best), key="sal_advice",
                            on_select="rerun", selection_mode="points", config={"displaylogo": False})
            st.button(f"Use {sweep.best} for Grad-CAM", key="sal_use_best", disabled=ss.get("sal_layer") == sweep.best,
                      on_click=lambda b=sweep.best: ss.update(sal_layer=b, sal_method=ss["sal_method"]
                                                              if M[ss["sal_method"]].takes_layer else "gradcam"))

if tab_trust.open:
    with tab_trust:
        st.markdown(
            "**Model randomization** (Adebayo et al. 2018): the weights are re-drawn from the top "
            "block down; a method whose map stays the same is not explaining what the model learned. "
            "**Deletion**: the most salient pixels are blurred away first; a faithful map makes the "
            "probability fall faster (smaller area) than a random order."
        )
        st.caption(trust.cascade_sentence(model))
        checked = st.multiselect("Methods to check", trust.trust_methods(), default=list(trust.DEFAULT_METHODS),
                                 key="sal_trust_methods", format_func=_label)
        spec = trust.TrustSpec(tuple(checked), target)
        key = (model.id, sel.image_sha, spec.key())
        if st.button("Run the checks", key="sal_trust_run", disabled=not checked):
            try:
                ss["sal_trust"] = (key, cache.run(spec, model, sel.image, sel.image_sha, label="Trust checks:"))
            except CnnvizError as e:
                st.error(str(e))
        if ss.get("sal_trust") and ss["sal_trust"][0] == key:
            report = ss["sal_trust"][1]
            rand = {"steps": report.steps, "correlation": {_label(m): v for m, v in report.correlation.items()}}
            t1, t2 = st.columns(2)
            t1.plotly_chart(render.randomization_figure(rand), key="sal_rand_chart")
            t2.plotly_chart(render.deletion_figure({_label(m): v for m, v in report.deletion.items()},
                                                   {_label(m): v for m, v in report.areas.items()}), key="sal_del_chart")
        else:
            st.caption("The checks run about a dozen attributions; press the button to start.")

if tab_att.open:
    with tab_att:
        st.markdown(
            "A vision transformer cuts the image into 16x16 patches and lets every patch attend to every other "
            "from the first block on; a CNN unit sees only a small window that grows with depth. Here: where one "
            "token looks (the class token, or a patch you click), in one block and head, or **rollout**: the "
            "attention of every block multiplied through, with the residual path counted (Abnar and Zuidema)."
        )
        try:
            n_blocks = len(ATT.blocks(model))
        except CnnvizError as e:
            st.info(f"{e} Pick ViT-B/16 (or its untrained twin, which works offline) under Network in the sidebar.")
            n_blocks = 0
        if n_blocks:
            heads = ATT.heads(model)
            g = ATT.grid_side(model)
            restore_number("att_block", "block", 0, n_blocks - 1)
            restore("att_head", "head", lambda v: v == "mean" or 0 <= int(v) < heads,
                    why=f"the heads are 0 to {heads - 1}, or mean")
            restore("att_rollout", "rollout", lambda v: v in (True, False), lambda t: t == "1")
            restore("att_patch", "patch", lambda v: v is None or all(0 <= c < g for c in v),
                    lambda t: None if t == "cls" else tuple(int(c) for c in t.split(",")),
                    why=f"a patch is ROW,COL with each from 0 to {g - 1}, or cls")
            clicked = new_click("att_grid")
            if clicked is not None:
                ss["att_patch"] = (int(clicked[0]), int(clicked[1]))
            a1, a2, a3, a4 = st.columns([2, 1, 1, 1])
            ss.setdefault("att_block", n_blocks - 1)
            block = a1.slider("Block", 0, n_blocks - 1, key="att_block")
            rollout = a3.toggle("Rollout", key="att_rollout", help="Through blocks 0 to this one, heads averaged.")
            head = a2.selectbox("Head", ["mean", *map(str, range(heads))], key="att_head", disabled=rollout)
            patch = ss.get("att_patch")
            if a4.button("Class token", key="att_cls", disabled=patch is None):
                ss["att_patch"] = patch = None
            qp.update({"block": str(block), "head": head, "rollout": "1" if rollout else "0",
                       "patch": "cls" if patch is None else f"{patch[0]},{patch[1]}"})
            spec = ATT.AttentionSpec(block, None if rollout or head == "mean" else int(head), patch, rollout)
            try:
                att_map = cache.run(spec, model, sel.image, sel.image_sha, label="Attention:")
            except CnnvizError as e:
                st.warning(str(e))
                att_map = None
            if att_map is not None:
                base = model.input_image(sel.image)
                st.caption(f"**{'Rollout to block' if rollout else 'Block'} {block}"
                           f"{'' if rollout else ', ' + ('mean of heads' if head == 'mean' else 'head ' + head)}**: "
                           f"where the {att_map.query} looks")
                left, right = st.columns(2)
                left.image(render.overlay(base, S.upsample(att_map.map, model.input_size), opacity, cmap),
                           width="stretch")
                with right:
                    st.markdown(f"**{g}x{g} patches** (click one to make it the query; red: the query)")
                    st.plotly_chart(render.unit_map_figure(att_map.map, patch), key="att_grid", on_select="rerun",
                                    selection_mode="points", config={"displaylogo": False})
                if patch is None and rollout:
                    try:
                        cam = cache.run(S.SaliencySpec("gradcam", target), model, sel.image, sel.image_sha,
                                        label="Grad-CAM:")
                        r = ATT.agreement(att_map.map, cam.layer_map)
                        st.caption(f"Agreement with Grad-CAM for **{model.categories[target]}** (at `{cam.layer}`, "
                                   "same patch grid): Pearson r = "
                                   + ("undefined (a flat map)" if r is None else f"**{r:.2f}**")
                                   + ". Rollout ignores the class; Grad-CAM follows it. Where they agree, the model "
                                     "looks where it decides.")
                    except CnnvizError as e:
                        st.caption(f"No Grad-CAM to compare: {e}")
