import numpy as np
import streamlit as st

from cnnviz import featurevis as FV
from cnnviz import filters as Fi
from cnnviz import bounds, jobs, render, tokens
from cnnviz.activations import spatial_layers
from cnnviz.app import cache
from cnnviz.app.router import selection
from cnnviz.app.url import note, restore, restore_number, shown
from cnnviz.contract import Cancelled, CnnvizError, Progress
from cnnviz.pixels import png_bytes

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

kind = tokens.family(model.net)  # a transformer: "vit" / "swin"
st.title("Filters")
st.markdown(
    "A first-layer filter looks straight at pixels, so its weights are a small colour picture: "
    "edges, stripes and colour blobs. Deeper units combine earlier channels, so their weights say "
    "little to the eye; instead, an image is optimized until the unit fires as strongly as it can, "
    "and set beside the patches of real photos that excite it most." if kind is None else
    "A transformer's one convolution, its patch embedding, looks straight at pixels, so its weights are small "
    "colour pictures, as a CNN's first-layer filters are. The attention and MLP layers after it mix tokens and "
    "channels, so their weights say little to the eye; instead, an image is optimized until a unit fires as "
    "strongly as it can, and set beside the patches of real photos that excite it most."
)

VIEWS = {"weights": "Weights", "unit": "What a unit looks for", "gallery": "Gallery of a layer"}
SIZES = (32, 64, 96, 128, 160, 192, 224, 256)
STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
OBJ_LABELS = {"channel": "channel (mean over the map)", "neuron": "centre neuron", "class": "class logit"}
LR, SEEDS = (0.001, 1.0), (0, 2 ** 31 - 1)  # the widgets' ranges (the URL's too)
restore("flt_view", "view", lambda v: v in VIEWS, why=f"the views are {', '.join(VIEWS)}")
ss.setdefault("flt_view", "weights")
view = st.radio("View", list(VIEWS), key="flt_view", format_func=VIEWS.get, horizontal=True,
                label_visibility="collapsed")


def _png(rgb) -> bytes:
    return png_bytes(np.ascontiguousarray(rgb))


# ---------------------------------------------------------------- weights

def weights_view() -> dict:
    convs = Fi.conv_layers(model)
    restore("flt_conv", "conv", lambda v: v in convs, why=f"not a convolution of {model.label}")
    restore("flt_sort", "sort", lambda v: v in ("norm", "index"), why="the orders are norm and index")
    if ss.get("flt_conv") not in convs:
        ss["flt_conv"] = convs[0]
    shapes = {n: tuple(model.layer_modules[n].weight.shape) for n in convs}
    c1, c2 = st.columns([3, 2])
    conv = c1.selectbox("Convolution layer", convs, key="flt_conv",
                        format_func=lambda n: f"{n} · {'x'.join(map(str, shapes[n]))}")
    sort = c2.radio("Order", ("norm", "index"), key="flt_sort", horizontal=True,
                    format_func={"norm": "strongest first (L2 norm)", "index": "as stored"}.get)
    r = cache.run(Fi.FiltersSpec(conv, sort), model)
    out, cin, kh, kw = r.shape
    params = {"view": "weights", "conv": conv, "sort": sort}
    if r.kind == "rgb":
        stride = model.layer_modules[conv].stride[0]
        st.caption(f"**{conv}**: {out} filters of {kh}x{kw} over the 3 colour channels. "
                   + ("" if kind is None else
                      f"This is the only convolution in {'a ViT' if kind == 'vit' else 'Swin'}: it moves {stride} "
                      f"pixels at a time, so each filter takes one dot product per {kh}x{kw} patch, and together they "
                      f"are a linear embedding of each patch into a token of {out} channels. ")
                   + "Each tile is stretched from its own lowest to highest weight and enlarged without blurring, "
                     "so one weight is one square.")
        name = f"filters-{conv}.png"
    elif r.kind == "depthwise":
        st.caption(f"**{conv}** is depthwise: filter k looks only at input channel k ({out} filters of {kh}x{kw}, "
                   "one grey tile each, white = most positive). Mixing channels is left to the 1x1 convolutions "
                   "around it (MobileNet's depthwise separable convolution).")
        name = f"depthwise-{conv}.png"
    else:
        restore_number("flt_filter", "filter", 0, out - 1)
        if not 0 <= ss.get("flt_filter", -1) < out:
            ss["flt_filter"] = r.index  # the strongest
        k = int(st.number_input(f"Filter (0 to {out - 1}; the strongest is {r.index})", 0, out - 1,
                                key="flt_filter"))
        params["filter"] = str(k)
        if k != r.index:
            r = cache.run(Fi.FiltersSpec(conv, sort, k), model)
        st.caption(f"**{conv}**, filter {k} of {out} (norm {r.norms[k]:.3g}): one grey tile per input channel "
                   f"({cin} of them), all on one scale, black = most negative, white = most positive."
                   + (" A 1x1 filter has no spatial pattern: each tile is a single weight, how much that input "
                      "channel adds to this output (a channel mixer)." if kh == kw == 1 else ""))
        name = f"filter-{conv}-{k}.png"
    rgb = r.tiles
    st.plotly_chart(render.tiles_figure(rgb, r.grid, r.texts), key="flt_tiles",
                    config={"displaylogo": False, "toImageButtonOptions": {"filename": name[:-4]}})
    st.download_button("Tiles (PNG)", _png(rgb), name, "image/png")
    return params


# ---------------------------------------------------------------- unit and gallery settings

def _render() -> dict:
    """The optimization settings in the session (the widgets' or the link's)."""
    return {"size": int(ss["fv_size"]), "steps": int(ss["fv_steps"]), "lr": float(ss["fv_lr"]), "seed": int(ss["fv_seed"])}


def unit_controls(gallery: bool) -> FV.FeatureVisSpec | FV.GallerySpec:
    layers = spatial_layers(model)
    info = {l.name: l for l in model.layers}
    n_classes = len(model.categories)
    objectives = ("channel", "neuron") if gallery else FV.OBJECTIVES
    restore("fv_layer", "layer", lambda v: v in layers, why=f"not a layer of {model.label} with a spatial map")
    restore("fv_objective", "objective", lambda v: v in objectives, why=f"the objectives here are {', '.join(objectives)}")
    channel_from_url = restore("fv_channel", "channel", lambda v: v >= 0, int, why="channels count from 0")
    restore("fv_size", "size", lambda v: v in SIZES, int, why=f"the sizes are {', '.join(map(str, SIZES))} pixels")
    restore("fv_steps", "steps", lambda v: v in STEPS, int, why=f"the choices are {', '.join(map(str, STEPS))} steps")
    restore_number("fv_lr", "lr", *LR, integer=False)
    restore_number("fv_seed", "seed", *SEEDS)
    restore_number("fv_n", "n", 1, bounds.MAX_GALLERY)
    if ss.get("fv_layer") not in layers:
        leaves = [l for l in layers if l not in model.blocks] or layers  # the middle of the leaf layers, as before blocks
        ss["fv_layer"] = leaves[len(leaves) // 2]
    if ss.get("fv_objective") not in objectives:
        ss["fv_objective"] = "channel"
    for key, default in (("fv_size", 128), ("fv_steps", 256), ("fv_lr", 0.05), ("fv_seed", 0), ("fv_n", 8)):
        ss.setdefault(key, default)
    c1, c2, c3 = st.columns([3, 1, 2])
    objective = c3.radio("Maximize", objectives, key="fv_objective", format_func=OBJ_LABELS.get)
    if objective == "class":
        if not 0 <= ss.get("fv_channel", -1) < n_classes:
            if channel_from_url:
                note(f"The link's channel={shown(ss['fv_channel'])} is not a class of {model.label} (0 to {n_classes - 1}); "
                     "showing the top-1 class.")
            ss["fv_channel"] = sel.top(1)[0].index
        c1.selectbox("Class", range(n_classes), key="fv_channel", format_func=lambda i: f"{model.categories[i]} ({i})")
        layer = None
    else:
        layer = c1.selectbox("Layer", layers, key="fv_layer",
                             format_func=lambda n: f"{n} · {info[n].type} · {'x'.join(map(str, info[n].shape))}")
        C = info[layer].shape[0]
        if not 0 <= ss.get("fv_channel", 0) < C:
            if channel_from_url:
                note(f"The link's channel={shown(ss['fv_channel'])} is not a channel of {layer} (0 to {C - 1}); showing 0.")
            ss["fv_channel"] = 0
        ss.setdefault("fv_channel", 0)
        if gallery:
            # At most the layer's channels, and what one job may run at these steps (bounds.MAX_PASSES).
            most = min(bounds.MAX_GALLERY, C, bounds.MAX_PASSES // FV.FeatureVisSpec(layer, 0, **_render()).passes(model))
            if ss["fv_n"] > most:
                note(f"A gallery of {ss['fv_n']} channels is more than this one can render: {layer} has {C} "
                     f"channels, and one job runs at most {bounds.MAX_PASSES:,} images through the network "
                     f"({int(ss['fv_steps']) + 2:,} per channel at {int(ss['fv_steps'])} steps). Rendering {most}.")
                ss["fv_n"] = most
            c2.number_input(f"Channels 0 to n-1 (n up to {most})", 1, most, key="fv_n")
        else:
            c2.number_input(f"Channel (0 to {C - 1})", 0, C - 1, key="fv_channel")
    with st.expander("Optimization settings"):
        s1, s2, s3, s4 = st.columns(4)
        s1.select_slider("Image size (pixels)", SIZES, key="fv_size")
        s2.select_slider("Steps", STEPS, key="fv_steps")
        s3.number_input("Learning rate (Adam)", *LR, key="fv_lr", step=0.01, format="%.3f")
        s4.number_input("Seed", *SEEDS, key="fv_seed", help="Same seed and settings: the same image.")
    render = _render()
    if gallery:
        return FV.GallerySpec(layer, int(ss["fv_n"]), objective, **render).check(model)
    return FV.FeatureVisSpec(layer, int(ss["fv_channel"]), objective, **render).check(model)


def _evidence(spec: FV.FeatureVisSpec, upload: str) -> FV.Evidence:
    """The unit on the sample photos, and on the sidebar's image under the name `upload`."""
    return cache.run(FV.EvidenceSpec.of(spec, upload), model, sel.image if upload else None,
                     sel.image_sha if upload else "", label="Recording the sample images:")


def _live(spec, show, stop_key: str) -> bool:
    """Run `spec` through the job runner (live, not a cache replay) under a Stop button
    and a progress bar; `show(fraction, text, preview)` draws the preview. False: stopped
    (nothing was kept). A click on Stop reruns the page, which also interrupts the run at
    its next progress update; the rerun does not restart it."""
    def report(fraction, text, preview):
        bar.progress(fraction, text=text)
        show(fraction, text, preview)

    progress = Progress(report)
    st.button("Stop", key=stop_key, icon=":material/stop:", on_click=progress.stop)
    bar = st.progress(0.0, text="Starting...")
    try:
        jobs.run(model, None, spec, progress=progress)
    except Cancelled:
        return False
    return True


# ---------------------------------------------------------------- one unit

def unit_view() -> dict:
    spec = unit_controls(gallery=False)
    key = spec.digest(model.id)
    what = (f"class **{model.categories[spec.channel]}** ({spec.channel})" if spec.objective == "class"
            else f"**{spec.layer}**, channel {spec.channel}" + (" (centre neuron)" if spec.objective == "neuron" else ""))
    upload = "" if (ss.get("image") or {}).get("sample") else f"your image ({sel.image_name})"
    ev = _evidence(spec, upload)
    result = FV.cached(model, spec)
    left, right = st.columns(2)
    # The evidence first, so it is on screen while the optimization runs in the left column.
    with right:
        st.markdown("**Natural evidence**: the patches of the sample photos"
                    + (" and your image" if upload else "") + " that excite it most")
        st.caption(f"Over {ev.images} photos at {ev.size[0]}x{ev.size[1]}: "
                   f"mean {ev.natural_mean:.3g}, best {ev.natural_max:.3g}. The synthetic image usually beats every "
                   "photo: it contains nothing but what the unit wants.")
        cols = st.columns(4)
        for i, c in enumerate(ev.crops):
            cols[i % 4].image(c.pixels, width="stretch",
                              caption=f"{c.source}: {c.value:.3g}" + (f" at unit {c.unit}" if c.unit is not None else ""))
        if spec.objective != "class":
            st.caption("Each patch is the receptive field of the unit that fired: all the input it can see "
                       "(clipped at the image's edge).")
    with left:
        st.markdown(f"**Synthetic image** for {what}")
        slot = st.empty()
        if result is not None:
            slot.image(result.image, width="stretch",
                       caption=f"{spec.steps} steps at {spec.size}x{spec.size}, seed {spec.seed}"
                       + (f", rendered in {result.seconds:.1f} s" if ss.get("fv_rendered") == key
                          else f" (from the {result.cached} cache)" if result.cached else ""))
            m1, m2, m3 = st.columns(3)
            m1.metric("start", f"{result.activation_start:.3g}")
            m2.metric("end", f"{result.activation_end:.3g}",
                      f"{result.activation_end - ev.natural_max:+.3g} vs best photo")
            m3.metric("best sample photo", f"{ev.natural_max:.3g}")
            st.plotly_chart(render.curve_figure(result.curve, ev.natural_max, ev.natural_mean), key="fv_curve")
            st.download_button("Image (PNG)", _png(result.image), f"featurevis-{key}.png", "image/png")
        else:
            partial = ss.get("fv_partial")
            if partial and partial["key"] == key:
                slot.image(partial["image"], width="stretch",
                           caption=f"Stopped: the image after step {partial['step']} of {spec.steps} (not cached).")
            st.caption(f"Not rendered yet with these settings: about {max(1, round(spec.estimate_seconds()))} s "
                       "on a laptop CPU.")
            if st.button("Render", type="primary", key="fv_go", icon=":material/play_arrow:"):
                def show(fraction, text, preview):
                    if preview is not None:
                        slot.image(preview, width="stretch", caption=text)
                        ss["fv_partial"] = {"key": key, "image": preview, "step": round(fraction * spec.steps)}

                if _live(spec, show, "fv_stop"):
                    ss.pop("fv_partial", None)
                    ss["fv_rendered"] = key  # the rerun reads it back from the cache: say it is new
                st.rerun()
    out = {"view": "unit", "objective": spec.objective, "channel": str(spec.channel), "size": str(spec.size),
           "steps": str(spec.steps), "lr": str(spec.lr), "seed": str(spec.seed)}
    if spec.layer:
        out["layer"] = spec.layer
    return out


# ---------------------------------------------------------------- gallery

def gallery_view() -> dict:
    spec = unit_controls(gallery=True)
    n = spec.n
    done = FV.cached_gallery(model, spec)
    missing = sum(r is None for r in done)
    slot = st.empty()
    if missing:
        st.caption(f"{n - missing} of {n} channels are rendered; the rest take about "
                   f"{max(1, round(spec.estimate_seconds(missing)))} s on a laptop CPU.")
        if st.button(f"Render {missing} channel{'s' * (missing > 1)}", type="primary", key="gal_go",
                     icon=":material/play_arrow:"):
            def show(fraction, text, preview):
                if preview is not None:  # the whole grid so far
                    slot.image(preview, width="stretch")

            _live(spec, show, "gal_stop")
            st.rerun()
    grid = FV.gallery_image([r.image if r is not None else None for r in done], spec.size)
    slot.image(grid, width="stretch", caption=f"{spec.layer}, channels 0 to {n - 1} ({OBJ_LABELS[spec.objective]}), "
                                              f"left to right, top to bottom")
    if not missing:
        st.download_button("Gallery (PNG)", _png(grid), f"gallery-{spec.layer}-{n}.png", "image/png")
    return {"view": "gallery", "layer": spec.layer, "objective": spec.objective, "n": str(n),
            "size": str(spec.size), "steps": str(spec.steps), "lr": str(spec.lr), "seed": str(spec.seed)}


try:
    params = {"weights": weights_view, "unit": unit_view, "gallery": gallery_view}[view]()
    qp.update(params)
except CnnvizError as e:
    st.error(str(e))
