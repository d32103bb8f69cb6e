"""The sidebar every page shares: model picker, image picker, current prediction.

Choices live in `st.session_state` (they survive page switches) and are mirrored to
`st.query_params` (`model`, `sample`) so a URL reproduces the view.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image

from cnnviz import models
from cnnviz.app import cache
from cnnviz.images import ImageError
from cnnviz.predict import PredictSpec, Top, top_k
from cnnviz.samples import sample_paths

IMAGE_TYPES = ["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"]
DEFAULT_SAMPLE = "cat"


@dataclass
class Selection:
    """What the sidebar chose, for one script run (`current()`); it holds the model and the
    decoded image, so it is never kept in `st.session_state`: a session idle between runs
    must not keep a model the cache has let go of."""
    model: models.Model
    image: Image.Image
    image_name: str
    image_sha: str
    probs: np.ndarray

    def top(self, k: int = 5) -> list[Top]:
        return top_k(self.model, self.probs, k)


_RUN = threading.local()  # the current script run's Selection (a run is one thread)


def current() -> Selection:
    """The Selection that `sidebar()` made earlier in this script run."""
    sel = getattr(_RUN, "selection", None)
    if sel is None:
        raise RuntimeError("sidebar() has not run yet in this script run")
    return sel


def sidebar() -> Selection:
    ss = st.session_state
    _RUN.selection = None
    _defaults_from_url()
    with st.sidebar:
        st.subheader("Model")
        model = _model_picker()
        st.subheader("Image")
        _image_picker()
        img = ss["image"]
        image = cache.image(img["sha"], img["data"], img["name"])
        probs = cache.run(PredictSpec(), model, image, img["sha"]).probs
        best = top_k(model, probs, 1)[0]
        st.subheader("Prediction")
        st.metric(f"{model.label} says", best.label, f"{best.prob:.1%} confident", delta_color="off")
    st.query_params["model"] = model.id if model.source != "checkpoint" else models.BUNDLED_ID
    if img.get("sample"):
        st.query_params["sample"] = img["sample"]
    elif "sample" in st.query_params:
        del st.query_params["sample"]
    _RUN.selection = Selection(model, image, img["name"], img["sha"], probs)
    return _RUN.selection


# ---------------------------------------------------------------- state

def _defaults_from_url() -> None:
    ss = st.session_state
    if "model_id" not in ss:
        wanted = st.query_params.get("model", models.BUNDLED_ID)
        ss["model_id"] = wanted if wanted in _catalog() else models.BUNDLED_ID
    if "image" not in ss:
        wanted = st.query_params.get("sample", DEFAULT_SAMPLE)
        use_sample(wanted if wanted in sample_paths() else DEFAULT_SAMPLE)


def use_sample(name: str) -> None:
    path = sample_paths()[name]
    data = path.read_bytes()
    st.session_state["image"] = {"name": path.name, "data": data, "sha": cache.sha(data), "sample": name}
    st.session_state.pop("image_error", None)


def use_upload(name: str, data: bytes) -> bool:
    """Make an uploaded file the current image; on bad input keep the old one and
    remember the message. Returns whether it was accepted."""
    sha = cache.sha(data)
    try:
        cache.image(sha, data, name)
    except ImageError as e:
        st.session_state["image_error"] = str(e)
        return False
    st.session_state["image"] = {"name": name, "data": data, "sha": sha, "sample": None}
    st.session_state.pop("image_error", None)
    return True


@st.cache_data(ttl=5, show_spinner=False)
def _catalog() -> dict[str, models.Entry]:
    return {e.id: e for e in models.catalog()}


# ---------------------------------------------------------------- model

def _model_label(entry: models.Entry | None, own: dict | None, model_id: str) -> str:
    if own is not None and model_id == own["id"]:
        return f"Your model: {own['label']}"
    if entry.source == "bundled":
        return f"{entry.label} · bundled, offline"
    if entry.available:
        return f"{entry.label} · cached"
    running = models.downloading(model_id)
    if running is not None:
        return f"{entry.label} · downloading, {running.fraction:.0%}"
    size = f" {entry.download_mb:.0f} MB" if entry.download_mb else ""
    return f"{entry.label} · download{size}"


def _own() -> tuple[dict | None, models.Model | None]:
    """The session's own checkpoint: what it remembers (key, id, label) and the model kept
    under that key in the process store. Once the store has let it go, say so and forget it."""
    ss = st.session_state
    own = ss.get("own_model")
    if own is None:
        return None, None
    model = cache.own_model(own["key"])
    if model is None:
        del ss["own_model"]
        if ss.get("model_id") == own["id"]:
            ss["model_id"] = models.BUNDLED_ID
        ss["own_evicted"] = (
            f"Your model {own['label']} was unloaded to make room: the server keeps "
            f"{cache.OWN_MODELS.max_entries} uploaded models at a time for everyone. Load it again "
            "under \"Use your own weights\" (showing the bundled model meanwhile)."
        )
    return (own, model) if model is not None else (None, None)


def _model_picker() -> models.Model:
    ss = st.session_state
    entries = _catalog()
    own, own_model = _own()  # the session keeps a key, never the Model
    options = list(entries) + ([own["id"]] if own else [])
    if ss["model_id"] not in options:
        ss["model_id"] = models.BUNDLED_ID
    st.selectbox(
        "Network", options, key="model_id",
        format_func=lambda mid: _model_label(entries.get(mid), own, mid),
        help="Torchvision models download once, then load from the local cache.",
    )
    if ss.get("own_evicted"):
        if ss["model_id"] == models.BUNDLED_ID:
            st.warning(ss["own_evicted"])
        else:
            del ss["own_evicted"]
    _own_model_form()
    model_id = ss["model_id"]
    if own is not None and model_id == own["id"]:
        return own_model
    failed = ss.setdefault("download_failed", {})
    if model_id in failed:
        st.error(failed[model_id])
        st.button("Try the download again", on_click=failed.pop, args=(model_id, None))
        st.caption("Showing the bundled model meanwhile.")
        return cache.model(models.BUNDLED_ID)
    try:
        with st.spinner("Loading the model..."):
            model = cache.model(model_id)
    except models.ModelError as e:
        failed[model_id] = str(e)
        st.error(str(e))
        st.caption("Showing the bundled model meanwhile.")
        model = cache.model(models.BUNDLED_ID)
    return model


def _own_model_form() -> None:
    ss = st.session_state
    with st.expander("Use your own weights"):
        st.caption(
            "A state dict (`torch.save(model.state_dict(), ...)` or safetensors) of a "
            "torchvision architecture, e.g. fine-tuned on your classes. Only tensors are read."
        )
        st.selectbox("Architecture", models.ZOO, index=models.ZOO.index("resnet18"), key="own_arch")
        st.file_uploader("Weights (.pt, .pth, .safetensors)", type=["pt", "pth", "bin", "safetensors"], key="own_weights")
        st.file_uploader("Class names (optional, one per line)", type=["txt"], key="own_labels")
        st.button("Load weights", on_click=_load_own_model, disabled=ss.get("own_weights") is None)
        if ss.get("own_error"):
            st.error(ss["own_error"])


def _load_own_model() -> None:
    """Button callback (runs before the script, so it may set the picker's value)."""
    ss = st.session_state
    f = ss.get("own_weights")
    if f is None:
        return
    try:
        labels = models.read_labels(ss["own_labels"].getvalue()) if ss.get("own_labels") else None
        model = models.load_checkpoint(ss["own_arch"], f.getvalue(), f.name, labels)
    except models.ModelError as e:
        ss["own_error"] = str(e)
        return
    # One copy per file in the process, kept in its store; the session remembers the key.
    key = cache.own_key(ss["own_arch"], f.getvalue(), ss["own_labels"].getvalue() if ss.get("own_labels") else None)
    model = cache.keep_own(key, model)
    ss["own_model"] = {"key": key, "id": model.id, "label": model.label}
    ss["model_id"] = model.id
    ss.pop("own_error", None)
    ss.pop("own_evicted", None)


# ---------------------------------------------------------------- image

def _image_picker() -> None:
    ss = st.session_state
    current = ss["image"].get("sample")
    cols = st.columns(3)
    for i, (name, path) in enumerate(sample_paths().items()):
        with cols[i % 3]:
            st.image(cache.thumbnail(str(path)), width="stretch")
            st.button(
                name, key=f"sample_{name}", on_click=use_sample, args=(name,),
                type="primary" if name == current else "tertiary", width="stretch",
            )
    upload = st.file_uploader("Or upload an image", type=IMAGE_TYPES, key="upload", max_upload_size=50)
    if upload is not None and upload.file_id != ss.get("upload_seen"):
        ss["upload_seen"] = upload.file_id
        use_upload(upload.name, upload.getvalue())
    if ss.get("image_error"):
        st.error(ss["image_error"])
    st.caption(f"Current image: **{ss['image']['name']}**")
