"""The sidebar every page shares: model picker, image picker, current prediction.

Choices live in `st.session_state` (they survive page switches) and are mirrored to
`st.query_params` (`model`, `sample`) so a URL reproduces the view.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

from cnnviz import bounds, files, images, models
from cnnviz.app import cache
from cnnviz.contract import CnnvizError
from cnnviz.images import ImageError
from cnnviz.pixels import png_bytes
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
        ss["model_id"] = wanted if models.servable(wanted) else models.BUNDLED_ID
        if ss["model_id"] != wanted:
            why = ("is larger than this server loads" if models.known(wanted) else "is not a model this app knows")
            ss["model_link_error"] = f"The link's model {str(wanted)[:80]!r} {why}; showing the bundled model."
    if "image" not in ss:
        wanted = st.query_params.get("sample", DEFAULT_SAMPLE)
        use_sample(wanted if wanted in sample_paths() else DEFAULT_SAMPLE)


def use_sample(name: str) -> None:
    path = sample_paths()[name]
    data = path.read_bytes()
    st.session_state["image"] = {"name": path.name, "data": data, "sha": cache.sha(data), "sample": name}
    st.session_state.pop("image_error", None)


def _pick_sample() -> None:
    """The sample pills' callback. Clicking the chosen one again deselects it: nothing changes."""
    name = st.session_state.get("sample_pick")
    if name:
        use_sample(name)


def use_upload(name: str, data: bytes, key: str = "image") -> bool:
    """Make an uploaded file the session's image under `key` (the current image, or a
    page's own second image); on bad input keep the old one and remember the message
    (`{key}_error`). Returns whether it was accepted. The session keeps what rebuilds the
    image: the upload, or, when intake cropped or scaled it (`note`), the smaller of the
    upload and a lossless copy of what it became."""
    try:
        images.check_size(len(data), name)  # before the bytes are even hashed
        sha = cache.sha(data)
        image = cache.image(sha, data, name)
    except ImageError as e:
        st.session_state[f"{key}_error"] = str(e)
        return False
    note = images.note(image)
    if note:
        small = png_bytes(image, fast=True)
        data = small if len(small) < len(data) else data
    st.session_state[key] = {"name": name, "data": data, "sha": sha, "sample": None, "note": note}
    st.session_state.pop(f"{key}_error", None)
    return True


@st.cache_data(ttl=5, show_spinner=False)
def _catalog() -> dict[str, models.Entry]:
    return {e.id: e for e in models.catalog()}


def comparable(exclude: str, *, cached_only: bool = True) -> dict[str, str]:
    """The models a page may set beside the selected one (`exclude`), labelled for its
    picker: those that load now (bundled, untrained twins, cached weights), or with
    `cached_only=False` every pretrained one too (the page then says how to fetch it)."""
    return {i: e.label + (" · untrained (random weights)" if e.source == "random"
                          else "" if e.available else " · weights not downloaded")
            for i, e in _catalog().items() if i != exclude and (e.available or not cached_only)}


# ---------------------------------------------------------------- model

def _model_label(entry: models.Entry | None, own: dict | None, model_id: str) -> str:
    if own is not None and model_id == own["id"]:
        return f"Your model: {own['label']}"
    if entry is None:  # an id from a link or the CLI's range, beyond the picker's list
        return model_id.removeprefix("torchvision:").replace("@random", " · untrained")
    if entry.source == "bundled":
        return f"{entry.label} · bundled, offline"
    if entry.source == "random":
        return f"{entry.label} · untrained (random weights), offline"
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
        if models.servable(ss["model_id"]):  # any id the CLI takes, from a link (size-bounded)
            options.append(ss["model_id"])
        else:
            ss["model_id"] = models.BUNDLED_ID
    st.selectbox(
        "Network", options, key="model_id",
        format_func=lambda mid: _model_label(entries.get(mid), own, mid),
        help="Torchvision models download once, then load from the local cache.",
    )
    if ss.get("model_link_error"):
        st.warning(ss.pop("model_link_error"))
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
        model = cache.model(model_id)  # a spinner while it loads
    except models.ModelError as e:
        failed[model_id] = str(e)
        st.error(str(e))
        st.caption("Showing the bundled model meanwhile.")
        model = cache.model(models.BUNDLED_ID)
    return model


def _own_model_form() -> None:
    ss = st.session_state
    weights_key, labels_key = _own_upload_keys()
    # A switch, not an expander: a folded expander still sends its form on every rerun.
    if st.toggle("Use your own weights", key="own_on", help="Load a fine-tuned state dict"):
        st.caption(
            "A state dict (`torch.save(model.state_dict(), ...)` or safetensors) of a "
            "torchvision architecture, e.g. fine-tuned on your classes. Only tensors are read. "
            f"Up to {files.size_text(bounds.WEIGHTS_BYTES)} of weights, {bounds.MAX_CLASSES:,} classes."
        )
        st.selectbox("Architecture", [*models.ZOO, models.LENET_ARCH], index=models.ZOO.index("resnet18"),
                     key="own_arch", help=f"{models.LENET_ARCH}: a LeNet-5 saved by the Train page")
        st.file_uploader("Weights (.pt, .pth, .safetensors)", type=["pt", "pth", "bin", "safetensors"],
                         key=weights_key, max_upload_size=bounds.WEIGHTS_BYTES // bounds.MiB)
        st.file_uploader("Class names (optional, one per line)", type=["txt"], key=labels_key,
                         max_upload_size=max(1, bounds.LABELS_BYTES // bounds.MiB))
        st.button("Load weights", on_click=_load_own_model, disabled=_file(weights_key) is None)
        if ss.get("own_error"):
            st.error(ss["own_error"])
            st.caption("Uploads are not kept once read: upload the file again to retry.")


def _load_own_model() -> None:
    """Button callback (runs before the script, so it may set the picker's value). The
    uploads are read once and released, loaded or refused: the session keeps the model,
    not the bytes (Streamlit would hold each upload for the session's life), and the
    uploaders come back empty. No exception leaves a callback: app.py's guard is not
    around it."""
    ss = st.session_state
    weights_key, labels_key = _own_upload_keys()
    f, lf = _file(weights_key), _file(labels_key)
    if f is None:
        return
    try:
        # One copy per file in the process, kept in its store; the session remembers the key.
        key = cache.own_key(ss["own_arch"], f.getvalue(), lf.getvalue() if lf is not None else None)
        model = cache.own_model(key)
        if model is None:  # not loaded by anyone yet (or let go): parse and check it
            labels = models.read_labels(lf.getvalue(), lf.name) if lf is not None else None
            model = cache.keep_own(key, models.load_checkpoint(ss["own_arch"], f.getvalue(), f.name, labels))
    except CnnvizError as e:
        ss["own_error"] = str(e)
        return
    except Exception as e:  # a bug, not the file's fault: the message, and the details in the log
        logging.getLogger("cnnviz").exception("loading %s failed", f.name)
        ss["own_error"] = (f"{f.name} could not be loaded ({type(e).__name__}); the details are in the "
                           "server log. The bundled model and the zoo still work.")
        return
    finally:
        _release(f, lf)
        for k in (weights_key, labels_key):  # the widgets' values hold the bytes too
            ss.pop(k, None)
        ss["own_uploads"] = ss.get("own_uploads", 0) + 1
    ss["own_model"] = {"key": key, "id": model.id, "label": model.label}
    ss["model_id"] = model.id
    ss.pop("own_error", None)
    ss.pop("own_evicted", None)


def _own_upload_keys() -> tuple[str, str]:
    """The weights and labels uploaders' keys: new ones after each load, so they show empty."""
    n = st.session_state.get("own_uploads", 0)
    return ("own_weights", "own_labels") if n == 0 else (f"own_weights_{n}", f"own_labels_{n}")


def _file(key: str) -> UploadedFile | None:
    """An uploader's file; None when there is none or it was released (a `DeletedFile`)."""
    f = st.session_state.get(key)
    return f if isinstance(f, UploadedFile) else None


def _release(*uploads: UploadedFile | None) -> None:
    """Drop read uploads from Streamlit's store, which otherwise keeps each one in memory
    for the session's life; the widget then reads back empty."""
    ctx = get_script_run_ctx()
    store = getattr(ctx, "uploaded_file_mgr", None)
    for f in uploads:
        if f is not None and hasattr(store, "remove_file"):  # the in-memory store (the default)
            store.remove_file(session_id=ctx.session_id, file_id=f.file_id)


# ---------------------------------------------------------------- image

def take(file, seen_key: str, name: str | None = None, key: str = "image") -> bool:
    """A new file from an uploader or the camera becomes the session's image under `key`
    (`use_upload`: the same checks for every uploader, a bad one says why and keeps the old
    image), once per file; whether a new one was accepted."""
    ss = st.session_state
    if file is None or file.file_id == ss.get(seen_key):
        return False
    ss[seen_key] = file.file_id
    try:
        return use_upload(name or file.name, file.getvalue(), key)
    finally:
        _release(file)  # the session keeps what use_upload kept, not Streamlit's copy


def _image_picker() -> None:
    ss = st.session_state
    current = ss["image"].get("sample")
    # One strip of thumbnails and one row of names: two elements, not a grid of 9 images and
    # 9 buttons. Every element is a message on every rerun of every page, and with a class
    # on one server those messages are what the server's event loop waits behind
    # (ARCHITECTURE: "A class on one server").
    paths = sample_paths()
    st.image(cache.thumbnails(tuple(map(str, paths.values()))), width="stretch")
    ss["sample_pick"] = current  # follows uploads and links; a click picks before the run
    st.pills("Samples", list(paths), key="sample_pick", label_visibility="collapsed",
             on_change=_pick_sample)
    take(st.file_uploader("Or upload an image", type=IMAGE_TYPES, key="upload",
                          max_upload_size=bounds.IMAGE_BYTES // bounds.MiB), "upload_seen")
    # The camera only when asked for: a camera widget on every page would ask every browser
    # for its camera. A photo goes through the same intake as an upload.
    if st.toggle("Take a photo", key="camera_on", help="An object held up in the lecture hall, a digit on paper"):
        take(st.camera_input("Camera", key="camera", label_visibility="collapsed"), "camera_seen", "camera photo.jpg")
    if ss.get("image_error"):
        st.error(ss["image_error"])
    if ss["image"].get("note"):
        st.info(ss["image"]["note"])
    st.caption(f"Current image: **{ss['image']['name']}**")
