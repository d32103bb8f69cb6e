"""Feature visualization: the image a unit answers to most, and the natural evidence.

Activation maximization (Olah et al., "Feature Visualization", Distill 2017), written
here: the image is parameterized by its Fourier coefficients, scaled by 1/frequency so
that gradient steps favour smooth, natural-looking structure, in a decorrelated colour
space; every step draws a random jitter, scale and rotation (one affine resample) so the
result must survive small shifts; Adam climbs the objective. Objectives: a channel's
mean over space, the channel's centre neuron, or a class logit. Layer outputs come from
`hooks.Recorder` (live tensors). A run takes 10-30 s and patches modules, so it works on
`Model.private_copy()` (own modules, shared weights): other sessions using the same
model are not kept waiting.

Same seed, same settings: the same image, bit for bit, on CPU (all randomness comes
from one seeded `torch.Generator`). Finished results are kept in memory (bounded) and on
disk under the user's cache directory (`$CNNVIZ_CACHE`, else `$XDG_CACHE_HOME/cnnviz`,
else `~/.cache/cnnviz`), keyed by model, objective, layer, channel and settings.

Natural evidence: the bundled samples (and uploads) at the model's input size; for each
of the strongest units, the crop of the input it can see (its receptive field, from
`cnnviz.receptive`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .contract import CnnvizError
from .activations import check_layer
from .hooks import Recorder, record
from .model import Model

OBJECTIVES = ("channel", "neuron", "class")
# Bump when the algorithm changes, so old disk-cache entries are not reused.
VERSION = 1
SIZES = (32, 512)
MAX_STEPS = 4096
REDIRECT_STEPS = 16

# Square root of the RGB covariance of the bundled sample photos (eigenvectors times
# sqrt(eigenvalues), from `colour_sqrt()` below; column 0 flipped to be positive): the
# optimizer moves three uncorrelated components, mapped to correlated RGB like a photo.
COLOUR_SQRT = torch.tensor([
    [0.3108, 0.1077, 0.0098],
    [0.3016, -0.0193, -0.0257],
    [0.2896, -0.0954, 0.0163],
])
_COLOUR = COLOUR_SQRT / COLOUR_SQRT.norm(dim=0).max()

# Progress: (steps done, steps in all, preview uint8 [S, S, 3] or None) -> True to stop.
Progress = Callable[[int, int, "np.ndarray | None"], "bool | None"]


class FeatureVisError(CnnvizError):
    """Settings or a unit that cannot be visualized (the message says what to change)."""


@dataclass(frozen=True)
class Spec:
    """What to maximize and how. `channel` is the class index for objective "class"."""
    layer: str | None
    channel: int
    objective: str = "channel"
    size: int = 128
    steps: int = 256
    lr: float = 0.05
    seed: int = 0

    def key(self, model_id: str) -> str:
        blob = json.dumps({"v": VERSION, "model": model_id, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class Result:
    spec: Spec
    model_id: str
    image: np.ndarray  # uint8 [S, S, 3], the untransformed image
    curve: np.ndarray  # float32 [steps done]: the objective on each step's transformed image
    activation_start: float  # the objective on the plain image before the first step ...
    activation_end: float  # ... and after the last (channel: mean over space)
    seconds: float  # optimization time
    stopped: bool = False
    cached: str = ""  # "", "memory" or "disk": where this copy came from

    @property
    def steps_done(self) -> int:
        return len(self.curve)


def colour_sqrt(images: list[Image.Image]) -> np.ndarray:
    """Square root of the RGB covariance of `images` (how COLOUR_SQRT was made)."""
    px = []
    for im in images:
        im = im.convert("RGB")
        im.thumbnail((128, 128))
        px.append(np.asarray(im, np.float64).reshape(-1, 3) / 255)
    x = np.concatenate(px)
    u, s, _ = np.linalg.svd(np.cov((x - x.mean(0)).T))
    m = u * np.sqrt(s)
    return m * np.sign(m[0])  # a fixed sign per column


# ---------------------------------------------------------------- checks

def check(model: Model, spec: Spec) -> Spec:
    """Validate `spec` against the model; returns it (with `layer` None for classes)."""
    if spec.objective not in OBJECTIVES:
        raise FeatureVisError(f"Unknown objective {spec.objective!r}; use one of {', '.join(OBJECTIVES)}.")
    if not SIZES[0] <= spec.size <= SIZES[1]:
        raise FeatureVisError(f"Image size {spec.size} is out of range; use {SIZES[0]} to {SIZES[1]} pixels.")
    if not 1 <= spec.steps <= MAX_STEPS:
        raise FeatureVisError(f"Steps must be 1 to {MAX_STEPS}, not {spec.steps}.")
    if not (math.isfinite(spec.lr) and 0 < spec.lr <= 1):
        raise FeatureVisError(f"The learning rate must be above 0 and at most 1, not {spec.lr}.")
    if spec.objective == "class":
        n = len(model.categories)
        if not 0 <= spec.channel < n:
            raise FeatureVisError(f"{model.id} has classes 0 to {n - 1}; {spec.channel} does not exist.")
        return Spec(None, spec.channel, "class", spec.size, spec.steps, spec.lr, spec.seed)
    if not spec.layer:
        raise FeatureVisError("Name a layer (see `python -m cnnviz layers`), or use the class objective.")
    check_layer(model, spec.layer)
    channels = {l.name: l.shape[0] for l in model.layers}[spec.layer]
    if not 0 <= spec.channel < channels:
        raise FeatureVisError(f"{spec.layer} has channels 0 to {channels - 1}; {spec.channel} does not exist.")
    return spec


# ---------------------------------------------------------------- parameterization

def _freq_scale(h: int, w: int) -> torch.Tensor:
    """1/frequency (cycles per pixel, floored at one cycle per image) per rfft2 bin."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return 1.0 / torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(h, w))


def _init(size: int, gen: torch.Generator) -> torch.Tensor:
    """Fourier coefficients [3, S, S//2+1, 2] (real, imaginary), small and random."""
    return torch.randn(3, size, size // 2 + 1, 2, generator=gen) * 0.01


def _pixels(coeffs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Coefficients -> RGB image [1, 3, S, S] in (0, 1)."""
    s = coeffs.shape[1]
    decorrelated = torch.fft.irfft2(torch.view_as_complex(coeffs) * scale, s=(s, s), norm="ortho") / 4
    rgb = torch.einsum("cd,dhw->chw", _COLOUR, decorrelated)
    return torch.sigmoid(rgb).unsqueeze(0)


def _augment(img: torch.Tensor, gen: torch.Generator, jitter: float = 8, zoom: float = 0.1,
             degrees: float = 10) -> torch.Tensor:
    """One random shift (up to `jitter` pixels), scale (1 +- zoom) and rotation
    (+- degrees), as one bilinear resample; edges reflect rather than go black."""
    u = torch.rand(4, generator=gen) * 2 - 1  # four draws in [-1, 1)
    s = 1 + zoom * float(u[0])
    a = math.radians(degrees * float(u[1]))
    size = img.shape[-1]
    tx, ty = (2 * jitter / size) * float(u[2]), (2 * jitter / size) * float(u[3])
    theta = torch.tensor([[[math.cos(a) / s, -math.sin(a) / s, tx], [math.sin(a) / s, math.cos(a) / s, ty]]],
                         dtype=img.dtype)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> uint8 [H, W, 3]."""
    return (img[0].detach().permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- objective

def _objective(spec: Spec, rec: Recorder, logits: torch.Tensor) -> torch.Tensor:
    """The objective per batch item [B]."""
    if spec.objective == "class":
        return logits[:, spec.channel]
    maps = rec.outputs[spec.layer][:, spec.channel]  # [B, H, W]
    if spec.objective == "neuron":
        return maps[:, maps.shape[1] // 2, maps.shape[2] // 2]
    return maps.mean((1, 2))


class _Redirect(torch.autograd.Function):
    """Clamp to [lo, hi] (ReLU, ReLU6) whose backward, for a sample whose every unit is
    clamped (plain gradient all zero: the optimizer would be stuck), passes the gradient
    where it pushes a unit back into range ("redirected ReLU", Olah et al. 2017)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        hi = math.inf if ctx.hi is None else ctx.hi
        plain = torch.ops.aten.hardtanh_backward(g, x, ctx.lo, hi)  # g where lo < x < hi, else 0
        dead = ~plain.flatten(1).any(1)
        if not bool(dead.any()):
            return plain, None, None
        # Gradient descent moves x by -g: from below it must be negative, from above positive.
        redirected = g.masked_fill(((x <= ctx.lo) & (g > 0)) | ((x >= hi) & (g < 0)), 0)
        return torch.where(dead.view(-1, *[1] * (x.dim() - 1)), redirected, plain), None, None


class _Stop(Exception):
    """Raised right after the target layer's call was recorded: the rest of the
    forward pass cannot change the objective, so it is skipped."""


@contextlib.contextmanager
def _patched(model: Model, redirect: dict, stop_after: str | None, rec: Recorder):
    """For one optimization: ReLU/ReLU6 modules redirect their gradients while
    `redirect["on"]`, and the module of `stop_after` raises `_Stop` once that call is
    recorded. Done by swapping each module's class for a subclass in place (names, hooks
    and outputs stay the same); the classes are restored after, also on error."""
    target = model.layer_modules.get(stop_after.split("#")[0]) if stop_after else None
    swapped = []
    with model.lock:
        try:
            for m in model.net.modules():
                relu = type(m) in (nn.ReLU, nn.ReLU6)
                if relu or m is target:
                    base = type(m)
                    m.__class__ = _subclass(base, redirect if relu else None,
                                            (lambda: stop_after in rec.outputs) if m is target else None)
                    swapped.append((m, base))
            yield
        finally:
            for m, base in swapped:
                m.__class__ = base


def _subclass(base: type, redirect: dict | None, stop) -> type:
    ns = {}
    if redirect is not None:
        hi = 6.0 if issubclass(base, nn.ReLU6) else None

        def forward(self, x):
            return _Redirect.apply(x, 0.0, hi) if redirect["on"] else base.forward(self, x)
        ns["forward"] = forward
    if stop is not None:
        def __call__(self, *args, **kwargs):
            out = base.__call__(self, *args, **kwargs)  # forward, then the recorder's hook
            if stop():
                raise _Stop
            return out
        ns["__call__"] = __call__
    return type(base.__name__, (base,), ns)


def measure(model: Model, spec: Spec, pixels: torch.Tensor) -> np.ndarray:
    """The objective on plain [B, 3, H, W] pixel images (no augmentation), float64 [B]."""
    with Recorder(model, [spec.layer] if spec.layer else [], detach=False) as rec, torch.no_grad():
        logits = model.pixel_net(pixels)
        return _objective(spec, rec, logits).double().numpy()


def _forward(model: Model, x: torch.Tensor) -> torch.Tensor | None:
    """The logits, or None where `_Stop` ended the pass at the target layer."""
    try:
        return model.pixel_net(x)
    except _Stop:
        return None


def optimize(model: Model, spec: Spec, progress: Progress | None = None, preview_every: int = 16) -> Result:
    """Run activation maximization for `spec` (no caching; see `visualize`)."""
    spec = check(model, spec)
    gen = torch.Generator().manual_seed(spec.seed)
    coeffs = _init(spec.size, gen).requires_grad_(True)
    scale = _freq_scale(spec.size, spec.size)
    opt = torch.optim.Adam([coeffs], lr=spec.lr)
    curve: list[float] = []
    stopped = False
    redirect = {"on": False}
    model = model.private_copy()
    with Recorder(model, [spec.layer] if spec.layer else [], detach=False) as rec, \
            _patched(model, redirect, spec.layer, rec):
        with torch.no_grad():
            start = float(_objective(spec, rec, _forward(model, _pixels(coeffs, scale)))[0])
        t0 = time.perf_counter()
        # A unit that the grey-ish start image leaves clamped gets no gradient: redirect
        # the ReLUs' gradients for the first steps, and on while the objective has not
        # moved (they cost ~30% more per pass, so not for the whole run).
        redirect["on"] = True
        for step in range(1, spec.steps + 1):
            if redirect["on"] and step > REDIRECT_STEPS and max(curve) > curve[0]:
                redirect["on"] = False
            rec.reset()
            img = _pixels(coeffs, scale)
            obj = _objective(spec, rec, _forward(model, _augment(img, gen)))[0]
            coeffs.grad, = torch.autograd.grad(-obj, coeffs)  # never into the (shared) weights
            opt.step()
            curve.append(float(obj.detach()))
            if progress is not None:
                show = step % preview_every == 0 or step == spec.steps
                if progress(step, spec.steps, to_uint8(img) if show else None):
                    stopped = step < spec.steps
                    break
        seconds = time.perf_counter() - t0
        rec.reset()
        redirect["on"] = False
        with torch.no_grad():
            final = _pixels(coeffs, scale)
            end = float(_objective(spec, rec, _forward(model, final))[0])
    return Result(spec, model.id, to_uint8(final), np.asarray(curve, np.float32), start, end, seconds, stopped)


# ---------------------------------------------------------------- caches

class _Memo:
    """A bounded, thread-safe LRU of finished results (arrays made read-only)."""

    def __init__(self, size: int = 64):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


MEMORY = _Memo()


def cache_dir() -> Path:
    """Where finished results are kept between runs."""
    root = os.environ.get("CNNVIZ_CACHE")
    if root:
        return Path(root) / "featurevis"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cnnviz" / "featurevis"


def _disk_ok(model: Model) -> bool:
    # A random-init model gets new weights on every load: its id does not name them.
    return not model.id.endswith("@random")


def _memo_key(model: Model, spec: Spec):
    return (spec.key(model.id), id(model.net) if not _disk_ok(model) else None)


def _read_disk(model: Model, spec: Spec) -> Result | None:
    path = cache_dir() / f"{spec.key(model.id)}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            image, curve, nums = z["image"], z["curve"], z["nums"]
    except (OSError, KeyError, ValueError, EOFError):  # absent or damaged: compute again
        return None
    if image.shape != (spec.size, spec.size, 3) or image.dtype != np.uint8 or len(curve) != spec.steps:
        return None
    return Result(spec, model.id, image, curve, float(nums[0]), float(nums[1]), float(nums[2]))


def _write_disk(result: Result) -> None:
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".partial")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, image=result.image, curve=result.curve,
                     nums=np.array([result.activation_start, result.activation_end, result.seconds]))
        os.replace(tmp, d / f"{result.spec.key(result.model_id)}.npz")
    except OSError:  # a read-only or full disk only costs the cache
        with contextlib.suppress(OSError, UnboundLocalError):
            os.remove(tmp)


def cached(model: Model, spec: Spec) -> Result | None:
    """A finished result for `spec` from memory or disk, without computing."""
    spec = check(model, spec)
    hit = MEMORY.get(_memo_key(model, spec))
    if hit is not None:
        return _copy(hit, "memory")
    if _disk_ok(model):
        hit = _read_disk(model, spec)
        if hit is not None:
            _freeze(hit)
            MEMORY.put(_memo_key(model, spec), hit)
            return _copy(hit, "disk")
    return None


def visualize(model: Model, spec: Spec, progress: Progress | None = None, preview_every: int = 16,
              cache: bool = True) -> Result:
    """The cached result for `spec`, else optimize; a finished run is cached."""
    if cache and (hit := cached(model, spec)) is not None:
        if progress is not None:
            progress(hit.spec.steps, hit.spec.steps, hit.image)
        return hit
    result = optimize(model, spec, progress, preview_every)
    if cache and not result.stopped:
        _freeze(result)
        MEMORY.put(_memo_key(model, result.spec), result)
        if _disk_ok(model):
            _write_disk(result)
    return result


def _freeze(r: Result) -> None:
    r.image.flags.writeable = False
    r.curve.flags.writeable = False


def _copy(r: Result, where: str) -> Result:
    return Result(r.spec, r.model_id, r.image, r.curve, r.activation_start, r.activation_end, r.seconds,
                  r.stopped, where)


# ---------------------------------------------------------------- gallery

def gallery(model: Model, spec: Spec, n: int, progress: Progress | None = None,
            preview_every: int = 16) -> list[Result]:
    """Channels 0..n-1 of `spec.layer` with `spec`'s settings (each cached like one).
    `progress` counts steps over the whole gallery; returning True stops it."""
    spec = check(model, spec)
    if spec.objective == "class":
        raise FeatureVisError("The gallery walks the channels of a layer; pick the channel or neuron objective.")
    channels = {l.name: l.shape[0] for l in model.layers}[spec.layer]
    n = max(1, min(n, channels))
    results: list[Result] = []
    total = n * spec.steps
    for c in range(n):
        one = Spec(spec.layer, c, spec.objective, spec.size, spec.steps, spec.lr, spec.seed)
        stop = [False]

        def inner(step, steps, preview, base=c * spec.steps):
            stop[0] = bool(progress(base + step, total, preview)) if progress else False
            return stop[0]

        r = visualize(model, one, inner, preview_every)
        results.append(r)
        if stop[0] or r.stopped:
            break
    return results


def grid_image(images: list[np.ndarray], cols: int | None = None, gap: int = 4) -> np.ndarray:
    """Equal-sized uint8 [S, S, 3] images in a grid on white, row by row."""
    if not images:
        raise FeatureVisError("Nothing to lay out.")
    n, (h, w, _) = len(images), images[0].shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, q = divmod(k, cols)
        out[r * (h + gap): r * (h + gap) + h, q * (w + gap): q * (w + gap) + w] = im
    return out


# ---------------------------------------------------------------- natural evidence

@dataclass(frozen=True)
class Crop:
    source: str  # image name
    value: float  # the unit's activation
    unit: tuple[int, int]  # (row, col) in the layer's map
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in input pixels, clipped to the image
    pixels: np.ndarray = field(repr=False)  # uint8 [h, w, 3]


@dataclass
class Natural:
    """One layer's outputs on a set of images at the model's input size."""
    names: list[str]
    pixels: np.ndarray  # uint8 [N, H, W, 3]: what the network saw
    maps: np.ndarray | None  # float32 [N, C, h, w] (None for the class objective)
    logits: np.ndarray  # float32 [N, classes]

    def values(self, spec: Spec) -> np.ndarray:
        """The objective per image (channel: mean over space), float64 [N]."""
        if spec.objective == "class":
            return self.logits[:, spec.channel].astype(np.float64)
        m = self.maps[:, spec.channel]
        if spec.objective == "neuron":
            return m[:, m.shape[1] // 2, m.shape[2] // 2].astype(np.float64)
        return m.mean((1, 2), dtype=np.float64)


def natural(model: Model, layer: str | None, images: dict[str, Image.Image], batch: int = 8) -> Natural:
    """Record `layer` (or only the logits) on each image, centre-cropped to the input size."""
    names = list(images)
    if not names:
        raise FeatureVisError("No images to compare with.")
    if layer is not None:
        check_layer(model, layer)
    px = torch.cat([model.to_pixels(images[n]) for n in names])
    maps, logits = [], []
    for i in range(0, len(names), batch):
        out, outs = record(model, model.normalize(px[i: i + batch]), [layer] if layer else [])
        logits.append(out.float().numpy())
        if layer:
            maps.append(outs[layer].float().numpy())
    pixels = (px.permute(0, 2, 3, 1).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return Natural(names, pixels, np.concatenate(maps) if maps else None, np.concatenate(logits))


def sample_images() -> dict[str, Image.Image]:
    from .images import load_image
    from .samples import sample_paths

    return {name: load_image(path) for name, path in sample_paths().items()}


def natural_stats(model: Model, spec: Spec, nat: Natural) -> tuple[float, float]:
    """(mean, max) of the objective over the images."""
    v = nat.values(check(model, spec))
    return float(v.mean()), float(v.max())


def evidence(model: Model, spec: Spec, nat: Natural, k: int = 8, per_image: int = 2) -> list[Crop]:
    """The `k` units of `spec`'s channel that fire most across the images (at most
    `per_image` from one image, not overlapping much), each with the input crop its
    receptive field covers, strongest first."""
    spec = check(model, spec)
    if spec.objective == "class":
        raise FeatureVisError("A class logit sees the whole image; natural crops are for channels of a layer.")
    from .receptive import clip, fields

    fmap = nat.maps[:, spec.channel]  # [N, h, w]
    H, W = nat.pixels.shape[1:3]
    field_ = fields(model, (H, W)).get(spec.layer)
    if field_ is None:
        raise FeatureVisError(f"No receptive field is known for {spec.layer}.")
    found: list[Crop] = []
    for n, name in enumerate(nat.names):
        m = fmap[n]
        taken: list[tuple[int, int, int, int]] = []
        for flat in np.argsort(-m, axis=None, kind="stable"):
            if len(taken) >= per_image:
                break
            i, j = divmod(int(flat), m.shape[1])
            box = clip(field_.box(i, j), (H, W))
            if box[2] <= box[0] or box[3] <= box[1] or any(_iou(box, o) > 0.3 for o in taken):
                continue
            taken.append(box)
            found.append(Crop(name, float(m[i, j]), (i, j), box,
                              nat.pixels[n, box[0]:box[2], box[1]:box[3]].copy()))
    found.sort(key=lambda c: -c.value)
    return found[:k]


def _iou(a, b) -> float:
    t, l, bt, r = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, bt - t) * max(0, r - l)
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()
