import hashlib

import numpy as np
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from cnnviz import activations as A
from cnnviz import jobs, lenet, models, render
from cnnviz import render_training as RT
from cnnviz.predict import PredictSpec, top_k
from cnnviz.app import cache
from cnnviz.app.background import Background
from cnnviz.app.clicks import new_click
from cnnviz.app.router import selection
from cnnviz.app.url import restore, restore_number
from cnnviz.contract import CnnvizError
from cnnviz.images import load_image

selection()  # the sidebar; this page trains its own network
ss, qp = st.session_state, st.query_params

LRS = [0.001, 0.003, 0.01, 0.03]
BATCHES = [16, 32, 64, 128]
restore("tr_variant", "variant", lambda v: v in lenet.VARIANTS, why=f"choose {' or '.join(lenet.VARIANTS)}")
restore_number("tr_epochs", "epochs", 1, 50)
restore("tr_lr", "lr", lambda v: v in LRS, float, why=f"choose one of {', '.join(map(str, LRS))}")
restore("tr_batch", "batch", lambda v: v in BATCHES, int, why=f"choose one of {', '.join(map(str, BATCHES))}")
restore_number("tr_seed", "seed", 0, 9999)
restore("tr_data", "data", lambda v: v in lenet.DATA, why=f"choose {' or '.join(lenet.DATA)}")
for key, default in (("tr_data", "digits"), ("tr_variant", "classic"), ("tr_epochs", 15), ("tr_lr", 0.003), ("tr_batch", 32), ("tr_seed", 0)):
    ss.setdefault(key, default)

st.title("Train a CNN: LeNet-5")
st.markdown(
    "LeCun's LeNet-5 (1998, about 60,000 weights) read handwritten digits on cheques and envelopes: two "
    "convolution + subsampling stages and three fully connected layers, tanh activations and average pooling, "
    "trained with backpropagation. Train one here on scikit-learn's 1,797 handwritten digits (no network needed) "
    "and watch its six first-layer filters turn from noise into stroke detectors. The trained net then works on "
    "every page, like any other model.")

x, y = lenet.digits()
left, right = st.columns([1, 1])
with left:
    st.markdown("**The data**: 8 x 8 scans, upsampled into the centre of 32 x 32 (a row per digit)")
    st.image(RT.digits_grid(x.numpy(), y.numpy()), width=330)
with right:
    st.markdown("**The network**")
    net = models.untrained_lenet(ss["tr_variant"], int(ss["tr_seed"]))
    st.dataframe([{"layer": l.name, "type": l.type, "output": " x ".join(map(str, l.shape)), "weights": l.params}
                  for l in net.layers], hide_index=True, width="stretch", height=300)

c = st.columns([2, 2, 1, 1, 1, 1], vertical_alignment="bottom")
c[5].selectbox("Data", list(lenet.DATA), key="tr_data", format_func=lambda d: d if d == "digits" else "MNIST",
               help=f"digits: {lenet.DATA['digits']}; MNIST: the first {lenet.bounds.MAX_TRAIN_IMAGES:,} of its 60,000 "
                    "training images, downloaded once (about 10 MB); offline it says so")
c[0].segmented_control("Variant", list(lenet.VARIANTS), key="tr_variant", format_func=lambda v: v,
                       help="classic: tanh and average pooling, as published; modern: ReLU and max pooling")
c[1].number_input("Epochs", 1, 50, key="tr_epochs")
c[2].selectbox("Learning rate (Adam)", LRS, key="tr_lr")
c[3].selectbox("Batch size", BATCHES, key="tr_batch")
c[4].number_input("Seed", 0, 9999, key="tr_seed", help="the split, the batches and the initial weights")
if ss.get("tr_variant") is None:  # a segmented control can be cleared
    ss["tr_variant"] = "classic"
spec = lenet.TrainSpec(ss["tr_data"], int(ss["tr_epochs"]), float(ss["tr_lr"]), int(ss["tr_batch"]), int(ss["tr_seed"]))
variant = ss["tr_variant"]
qp.update({"data": spec.data, "variant": variant, "epochs": str(spec.epochs), "lr": f"{spec.lr:g}", "batch": str(spec.batch),
           "seed": str(spec.seed)})

run: Background | None = ss.get("tr_run")


def _start() -> None:
    old = ss.get("tr_run")
    if old is not None and old.running:
        old.stop()
    ss["tr_run"] = Background(models.untrained_lenet(variant, spec.seed), None, spec)
    ss["tr_variant_run"] = variant
    ss.pop("tr_cell", None)


b1, b2, _ = st.columns([1, 1, 4])
b1.button("Start training", key="tr_start", type="primary", icon=":material/play_arrow:", on_click=_start,
          disabled=run is not None and run.running, width="stretch")
b2.button("Stop", key="tr_stop", icon=":material/stop:", disabled=run is None or not run.running,
          on_click=lambda: run.stop(), width="stretch")


def _live() -> None:
    r: Background | None = ss.get("tr_run")
    if r is None:
        st.caption(f"Press Start: {spec.epochs} epochs of {len(x) - 359:,} training digits; the curve grows here "
                   "while the page stays usable.")
        return
    fraction, text, preview = r.latest or (0.0, "starting", None)
    done = r.result is not None
    history = r.result.epochs if done else (preview or {}).get("epochs", [])
    weights = r.result.filters[-1] if done else (preview or {}).get("filters")
    if r.running:
        st.progress(fraction, text=f"Training: {text}")
    elif r.error:
        st.error(r.error)
    cols = st.columns([3, 1])
    cols[0].plotly_chart(RT.curves_figure(history, r.spec.epochs), key="tr_curves", config={"displaylogo": False})
    if weights is not None:
        cols[1].markdown("**First-layer filters**")
        cols[1].image(RT.filters_strip(np.asarray(weights)), width="stretch",
                      caption="6 filters of 5 x 5, redrawn each epoch (grey: 0)")
    if not r.running and ss.get("tr_drawn") is not r:  # it just ended: redraw the page with its result
        ss["tr_drawn"] = r
        st.rerun(scope="app")


st.fragment(_live, run_every=1.0 if run is not None and run.running else None)()

if run is not None and run.result is not None:
    res = run.result
    st.subheader(f"Test accuracy: {res.test_accuracy:.1%}")
    st.caption(f"On {sum(map(sum, res.confusion))} held-out digits the network never trained on; "
               f"{res.seconds:.1f} s of training.")
    if (cell := new_click("tr_confusion")) is not None and isinstance(cell, list) and len(cell) == 2:
        ss["tr_cell"] = (int(cell[0]), int(cell[1]))
    left, right = st.columns([1, 1])
    with left:
        st.markdown("**Confusion matrix** (click a cell for its digits)")
        st.plotly_chart(RT.confusion_figure(res.confusion, ss.get("tr_cell")), key="tr_confusion", on_select="rerun",
                        selection_mode="points", config={"displaylogo": False})
    with right:
        t, p = ss.get("tr_cell") or next(((t, p) for t in range(10) for p in range(10)
                                          if t != p and res.confusion[t][p]), (0, 0))
        hit = res.test_index[(y.numpy()[res.test_index] == t) & (res.test_predicted == p)]
        st.markdown(f"**True {t}, read as {p}**: {len(hit)} digit{'s' * (len(hit) != 1)}")
        if len(hit):
            st.image([(x[i, 0].numpy() * 255).astype(np.uint8) for i in hit[:24]], width=64)
    data = res.state_bytes

    def _trained() -> tuple[str, models.Model]:
        """The trained net in the process store (one copy per weights, as an uploaded checkpoint)."""
        key = "lenet-" + hashlib.sha256(data).hexdigest()[:16]
        return key, cache.own_model(key) or cache.keep_own(key, models.lenet_checkpoint(data, "lenet5.pt"))

    def _use() -> None:
        key, model = _trained()
        ss["own_model"] = {"key": key, "id": model.id, "label": f"LeNet-5 {res.variant}, trained here"}
        ss["model_id"] = model.id

    u1, u2, _ = st.columns([2, 2, 3])
    u1.button("Use it on every page", key="tr_use", type="primary", on_click=_use, width="stretch",
              help="It becomes this session's model in the sidebar (private, like your own weights).")
    u2.download_button("Download the weights (.pt)", data, "lenet5.pt", "application/octet-stream", width="stretch",
                       help="A state dict: `python -m cnnviz predict IMAGE --model lenet:lenet5.pt`")

    st.subheader("Draw a digit")
    pad, view = st.columns([1, 3])
    with pad:
        drawn = st_canvas(stroke_width=18, stroke_color="#ffffff", background_color="#000000", height=224, width=224,
                          drawing_mode="freedraw", return_image_data=True, key="tr_canvas")
        st.caption("Draw with the mouse (or a finger); the network reads it as you draw. The bin icon clears it.")
    # The drawing comes back from the browser as PNG bytes: a crafted client could send any
    # image, so it goes through the upload intake (size and pixel checks before decoding).
    png = getattr(drawn, "image_bytes", None) if drawn is not None else None
    try:
        digit = lenet.drawn_digit(np.asarray(load_image(png, "drawing.png"))) if png else None
    except CnnvizError as e:
        digit = None
        st.error(str(e))
    with view:
        if digit is None:
            st.info("Nothing drawn yet: the network's answer and every layer's maps appear here.")
        else:
            _, net = _trained()
            layers = ("act1", "pool1", "act2", "pool2")
            rec = jobs.run(net, digit, A.ActivationsSpec(layers))
            cols = st.columns([1, 1, 1, 1, 1, 2])
            cols[0].image(net.input_image(digit), width="stretch", caption="input 32 x 32")
            for col, layer in zip(cols[1:], layers):
                rgb, _ = A.mosaic(rec.maps[layer], None, "channel")  # channels in their order
                c, h, w = rec.maps[layer].shape
                col.image(rgb, width="stretch", caption=f"{layer}: {c} x {h} x {w}")
            probs = jobs.run(net, digit, PredictSpec(10)).probs
            cols[5].container(key="tr_drawn_bars").html(render.topk_html(top_k(net, probs, 10), "The network's answer"))
