"""Where CNNs break: simple image transforms swept over a parameter.

Every transform is a pure function of the network's input pixels ([1, 3, H, W] in
[0, 1], what `Model.to_pixels` gives) and one value, and value 0 is the identity
(the untouched tensor), so a sweep's identity point is exactly `predict`'s answer.
Multiplicative knobs (scale, brightness, contrast, gamma) take log2 units: value v
means a factor 2**v, so 0 is the identity and +1 / -1 are symmetric.

One entry point, `run(model, image, spec)`, for three specs:

- `SweepSpec`: the transformed images go through the network (`predict.classify`) a
  bounded batch at a time; per point, the top-1 class and the original class's
  probability and rank (`Sweep`). Progress after every batch; a stop request ends it
  before the next batch.
- `FlipSpec`: the smallest change that turns the original top-1 into another class,
  with Captum's `MinParamPerturbation` (a coarse then a fine linear search, both
  directions at once for signed transforms) (`Flip`).
- `LimitsSpec`: both, the search bounded by the sweep (what the page and the CLI show:
  `Limits`).

`occlude` slides a grey patch over the image (Zeiler and Fergus): value [y, x] is the
patch's top-left corner; `shuffle` cuts k x k tiles and permutes them (seeded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from . import bounds
from .contract import CnnvizError, Progress, Result, Spec
from .model import Model
from .pixels import to_uint8
from .predict import Top, classify

GREY = 0.5  # fill for padding and occluding patches: the middle of the pixel range
MAX_POINTS = bounds.MAX_POINTS  # values per sweep, and occlusion positions


class LimitsError(CnnvizError):
    """A transform or value that cannot be used (the message says which and why)."""


# ---------------------------------------------------------------- transforms (pure)

def rotate(x: torch.Tensor, degrees: float, seed: int = 0) -> torch.Tensor:
    """Anticlockwise about the centre, bilinear; the corners are filled grey.

    The sampling grid is built by broadcasting (F.affine_grid's batched matmul costs
    more than the sampling itself here) and grey is subtracted before sampling and added
    back, so zero padding becomes grey fill without torchvision's extra mask pass."""
    h, w = x.shape[-2:]
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    px = torch.arange(w, dtype=x.dtype)[None, :] - (w - 1) / 2  # pixel offsets from the centre
    py = torch.arange(h, dtype=x.dtype)[:, None] - (h - 1) / 2
    grid = torch.stack([(c * px - s * py) * (2 / w), (s * px + c * py) * (2 / h)], -1)  # [H, W, 2], (x, y)
    grid = grid[None].expand(len(x), h, w, 2)
    return F.grid_sample(x - GREY, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + GREY


def scale(x: torch.Tensor, log2_factor: float, seed: int = 0) -> torch.Tensor:
    """Zoom by 2**v about the centre: out (v < 0) shrinks the picture into a grey frame,
    in (v > 0) crops the centre and enlarges it; the frame keeps its size."""
    h, w = x.shape[-2:]
    f = 2.0 ** log2_factor
    if f < 1:
        sh, sw = max(1, round(h * f)), max(1, round(w * f))
        small = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
        out = torch.full_like(x, GREY)
        top, left = (h - sh) // 2, (w - sw) // 2
        out[..., top:top + sh, left:left + sw] = small
        return out
    ch, cw = max(1, round(h / f)), max(1, round(w / f))
    top, left = (h - ch) // 2, (w - cw) // 2
    return F.interpolate(x[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear", align_corners=False)


def translate(x: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Shift right (v > 0) or left by a fraction of the width, whole pixels, grey padding."""
    w = x.shape[-1]
    dx = max(-w, min(w, round(fraction * w)))
    out = torch.full_like(x, GREY)
    if dx >= 0:
        out[..., dx:] = x[..., : w - dx]
    else:
        out[..., :dx] = x[..., -dx:]
    return out


def flip(x: torch.Tensor, value: float, seed: int = 0) -> torch.Tensor:
    """Mirror left-right when value is 1."""
    return x.flip(-1) if value else x


def brightness(x: torch.Tensor, stops: float, seed: int = 0) -> torch.Tensor:
    """Exposure: every pixel times 2**v (photographic stops), clipped."""
    return (x * 2.0 ** stops).clamp(0, 1)


def contrast(x: torch.Tensor, log2_factor: float, seed: int = 0) -> torch.Tensor:
    """Stretch (v > 0) or flatten the distance from the mean grey level by 2**v."""
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean()
    return (grey + (x - grey) * 2.0 ** log2_factor).clamp(0, 1)


def gamma(x: torch.Tensor, log2_gamma: float, seed: int = 0) -> torch.Tensor:
    """x ** (2**v): v > 0 darkens the mid-tones, v < 0 lifts them; black and white stay."""
    return x.clamp(0, 1) ** (2.0 ** log2_gamma)


def blur(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Gaussian blur, sigma in input pixels."""
    k = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [k, k], [float(sigma)] * 2)


def noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Add Gaussian noise of standard deviation v (pixel range 0-1), clipped. One noise
    field per seed, scaled by v: a sweep shows the same noise growing."""
    g = torch.Generator().manual_seed(int(seed))
    return (x + std * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


def shuffle(x: torch.Tensor, k: float, seed: int = 0) -> torch.Tensor:
    """Cut the picture into k x k tiles and permute them (never the identity order);
    a border narrower than a tile (when k does not divide the size) stays in place."""
    k = int(k)
    if k <= 1:
        return x
    h, w = x.shape[-2:]
    th, tw = h // k, w // k
    g = torch.Generator().manual_seed(int(seed) * 1009 + k)
    perm = torch.randperm(k * k, generator=g)
    while bool((perm == torch.arange(k * k)).all()):
        perm = torch.randperm(k * k, generator=g)
    c = x.shape[1]
    tiles = x[..., : k * th, : k * tw].reshape(-1, c, k, th, k, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, k * k, c, th, tw)
    tiles = tiles[:, perm].reshape(-1, k, k, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, k * th, k * tw)
    out = x.clone()
    out[..., : k * th, : k * tw] = tiles
    return out


def occlude(x: torch.Tensor, at: tuple[int, int], size: int) -> torch.Tensor:
    """A grey size x size patch with its top-left corner at `at` = (y, x)."""
    y0, x0 = at
    out = x.clone()
    out[..., y0:y0 + size, x0:x0 + size] = GREY
    return out


# ---------------------------------------------------------------- the catalogue

@dataclass(frozen=True)
class Transform:
    name: str
    title: str
    unit: str  # how a value reads: "{:g} degrees"
    fn: Callable
    default: tuple[float, ...]  # values that make a good demo
    lo: float
    hi: float
    # min_flip search: (largest magnitude, coarse step, fine step); None = not continuous
    search: tuple[float, float, float] | None = None
    signed: bool = True  # search both directions
    integer: bool = False
    seeded: bool = False

    def describe(self, v: float) -> str:
        """A value as a phrase: 'rotating by 35° anticlockwise'."""
        return _PHRASES[self.name](v)


def _grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    n = int(round((stop - start) / step))
    return tuple(round(start + i * step, 10) for i in range(n + 1))


def _factor(v: float) -> str:
    return f"{2.0 ** v:.3g}x"


_PHRASES: dict[str, Callable[[float], str]] = {
    "rotate": lambda v: f"rotating by {abs(v):g}° {'anticlockwise' if v > 0 else 'clockwise'}",
    "scale": lambda v: f"{'zooming in' if v > 0 else 'zooming out'} to {_factor(v)} the size",
    "translate": lambda v: f"shifting {abs(v):.0%} of the width to the {'right' if v > 0 else 'left'}",
    "flip": lambda v: "mirroring left-right" if v else "leaving it unmirrored",
    "brightness": lambda v: f"{'brightening' if v > 0 else 'darkening'} to {_factor(v)} the light",
    "contrast": lambda v: f"{'raising' if v > 0 else 'lowering'} the contrast to {_factor(v)}",
    "gamma": lambda v: f"a gamma of {_factor(v).rstrip('x')}",
    "blur": lambda v: f"blurring with sigma {v:g} pixels",
    "noise": lambda v: f"adding noise of standard deviation {v:g}",
    "shuffle": lambda v: f"shuffling {int(v)}x{int(v)} tiles",
    "occlude": lambda v: f"a grey patch at {v}",
}

TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform("rotate", "Rotation", "degrees", rotate, _grid(0, 345, 15), -360, 360, (180, 10, 1)),
    Transform("scale", "Scale", "log2 zoom", scale, _grid(-2, 2, 0.25), -4, 4, (3, 0.25, 0.05)),
    Transform("translate", "Translation", "fraction of the width", translate, _grid(-0.5, 0.5, 0.05), -1, 1,
              (0.5, 0.05, 0.01)),
    Transform("flip", "Mirror (handedness)", "0 = as is, 1 = mirrored", flip, (0, 1), 0, 1, integer=True),
    Transform("brightness", "Brightness", "stops (log2 of the light)", brightness, _grid(-4, 2, 0.5), -8, 8,
              (4, 0.25, 0.05)),
    Transform("contrast", "Contrast", "log2 contrast factor", contrast, _grid(-4, 2, 0.5), -8, 8, (4, 0.25, 0.05)),
    Transform("gamma", "Gamma", "log2 gamma", gamma, _grid(-2, 2, 0.25), -4, 4, (3, 0.25, 0.05)),
    Transform("blur", "Blur", "sigma in pixels", blur, _grid(0, 8, 0.5), 0, 32, (16, 1, 0.1), signed=False),
    Transform("noise", "Gaussian noise", "standard deviation (pixel range 0-1)", noise, _grid(0, 0.5, 0.025), 0, 1,
              (1, 0.05, 0.005), signed=False, seeded=True),
    Transform("occlude", "Occlusion sweep", "patch size in pixels", occlude, (56,), 0, 512, integer=True),
    Transform("shuffle", "Patch shuffle", "k (k x k tiles)", shuffle, (1, 2, 3, 4, 6, 8, 12, 16), 0, 112,
              integer=True, seeded=True),
)}


def get(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise LimitsError(f"Unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}.")
    return TRANSFORMS[name]


def parse_values(name: str, text: str | None) -> tuple[float, ...]:
    """'0,15,30' or 'START:STOP:STEP' (STOP included when it falls on the grid);
    None or '' gives the transform's default demo values."""
    t = get(name)
    if text is None or not str(text).strip():
        return t.default
    return check_values(name, parse_numbers(text))


def parse_numbers(text: str, error: type[CnnvizError] = LimitsError, most: int = MAX_POINTS,
                  example: str = "0,15,30", example_range: str = "0:360:15") -> tuple[float, ...]:
    """A list ('0,15,30') or 'START:STOP:STEP' (STOP included when it falls on the grid),
    at most `most` numbers; `error` says what cannot be read (with the examples)."""
    text = str(text).strip()
    if len(text) > bounds.MAX_VALUES_TEXT:
        raise error(f"The values are {len(text):,} characters long; at most {bounds.MAX_VALUES_TEXT:,}: give a "
                    f"list ({example}) or START:STOP:STEP ({example_range}).")
    shown = bounds._shown(text)
    try:
        parts = [float(p) for p in text.replace(" ", "").split(":" if ":" in text else ",") if p]
    except ValueError:
        parts = []
    if not parts or (":" in text and len(parts) != 3):
        raise error(f"Cannot read the values {shown}: give a list ({example}) or START:STOP:STEP ({example_range}).")
    if not all(math.isfinite(p) for p in parts):  # inf, nan, 1e309
        bad = next(p for p in parts if not math.isfinite(p))
        raise error(f"In {shown}, {bad:g} is not a finite number: give a list ({example}) or START:STOP:STEP "
                    f"({example_range}).")
    if ":" not in text:
        if len(parts) > most:
            raise error(f"{len(parts)} values; at most {most} per sweep.")
        return tuple(parts)
    start, stop, step = parts
    if step <= 0 or stop < start:
        raise error(f"In {shown} the step must be positive and STOP at least START.")
    span = (stop - start) / step + 1e-9  # inf when the range overflows a float
    if not span < most:
        count = f"{math.floor(span) + 1:,}" if math.isfinite(span) else f"more than {most}"
        raise error(f"{shown} gives {count} values; at most {most} per sweep.")
    n = math.floor(span) + 1
    return tuple(round(start + i * step, 10) for i in range(n))


def check_values(name: str, values) -> tuple[float, ...]:
    t = get(name)
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        raise LimitsError(f"{t.title}: the values must be numbers ({t.unit}), not {bounds._shown(values)}.") from None
    if not values:
        raise LimitsError("Give at least one value.")
    if len(values) > MAX_POINTS:
        raise LimitsError(f"{len(values)} values; at most {MAX_POINTS} per sweep.")
    if name == "occlude" and len(values) != 1:
        raise LimitsError("occlude takes one value, the patch size in pixels (e.g. 56); it slides over every position.")
    for v in values:
        if not t.lo <= v <= t.hi or not math.isfinite(v):
            raise LimitsError(f"{t.title}: {v:g} is out of range; use {t.lo:g} to {t.hi:g} ({t.unit}).")
        if name == "flip" and v not in (0, 1):
            raise LimitsError("flip takes 0 (as is) and 1 (mirrored).")
        if t.integer and v != int(v):
            raise LimitsError(f"{t.title} takes whole numbers ({t.unit}), not {v:g}.")
    return values


def apply(model: Model, image: Image.Image | torch.Tensor, name: str, value, seed: int = 0,
          patch: int | None = None) -> torch.Tensor:
    """One transformed input in pixels [1, 3, H, W]. For occlude `value` is (y, x) and
    `patch` the size. The identity (value 0, flip 0, shuffle k <= 1) returns the input."""
    x = model.to_pixels(image) if isinstance(image, Image.Image) else image
    if name == "occlude":
        return x if not patch else occlude(x, tuple(int(v) for v in value), int(patch))
    if _identity(name, value):
        return x
    return get(name).fn(x, float(value), seed)


def occlusion_grid(size: tuple[int, int], patch: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners of the patches, stride patch/2 by default, the last one flush
    with the edge so every pixel is covered."""
    h, w = size
    patch = min(int(patch), h, w)
    stride = max(1, stride or patch // 2)

    def axis(n):
        pos = list(range(0, n - patch + 1, stride))
        return pos + [n - patch] if pos[-1] != n - patch else pos

    return [(y, x) for y in axis(h) for x in axis(w)]


def occlusion_positions(size: tuple[int, int], patch) -> int:
    """How many patches `occlusion_grid(size, patch)` places (without listing them)."""
    h, w = size
    p = min(int(patch), h, w)
    if p <= 0:
        return 0
    stride = max(1, p // 2)

    def axis(n):
        return (n - p) // stride + 1 + ((n - p) % stride != 0)

    return axis(h) * axis(w)


def smallest_patch(size: tuple[int, int], most: int = MAX_POINTS) -> int:
    """The smallest occlusion patch (pixels) with at most `most` positions on `size`."""
    return next((p for p in range(1, min(size) + 1) if occlusion_positions(size, p) <= most), min(size))


def _check_patch(size: tuple[int, int], patch: float) -> None:
    n = occlusion_positions(size, patch)
    if n > MAX_POINTS:
        raise LimitsError(f"A {patch:g}-pixel occlusion patch makes {n:,} positions on the {size[0]}x{size[1]} input; "
                          f"a sweep has at most {MAX_POINTS}: use a patch of {smallest_patch(size)} pixels or more.")


def fit_values(name: str, values: tuple[float, ...], size: tuple[int, int]) -> tuple[tuple[float, ...], str]:
    """`values` (checked) made to fit the server's bounds on `size` (h, w), and a sentence
    saying what was changed ("" when nothing was): an occlusion patch too small for
    `MAX_POINTS` positions becomes the smallest one that fits."""
    if name == "occlude" and values and (n := occlusion_positions(size, values[0])) > MAX_POINTS:
        patch = smallest_patch(size)
        return (float(patch),), (f"A {values[0]:g}-pixel patch would make {n:,} positions on the {size[0]}x{size[1]} "
                                 f"input; a sweep has at most {MAX_POINTS}, so the patch is {patch} pixels.")
    return values, ""


def spec_for(model: Model, name: str, values: tuple[float, ...], seed: int = 0,
             probs: np.ndarray | None = None) -> tuple["LimitsSpec", str]:
    """The sweep of `values` as the page and `limits --compare` run it on `model`: fitted to
    its input (`fit_values`), and the sentence saying what was changed ("" when nothing was)."""
    fitted, said = fit_values(name, values, tuple(model.input_size))
    return LimitsSpec(name, fitted, seed, probs=probs), said


# ---------------------------------------------------------------- CNN vs Transformer

# The course's comparison (shared/TEACHING.md): a CNN, ViT-B/16 (16 x 16 patches as tokens
# with position embeddings, attention over all of them from the first block) and
# ConvNeXt-Tiny (a ResNet modernised toward a hierarchical transformer). Pretrained ids; a
# page offers the untrained twin (`ID@random`) where the weights are not cached.
VIT, CONVNEXT = "torchvision:vit_b_16", "torchvision:convnext_tiny"
# The lecture track's demos, in its order: layout (tokens vs pooling), pose, evidence, texture, handedness.
VERSUS_DEMOS = ("shuffle", "rotate", "occlude", "noise", "flip")


def versus(model: Model) -> tuple[str, str]:
    """The models "CNN vs Transformer" puts beside `model`: ViT-B/16 and ConvNeXt-Tiny beside
    a CNN; beside a transformer (ViT, Swin) the bundled CNN and ConvNeXt; beside a ConvNeXt
    the bundled CNN and ViT-B/16."""
    from torchvision.models import ConvNeXt

    from .models import BUNDLED_ID
    from .tokens import family

    if family(model.net) is not None:
        return BUNDLED_ID, CONVNEXT
    if isinstance(model.net, ConvNeXt):
        return BUNDLED_ID, VIT
    return VIT, CONVNEXT


# ---------------------------------------------------------------- specs

def _hint():
    """The untransformed image's probabilities, if the caller already has them
    (`predict`'s): identity points reuse them, so value 0 gives exactly `predict`'s
    numbers without a pass of its own. Not part of the key: they follow from the model
    and the image."""
    return field(default=None, compare=False, repr=False)


def _identity(name: str, value) -> bool:
    return float(value) == 0 or (name == "shuffle" and value <= 1)


@dataclass(frozen=True)
class SweepSpec(Spec):
    """Classify the image under each value of one transform, `batch_size` images per pass.
    `values`: None for the transform's demo values; for occlude (patch size,), and the
    points are every patch position. `thumb`: side of the thumbnails in pixels."""

    transform: str = "rotate"
    values: tuple[float, ...] | None = None
    seed: int = 0
    batch_size: int = 32
    thumb: int = 96
    probs: np.ndarray | None = _hint()

    def check(self, model) -> "SweepSpec":
        t = get(self.transform)
        values = check_values(self.transform, t.default if self.values is None else self.values)
        if self.transform == "occlude":
            _check_patch(tuple(model.input_size), values[0])
        batch = bounds.batch(self.batch_size, LimitsError)
        thumb = bounds.whole(self.thumb, "The thumbnail size", 1, bounds.MAX_THUMB, LimitsError)
        return replace(self, values=values, seed=bounds.seed(self.seed, LimitsError), batch_size=batch, thumb=thumb)

    def passes(self, model) -> int:
        return self.passes_at(model, tuple(model.input_size))

    def passes_at(self, model, size) -> int:
        """The transformed images (occlude: one per patch position on `size`), and the
        original when `probs` is not given."""
        values = get(self.transform).default if self.values is None else self.values
        if self.transform == "occlude":
            images = occlusion_positions(size, values[0])
        else:
            images = sum(not _identity(self.transform, v) for v in values)
        return images + (self.probs is None)


@dataclass(frozen=True)
class FlipSpec(Spec):
    """The smallest change of a continuous transform that changes the top-1 class.

    Captum's MinParamPerturbation searches the magnitude in coarse steps, then in fine
    steps just below the first flip; a signed transform tries +v and -v in the same pass
    and reports the direction that flipped (+ when both did). `seen`: magnitudes that
    flipped the label in a sweep of the same transform: they bound the search, and a
    flip seen is never reported as "none" (a coarse grid can step over a narrow flip)."""

    transform: str = "rotate"
    seed: int = 0
    seen: tuple[float, ...] = ()
    batch_size: int = 32
    probs: np.ndarray | None = _hint()

    def check(self, model) -> "FlipSpec":
        t = get(self.transform)
        if t.search is None:
            searchable = [n for n, u in TRANSFORMS.items() if u.search is not None]
            raise LimitsError(f"{t.title} has no continuous parameter to search; the smallest flip applies to "
                              f"{', '.join(searchable)}.")
        seen = tuple(bounds.number(v, "A magnitude seen to flip", 0, math.inf, LimitsError) for v in self.seen)
        return replace(self, seed=bounds.seed(self.seed, LimitsError), seen=seen,
                       batch_size=bounds.batch(self.batch_size, LimitsError))

    def passes(self, model) -> int:
        return self.images() + (self.probs is None)

    def images(self) -> int:
        """At most this many images go through the network (coarse search, fine search, the answer)."""
        t = get(self.transform)
        if t.search is None:
            return 0
        top, coarse, fine = t.search
        limit = min([top, *self.seen])
        return (math.floor(limit / coarse + 1e-9) + math.ceil(coarse / fine) + 2) * (1 + t.signed)


@dataclass(frozen=True)
class LimitsSpec(Spec):
    """A sweep and, for continuous transforms, the smallest flip bounded by it."""

    transform: str = "rotate"
    values: tuple[float, ...] | None = None
    seed: int = 0
    batch_size: int = 32
    probs: np.ndarray | None = _hint()

    def sweep(self) -> SweepSpec:
        return SweepSpec(self.transform, self.values, self.seed, self.batch_size, probs=self.probs)

    def check(self, model) -> "LimitsSpec":
        sweep = self.sweep().check(model)
        return replace(self, values=sweep.values, seed=sweep.seed, batch_size=sweep.batch_size)

    def passes(self, model) -> int:
        return self.passes_at(model, tuple(model.input_size))

    def passes_at(self, model, size) -> int:
        return self.sweep().passes_at(model, size) + FlipSpec(self.transform).images()


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Point:
    value: float | tuple[int, int]
    top1: Top
    orig_prob: float
    orig_rank: int  # 1 = still the top class

    def to_dict(self) -> dict:
        v = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"value": v, "top1": self.top1.to_dict(), "orig_prob": self.orig_prob, "orig_rank": self.orig_rank}


@dataclass
class Sweep(Result):
    transform: str
    original: Top
    points: list[Point]
    thumbs: np.ndarray = field(repr=False)  # uint8 [N, t, t, 3]: the transformed inputs, small
    seed: int = 0
    patch: int | None = None  # occlude only
    grid: tuple[int, int] | None = None  # occlude: (rows, cols) of positions

    @property
    def changes(self) -> list[int]:
        """Indices whose top-1 label differs from the previous point's."""
        return [i for i in range(1, len(self.points)) if self.points[i].top1.index != self.points[i - 1].top1.index]

    @property
    def flipped(self) -> list[int]:
        """Indices whose top-1 is no longer the original class."""
        return [i for i, p in enumerate(self.points) if p.top1.index != self.original.index]

    def index_of(self, value) -> int | None:
        """The point at `value` (another model's sweep of the same values; occlusion grids differ
        where input sizes do), else None."""
        return next((i for i, p in enumerate(self.points) if p.value == value), None)

    def prob_map(self) -> np.ndarray:
        """occlude: the original class's probability per patch position [rows, cols]."""
        return np.array([p.orig_prob for p in self.points]).reshape(self.grid)

    def drop_map(self, size: tuple[int, int]) -> np.ndarray:
        """occlude: per input pixel [H, W], the mean drop of the original class's probability
        over the patches that covered it (Zeiler and Fergus's map, as Captum's Occlusion averages)."""
        acc, cnt = np.zeros(size), np.zeros(size)
        for p in self.points:
            y, x = p.value
            acc[y:y + self.patch, x:x + self.patch] += self.original.prob - p.orig_prob
            cnt[y:y + self.patch, x:x + self.patch] += 1
        return acc / np.maximum(cnt, 1)

    def to_dict(self) -> dict:
        return {"model": self.model, "transform": self.transform, "original": self.original.to_dict(),
                "points": [p.to_dict() for p in self.points]}


@dataclass
class Flip(Result):
    transform: str
    original: Top
    value: float | None  # the smallest flipping value found, signed; None if none in range
    to: Top | None  # the new top-1 there
    searched: float  # largest magnitude tried
    step: float  # resolution of the answer

    def sentence(self) -> str:
        t = get(self.transform)
        if self.value is None:
            return (f"No {t.title.lower()} up to {self.searched:g} ({t.unit}) changes the answer "
                    f"'{self.original.label}'.")
        return (f"{t.describe(self.value)[0].upper()}{t.describe(self.value)[1:]} turns "
                f"'{self.original.label}' into '{self.to.label}' ({self.to.prob:.0%}).")

    def to_dict(self) -> dict:
        return {"value": self.value, "to": self.to.to_dict() if self.to else None, "sentence": self.sentence()}


@dataclass
class Limits(Result):
    sweep: Sweep
    flip: Flip | None  # None: the transform has no continuous parameter

    def to_dict(self) -> dict:
        return {**self.sweep.to_dict(), "model": self.model, "min_flip": self.flip.value if self.flip else None,
                "seconds": self.seconds}


# ---------------------------------------------------------------- the one entry point

def run(model: Model, image: Image.Image | torch.Tensor, spec: SweepSpec | FlipSpec | LimitsSpec, *,
        progress: Progress | None = None) -> Sweep | Flip | Limits:
    """`image`: a PIL image (resized and cropped as the model does) or pixels [1, 3, H, W]."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    x = model.to_pixels(image)
    probs = spec.probs if spec.probs is not None else classify(model, x)[0]
    if isinstance(spec, SweepSpec):
        return _sweep(model, x, probs, spec, progress)
    if isinstance(spec, FlipSpec):
        return _min_flip(model, x, probs, spec, progress)
    if isinstance(spec, LimitsSpec):
        sweep_spec = spec.sweep()
        share = sweep_spec.passes(model) / max(spec.passes(model), 1)
        sw = _sweep(model, x, probs, sweep_spec, progress.part(0.0, share))
        if get(spec.transform).search is None:
            return Limits(sw, None)
        seen = tuple(abs(_signed(spec.transform, sw.points[i].value)) for i in sw.flipped)
        flip = _min_flip(model, x, probs, FlipSpec(spec.transform, spec.seed, seen, spec.batch_size),
                         progress.part(share, 1.0))
        return Limits(sw, flip)
    raise TypeError(f"limits.run takes a SweepSpec, FlipSpec or LimitsSpec, not {type(spec).__name__}")


# ---------------------------------------------------------------- sweeps

def _thumb(x: torch.Tensor, size: int) -> np.ndarray:
    t = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return to_uint8(t).reshape(len(x), size, size, 3)


def _sweep(model: Model, x: torch.Tensor, probs: np.ndarray, spec: SweepSpec, progress: Progress) -> Sweep:
    """Identity points reuse `probs`; the others go through `classify` a batch at a time."""
    name, thumb = spec.transform, spec.thumb
    orig = int(np.argmax(probs))
    patch = grid = None
    if name == "occlude":
        _check_patch(tuple(x.shape[-2:]), spec.values[0])  # the image's own size: positions and thumbnails bounded
        patch = min(int(spec.values[0]), *x.shape[-2:])
        corners = occlusion_grid(x.shape[-2:], patch) if patch else [(0, 0)]
        points_v: list = corners
        grid = (len({c[0] for c in corners}), len({c[1] for c in corners}))
    else:
        points_v = list(spec.values)
    n = len(points_v)
    out = np.empty((n, len(probs)))
    thumbs = np.empty((n, thumb, thumb, 3), np.uint8)
    chunk: list[tuple[int, torch.Tensor]] = []

    def flush():
        progress.check()  # a stop request ends the sweep before the next batch
        idx = [i for i, _ in chunk]
        batch = torch.cat([xi for _, xi in chunk])
        out[idx] = classify(model, batch)
        thumbs[idx] = _thumb(batch, thumb)
        chunk.clear()
        progress((idx[-1] + 1) / n, f"{(idx[-1] + 1) / n:.0%} of the images classified")

    # transformed images are made a batch at a time, so memory stays flat for long sweeps
    for i, v in enumerate(points_v):
        xi = apply(model, x, name, v, spec.seed, patch)
        if xi is x:  # the identity: predict's own numbers, no batched pass
            out[i] = probs
            thumbs[i] = _thumb(x, thumb)[0]
        else:
            chunk.append((i, xi))
        if len(chunk) == spec.batch_size:
            flush()
    if chunk:
        flush()
    top_i = out.argmax(1)
    ranks = (out > out[:, orig:orig + 1]).sum(1) + 1
    points = [Point(v if name == "occlude" else float(v),
                    Top(int(k), model.categories[k], float(out[i, k])), float(out[i, orig]), int(ranks[i]))
              for i, (v, k) in enumerate(zip(points_v, top_i))]
    original = Top(orig, model.categories[orig], float(probs[orig]))
    return Sweep(name, original, points, thumbs, spec.seed, patch, grid)


# ---------------------------------------------------------------- smallest flip

def _min_flip(model: Model, x: torch.Tensor, probs: np.ndarray, spec: FlipSpec, progress: Progress) -> Flip:
    from captum.robust import MinParamPerturbation

    name, seed = spec.transform, spec.seed
    t = get(name)
    top, coarse, fine = t.search
    target = int(np.argmax(probs))
    original = Top(target, model.categories[target], float(probs[target]))
    signs = (1, -1) if t.signed else (1,)
    limit = min([top, *spec.seen])
    total, done = max(spec.images(), 1), [0]

    def net(batch):  # the search's forward: progress per batch, and where a stop request ends it
        progress(done[0] / total, "searching for the smallest change that flips the label...")
        done[0] += len(batch)
        return model.net(batch)

    def attack(inp, amount):  # both directions in one small batch, normalized for the net
        return model.normalize(torch.cat([t.fn(inp, s * amount, seed) for s in signs]))

    def search(start: float, step: float, count: int) -> float | None:
        """The first flipping value of start, start + step, ... (count + 1 values)."""
        if count < 1:  # Captum wants at least two values
            return None if count < 0 or not _flips(attack(x, start)) else start
        # integer step counts: Captum's float range would drift (0.1 * 3 != 0.3)
        mpp = MinParamPerturbation(
            net, lambda inp, k: attack(inp, round(start + k * step, 10)), "k", 0, count + 0.5, 1,
            correct_fn=lambda out, target: bool((out.argmax(1) == target).all()))
        _, k = mpp.evaluate(x, target=target, perturbations_per_eval=max(1, spec.batch_size // len(signs)))
        return None if k is None else round(start + k * step, 10)

    def _flips(batch) -> bool:
        return bool((net(batch).argmax(1) != target).any())

    with torch.inference_mode():
        hit = search(coarse, coarse, math.floor(limit / coarse + 1e-9) - 1)
        if hit is None and spec.seen:
            hit = limit
        if hit is None:
            return Flip(name, original, None, None, top, coarse)
        lo = (math.ceil(hit / coarse - 1e-9) - 1) * coarse + fine
        hit = search(lo, fine, math.floor((hit - lo) / fine + 1e-9)) or hit
        progress.check()
        out = classify(model, torch.cat([t.fn(x, s * hit, seed) for s in signs]))
    for s, row in zip(signs, out):
        k = int(row.argmax())
        if k != target:
            return Flip(name, original, s * hit, Top(k, model.categories[k], float(row[k])), top, fine)
    return Flip(name, original, None, None, top, fine)  # only if the network is nondeterministic


def _signed(name: str, value: float) -> float:
    """A sweep value as a signed change from the identity (rotations wrap to +-180)."""
    return (value + 180) % 360 - 180 if name == "rotate" else value
