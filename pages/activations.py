import io

import numpy as np
import streamlit as st
from PIL import ImageOps

from cnnviz import activations as A
from cnnviz import bounds, render, tokens
from cnnviz.app import cache
from cnnviz.app.clicks import new_click
from cnnviz.app.router import selection
from cnnviz.app.sidebar import IMAGE_TYPES, take
from cnnviz.pixels import png_bytes
from cnnviz.app.url import restore
from cnnviz.samples import sample_paths

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

kind, patch = tokens.family(model.net), tokens.patch_size(model.net)  # a transformer: "vit" / "swin"
st.title("Activations")
st.markdown({
    None: "Each filter of a convolution layer produces one activation map, bright where the input "
          "matches the filter. Walk from the first layer to the last: maps shrink and multiply, and "
          "what they answer to moves from edges and colours to parts and whole objects.",
    "vit": f"A vision transformer cuts the image into {patch}x{patch} patches and embeds each one as a token, a "
           "vector of channels; every block then lets each token attend to every other, across the whole image "
           "from the first block on. Here channel k of all the patch tokens, laid out on the patch grid, makes one "
           "map; the class token has no place on the grid and is shown apart, under the mosaic. Unlike a CNN's, "
           "the maps keep their size from the first block to the last.",
    "swin": f"Swin cuts the image into {patch}x{patch} patches, one token each, and lets tokens attend within "
            "local windows, shifted from one block to the next; between stages it merges neighbouring patches, so, "
            "as in a CNN, the maps shrink while the channels multiply. Here channel k of all the tokens, laid out "
            "on the patch grid, makes one map.",
}[kind])

# The layer list comes from the model (probed once at load). A recording keeps only the
# layer on screen (one short job per layer, cached by its spec; the pass stops there);
# the depth summary is its own job, reduced inside the hooks, when its tab is open.
names = A.spatial_layers(model)
info = {l.name: l for l in model.layers}
shapes = {n: info[n].shape for n in names}  # [C, H, W] per layer


# ---------------------------------------------------------------- state (URL first)

restore("act_layer", "layer", lambda v: v in shapes)
restore("act_sort", "sort", lambda v: v in A.SORTS)
restore("act_scale", "scale", lambda v: v in A.SCALES)
restore("act_channel", "channel", lambda v: v >= 0, int)
if ss.get("act_layer") not in shapes:  # first visit, or a model without that layer
    ss["act_layer"] = names[0]
ss["act_depth"] = names.index(ss["act_layer"]) + 1
C = shapes[ss["act_layer"]][0]
if not 0 <= ss.get("act_channel", 0) < C:
    ss["act_channel"] = 0
ss.setdefault("act_channel", 0)


def _set_layer(name: str) -> None:
    ss["act_layer"], ss["act_depth"] = name, names.index(name) + 1


def _step(delta: int) -> None:
    _set_layer(names[min(max(names.index(ss["act_layer"]) + delta, 0), len(names) - 1)])


def _on_depth() -> None:
    _set_layer(names[ss["act_depth"] - 1])


def _on_layer() -> None:
    _set_layer(ss["act_layer"])


def _label(name: str) -> str:
    c, h, w = shapes[name]
    kind = f"{info[name].type} (block)" if info[name].block else info[name].type  # a block's output
    return f"{names.index(name) + 1}. {name} · {kind} · {c}x{h}x{w}"


if (name := new_click("act_depth_chart")) in shapes:
    _set_layer(name)
    C = shapes[name][0]
    ss["act_channel"] = min(ss["act_channel"], C - 1)
for chart in ("act_mosaic", "act_cls"):  # a mosaic tile, or a bar of the class token
    if (ch := new_click(chart)) is not None and 0 <= int(ch) < C:
        ss["act_channel"] = int(ch)

# ---------------------------------------------------------------- layer picker

blocks = A.blocks(names)  # stage/block -> its first layer, in execution order
ss["act_block"] = A.block_of(ss["act_layer"])

group, left, mid, right = st.columns([2, 5, 1, 1], vertical_alignment="bottom")
group.selectbox("Block", list(blocks), key="act_block", on_change=lambda: _set_layer(blocks[ss["act_block"]]))
left.selectbox("Layer (execution order)", names, key="act_layer", format_func=_label, on_change=_on_layer)
mid.button("Shallower", on_click=_step, args=(-1,), width="stretch", disabled=ss["act_layer"] == names[0])
right.button("Deeper", on_click=_step, args=(1,), width="stretch", disabled=ss["act_layer"] == names[-1])
st.slider("Depth: focus the slider and use the arrow keys to walk through the network", 1, len(names),
          key="act_depth", on_change=_on_depth)

layer = ss["act_layer"]
rec = cache.run_shared(A.ActivationsSpec((layer,)), model, sel.image, sel.image_sha, label="Recording the layer:")
layer_acts = rec.maps[layer]
stats = rec.stats(layer)
c1, c2, c3 = st.columns(3)
c1.radio("Sort channels by", A.SORTS, key="act_sort", horizontal=True,
         format_func={"mean": "mean", "max": "max", "sparsity": "sparsity (most zeros first)"}.get)
c2.radio("Colour scale", A.SCALES, key="act_scale", horizontal=True,
         format_func={"global": "same for all channels", "channel": "per channel"}.get,
         help="Same scale: tiles are comparable. Per channel: weak maps show their shape too.")
c3.number_input(f"Channel (0 to {C - 1})", 0, C - 1, key="act_channel")
channel = int(ss["act_channel"])
qp.update({"layer": layer, "channel": str(channel), "sort": ss["act_sort"], "scale": ss["act_scale"]})

# Lazy and bound to the URL (`act_view`): only the open tab builds its figures, and the
# compare tab records the second image only when it is open.
tab_channels, tab_depth, tab_compare = st.tabs(["Channels", "Depth summary", "Compare two images"],
                                              key="act_view", bind="query-params")

# ---------------------------------------------------------------- mosaic + detail

if tab_channels.open:
    with tab_channels:
        rgb, grid = rec.mosaic(layer, ss["act_sort"], ss["act_scale"])
        c, h, w = layer_acts.shape
        st.caption(
            f"**{layer}** ({info[layer].type}): {c} maps of {h}x{w}, sorted by {ss['act_sort']}; "
            f"white = strong. Click a tile to enlarge it."
            + (f" Tiles are shown at {grid.tile_h}x{grid.tile_w} (block-averaged)." if grid.tile_h < h else "")
        )
        mosaic_col, top_col = st.columns([3, 1])
        with mosaic_col:
            st.plotly_chart(render.mosaic_figure(rgb, grid, stats, channel), key="act_mosaic", on_select="rerun",
                            selection_mode="points", config={"displaylogo": False, "toImageButtonOptions": {"filename": f"mosaic-{layer}"}})
        with top_col:
            st.markdown("**Strongest channels** (by mean)")
            top = stats.order("mean")[:10]
            st.dataframe({"channel": top, "mean": stats.mean[top].round(4), "max": stats.max[top].round(4)},
                         hide_index=True, width="stretch")
            st.download_button("Mosaic (PNG)", png_bytes(rgb), f"mosaic-{layer}.png", "image/png", width="stretch")
            npy = io.BytesIO()
            np.save(npy, layer_acts)
            st.download_button("Activations (.npy)", npy.getvalue(), f"activations-{layer}.npy",
                               "application/octet-stream", width="stretch", help=f"float32 array {list(layer_acts.shape)}")

        if (cls := rec.class_token(layer)) is not None:  # a ViT's tokens: the class token, off the grid
            with st.expander(f"The class token: {c} values, apart from the {h}x{w} grid", expanded=True):
                st.caption(
                    f"Besides its {h * w} patch tokens a ViT carries one class token: a learned vector with no place "
                    "in the image, which gathers from every patch through attention; after the last block (and the "
                    "final norm) it is all the classification head reads. The bars are its value in each channel "
                    "(red: the channel selected above; click a bar to select one). The map is the cosine similarity "
                    "of the class token with each patch token: white where a patch's vector points most nearly the "
                    "same way.")
                st.plotly_chart(render.class_token_figure(cls, channel), key="act_cls", on_select="rerun",
                                selection_mode="points",
                                config={"displaylogo": False, "toImageButtonOptions": {"filename": f"class-token-{layer}"}})
                sim = rec.cls_similarity(layer)
                e1, e2 = st.columns([3, 2])
                e1.plotly_chart(render.map_heatmap(sim, "cosine similarity to each patch"), key="act_cls_sim")
                e2.image(render.overlay(model.input_image(sel.image), sim, 0.6), width="stretch",
                         caption=f"The same {h}x{w} map over the image (bright = most similar; "
                                 f"{sim.min():.2f} to {sim.max():.2f})")

        st.subheader(f"Channel {channel}")
        m = layer_acts[channel]
        if stats.max[channel] == stats.min[channel]:
            st.info(f"Channel {channel} is constant ({stats.max[channel]:.3g}) on this image: nothing here excites it.")
        s1, s2, s3, s4 = st.columns(4)
        s1.metric("mean", f"{stats.mean[channel]:.4g}")
        s2.metric("max", f"{stats.max[channel]:.4g}")
        s3.metric("min", f"{stats.min[channel]:.4g}")
        s4.metric("zeros", f"{stats.zeros[channel]:.1%}")
        d1, d2, d3 = st.columns(3)
        with d1:
            st.plotly_chart(render.map_heatmap(m, f"{h}x{w} map"), key="act_map")
        with d2:
            opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="act_opacity")
            st.image(render.overlay(model.input_image(sel.image), m, opacity),
                     caption="Upsampled to the network's input and laid over it", width="stretch")
        with d3:
            st.plotly_chart(render.histogram(m, f"channel {channel} values"), key="act_hist")

# ---------------------------------------------------------------- depth summary

if tab_depth.open:
    with tab_depth:
        st.caption({
            None: "One point per layer. Watch the maps shrink (stride, pooling) while the channels "
                  "multiply, and how many values the ReLUs set to zero. Click a point to open that layer.",
            "vit": "One point per layer. Unlike a CNN's, a ViT's maps keep their size: every block reads and writes "
                   "the same grid of tokens with the same channels (the MLP widens them only inside a block). GELU, "
                   "not ReLU: few values are exactly zero. Click a point to open that layer.",
            "swin": "One point per layer. The maps shrink where patches are merged, between stages, while the "
                    "channels multiply, as in a CNN. GELU, not ReLU: few values are exactly zero. Click a point to "
                    "open that layer.",
        }[kind])
        depth = cache.run(A.DepthSpec(), model, sel.image, sel.image_sha, label="Summarizing every layer:")
        st.plotly_chart(render.depth_figure(depth.rows, layer), key="act_depth_chart", on_select="rerun",
                        selection_mode="points")

# ---------------------------------------------------------------- compare

if tab_compare.open:
    with tab_compare:
        # The sidebar's intake, under a key of this page's own: checked the same way, kept
        # once by the session (Streamlit's copy released), a bad file said and the old kept.
        if take(st.file_uploader("A second image of your own (optional)", type=IMAGE_TYPES, key="act_upload",
                                 max_upload_size=bounds.IMAGE_BYTES // bounds.MiB), "act_upload_seen", key="act_second"):
            ss["act_other"] = "upload"  # a new upload is meant to be used
        if ss.get("act_second_error"):
            st.error(ss["act_second_error"])
        kept = ss.get("act_second")
        choices = (["upload"] if kept else []) + ["mirror"] + [
            n for n in sample_paths() if n != (ss.get("image") or {}).get("sample")]
        if ss.get("act_other") not in choices:
            ss["act_other"] = choices[0]
        other = st.selectbox("Second image", choices, key="act_other",
                             format_func=lambda n: {"mirror": "the same image, mirrored (handedness)",
                                                    "upload": f"your upload: {kept['name'] if kept else ''}"}.get(n, f"sample: {n}"))
        if other == "upload":
            image_b, sha_b, label_b = cache.image(kept["sha"], kept["data"], kept["name"]), kept["sha"], kept["name"]
        elif other == "mirror":
            image_b, sha_b, label_b = ImageOps.mirror(sel.image), sel.image_sha + ":mirror", "mirrored"
        else:
            data = sample_paths()[other].read_bytes()
            sha_b = cache.sha(data)
            image_b, label_b = cache.image(sha_b, data, other), other
        acts_b = cache.run_shared(A.ActivationsSpec((layer,)), model, image_b, sha_b,
                                  label="Recording the layer on the second image:").maps[layer]
        a_map, b_map = layer_acts[channel], acts_b[channel]
        lo, hi = float(min(a_map.min(), b_map.min())), float(max(a_map.max(), b_map.max()))
        x1, x2 = st.columns(2)
        x1.plotly_chart(render.map_heatmap(a_map, f"channel {channel}: this image", lo, hi), key="act_cmp_a")
        x2.plotly_chart(render.map_heatmap(b_map, f"channel {channel}: {label_b}", lo, hi), key="act_cmp_b")
        ranked = A.compare(layer_acts, acts_b)
        st.markdown(f"**Channels of {layer} that change most** (mean activation, {label_b} minus this image)")
        st.plotly_chart(render.diff_bars(ranked, 20, ("this image", label_b)), key="act_cmp_bars")
