import streamlit as st

from cnnviz import render, tokens
from cnnviz.app import cache
from cnnviz.app.pages import pages
from cnnviz.app.router import selection

sel = selection()
model = sel.model

kind, patch = tokens.family(model.net), tokens.patch_size(model.net)  # a transformer: "vit" / "swin"
st.title("cnnviz: look inside a convolutional network" if kind is None else "cnnviz: look inside a vision transformer")
st.markdown({
    None: "A CNN slides small learned filters over the image; early layers answer to edges and "
          "colour blobs, deeper ones to parts and whole objects.",
    "vit": f"A vision transformer (ViT) cuts the image into {patch}x{patch} patches, embeds each one as a token and "
           "lets every token attend to every other from the first block on: no sliding filters and no built-in "
           "locality, spatial relations learned from large datasets instead.",
    "swin": f"Swin, a hierarchical vision transformer, cuts the image into {patch}x{patch} patches and attends "
            "within local windows, shifted from block to block, merging patches between stages: the ConvNet's "
            "sliding-window idea brought back.",
}[kind] + " Pick a network and an image in the sidebar, then walk through the pages below to see what it "
          "computes and where it fails.")

left, right = st.columns([2, 3])
with left:
    st.image(cache.display_jpeg(sel.image_sha, sel.image), caption=f"{sel.image_name} ({sel.image.width}x{sel.image.height})",
             width="stretch")
with right:
    st.subheader("Top-5 classes")
    # One static block of bars, not a Plotly figure (its script doubled each browser's work
    # to load Home) nor five st.progress bars (five animated elements per rerun): Home is
    # the page a whole class opens at once (ARCHITECTURE: "A class on one server").
    st.html(render.topk_html(sel.top(5)))
    st.caption(
        f"The image is resized to {model.resize_size} pixels, centre-cropped to "
        f"{model.input_size[0]}x{model.input_size[1]} and normalized as the model was trained; "
        "the bars are softmax probabilities over its "
        f"{len(model.categories)} classes."
    )

st.subheader(f"About {model.label}")
# One line, not a row of four metrics (five elements, each drawn again by every browser on
# every rerun).
st.markdown(
    f"**{model.params / 1e6:.1f} M** parameters · **{model.input_size[0]} x {model.input_size[1]}** input · "
    f"**{len(model.layers)}** layers · **{len(model.categories)}** classes",
    help="Layers: " + (
        "convolutions, normalizations, activations, pooling and linear layers, one per call, "
        "and the blocks made of them (residual, Inception, dense blocks, stages)." if kind is None else
        "the patch embedding (the one convolution), normalizations, activations and linear layers, one per call, "
        "and the transformer blocks made of them."))

st.subheader("Explore")
links = {
    "activations": "What each layer computes, channel by channel.",
    "filters": "The learned filters, and images that excite a unit most." if kind is None else
               "The patch embedding's filters, and images that excite a unit most.",
    "receptive_fields": "How much of the image one unit can see.",
    "saliency": "Which pixels drove the decision (Grad-CAM and friends).",
    "adversarial": "Invisible noise that changes the answer.",
    "limits": "Rotation, scale, mirror, occlusion: where CNNs break." if kind is None else
              "Rotation, scale, mirror, occlusion: where CNNs break, and whether a transformer does too.",
}
for page in pages():  # one link each, the page's own title and icon: one element, not a row of columns
    if page.url_path in links:
        st.page_link(page, label=f"**{page.title}**: {links[page.url_path]}")
