import numpy as np
import streamlit as st
from PIL import Image

from cnnviz import adversarial as A
from cnnviz import divergence as D
from cnnviz import render, render_divergence, tokens
from cnnviz.activations import LayerNotFound, mosaic
from cnnviz.app import cache
from cnnviz.app.clicks import new_click
from cnnviz.app.router import selection
from cnnviz.app.url import restore, restore_number
from cnnviz.contract import CnnvizError
from cnnviz.pixels import from_uint8
from cnnviz.predict import top_k
from cnnviz.saliency import SaliencySpec

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params
n = len(model.categories)

st.title("Adversarial examples")
st.markdown(
    "A change of a pixel value or two out of 255, chosen by following the network's gradient, "
    "can change its answer (the panda that becomes a gibbon). Random noise of exactly the same "
    "size usually changes nothing: the attack finds one of the few directions the network is "
    "fragile in. That gap is the point of this demo."
)

STEP_SIZES = ("auto", "0.25", "0.5", "1", "2", "4")
EPS, STEPS, SWEEP, SEEDS = (1, 32), (1, 100), (2, 32), (0, 2**31 - 1)  # the widgets' ranges (the URL's too)
restore("adv_method", "attack", lambda v: v in A.ATTACKS, why=f"the attacks are {', '.join(A.ATTACKS)}")
restore_number("adv_eps", "eps", *EPS)
restore_number("adv_steps", "steps", *STEPS)
restore("adv_step", "step", lambda v: v in STEP_SIZES, why=f"the step sizes are {', '.join(STEP_SIZES)}")
restore("adv_random", "start", lambda v: v in ("0", "1"), why="start is 0 or 1 (random start)")
restore_number("adv_seed", "seed", *SEEDS)
restore("adv_target", "target", lambda v: 0 <= v < n, int, why=f"{model.label}'s classes are 0 to {n - 1}")
restore_number("adv_sweep_max", "sweep", *SWEEP)
for k, v in {"adv_method": "pgd", "adv_eps": 2, "adv_steps": 10, "adv_step": "auto", "adv_random": False,
             "adv_seed": 0, "adv_sweep_max": 16}.items():
    ss.setdefault(k, v)  # defaults here, not in the widgets: the URL may have set them
if "adv_targeted" not in ss:
    ss["adv_targeted"] = "target" in qp and ss.get("adv_target") is not None
if isinstance(ss.get("adv_random"), str):  # from the URL
    ss["adv_random"] = ss["adv_random"] == "1"


def _class_label(i: int) -> str:
    return f"{model.categories[i]} ({i})"


c1, c2, c3, c4 = st.columns([1, 2, 2, 2])
method = c1.radio("Attack", list(A.ATTACKS), key="adv_method", format_func=lambda m: A.ATTACKS[m].label,
                  help=" ".join(f"{a.label}: {a.help}" for a in A.ATTACKS.values()))
eps = c2.slider("Budget (L-infinity, in 1/255)", *EPS, key="adv_eps",
                help="No pixel value changes by more than this many levels out of 255.")
name = A.ATTACKS[method].label
pgd = A.ATTACKS[method].iterative
steps = c3.slider("PGD steps", *STEPS, key="adv_steps", disabled=not pgd)
step = c4.select_slider("PGD step size (1/255)", STEP_SIZES, key="adv_step", disabled=not pgd,
                        help="auto: 2.5 x budget / steps. The last quarter of the steps move one level at a "
                             "time on the 8-bit grid, so the saved PNG keeps working.")
c5, c6, c7 = st.columns([1, 1, 4])
random_start = c5.toggle("Random start", key="adv_random", disabled=not pgd)
seed = c6.number_input("Seed", *SEEDS, key="adv_seed", help="Random start and the noise control.")
targeted = c7.toggle("Targeted: aim at a class of your choice", key="adv_targeted")

label = sel.top(1)[0].index
target = None
if targeted:
    suggestions = A.far_targets(model, sel.probs, 5)
    if ss.get("adv_target") not in range(n) or ss["adv_target"] == label:  # unset, or from another model
        ss["adv_target"] = suggestions[0]
    t1, t2 = st.columns([2, 3])
    target = int(t1.selectbox("Target class (type to search)", range(n), key="adv_target",
                              format_func=_class_label))
    with t2:
        st.markdown("**Far-away suggestions** (the classes the model finds least likely here)")
        cols = st.columns(len(suggestions))
        for col, i in zip(cols, suggestions):
            col.button(model.categories[i], key=f"adv_suggest_{i}", width="stretch",
                       type="primary" if i == target else "secondary",
                       on_click=ss.__setitem__, args=("adv_target", i))

params = {"attack": method, "eps": str(eps), "seed": str(seed)}
if pgd:
    params.update(steps=str(steps), step=step, start="1" if random_start else "0")
if target is not None:
    params["target"] = str(target)
for k in ("steps", "step", "start", "target"):
    if k not in params and k in qp:
        del qp[k]
qp.update(params)

try:
    spec = A.AttackSpec(method, eps, steps, None if step == "auto" else float(step), target, random_start, seed,
                        png=True).check(model)  # FGSM's: no steps, no random start (one cache entry)
    res = cache.run(spec, model, sel.image, sel.image_sha, label=f"{name} at {eps}/255:")
    ctl = cache.run(A.NoiseSpec(float(eps), int(seed)), model, sel.image, sel.image_sha)
except CnnvizError as e:  # parameters the attack cannot take, or a job over the server's budget
    st.error(str(e))
    st.stop()

cat = model.categories
before, after = res.probs_before, res.probs_after
was = f"**{cat[res.label]}** ({before[res.label]:.1%})"
now = f"**{cat[res.predicted]}** ({after[res.predicted]:.1%})"
if res.success:
    st.success(f"{name} at {eps}/255 turned {was} into {now}.", icon=":material/bug_report:")
elif target is not None:
    st.warning(f"{name} at {eps}/255 did not reach {cat[target]} (now {now}, {cat[target]} at "
               f"{after[target]:.1%}). Raise the budget or the steps, or pick a target from the suggestions.")
else:
    st.warning(f"{name} at {eps}/255 did not change the answer {was} (now {after[res.label]:.1%}). "
               "Raise the budget, or use PGD with more steps.")

pert, gain = render.perturbation_image(res.delta)
p1, p2, p3, p4 = st.columns(4)
p1.image(res.original, caption=f"Original: {cat[res.label]} ({before[res.label]:.1%})", width="stretch")
p2.image(pert, caption=f"Perturbation, amplified x{gain:.0f} around grey; true range "
                       f"{int(res.delta.min()):+d} to {int(res.delta.max()):+d} /255 "
                       f"(L-inf {res.linf:g}/255, L2 {res.l2:.2f})", width="stretch")
p3.image(res.adversarial, caption=f"Adversarial: {cat[res.predicted]} ({after[res.predicted]:.1%})",
         width="stretch")
p4.image(ctl.adversarial, caption=f"Control, random signs of the same size: {cat[ctl.predicted]} "
                                  f"({ctl.probs_after[ctl.predicted]:.1%})", width="stretch")
b1, b2, b3 = st.columns(3)
b1.html(render.topk_html(top_k(model, before), "Top-5 before"))
b2.html(render.topk_html(top_k(model, after), f"Top-5 after {name}"))
b3.html(render.topk_html(top_k(model, ctl.probs_after), "Top-5 after random noise"))
st.caption(
    ("The random noise changed the answer too: this image sits near a decision boundary."
     if ctl.success else "The random noise of the same size left the answer alone.")
    + " All images are the network's 8-bit input (resized and cropped), so what you see is what it classifies."
)

# Tracked tabs bound to the URL (`adv_view`): the server knows the open tab, so the sweep button's rerun
# keeps it open, a link can open a tab, and the depth view records only while it is open.
tab_png, tab_cam, tab_sweep, tab_div = st.tabs(
    ["Download (8-bit PNG)", "Where the decision moved", "Budget sweep", "Where the attack takes over"],
    key="adv_view", on_change="rerun", bind="query-params")

with tab_png:
    got = f"{cat[int(res.png_probs.argmax())]} ({res.png_probs.max():.1%})"
    if res.png_success:
        st.success(f"Saved as an 8-bit PNG, reloaded and classified again: {got}. The file still fools the model.")
    else:
        st.warning(f"Saved as an 8-bit PNG, reloaded and classified again: {got}. The file does not fool the "
                   "model" + (" (neither did the attack)." if not res.success else "; rounding undid the attack."))
    st.download_button("Adversarial image (PNG)", res.png, f"adversarial-{method}-{eps}.png", "image/png",
                       key="adv_download")
    st.caption(f"{res.adversarial.shape[1]}x{res.adversarial.shape[0]} pixels, the network's input size: the "
               "check classifies it as is. Resizing it again (as the sidebar does with uploads) smooths the "
               "perturbation and often undoes it.")

if tab_cam.open:  # lazy: three Grad-CAMs only when asked
    with tab_cam:
        where = "the patch tokens entering the last block" if tokens.family(model.net) == "vit" else "last spatial layer"
        st.caption(f"Grad-CAM ({where}) for each image's own answer, and for the original answer on the "
                   "adversarial image: the picture barely changed, the evidence did.")
        g = [(res.original, res.label, f"original, {cat[res.label]}"),
             (res.adversarial, res.predicted, f"adversarial, {cat[res.predicted]}")]
        if res.predicted != res.label:
            g.append((res.adversarial, res.label, f"adversarial, still explaining {cat[res.label]}"))
        cols = st.columns(len(g))
        for col, (rgb, cls, text) in zip(cols, g):
            cam = cache.run(SaliencySpec("gradcam", target=cls), model, from_uint8(rgb), cache.sha(rgb.tobytes())).map
            col.image(render.overlay(Image.fromarray(rgb), cam, 0.5, "jet"), caption=text, width="stretch")

with tab_sweep:
    st.caption("The same attack at every budget from 1/255 up, each starting from the previous budget's "
               "image. The dashed line marks the smallest budget that changes the decision.")
    top = st.slider("Up to (1/255)", *SWEEP, key="adv_sweep_max")
    qp["sweep"] = str(top)
    sweep_spec = spec.sweep(range(1, top + 1))
    key = (model.id, sel.image_sha, sweep_spec.key())
    if st.button("Run the budget sweep", key="adv_sweep_run"):
        ss["adv_sweep"] = key
    sweep = None
    if ss.get("adv_sweep") == key:
        try:
            sweep = cache.run(sweep_spec, model, sel.image, sel.image_sha, label="Budget sweep:")
        except CnnvizError as e:
            st.error(str(e))
    if sweep is not None:
        st.plotly_chart(render.budget_figure(sweep, cat[sweep.label], cat[target] if target is not None else None,
                                             float(eps)), key="adv_sweep_chart")
        if sweep.smallest is None:
            st.info(f"No budget up to {top}/255 changed the decision.")
        else:
            st.markdown(f"Smallest budget that changes the decision: **{sweep.smallest:g}/255**.")
    else:
        st.caption(f"{top} attacks of {res.steps} step(s) each; press the button to start.")

# ---------------------------------------------------------------- where the attack takes over

DIV_TEXT = (
    "Each point compares one layer's activation on a perturbed image with the clean one: the length of the "
    "difference over the length of the clean activation. At the pixels both perturbations are equally small. "
    "The random noise points nowhere in particular, so the layers average much of it away and its curve stays "
    "low or fades; the attack was chosen along the few directions the network amplifies, so its change grows "
    "with depth until the answer flips. The star marks the layer where the attack's change rises fastest; the "
    "lower panel counts how many of each layer's {k} strongest channels (by mean) are no longer among the "
    "strongest. Click a point, or pick a layer below, to compare its maps."
)

if tab_div.open:  # lazy: nothing is recorded unless this tab is open
    with tab_div:
        names = D.layer_names(model)
        if (clicked := new_click("adv_div_chart")) in names:
            ss["adv_layer"] = clicked
        if ss.get("adv_layer") not in names:
            ss.pop("adv_layer", None)
            asked = qp.get("layer")
            if asked is not None and asked in names:
                ss["adv_layer"] = asked
            elif asked is not None:
                st.warning(f"{LayerNotFound(str(asked), names, where='')} The view opens where the attack's change "
                           "rises fastest.", icon=":material/link:")
        pic_adv, pic_noise = D.Picture.of(res.adversarial), D.Picture.of(ctl.adversarial)
        div = None
        try:
            div = cache.run(D.DivergenceSpec(pic_adv, pic_noise), model, sel.image, sel.image_sha,
                            label="Recording every layer for the three images:")
        except CnnvizError as e:
            st.error(str(e))
        if div is not None and div.rows:
            rows = {r["layer"]: r for r in div.rows}
            if ss.get("adv_layer") not in rows:
                ss["adv_layer"] = div.fastest or div.layers[-1]
            st.caption(DIV_TEXT.format(k=div.k))
            st.plotly_chart(render_divergence.divergence_figure(div.rows, div.fastest, ss["adv_layer"], div.k, name),
                            key="adv_div_chart", on_select="rerun", selection_mode="points",
                            config={"displaylogo": False, "toImageButtonOptions": {"filename": "attack-depth"}})
            last = div.rows[-1]
            if last["adversarial"] is not None and last["noise"] is not None:
                st.markdown(f"At the last layer ({last['layer']}) the attack moved the activation by "
                            f"**{last['adversarial']:.0%}** of its length, the noise by **{last['noise']:.0%}**."
                            + (f" The fastest rise is at **{div.fastest}**." if div.fastest else ""))

            def _layer_label(n: str) -> str:
                v = rows[n]["adversarial"]
                return f"{div.layers.index(n) + 1}. {n} · change {'undefined' if v is None else f'{v:.3g}'}"

            layer = st.selectbox("Layer (execution order)", div.layers, key="adv_layer", format_func=_layer_label)
            qp["layer"] = layer
            pair = None
            try:
                pair = cache.run_shared(D.LayerPairSpec(layer, pic_adv), model, sel.image, sel.image_sha,
                                        label="Recording the layer:")
            except CnnvizError as e:
                st.error(str(e))
            if pair is not None:
                r = rows[layer]

                def _pct(v) -> str:
                    return "undefined (all zero on the clean image)" if v is None else f"{v:.1%}"

                m1, m2, m3 = st.columns(3)
                m1.metric(f"{name}: relative change", _pct(r["adversarial"]))
                m2.metric("Random noise: relative change", _pct(r["noise"]))
                m3.metric(f"Top-{div.k} channels changed", f"{r['top_changed']} (noise {r['noise_top_changed']})")
                if pair.spatial:
                    order = np.lexsort((np.arange(len(pair.clean)), -pair.clean.reshape(len(pair.clean), -1).mean(1)))
                    q1, q2, q3 = st.columns(3)
                    q1.image(mosaic(pair.clean, order)[0], width="stretch",
                             caption=f"{layer} on the original: {pair.clean.shape[0]} maps, strongest (by mean) first")
                    q2.image(mosaic(pair.adversarial, order)[0], width="stretch",
                             caption="on the adversarial image, same tile order")
                    q3.image(mosaic(np.abs(pair.adversarial - pair.clean), order)[0], width="stretch",
                             caption="the change |adversarial - original|, same order (white = most changed)")
                    st.caption("Each mosaic is scaled to its own range (white = its strongest value).")
                else:
                    st.info(f"{layer} gives {pair.clean.shape[0]} numbers, not maps: its channels are the values "
                            "themselves.")
                left, entered = pair.top_sets()
                c1, c2 = st.columns([2, 1])
                with c1:
                    st.markdown("**The channels that changed most**")
                    st.plotly_chart(render_divergence.channel_change_bars(pair.channels()), key="adv_div_channels")
                with c2:
                    st.markdown(f"**Top {div.k} by mean**")
                    st.markdown(f"Left the top on the adversarial image: {', '.join(map(str, left)) or 'none'}  \n"
                                f"Entered it: {', '.join(map(str, entered)) or 'none'}")
