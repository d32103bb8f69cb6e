"""Feature visualization: the image a unit answers to most, and the natural evidence.

Activation maximization (Olah et al., "Feature Visualization", Distill 2017), written
here: the image is parameterized by its Fourier coefficients, scaled by 1/frequency so
that gradient steps favour smooth, natural-looking structure, in a decorrelated colour
space; every step draws a random jitter, scale and rotation (one affine resample) so the
result must survive small shifts; Adam climbs the objective. Objectives: a channel's
mean over space, the channel's centre neuron, or a class logit. Layer outputs come from
`hooks.Recorder` (live tensors).

One entry point, `run(model, image, spec, *, progress=None)`, for four specs:

- `FeatureVisSpec`: one unit's synthetic image (`FeatureVis`), from the cache below when
  it has it; `image` is not used.
- `GallerySpec`: channels 0..n-1 of a layer, one `FeatureVisSpec` each (`Gallery`).
- `NaturalSpec`: a layer's outputs on the bundled sample photos, and `image` (an upload)
  when the spec names it (`Natural`).
- `EvidenceSpec`: one unit on those photos: mean and best activation, and the crops of
  the photos (their units' receptive fields, from `cnnviz.receptive`) it fires on most
  (`Evidence`).

A run takes 10-30 s and, while it lasts, hooks the model's modules and swaps the classes
of its ReLUs: call it through the job runner (`cnnviz.jobs.run`), which runs it on
`Model.private_copy()` (own modules, shared weights) so other sessions using the same
model are not kept waiting and never see the swap. `run` itself makes no copy; called
directly on a model that nobody else uses meanwhile (a test's), it is as safe, and
leaves the model as it found it, also on error or when stopped.

Same seed, same settings: the same image, bit for bit, on CPU (all randomness comes
from one seeded `torch.Generator`). Finished results are kept in memory (bounded in bytes) and on
disk under the user's cache directory (`$CNNVIZ_CACHE`, else `$XDG_CACHE_HOME/cnnviz`,
else `~/.cache/cnnviz`), keyed by model, objective, layer, channel and settings; a run
that was stopped is never kept. The disk keeps at most `bounds.FEATUREVIS_DISK_BYTES`, least
recently used out first; renders of random-init models and of a user's own checkpoint stay in
memory only.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import bounds, contract, pixels
from .activations import check_layer
from .contract import CnnvizError, Progress
from .hooks import Recorder, record
from .lru import LRU
from .model import Model

OBJECTIVES = ("channel", "neuron", "class")
# Runs fill MEMORY (and the disk) channel by channel, so a stopped gallery keeps what it
# finished: they must run in the process whose pages read it (cnnviz.jobs).
RUNS_IN_PROCESS = True
# Bump when the algorithm changes, so old disk-cache entries are not reused.
VERSION = 1
SIZES = bounds.FEATUREVIS_SIDES
MAX_STEPS = bounds.MAX_FEATUREVIS_STEPS
REDIRECT_STEPS = 16
# Seconds per step at 128x128 on a laptop CPU, for "about N s" before a run.
LAPTOP_STEP_SECONDS = 0.1
BLANK = 235  # the grey of a gallery tile not rendered yet

# Square root of the RGB covariance of the bundled sample photos (eigenvectors times
# sqrt(eigenvalues), from `colour_sqrt()` below; column 0 flipped to be positive): the
# optimizer moves three uncorrelated components, mapped to correlated RGB like a photo.
COLOUR_SQRT = torch.tensor([
    [0.3108, 0.1077, 0.0098],
    [0.3016, -0.0193, -0.0257],
    [0.2896, -0.0954, 0.0163],
])
_COLOUR = COLOUR_SQRT / COLOUR_SQRT.norm(dim=0).max()


class FeatureVisError(CnnvizError):
    """Settings or a unit that cannot be visualized (the message says what to change)."""


# ---------------------------------------------------------------- specs

@dataclass(frozen=True, kw_only=True)
class Render(contract.Spec):
    """How a unit is rendered, shared by `FeatureVisSpec` and `GallerySpec` (keywords only).

    `cache` and `preview_every` say how it runs, not what it computes: they are left out
    of equality, `key()` and the cache's file names. `cache=False` always optimizes and
    keeps nothing (the CLI: its `seconds` is compute time); `preview_every`: steps
    between two preview images handed to `progress`."""
    size: int = 128
    steps: int = 256
    lr: float = 0.05
    seed: int = 0
    cache: bool = field(default=True, compare=False, repr=False)
    preview_every: int = field(default=16, compare=False, repr=False)

    def render(self) -> dict:
        """These settings as keywords, to build a spec with the same ones."""
        return {f.name: getattr(self, f.name) for f in fields(Render)}

    def _check_render(self) -> None:
        """Raises a FeatureVisError naming the range of the first knob outside it (never
        an OverflowError or TypeError: inf, nan and 2.5 steps are refused here)."""
        try:
            bounds.whole(self.size, "size", *SIZES, FeatureVisError)
        except FeatureVisError:
            raise FeatureVisError(f"Image size {bounds._shown(self.size)} is out of range; use {SIZES[0]} to "
                                  f"{SIZES[1]} pixels.") from None
        bounds.whole(self.steps, "Steps", 1, MAX_STEPS, FeatureVisError)
        bounds.number(self.lr, "The learning rate", 0, 1, FeatureVisError, above=True)
        bounds.seed(self.seed, FeatureVisError)
        if not isinstance(self.preview_every, int) or self.preview_every < 1:
            raise FeatureVisError(f"Previews come every 1 or more steps, not {bounds._shown(self.preview_every)}.")

    def estimate_seconds(self, units: int = 1) -> float:
        """About how long `units` renders take on a laptop CPU."""
        return units * self.steps * LAPTOP_STEP_SECONDS * (self.size / 128) ** 2


@dataclass(frozen=True)
class FeatureVisSpec(Render):
    """What to maximize (the rendering settings come from `Render`). `channel` is the
    class index for objective "class"."""
    layer: str | None
    channel: int
    objective: str = "channel"

    def passes(self, model) -> int:
        return self.steps + 2  # and the objective on the plain image before the first step and after the last

    def check(self, model: Model) -> "FeatureVisSpec":
        """Validated against the model (with `layer` None for classes)."""
        if self.objective not in OBJECTIVES:
            raise FeatureVisError(f"Unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}.")
        self._check_render()
        if self.objective == "class":
            n = len(model.categories)
            if not _index_ok(self.channel, n):
                raise FeatureVisError(f"{model.id} has classes 0 to {n - 1}; {bounds._shown(self.channel)} does not "
                                      "exist.")
            return self if self.layer is None else replace(self, layer=None)
        if not self.layer:
            raise FeatureVisError("Name a layer (see `python -m cnnviz layers`), or use the class objective.")
        check_layer(model, self.layer)
        channels = _channels(model, self.layer)
        if not _index_ok(self.channel, channels):
            raise FeatureVisError(f"{self.layer} has channels 0 to {channels - 1}; {bounds._shown(self.channel)} does "
                                  "not exist.")
        return self

    def digest(self, model_id: str) -> str:
        """The cache's name for this unit and these settings on `model_id` (file names)."""
        params = {k: getattr(self, k) for k in ("layer", "channel", "objective", "size", "steps", "lr", "seed")}
        blob = json.dumps({"v": VERSION, "model": model_id, **params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _channels(model: Model, layer: str) -> int:
    return {l.name: l.shape[0] for l in model.layers}[layer]


def _index_ok(i, n: int) -> bool:
    """`i` is a whole number from 0 to n - 1 (not 2.5, nan or "3")."""
    try:
        bounds.whole(i, "", 0, n - 1)
    except contract.CnnvizError:
        return False
    return True


@dataclass(frozen=True)
class GallerySpec(Render):
    """Channels 0..n-1 of `layer`, each a `FeatureVisSpec` with these settings (each
    cached like one); `n` is capped at the layer's channel count."""
    layer: str
    n: int = 8
    objective: str = "channel"

    def unit(self, channel: int) -> FeatureVisSpec:
        return FeatureVisSpec(self.layer, channel, self.objective, **self.render())

    def units(self) -> list[FeatureVisSpec]:
        return [self.unit(c) for c in range(self.n)]

    def passes(self, model) -> int:
        return self.n * self.unit(0).passes(model)

    def check(self, model: Model) -> "GallerySpec":
        first = self.unit(0).check(model)
        if first.objective == "class":
            raise FeatureVisError("The gallery walks the channels of a layer; pick the channel or neuron objective.")
        n = bounds.whole(self.n, "The number of channels", 1, bounds.MAX_GALLERY, FeatureVisError)
        n = min(n, _channels(model, first.layer))
        return self if n == self.n else replace(self, n=n)


@dataclass(frozen=True)
class NaturalSpec(contract.Spec):
    """`layer`'s outputs (None: only the logits) on the bundled sample photos at the
    model's input size, plus the run's `image` under the name `upload` when one is given
    ("" = the samples alone; the image is then not used). Recorded `batch` photos a pass."""
    layer: str | None
    upload: str = ""
    batch: int = 8

    def passes(self, model) -> int:
        return len(_sample_paths()) + bool(self.upload)  # one forward each, `batch` at a time

    def check(self, model: Model) -> "NaturalSpec":
        if self.layer is not None:
            check_layer(model, self.layer)
        if not isinstance(self.upload, str):
            raise FeatureVisError(f"The upload's name must be text, not {bounds._shown(self.upload)}.")
        bounds.batch(self.batch, FeatureVisError, "A batch")
        return self


@dataclass(frozen=True)
class EvidenceSpec(contract.Spec):
    """One unit (as in `FeatureVisSpec`) on the photos of `NaturalSpec(layer, upload)`:
    the `k` strongest units of its channel with their receptive-field crops (at most
    `per_image` from one photo), or for a class logit the `best` photos whole."""
    layer: str | None
    channel: int
    objective: str = "channel"
    upload: str = ""
    k: int = 8
    per_image: int = 2
    best: int = 4

    @classmethod
    def of(cls, unit: FeatureVisSpec, upload: str = "", **kw) -> "EvidenceSpec":
        return cls(unit.layer, unit.channel, unit.objective, upload, **kw)

    def natural(self) -> NaturalSpec:
        return NaturalSpec(self.layer if self.objective != "class" else None, self.upload)

    def passes(self, model) -> int:
        return self.natural().passes(model)

    def check(self, model: Model) -> "EvidenceSpec":
        unit = FeatureVisSpec(self.layer, self.channel, self.objective).check(model)
        photos = len(_sample_paths()) + 1
        try:
            for value, lo in ((self.k, 0), (self.per_image, 1), (self.best, 0)):
                bounds.whole(value, "", lo, bounds.MAX_POINTS * photos, FeatureVisError)
        except FeatureVisError:
            raise FeatureVisError("Evidence needs k >= 0 crops, per_image >= 1 and best >= 0 photos "
                                  f"(whole numbers, at most {bounds.MAX_POINTS * photos:,}).") from None
        return self if unit.layer == self.layer else replace(self, layer=unit.layer)


# ---------------------------------------------------------------- results

@dataclass
class FeatureVis(contract.Result):
    """One unit's synthetic image. `natural_mean` / `natural_max` (the sample photos'
    level, from `Natural.stats`) are filled in by whoever also recorded them (the CLI)."""
    spec: FeatureVisSpec
    image: np.ndarray  # uint8 [S, S, 3], the untransformed image
    curve: np.ndarray  # float32 [steps done]: the objective on each step's transformed image
    activation_start: float  # the objective on the plain image before the first step ...
    activation_end: float  # ... and after the last (channel: mean over space)
    cached: str = ""  # "", "memory" or "disk": where this copy came from
    natural_mean: float | None = None
    natural_max: float | None = None

    @property
    def steps_done(self) -> int:
        return len(self.curve)

    def to_dict(self) -> dict:
        s = self.spec
        return {"model": self.model, "layer": s.layer, "channel": s.channel, "steps": s.steps, "size": s.size,
                "activation_start": float(self.activation_start), "activation_end": float(self.activation_end),
                "natural_mean": self.natural_mean, "natural_max": self.natural_max, "seconds": self.seconds}


@dataclass
class Gallery(contract.Result):
    spec: GallerySpec
    units: list[FeatureVis]

    @property
    def image(self) -> np.ndarray:
        """The channels in a grid on white, row by row (uint8)."""
        return gallery_image([u.image for u in self.units], self.spec.size)

    def to_dict(self) -> dict:
        s = self.spec
        return {"model": self.model, "layer": s.layer, "objective": s.objective, "n": s.n, "steps": s.steps,
                "size": s.size, "activation_start": [float(u.activation_start) for u in self.units],
                "activation_end": [float(u.activation_end) for u in self.units], "seconds": self.seconds}


@dataclass
class Natural(contract.Result):
    """One layer's outputs on a set of images at the model's input size."""
    names: list[str]
    pixels: np.ndarray  # uint8 [N, H, W, 3]: what the network saw
    maps: np.ndarray | None  # float32 [N, C, h, w] (None for the class objective)
    logits: np.ndarray  # float32 [N, classes]
    layer: str | None = None

    def values(self, spec) -> np.ndarray:
        """The objective of `spec` (a unit: objective, channel) per image (channel: mean
        over space), float64 [N]."""
        if spec.objective == "class":
            return self.logits[:, spec.channel].astype(np.float64)
        m = self.maps[:, spec.channel]
        if spec.objective == "neuron":
            return m[:, m.shape[1] // 2, m.shape[2] // 2].astype(np.float64)
        return m.mean((1, 2), dtype=np.float64)

    def stats(self, spec) -> tuple[float, float]:
        """(mean, max) of `spec`'s objective over the images."""
        v = self.values(spec)
        return float(v.mean()), float(v.max())


@dataclass(frozen=True)
class Crop:
    source: str  # image name
    value: float  # the unit's activation
    unit: tuple[int, int] | None  # (row, col) in the layer's map; None: the whole photo (class logit)
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in input pixels, clipped to the image
    pixels: np.ndarray = field(repr=False)  # uint8 [h, w, 3]

    def to_dict(self) -> dict:
        return {"source": self.source, "value": self.value, "unit": None if self.unit is None else list(self.unit),
                "box": list(self.box)}


@dataclass
class Evidence(contract.Result):
    layer: str | None
    channel: int
    objective: str
    images: int  # how many photos
    size: tuple[int, int]  # (H, W) the network saw them at
    natural_mean: float
    natural_max: float
    crops: list[Crop]  # strongest first


# ---------------------------------------------------------------- the entry point

def run(model: Model, image, spec: contract.Spec, *, progress: Progress | None = None):
    """Run `spec` (a `FeatureVisSpec`, `GallerySpec`, `NaturalSpec` or `EvidenceSpec`) on
    `model`. Call it through `cnnviz.jobs.run` wherever others may use the model (see the
    module's docstring). `progress(fraction, text, preview)`: `text` is "Step s of n" and
    `preview` now and then the image so far (uint8 [S, S, 3]; a gallery: its whole grid);
    `progress.stop()` makes the job raise `Cancelled` within one step or batch."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    if isinstance(spec, FeatureVisSpec):
        return _visualize(model, spec, progress)
    if isinstance(spec, GallerySpec):
        return _gallery(model, spec, progress)
    if isinstance(spec, NaturalSpec):
        return _natural(model, image, spec, progress)
    if isinstance(spec, EvidenceSpec):
        return _evidence(model, image, spec, progress)
    raise TypeError(f"featurevis.run does not take a {type(spec).__name__}")


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


# ---------------------------------------------------------------- objective

def _objective(spec: FeatureVisSpec, rec: Recorder, logits: torch.Tensor) -> torch.Tensor:
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
    and outputs stay the same); the classes are restored after, also on error. Every
    pass through these modules sees the swap while it lasts: `model` must be one nobody
    else runs meanwhile (the job runner's private copy, or a test's own model)."""
    target = model.layer_modules.get(stop_after.split("#")[0]) if stop_after else None
    swapped = []
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


def measure(model: Model, spec: FeatureVisSpec, pixels: torch.Tensor) -> np.ndarray:
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


def optimize(model: Model, spec: FeatureVisSpec, progress: Progress | None = None) -> FeatureVis:
    """Activation maximization for `spec` on `model` itself: the uncached core of `run`
    (which see, for who may call it on which model). `seconds` is the steps' time."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    gen = torch.Generator().manual_seed(spec.seed)
    coeffs = _init(spec.size, gen).requires_grad_(True)
    scale = _freq_scale(spec.size, spec.size)
    opt = torch.optim.Adam([coeffs], lr=spec.lr)
    curve: list[float] = []
    redirect = {"on": False}
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
            progress.check()  # a stop asked between two reports: not one more pass
            if redirect["on"] and step > REDIRECT_STEPS and max(curve) > curve[0]:
                redirect["on"] = False
            rec.reset()
            img = _pixels(coeffs, scale)
            obj = _objective(spec, rec, _forward(model, _augment(img, gen)))[0]
            coeffs.grad, = torch.autograd.grad(-obj, coeffs)  # never into the (shared) weights
            opt.step()
            curve.append(float(obj.detach()))
            show = step % spec.preview_every == 0 or step == spec.steps
            progress(step / spec.steps, f"Step {step} of {spec.steps}", pixels.to_uint8(img) if show else None)
        seconds = time.perf_counter() - t0
        rec.reset()
        redirect["on"] = False
        with torch.no_grad():
            final = _pixels(coeffs, scale)
            end = float(_objective(spec, rec, _forward(model, final))[0])
    return FeatureVis(spec, pixels.to_uint8(final), np.asarray(curve, np.float32), start, end,
                      model=model.id, seconds=seconds)


# ---------------------------------------------------------------- caches

# Byte-bounded LRUs (cnnviz.lru; the budgets are in cnnviz.bounds), arrays made read-only.
MEMORY = LRU(bounds.FEATUREVIS_MEMORY_BYTES, 1024, name="feature visualizations")  # finished synthetic images
NATURAL = LRU(bounds.FEATUREVIS_NATURAL_BYTES, 8, name="natural recordings")  # the sample photos' recordings, per layer (and upload)
_FIELDS = LRU(bounds.FEATUREVIS_NATURAL_BYTES, 8, name="receptive fields")  # receptive fields per network and input size
_TOKENS = itertools.count(1)


def cache_dir() -> Path:
    """Where finished results are kept between runs."""
    root = os.environ.get("CNNVIZ_CACHE")
    if root:
        return Path(root) / "featurevis"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cnnviz" / "featurevis"


def _disk_ok(model: Model) -> bool:
    # A random-init model's id does not name its weights (a test may change them); a user's
    # own checkpoint is private to the server's memory: neither is ever written to disk.
    return not model.id.endswith("@random") and model.source != "checkpoint"


def _memo_key(model: Model, spec: FeatureVisSpec):
    if _disk_ok(model):
        return (spec.digest(model.id), None)
    if model.source == "checkpoint":  # named by its weights: every session loading the file shares it
        return (spec.digest(model.id), model.fingerprint)
    # A random-init model's results are kept for that loaded model only (and its private
    # copies: `shared` is what they have in common); a token, never reused, names it.
    return (spec.digest(model.id), model._shared("memo_token", lambda: next(_TOKENS)))


def _read_disk(model: Model, spec: FeatureVisSpec) -> FeatureVis | None:
    path = cache_dir() / f"{spec.digest(model.id)}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            image, curve, nums = z["image"], z["curve"], z["nums"]
    except (OSError, KeyError, ValueError, EOFError):  # absent or damaged: compute again
        return None
    if image.shape != (spec.size, spec.size, 3) or image.dtype != np.uint8 or len(curve) != spec.steps:
        return None
    with contextlib.suppress(OSError):  # its modification time is its last use (eviction order)
        os.utime(path)
    return FeatureVis(spec, image, curve, float(nums[0]), float(nums[1]), model=model.id, seconds=float(nums[2]))


def _write_disk(result: FeatureVis) -> None:
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".partial")  # written whole, then renamed: atomic
        with os.fdopen(fd, "wb") as f:
            np.savez(f, image=result.image, curve=result.curve,
                     nums=np.array([result.activation_start, result.activation_end, result.seconds]))
        os.replace(tmp, d / f"{result.spec.digest(result.model)}.npz")
    except OSError:  # a read-only or full disk only costs the cache
        with contextlib.suppress(OSError, UnboundLocalError):
            os.remove(tmp)
        return
    trim_disk(d)


def trim_disk(d: Path | None = None, limit: int | None = None) -> int:
    """Delete the least recently used renders (oldest modification time: a read touches
    it) until the folder holds at most `limit` bytes (default `bounds.FEATUREVIS_DISK_BYTES`),
    and a crashed writer's partial files older than an hour. Safe while other processes use
    the folder: a file gone meanwhile is skipped, a reader of a deleted file recomputes.
    Returns the bytes left."""
    d = cache_dir() if d is None else d
    limit = bounds.FEATUREVIS_DISK_BYTES if limit is None else limit
    found, total, now = [], 0, time.time()
    try:
        with os.scandir(d) as it:
            for e in it:
                try:
                    info = e.stat()
                except OSError:
                    continue
                if e.name.endswith(".npz"):
                    found.append((info.st_mtime, e.name, info.st_size))
                    total += info.st_size
                elif e.name.endswith(".partial") and info.st_mtime < now - 3600:
                    with contextlib.suppress(OSError):
                        os.remove(e.path)
    except OSError:
        return 0
    for _, name, size in sorted(found):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            os.remove(d / name)
        total -= size
    return total


def cached(model: Model, spec: FeatureVisSpec) -> FeatureVis | None:
    """A finished result for `spec` from memory or disk, without computing."""
    spec = spec.check(model)
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


def _visualize(model: Model, spec: FeatureVisSpec, progress: Progress) -> FeatureVis:
    """The cached result for `spec`, else optimize; a finished run is cached."""
    if spec.cache and (hit := cached(model, spec)) is not None:
        progress(1.0, f"Step {spec.steps} of {spec.steps}", hit.image)
        return hit
    result = optimize(model, spec, progress)  # raises Cancelled when stopped: nothing is kept
    if spec.cache:
        _freeze(result)
        MEMORY.put(_memo_key(model, spec), _copy(result, ""))  # the runner sets the caller's copy's seconds
        if _disk_ok(model):
            _write_disk(result)
    return result


def _freeze(r: FeatureVis) -> None:
    r.image.flags.writeable = False
    r.curve.flags.writeable = False


def _copy(r: FeatureVis, where: str) -> FeatureVis:
    return replace(r, cached=where)


# ---------------------------------------------------------------- gallery

def cached_gallery(model: Model, spec: GallerySpec) -> list[FeatureVis | None]:
    """Each channel's finished result from memory or disk (None where not rendered yet)."""
    spec = spec.check(model)
    return [cached(model, u) for u in spec.units()]


def gallery_image(images: list[np.ndarray | None], size: int, cols: int | None = None, gap: int = 4) -> np.ndarray:
    """Equal-sized uint8 [S, S, 3] images in a grid on white, row by row; a None (not
    rendered yet) is a grey tile."""
    blank = np.full((size, size, 3), BLANK, np.uint8)
    return pixels.grid([blank if im is None else im for im in images], cols, gap)


def _gallery(model: Model, spec: GallerySpec, progress: Progress) -> Gallery:
    """Channel after channel, each cached like one; `progress` counts the steps of the
    whole gallery and its preview is the gallery's grid."""
    n, steps = spec.n, spec.steps
    tiles = [r.image if r is not None else None for r in cached_gallery(model, spec)] if spec.cache else [None] * n
    units = []
    for c, unit in enumerate(spec.units()):
        def report(fraction, _text, preview, c=c):
            if preview is not None:
                tiles[c] = preview
            progress((c + fraction) / n, f"Channel {c} of {n}: step {round(fraction * steps)} of {steps}",
                     gallery_image(tiles, spec.size) if preview is not None else None)

        units.append(_visualize(model, unit, _Within(progress, report)))
    return Gallery(spec, units, model=model.id)


class _Within(Progress):
    """One channel's progress inside the gallery's own: stopping the gallery stops it
    before its next step."""

    def __init__(self, outer: Progress, report):
        super().__init__(report)
        self._outer = outer

    def check(self) -> None:
        self._outer.check()
        super().check()


# ---------------------------------------------------------------- natural evidence

@functools.lru_cache(maxsize=1)
def _sample_paths() -> tuple:
    from .samples import sample_paths

    return tuple(sample_paths().items())


@functools.lru_cache(maxsize=1)
def _samples() -> tuple:
    from .images import load_image

    return tuple((name, load_image(path)) for name, path in _sample_paths())


def sample_images() -> dict[str, Image.Image]:
    """The bundled sample photos by name (decoded once; shared: treat as read-only)."""
    return dict(_samples())


def natural(model: Model, layer: str | None, images: dict[str, Image.Image], batch: int = 8,
            progress: Progress | None = None) -> Natural:
    """Record `layer` (or only the logits) on each image, centre-cropped to the input size,
    `batch` images a pass."""
    progress = Progress.of(progress)
    names = list(images)
    if not names:
        raise FeatureVisError("No images to compare with.")
    if layer is not None:
        check_layer(model, layer)
    px = torch.cat([model.to_pixels(images[n]) for n in names])
    maps, logits = [], []
    for i in range(0, len(names), batch):
        progress.check()
        out, outs = record(model, model.normalize(px[i: i + batch]), [layer] if layer else [])
        logits.append(out.float().numpy())
        if layer:
            maps.append(outs[layer].float().numpy())
        done = min(i + batch, len(names))
        progress(done / len(names), f"{done} of {len(names)} images")
    return Natural(names, pixels.to_uint8(px).reshape(len(names), *px.shape[2:], 3),
                   np.concatenate(maps) if maps else None, np.concatenate(logits), layer, model=model.id)


def _natural(model: Model, image, spec: NaturalSpec, progress: Progress) -> Natural:
    """`natural` over the samples (and the upload), kept for the next unit of the same
    layer (every channel of a layer reads one recording; treat it as read-only)."""
    images = sample_images()
    digest = None
    if spec.upload:
        if image is None:
            raise FeatureVisError(f"{spec.upload!r} joins the sample photos only with its image.")
        x = model.to_pixels(image)
        images[spec.upload] = x
        digest = hashlib.blake2b(x.numpy().tobytes(), digest_size=12).hexdigest()
    key = (model.fingerprint, spec.layer, spec.upload, digest, spec.batch)
    hit = NATURAL.get(key)
    if hit is None:
        hit = natural(model, spec.layer, images, spec.batch, progress)
        for a in (hit.pixels, hit.maps, hit.logits):
            if a is not None:
                a.flags.writeable = False
        NATURAL.put(key, hit)
    return replace(hit)  # the runner fills in the copy's seconds


def _receptive_field(model: Model, layer: str, size: tuple[int, int]):
    from .receptive import fields

    key = (model.fingerprint, tuple(size))
    found = _FIELDS.get(key)
    if found is None:
        found = fields(model, tuple(size))
        _FIELDS.put(key, found)
    return found.get(layer)


def evidence(model: Model, spec, nat: Natural, k: int = 8, per_image: int = 2) -> list[Crop]:
    """The `k` units of `spec`'s channel that fire most across the images (at most
    `per_image` from one image, not overlapping much), each with the input crop its
    receptive field covers, strongest first."""
    spec = spec.check(model)
    if spec.objective == "class":
        raise FeatureVisError("A class logit sees the whole image; natural crops are for channels of a layer.")
    from .receptive import clip

    fmap = nat.maps[:, spec.channel]  # [N, h, w]
    H, W = nat.pixels.shape[1:3]
    field_ = _receptive_field(model, spec.layer, (H, W))
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


def _evidence(model: Model, image, spec: EvidenceSpec, progress: Progress) -> Evidence:
    nat = _natural(model, image, spec.natural(), progress)
    mean, best = nat.stats(spec)
    H, W = nat.pixels.shape[1:3]
    if spec.objective == "class":  # a logit sees the whole photo: the best photos, whole
        values = nat.values(spec)
        crops = [Crop(nat.names[n], float(values[n]), None, (0, 0, H, W), nat.pixels[n].copy())
                 for n in np.argsort(-values)[:spec.best]]
    else:
        crops = evidence(model, spec, nat, spec.k, spec.per_image) if spec.k else []
    return Evidence(spec.layer, spec.channel, spec.objective, len(nat.names), (H, W), mean, best, crops,
                    model=model.id)


def _iou(a, b) -> float:
    t, l, bt, r = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, bt - t) * max(0, r - l)
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1)
