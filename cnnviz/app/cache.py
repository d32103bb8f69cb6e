"""The one cache. Every analysis goes through `run` (small results, copied on read)
or `run_shared` (large read-only results), keyed on the model's fingerprint (its
weights, not just its id), the image's hash and the spec: no function here is keyed
by hand. Models and decoded images are shared read-only across sessions.

Every store is a process-wide `cnnviz.lru.LRU` bounded in bytes (`cnnviz.bounds`), not
Streamlit's `cache_data` / `cache_resource`, which bound entries only. Two sessions asking
for the same missing entry compute it once (the second waits, and sees the first one's
progress); a job that is stopped or fails keeps nothing. Models, shared results and images
are also tracked weakly: one evicted while a session still shows it is found again rather
than made twice, so the process never holds two copies of one model.

Sessions keep ids in `st.session_state`, never a `Model`: the zoo's by id (`model`), an
uploaded checkpoint by the key `keep_own` gave (`own_model`; None once evicted).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import threading
import time

import streamlit as st
from PIL import Image, ImageOps

from cnnviz import bounds, jobs, models
from cnnviz.contract import Progress, Result, Spec
from cnnviz.images import load_image
from cnnviz.lru import LRU

RESULTS = LRU(bounds.RESULT_BYTES, 256, size=len, name="results")  # pickled: the size is exact
SHARED = LRU(bounds.SHARED_RESULT_BYTES, 8, weak=True, name="shared results")
IMAGES = LRU(bounds.IMAGE_CACHE_BYTES, 16, weak=True, name="images")
THUMBNAILS = LRU(bounds.THUMBNAIL_BYTES, size=len, name="thumbnails")
DISPLAYED = LRU(bounds.DISPLAY_BYTES, size=len, name="displayed pictures")
MODELS = LRU(bounds.MODEL_BYTES, bounds.MODELS, weak=True, name="models")
OWN_MODELS = LRU(bounds.OWN_MODEL_BYTES, bounds.OWN_MODELS, weak=True, name="own models")

# The Progress of each job being computed, by store and key: a session waiting for the
# same entry shows it.
_RUNNING: dict = {}
_RUNNING_LOCK = threading.Lock()


DRAW_EVERY_S = 0.25  # a progress bar redrawn more often is work for the browser and the event loop, not news


@contextlib.contextmanager
def progress_bar(label: str = ""):
    """A progress bar, drawn where this is entered on the first report (a cache hit draws
    nothing). Yields a `Progress` (the job's own text after `label`); the bar is removed
    when done. It redraws at most every `DRAW_EVERY_S` (and at 100%): a 100-step PGD
    reported ~19 times a second, each a message to the browser."""
    slot, drawn = None, -DRAW_EVERY_S

    def show(fraction: float, text: str, _preview) -> None:
        nonlocal slot, drawn
        now = time.monotonic()
        if now - drawn < DRAW_EVERY_S and fraction < 1:
            return
        drawn = now
        if slot is None:
            slot = st.empty()
        slot.progress(fraction, text=" ".join(t for t in (label, text or f"{fraction:.0%}") if t))

    try:
        yield Progress(show)
    finally:
        if slot is not None:
            slot.empty()


def _computed(store: LRU, key, label: str, compute):
    """`store`'s entry for `key`, else `compute(progress)` under a progress bar, once for
    every session asking at the same time."""
    hit = store.get(key)
    if hit is not None:
        return hit
    running = (store.name, key)
    with progress_bar(label) as progress:
        def make():
            with _RUNNING_LOCK:
                _RUNNING[running] = progress
            try:
                return compute(progress)
            finally:
                with _RUNNING_LOCK:
                    if _RUNNING.get(running) is progress:
                        del _RUNNING[running]

        def wait():  # drawing is also where a rerun of this session interrupts the wait
            other = _RUNNING.get(running)
            fraction, text = (other.fraction, other.text) if other is not None else (0.0, "")
            progress(fraction, f"{text} (computed once for every session asking)".strip())

        return store.get_or_make(key, make, wait=wait)


def run(spec: Spec, model: models.Model, image: Image.Image | None = None, image_sha: str = "", *,
        label: str = "") -> Result:
    """`spec`'s analysis on `model` and `image` through the job runner, cached (a copy
    per read); `label` heads the progress bar."""
    key = (spec.key(), model.fingerprint, image_sha)
    blob = _computed(RESULTS, key, label, lambda p: pickle.dumps(jobs.run(model, image, spec, progress=p),
                                                                pickle.HIGHEST_PROTOCOL))
    return pickle.loads(blob)


def run_shared(spec: Spec, model: models.Model, image: Image.Image | None = None, image_sha: str = "", *,
               label: str = "") -> Result:
    """As `run`, for large results every session reads without copying (treat as read-only)."""
    key = (spec.key(), model.fingerprint, image_sha)
    return _computed(SHARED, key, label, lambda p: jobs.run(model, image, spec, progress=p))


def clear() -> None:
    """Forget every result, image and model (tests)."""
    for store in (RESULTS, SHARED, IMAGES, THUMBNAILS, DISPLAYED, MODELS, OWN_MODELS):
        store.clear()


# ---------------------------------------------------------------- models

def model(model_id: str) -> models.Model:
    """The process's one copy of `model_id`, loaded (and downloaded) on first use. A
    download runs in the background (`cnnviz.downloads`): a rerun of the session only
    stops this wait, and the next run picks up the same download."""
    def make():
        # The spinner only here, on a load: `st.spinner` starts a thread and sends the
        # browser a message on every use, and the sidebar asks for its model on every rerun.
        with st.spinner("Loading the model..."), progress_bar("Downloading weights:") as progress:
            m = models.load(model_id, progress=progress)
        m.layers  # probe once here, not on a page's first render
        return m

    hit = MODELS.get(model_id)
    if hit is not None:
        return hit
    with progress_bar("Another session is loading this model:") as progress:
        def wait():
            d = models.downloading(model_id)
            progress(d.fraction if d else 0.0, d.text if d else "")

        return MODELS.get_or_make(model_id, make, wait=wait)


def own_key(arch: str, data: bytes, labels: bytes | None = None) -> str:
    """The process store's key for a checkpoint upload (its architecture, bytes and labels)."""
    h = hashlib.sha256(arch.encode() + b"\0")
    h.update(data)
    h.update(b"\0" + (labels or b""))
    return h.hexdigest()[:24]


def keep_own(key: str, model: models.Model) -> models.Model:
    """Keep an uploaded checkpoint's model under `key` for every session that loads the
    same file; returns the process's copy (an earlier session's, if there is one)."""
    return OWN_MODELS.get_or_make(key, lambda: model)  # one check-and-put: two sessions keep one copy


def own_model(key: str) -> models.Model | None:
    """The checkpoint kept under `key`, or None once it was evicted (load it again)."""
    return OWN_MODELS.get(key)


# ---------------------------------------------------------------- images

def image(sha: str, _data: bytes, name: str) -> Image.Image:
    """The decoded image (shared by every session: treat as read-only); a bad file raises
    `ImageError` and keeps nothing."""
    return IMAGES.get_or_make((sha, name), lambda: load_image(_data, name))


def thumbnails(paths: tuple[str, ...], cols: int = 3, size: int = 128, gap: int = 6) -> bytes:
    """The images as one JPEG grid of square, centre-cropped thumbnails, `cols` to a row:
    the sample picker's strip, one image (and one media file) per rerun instead of one each."""
    def make() -> bytes:
        rows = -(-len(paths) // cols)
        sheet = Image.new("RGB", (cols * size + (cols - 1) * gap, rows * size + (rows - 1) * gap), "white")
        for i, path in enumerate(paths):
            sheet.paste(ImageOps.fit(load_image(path), (size, size)), ((i % cols) * (size + gap), (i // cols) * (size + gap)))
        buf = io.BytesIO()
        sheet.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    return THUMBNAILS.get_or_make((paths, cols, size, gap), make)


def display_jpeg(sha: str, image: Image.Image, side: int = 1460) -> bytes:
    """The picture as a page shows it, JPEG-encoded once per image (st.image of the PIL
    image converts and re-encodes it on every rerun of every session). st.image resizes
    anything wider than 2 x 730 px on every call, so a larger photo is box-reduced by a
    whole factor first (fast; a resampling resize cost more than the encode)."""
    def make() -> bytes:
        factor = -(-max(image.size) // side)
        im = image.reduce(factor) if factor > 1 else image
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=85)
        return buf.getvalue()

    return DISPLAYED.get_or_make((sha, side), make)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
