"""The one cache. Every analysis goes through `run` (small results, copied on read)
or `run_shared` (large read-only results), keyed on the model's fingerprint (its
weights, not just its id), the image's hash and the spec: no function here is keyed
by hand. Models and decoded images are shared read-only across sessions
(`cache_resource`, bounded)."""
from __future__ import annotations

import contextlib
import hashlib
import io

import streamlit as st
from PIL import Image, ImageOps

from cnnviz import jobs, models
from cnnviz.contract import Progress, Result, Spec
from cnnviz.images import load_image


@contextlib.contextmanager
def progress_bar(label: str = ""):
    """A progress bar for a cached function, made *inside* it: on a cache hit Streamlit
    replays the function's elements, and cannot replay one drawn into a block made
    outside (CacheReplayClosureError). Yields a `Progress` (the job's own text after
    `label`); the bar is removed when done."""
    slot = st.empty()

    def show(fraction: float, text: str, _preview) -> None:
        slot.progress(fraction, text=" ".join(t for t in (label, text or f"{fraction:.0%}") if t))

    try:
        yield Progress(show)
    finally:
        slot.empty()


def run(spec: Spec, model: models.Model, image: Image.Image | None = None, image_sha: str = "", *,
        label: str = "") -> Result:
    """`spec`'s analysis on `model` and `image` through the job runner, cached (a copy
    per read); `label` heads the progress bar."""
    return _run(spec.key(), model.fingerprint, image_sha, label, spec, model, image)


@st.cache_data(max_entries=256, show_spinner=False)
def _run(spec_key: str, fingerprint: str, image_sha: str, label: str, _spec: Spec, _model, _image) -> Result:
    with progress_bar(label) as progress:
        return jobs.run(_model, _image, _spec, progress=progress)


def run_shared(spec: Spec, model: models.Model, image: Image.Image | None = None, image_sha: str = "", *,
               label: str = "") -> Result:
    """As `run`, for large results every session reads without copying (treat as read-only)."""
    return _run_shared(spec.key(), model.fingerprint, image_sha, label, spec, model, image)


@st.cache_resource(max_entries=8, show_spinner=False)
def _run_shared(spec_key: str, fingerprint: str, image_sha: str, label: str, _spec: Spec, _model, _image) -> Result:
    with progress_bar(label) as progress:
        return jobs.run(_model, _image, _spec, progress=progress)


@st.cache_resource(max_entries=3, show_spinner=False)
def model(model_id: str) -> models.Model:
    with progress_bar("Downloading weights:") as progress:
        m = models.load(model_id, progress=progress)
    m.layers  # probe once here, not on a page's first render
    return m


@st.cache_resource(max_entries=16, show_spinner=False)
def image(sha: str, _data: bytes, name: str) -> Image.Image:
    return load_image(_data, name)


@st.cache_data(max_entries=32, show_spinner=False)
def thumbnail(path: str, size: int = 128) -> bytes:
    """A square, centre-cropped thumbnail, so the picker's grid lines up."""
    im = ImageOps.fit(load_image(path), (size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
