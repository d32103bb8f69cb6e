"""Cached loaders. Models and decoded images are shared read-only across sessions
(`cache_resource`, bounded); small results are keyed by model id and image hash."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import streamlit as st
from PIL import Image, ImageOps

from cnnviz import models, predict
from cnnviz.images import load_image


@st.cache_resource(max_entries=3, show_spinner=False)
def model(model_id: str, _progress=None) -> models.Model:
    m = models.load(model_id, progress=_progress)
    m.layers  # probe once here, not on a page's first render
    return m


@st.cache_resource(max_entries=16, show_spinner=False)
def image(sha: str, _data: bytes, name: str) -> Image.Image:
    return load_image(_data, name)


@st.cache_data(max_entries=256, show_spinner=False)
def probabilities(model_id: str, sha: str, _model: models.Model, _image: Image.Image) -> np.ndarray:
    return predict.probabilities(_model, _image)


@st.cache_data(max_entries=32, show_spinner=False)
def thumbnail(path: str, size: int = 128) -> bytes:
    """A square, centre-cropped thumbnail, so the picker's grid lines up."""
    im = ImageOps.fit(load_image(path), (size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------- activations
# All spatial layers of one image in one forward pass (about 75 MB for the bundled
# model at 224x224), so walking layers and channels never runs the network again.

@st.cache_resource(max_entries=3, show_spinner="Recording every layer...")
def activations(model_id: str, sha: str, _model: models.Model, _image: Image.Image) -> dict[str, np.ndarray]:
    from cnnviz import activations as acts

    return acts.compute(_model, _image)


@st.cache_data(max_entries=16, show_spinner=False)
def depth_summary(model_id: str, sha: str, _acts: dict) -> list[dict]:
    from cnnviz import activations as acts

    return acts.depth_summary(_acts)


@st.cache_data(max_entries=64, show_spinner=False)
def mosaic(model_id: str, sha: str, layer: str, sort: str, scale: str, _acts: np.ndarray):
    from cnnviz import activations as acts

    stats = acts.ChannelStats.of(_acts)
    return acts.mosaic(_acts, stats.order(sort), scale)


# ---------------------------------------------------------------- saliency

@st.cache_data(max_entries=64, show_spinner=False)
def attribution(model_id: str, sha: str, method: str, target: int, layer: str | None, contrast: int | None,
                _model: models.Model, _image: Image.Image, _progress=None):
    from cnnviz import saliency

    return saliency.attribute(_model, _image, method, target, layer, contrast, progress=_progress)


@st.cache_data(max_entries=16, show_spinner=False)
def gradcam_sweep(model_id: str, sha: str, target: int, contrast: int | None, _model: models.Model,
                  _image: Image.Image) -> dict:
    from cnnviz import saliency

    return saliency.gradcam_sweep(_model, _image, target, contrast)
