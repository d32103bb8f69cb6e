import numpy as np
import streamlit as st

from cnnviz import featurevis as FV
from cnnviz import filters as Fi
from cnnviz import render
from cnnviz.activations import spatial_layers
from cnnviz.app import cache
from cnnviz.app.router import selection
from cnnviz.app.url import restore

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

st.title("Filters")
st.markdown(
    "A first-layer filter looks straight at pixels, so its weights are a small colour picture: "
    "edges, stripes and colour blobs. Deeper units combine earlier channels, so their weights say "
    "little to the eye; instead, an image is optimized until the unit fires as strongly as it can, "
    "and set beside the patches of real photos that excite it most."
)

VIEWS = {"weights": "Weights", "unit": "What a unit looks for", "gallery": "Gallery of a layer"}
SIZES = (32, 64, 96, 128, 160, 192, 224, 256)
STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
OBJ_LABELS = {"channel": "channel (mean over the map)", "neuron": "centre neuron", "class": "class logit"}
restore("flt_view", "view", lambda v: v in VIEWS)
ss.setdefault("flt_view", "weights")
view = st.radio("View", list(VIEWS), key="flt_view", format_func=VIEWS.get, horizontal=True,
                label_visibility="collapsed")


def _png(rgb) -> bytes:
    return FV.png_bytes(np.ascontiguousarray(rgb))


# ---------------------------------------------------------------- weights

def weights_view() -> dict:
    convs = Fi.conv_layers(model)
    restore("flt_conv", "conv", lambda v: v in convs)
    restore("flt_sort", "sort", lambda v: v in ("norm", "index"))
    if ss.get("flt_conv") not in convs:
        ss["flt_conv"] = convs[0]
    shapes = {n: tuple(model.layer_modules[n].weight.shape) for n in convs}
    c1, c2 = st.columns([3, 2])
    conv = c1.selectbox("Convolution layer", convs, key="flt_conv",
                        format_func=lambda n: f"{n} · {'x'.join(map(str, shapes[n]))}")
    sort = c2.radio("Order", ("norm", "index"), key="flt_sort", horizontal=True,
                    format_func={"norm": "strongest first (L2 norm)", "index": "as stored"}.get)
    f = Fi.of(model, conv)
    out, cin, kh, kw = f.weights.shape
    norms = f.norms
    order = f.order(sort)
    params = {"view": "weights", "conv": conv, "sort": sort}
    if f.kind == "rgb":
        rgb, grid = Fi.rgb_tiles(f, order)
        st.caption(f"**{conv}**: {out} filters of {kh}x{kw} over the 3 colour channels. Each tile is stretched "
                   "from its own lowest to highest weight and enlarged without blurring, so one weight is one square.")
        texts = [f"filter {k}<br>norm {norms[k]:.3g}" for k in grid.order]
        name = f"filters-{conv}.png"
    elif f.kind == "depthwise":
        rgb, grid = Fi.depthwise_tiles(f, order)
        st.caption(f"**{conv}** is depthwise: filter k looks only at input channel k ({out} filters of {kh}x{kw}, "
                   "one grey tile each, white = most positive). Mixing channels is left to the 1x1 convolutions "
                   "around it (MobileNet's depthwise separable convolution).")
        texts = [f"filter {k} (on channel {k})<br>norm {norms[k]:.3g}" for k in grid.order]
        name = f"depthwise-{conv}.png"
    else:
        restore("flt_filter", "filter", lambda v: 0 <= v < out, int)
        if not 0 <= ss.get("flt_filter", -1) < out:
            ss["flt_filter"] = int(f.order("norm")[0])
        k = int(st.number_input(f"Filter (0 to {out - 1}; the strongest is {int(f.order('norm')[0])})", 0, out - 1,
                                key="flt_filter"))
        params["filter"] = str(k)
        rgb, grid = Fi.filter_tiles(f, k)
        w = f.weights[k]
        st.caption(f"**{conv}**, filter {k} of {out} (norm {norms[k]:.3g}): one grey tile per input channel "
                   f"({cin} of them), all on one scale, black = most negative, white = most positive."
                   + (" A 1x1 filter has no spatial pattern: each tile is a single weight, how much that input "
                      "channel adds to this output (a channel mixer)." if kh == kw == 1 else ""))
        texts = [f"input channel {c}<br>sum {w[c].sum():.3g}, max |w| {np.abs(w[c]).max():.3g}" for c in grid.order]
        name = f"filter-{conv}-{k}.png"
    st.plotly_chart(render.tiles_figure(rgb, grid, texts), key="flt_tiles",
                    config={"displaylogo": False, "toImageButtonOptions": {"filename": name[:-4]}})
    st.download_button("Tiles (PNG)", _png(rgb), name, "image/png")
    return params


# ---------------------------------------------------------------- unit and gallery settings

def unit_controls(gallery: bool) -> FV.Spec:
    layers = spatial_layers(model)
    info = {l.name: l for l in model.layers}
    n_classes = len(model.categories)
    objectives = ("channel", "neuron") if gallery else FV.OBJECTIVES
    restore("fv_layer", "layer", lambda v: v in layers)
    restore("fv_objective", "objective", lambda v: v in FV.OBJECTIVES)
    restore("fv_channel", "channel", lambda v: v >= 0, int)
    restore("fv_size", "size", lambda v: v in SIZES, int)
    restore("fv_steps", "steps", lambda v: v in STEPS, int)
    restore("fv_lr", "lr", lambda v: 0 < v <= 1, float)
    restore("fv_seed", "seed", lambda v: 0 <= v < 2 ** 31, int)
    restore("fv_n", "n", lambda v: 1 <= v <= 64, int)
    if ss.get("fv_layer") not in layers:
        ss["fv_layer"] = layers[len(layers) // 2]
    if ss.get("fv_objective") not in objectives:
        ss["fv_objective"] = "channel"
    for key, default in (("fv_size", 128), ("fv_steps", 256), ("fv_lr", 0.05), ("fv_seed", 0), ("fv_n", 8)):
        ss.setdefault(key, default)
    c1, c2, c3 = st.columns([3, 1, 2])
    objective = c3.radio("Maximize", objectives, key="fv_objective", format_func=OBJ_LABELS.get)
    if objective == "class":
        if not 0 <= ss.get("fv_channel", -1) < n_classes:
            ss["fv_channel"] = sel.top(1)[0].index
        c1.selectbox("Class", range(n_classes), key="fv_channel", format_func=lambda i: f"{model.categories[i]} ({i})")
        layer = None
    else:
        layer = c1.selectbox("Layer", layers, key="fv_layer",
                             format_func=lambda n: f"{n} · {info[n].type} · {'x'.join(map(str, info[n].shape))}")
        C = info[layer].shape[0]
        if not 0 <= ss.get("fv_channel", 0) < C:
            ss["fv_channel"] = 0
        ss.setdefault("fv_channel", 0)
        if gallery:
            c2.number_input(f"Channels 0 to n-1 (n up to {min(64, C)})", 1, min(64, C), key="fv_n")
        else:
            c2.number_input(f"Channel (0 to {C - 1})", 0, C - 1, key="fv_channel")
    with st.expander("Optimization settings"):
        s1, s2, s3, s4 = st.columns(4)
        s1.select_slider("Image size (pixels)", SIZES, key="fv_size")
        s2.select_slider("Steps", STEPS, key="fv_steps")
        s3.number_input("Learning rate (Adam)", 0.001, 1.0, key="fv_lr", step=0.01, format="%.3f")
        s4.number_input("Seed", 0, 2 ** 31 - 1, key="fv_seed", help="Same seed and settings: the same image.")
    return FV.Spec(layer, 0 if gallery else int(ss["fv_channel"]), objective, int(ss["fv_size"]),
                   int(ss["fv_steps"]), float(ss["fv_lr"]), int(ss["fv_seed"]))


def _natural(spec: FV.Spec):
    """The sample images (and the sidebar's upload) recorded at `spec.layer`."""
    images = dict(cache.sample_images())
    keys = ("samples",)
    if not (ss.get("image") or {}).get("sample"):
        images[f"your image ({sel.image_name})"] = sel.image
        keys += (sel.image_sha,)
    return cache.natural(model.id, spec.layer, keys, model, images), keys


def _stop_button(key: str) -> None:
    # A click during a run makes Streamlit rerun the page, which interrupts the
    # optimization at its next progress update; the rerun does not restart it.
    st.button("Stop", key=key, icon=":material/stop:")


# ---------------------------------------------------------------- one unit

def unit_view() -> dict:
    spec = FV.check(model, unit_controls(gallery=False))
    what = (f"class **{model.categories[spec.channel]}** ({spec.channel})" if spec.objective == "class"
            else f"**{spec.layer}**, channel {spec.channel}" + (" (centre neuron)" if spec.objective == "neuron" else ""))
    nat, keys = _natural(spec)
    nat_mean, nat_max = FV.natural_stats(model, spec, nat)
    result = FV.cached(model, spec)
    left, right = st.columns(2)
    # The evidence first, so it is on screen while the optimization runs in the left column.
    with right:
        st.markdown("**Natural evidence**: the patches of the sample photos"
                    + (" and your image" if len(keys) > 1 else "") + " that excite it most")
        st.caption(f"Over {len(nat.names)} photos at {nat.pixels.shape[1]}x{nat.pixels.shape[2]}: "
                   f"mean {nat_mean:.3g}, best {nat_max:.3g}. The synthetic image usually beats every photo: "
                   "it contains nothing but what the unit wants.")
        if spec.objective == "class":
            best = np.argsort(-nat.values(spec))[:4]
            cols = st.columns(4)
            for col, n in zip(cols, best):
                col.image(nat.pixels[n], caption=f"{nat.names[n]}: {nat.values(spec)[n]:.3g}", width="stretch")
        else:
            crops = cache.evidence(model.id, spec.layer, spec.channel, spec.objective, keys, model, nat)
            cols = st.columns(4)
            for i, c in enumerate(crops):
                cols[i % 4].image(c.pixels, width="stretch",
                                  caption=f"{c.source}: {c.value:.3g} at unit {c.unit}")
            st.caption("Each patch is the receptive field of the unit that fired: all the input it can see "
                       "(clipped at the image's edge).")
    with left:
        st.markdown(f"**Synthetic image** for {what}")
        slot = st.empty()
        if result is not None:
            slot.image(result.image, width="stretch",
                       caption=f"{spec.steps} steps at {spec.size}x{spec.size}, seed {spec.seed}"
                       + (f", rendered in {result.seconds:.1f} s" if ss.get("fv_rendered") == spec.key(model.id)
                          else f" (from the {result.cached} cache)" if result.cached else ""))
            m1, m2, m3 = st.columns(3)
            m1.metric("start", f"{result.activation_start:.3g}")
            m2.metric("end", f"{result.activation_end:.3g}", f"{result.activation_end - nat_max:+.3g} vs best photo")
            m3.metric("best sample photo", f"{nat_max:.3g}")
            st.plotly_chart(render.curve_figure(result.curve, nat_max, nat_mean), key="fv_curve")
            st.download_button("Image (PNG)", _png(result.image), f"featurevis-{spec.key(model.id)}.png", "image/png")
        else:
            partial = ss.get("fv_partial")
            if partial and partial["key"] == spec.key(model.id):
                slot.image(partial["image"], width="stretch",
                           caption=f"Stopped: the image after step {partial['step']} of {partial['steps']} "
                                   "(not cached).")
            est = spec.steps * 0.1 * (spec.size / 128) ** 2
            st.caption(f"Not rendered yet with these settings: about {max(1, round(est))} s on a laptop CPU.")
            if st.button("Render", type="primary", key="fv_go", icon=":material/play_arrow:"):
                _stop_button("fv_stop")
                bar = st.progress(0.0, text="Starting...")

                def progress(step, steps, preview):
                    bar.progress(step / steps, text=f"Step {step} of {steps}")
                    if preview is not None:
                        slot.image(preview, width="stretch", caption=f"Step {step} of {steps}")
                        ss["fv_partial"] = {"key": spec.key(model.id), "image": preview, "step": step, "steps": steps}

                FV.visualize(model, spec, progress)
                ss.pop("fv_partial", None)
                ss["fv_rendered"] = spec.key(model.id)  # the rerun reads it back from the cache: say it is new
                st.rerun()
    out = {"view": "unit", "objective": spec.objective, "channel": str(spec.channel), "size": str(spec.size),
           "steps": str(spec.steps), "lr": str(spec.lr), "seed": str(spec.seed)}
    if spec.layer:
        out["layer"] = spec.layer
    return out


# ---------------------------------------------------------------- gallery

def gallery_view() -> dict:
    base = FV.check(model, unit_controls(gallery=True))
    n = int(ss["fv_n"])
    specs = [FV.Spec(base.layer, c, base.objective, base.size, base.steps, base.lr, base.seed) for c in range(n)]
    done = [FV.cached(model, s) for s in specs]
    missing = sum(r is None for r in done)
    blank = np.full((base.size, base.size, 3), 235, np.uint8)
    slot = st.empty()
    if missing:
        st.caption(f"{n - missing} of {n} channels are rendered; the rest take about "
                   f"{max(1, round(missing * base.steps * 0.1 * (base.size / 128) ** 2))} s on a laptop CPU.")
        if st.button(f"Render {missing} channel{'s' * (missing > 1)}", type="primary", key="gal_go",
                     icon=":material/play_arrow:"):
            _stop_button("gal_stop")
            bar = st.progress(0.0, text="Starting...")
            images = [r.image if r is not None else blank for r in done]

            def progress(step, total, preview):
                c = min((step - 1) // base.steps, n - 1)
                bar.progress(step / total, text=f"Channel {c} of {n}: step {step - c * base.steps} of {base.steps}")
                if preview is not None:
                    images[c] = preview
                    slot.image(FV.grid_image(images), width="stretch")

            FV.gallery(model, base, n, progress)
            st.rerun()
    grid = FV.grid_image([r.image if r is not None else blank for r in done])
    slot.image(grid, width="stretch", caption=f"{base.layer}, channels 0 to {n - 1} ({OBJ_LABELS[base.objective]}), "
                                              f"left to right, top to bottom")
    if not missing:
        st.download_button("Gallery (PNG)", _png(grid), f"gallery-{base.layer}-{n}.png", "image/png")
    return {"view": "gallery", "layer": base.layer, "objective": base.objective, "n": str(n),
            "size": str(base.size), "steps": str(base.steps), "lr": str(base.lr), "seed": str(base.seed)}


try:
    params = {"weights": weights_view, "unit": unit_view, "gallery": gallery_view}[view]()
    qp.update(params)
except (FV.FeatureVisError, Fi.FilterError) as e:
    st.error(str(e))
