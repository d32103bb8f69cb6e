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
                _model: models.Model, _image: Image.Image, label: str = ""):
    from cnnviz import saliency

    with progress_bar(f"{label or method}: {{:.0%}} of the passes") as update:
        return saliency.attribute(_model, _image, method, target, layer, contrast, progress=update)


@st.cache_data(max_entries=16, show_spinner=False)
def gradcam_sweep(model_id: str, sha: str, target: int, contrast: int | None, _model: models.Model,
                  _image: Image.Image) -> dict:
    from cnnviz import saliency

    return saliency.gradcam_sweep(_model, _image, target, contrast)


# ---------------------------------------------------------------- receptive fields

@st.cache_data(max_entries=8, show_spinner="Tracing the network...")
def rf_architecture(model_id: str, _model: models.Model) -> list:
    from cnnviz import receptive

    return receptive.architecture(_model)


@st.cache_data(max_entries=64, show_spinner="One forward and one backward pass...")
def rf_effective(model_id: str, sha: str, layer: str, i: int, j: int, channel: int | None,
                 _model: models.Model, _image: Image.Image, _unit):
    from cnnviz import receptive

    return receptive.effective(_model, _model.preprocess(_image), _unit, channel)


@st.cache_data(max_entries=16, show_spinner=False)
def rf_average(model_id: str, layer: str, i: int, j: int, channel: int | None, source: str, n: int,
               _model: models.Model, _unit):
    from cnnviz import receptive

    inputs = receptive.sample_inputs(_model) if source == "samples" else receptive.noise_inputs(_model, n)
    with progress_bar("Averaging: {:.0%} of the inputs") as update:
        return receptive.average_effective(_model, _unit, inputs, channel, progress=update)


# ---------------------------------------------------------------- filters and feature visualization
# Synthetic images are cached by cnnviz.featurevis itself (memory and disk, shared with
# the CLI); here: the sample images' recordings of one layer, and the crops per channel.

@st.cache_resource(max_entries=8, show_spinner="Recording the sample images...")
def natural(model_id: str, layer: str | None, image_keys: tuple[str, ...], _model: models.Model,
            _images: dict) -> "object":
    from cnnviz import featurevis

    return featurevis.natural(_model, layer, _images)


@st.cache_data(max_entries=128, show_spinner=False)
def evidence(model_id: str, layer: str, channel: int, objective: str, image_keys: tuple[str, ...],
             _model: models.Model, _nat) -> list:
    from cnnviz import featurevis

    return featurevis.evidence(_model, featurevis.Spec(layer, channel, objective), _nat)


@st.cache_resource(max_entries=1, show_spinner=False)
def sample_images() -> dict:
    from cnnviz import featurevis

    return featurevis.sample_images()


# ---------------------------------------------------------------- CNN limits
# Sweeps keyed by model, image, transform, values and seed: moving the highlighted
# point, toggling lecture mode or switching demos back never runs the network again.
# The progress bar is made inside the cached function (a cache hit replays only what the
# function itself drew: here a bar that is emptied at the end).

@st.cache_data(max_entries=64, show_spinner=False)
def limits_sweep(model_id: str, sha: str, transform: str, values: tuple, seed: int, _model: models.Model,
                 _image: Image.Image, _probs: np.ndarray):
    from cnnviz import limits

    with progress_bar(f"{_model.label}: {{:.0%}} of the images classified") as update:
        return limits.sweep(_model, _image, transform, values, seed, probs=_probs, progress=update)


@st.cache_data(max_entries=64, show_spinner=False)
def limits_min_flip(model_id: str, sha: str, transform: str, values: tuple, seed: int, _model: models.Model,
                    _image: Image.Image, _probs: np.ndarray, _known=None):
    from cnnviz import limits

    with st.spinner(f"{_model.label}: searching for the smallest change that flips the label..."):
        return limits.min_flip(_model, _image, transform, seed, probs=_probs, known=_known)


# ---------------------------------------------------------------- adversarial
# Keyed by model, image and every attack parameter. The sweep's progress bar is drawn
# inside the cached function (a cache hit replays only the emptied bar).

@st.cache_data(max_entries=32, show_spinner=False)
def adversarial(model_id: str, sha: str, method: str, eps: float, steps: int, step_size: float | None,
                target: int | None, random_start: bool, seed: int, _model: models.Model, _image: Image.Image):
    from cnnviz import adversarial as A

    return A.attack(_model, _image, method, eps, steps, step_size, target, random_start, seed)


@st.cache_data(max_entries=32, show_spinner=False)
def adversarial_noise(model_id: str, sha: str, eps: float, seed: int, _model: models.Model, _image: Image.Image):
    from cnnviz import adversarial as A

    return A.noise(_model, _image, eps, seed)


@st.cache_data(max_entries=32, show_spinner=False)
def adversarial_png(model_id: str, key: tuple, _model: models.Model, _result):
    from cnnviz import adversarial as A

    return A.png_check(_model, _result)


@st.cache_data(max_entries=64, show_spinner=False)
def adversarial_gradcam(model_id: str, rgb_sha: str, target: int, _model: models.Model, _rgb: np.ndarray):
    from cnnviz import adversarial as A
    from cnnviz import saliency

    return saliency.attribute(_model, A.from_uint8(_rgb), "gradcam", target).map


@st.cache_data(max_entries=8, show_spinner=False)
def adversarial_sweep(model_id: str, sha: str, method: str, budgets: tuple, steps: int, step_size: float | None,
                      target: int | None, random_start: bool, seed: int, _model: models.Model, _image: Image.Image):
    from cnnviz import adversarial as A

    bar = st.progress(0.0, text=f"Attacking at {len(budgets)} budgets...")
    out = A.budget_sweep(_model, _image, method, budgets, steps, step_size, target, random_start, seed,
                         progress=lambda f, text: bar.progress(f, text=f"Budget sweep: {text}"))
    bar.empty()
    return out
