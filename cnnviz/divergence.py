"""Where the attack takes over: how far each layer's activation moves when the input
becomes the adversarial image, against random noise of the same size.

One entry point, `run(model, image, spec)` (`image`: the clean picture, PIL or pixels
[1, 3, H, W] in [0, 1], put on the 1/255 grid as the attacks do), for two specs:

- `DivergenceSpec(adversarial, noise)`: the depth curve (`Divergence`). ONE recorded
  forward pass of the batch [clean, adversarial, noise] (3 images, `passes` 3), every
  layer's output reduced inside its hook (`hooks.record_reduced`: no map is kept). An
  image equal to an earlier one of the batch is not sent again (so an image against
  itself is exactly 0 everywhere: torch does not promise bitwise equal rows of a batch).
  The pure function `divergence(model, clean, adversarial, noise)` is the same on pixels.
- `LayerPairSpec(layer, adversarial)`: one layer's full maps for [clean, adversarial]
  (one pass of 2 images that stops at the layer), and its channels ranked by change
  (`LayerPair`): the page's click view.

Definitions, per layer (call names of `model.layers`, execution order), a0 the clean
activation, a1 the adversarial one, a2 the noisy one (whole outputs, all channels):

- relative change: ||a1 - a0||_2 / ||a0||_2 (the noise: ||a2 - a0|| / ||a0||). Where the
  clean activation is all zero: 0 if the other one is too, else None (undefined; JSON null).
- top_changed: of the `TOP_K` channels with the largest mean activation on the clean image
  (mean over positions; a non-spatial output's values are its channels; ties by index),
  how many are not among the top `TOP_K` on the adversarial image: TOP_K - |overlap|.
  Layers with fewer channels use all of them (always 0 then).
- fastest: the layer whose adversarial relative change rose most from the previous layer
  (the largest increase between consecutive layers with defined values); None if it never rises.

The perturbed pictures travel in the spec as `Picture`s (8-bit [H, W, 3]; compared, hashed
and keyed by their digest), so a cached attack's images are reused, not attacked again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from . import bounds
from .activations import LayerNotFound, find_layer
from .adversarial import pixels as grid_pixels
from .contract import CnnvizError, Progress, Result, Spec
from .hooks import record, record_reduced
from .model import Model
from .pixels import from_uint8

TOP_K = 10  # channels compared by rank at each layer (a fixed constant: no user sets it)
TOP_CHANNELS = 16  # channels listed in the click view, most changed first


class DivergenceError(CnnvizError):
    """Pictures that cannot be compared (the message says which and why)."""


# ---------------------------------------------------------------- pictures in a spec

@dataclass(frozen=True)
class Picture:
    """An 8-bit picture [H, W, 3] a spec carries: compared, hashed and keyed by its digest."""

    digest: str
    shape: tuple[int, int, int]
    data: bytes = field(repr=False, compare=False)

    @classmethod
    def of(cls, rgb: np.ndarray) -> "Picture":
        rgb = np.ascontiguousarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DivergenceError(f"Expected an 8-bit picture [H, W, 3], got {rgb.dtype} {list(rgb.shape)}.")
        data = rgb.tobytes()
        return cls(_digest(data), tuple(int(s) for s in rgb.shape), data)

    def check(self) -> "Picture":
        h, w, c = self.shape
        if c != 3 or not (1 <= h <= bounds.IMAGE_SIDE and 1 <= w <= bounds.IMAGE_SIDE) \
                or len(self.data) != h * w * 3 or _digest(self.data) != self.digest:
            raise DivergenceError(f"A picture of {list(self.shape)} that does not hold its pixels.")
        return self

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, np.uint8).reshape(self.shape)

    def pixels(self) -> torch.Tensor:
        """[1, 3, H, W] in [0, 1] (on the 1/255 grid)."""
        return from_uint8(self.array())


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# ---------------------------------------------------------------- specs

def layer_names(model: Model) -> list[str]:
    """The layers of the curve: `model.layers` call names in execution order (container
    blocks, where the model lists them, are left out: their children are rows already)."""
    return [l.name for l in model.layers if not getattr(l, "block", False)]


@dataclass(frozen=True)
class DivergenceSpec(Spec):
    """Every layer's relative change for `adversarial` and `noise` against the clean image
    (the job's `image`): one recorded pass of the three as one batch."""

    adversarial: Picture
    noise: Picture

    def check(self, model) -> "DivergenceSpec":
        _same_size(self.adversarial.check(), self.noise.check())
        return self

    def passes(self, model) -> int:
        return 3  # one batch: clean, adversarial, noise


@dataclass(frozen=True)
class LayerPairSpec(Spec):
    """`layer`'s full output on the clean image and on `adversarial`: one pass of the two
    as one batch, which stops at the layer."""

    layer: str
    adversarial: Picture

    def check(self, model) -> "LayerPairSpec":
        if not isinstance(self.layer, str):
            raise LayerNotFound(bounds._shown(self.layer), layer_names(model), where="")
        find_layer(self.layer, layer_names(model), where="")
        self.adversarial.check()
        return self

    def passes(self, model) -> int:
        return 2


def _same_size(*pictures: Picture) -> None:
    shapes = {p.shape for p in pictures}
    if len(shapes) != 1:
        raise DivergenceError(f"The pictures differ in size ({', '.join(str(list(s)) for s in shapes)}); "
                              "compare pictures of one size.")


# ---------------------------------------------------------------- results

@dataclass
class Divergence(Result):
    """Per layer, in execution order: `layer`, `adversarial` and `noise` (relative change,
    float or None), `top_changed` and `noise_top_changed` (of the top `k` channels),
    `channels` (size of the channel axis)."""

    rows: list[dict]
    fastest: str | None  # the layer where the adversarial change rose most (see the module's docstring)
    k: int = TOP_K

    @property
    def layers(self) -> list[str]:
        return [r["layer"] for r in self.rows]

    def row(self, layer: str) -> dict:
        return self.rows[self.layers.index(layer)]

    def layer_dicts(self) -> list[dict]:
        """The CLI's rows (`attack --layers`): {"layer", "adversarial", "noise", "top_changed"}."""
        return [{"layer": r["layer"], "adversarial": r["adversarial"], "noise": r["noise"],
                 "top_changed": r["top_changed"]} for r in self.rows]

    def to_dict(self) -> dict:
        return {"model": self.model, "layers": self.layer_dicts(), "fastest": self.fastest, "k": self.k,
                "seconds": self.seconds}


@dataclass
class LayerPair(Result):
    """One layer on the clean and the adversarial image: float32 maps [C, H, W] ([C, 1, 1]
    for a non-spatial output, `spatial` False) and the channels ranked by change."""

    layer: str
    clean: np.ndarray = field(repr=False)
    adversarial: np.ndarray = field(repr=False)
    spatial: bool = True
    k: int = TOP_K

    @property
    def change(self) -> np.ndarray:
        """||a1_c - a0_c||_2 per channel, float64 [C]."""
        d = (self.adversarial.astype(np.float64) - self.clean.astype(np.float64)).reshape(len(self.clean), -1)
        return np.sqrt((d * d).sum(1))

    def channels(self, n: int = TOP_CHANNELS) -> list[dict]:
        """The `n` channels that changed most (L2 of their difference; ties by index):
        index, change, share (of the layer's squared change), mean on each image, and
        whether the channel is among the top `k` by mean on each."""
        change = self.change
        total = float((change ** 2).sum())
        m0 = self.clean.reshape(len(self.clean), -1).mean(1, dtype=np.float64)
        m1 = self.adversarial.reshape(len(self.clean), -1).mean(1, dtype=np.float64)
        top0, top1 = set(_top(m0, self.k)), set(_top(m1, self.k))
        order = np.lexsort((np.arange(len(change)), -change))[:n]
        return [{"index": int(i), "change": float(change[i]),
                 "share": float(change[i] ** 2 / total) if total > 0 else 0.0,
                 "mean_clean": float(m0[i]), "mean_adversarial": float(m1[i]),
                 "top_clean": int(i) in top0, "top_adversarial": int(i) in top1} for i in order]

    def top_sets(self) -> tuple[list[int], list[int]]:
        """The top `k` channels by mean: (left the top on the adversarial image, entered it)."""
        m0 = self.clean.reshape(len(self.clean), -1).mean(1, dtype=np.float64)
        m1 = self.adversarial.reshape(len(self.clean), -1).mean(1, dtype=np.float64)
        t0, t1 = _top(m0, self.k), _top(m1, self.k)
        return [c for c in t0 if c not in t1], [c for c in t1 if c not in t0]

    @property
    def nbytes(self) -> int:
        return self.clean.nbytes + self.adversarial.nbytes

    def to_dict(self) -> dict:
        return {"model": self.model, "layer": self.layer, "shape": list(self.clean.shape),
                "channels": self.channels(), "seconds": self.seconds}


# ---------------------------------------------------------------- the computation

def _top(means: np.ndarray, k: int) -> list[int]:
    """The k largest (ties by index), in rank order."""
    return [int(i) for i in np.lexsort((np.arange(len(means)), -np.asarray(means, np.float64)))[:k]]


def _reduce(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's output [n, C, ...] reduced inside its hook: (||a0||, then ||aj - a0|| for
    each later row j; float32 [n]) and the channel means [n, C] (over positions)."""
    # Read in the order the values lie: outputs are often channels-last, where a plain
    # reshape copies them value by value (the reductions then cost 3x the pass itself).
    out = out.float()
    n, c = out.shape[0], out.shape[1]
    if out.ndim == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        cells = out.permute(0, 2, 3, 1).reshape(n, -1, c)  # [n, positions, C], a view
        flat, means = cells.reshape(n, -1), cells.mean(1)
    else:
        maps = out.reshape(n, c, -1)  # a view when contiguous
        flat, means = maps.reshape(n, -1), maps.mean(-1)
    norms = torch.linalg.vector_norm(flat[1:] - flat[0], dim=1) if n > 1 else flat.new_zeros(0)
    return torch.cat([torch.linalg.vector_norm(flat[0])[None], norms]), means


def _relative(diff: float, base: float) -> float | None:
    if base > 0:
        return diff / base
    return 0.0 if diff == 0 else None


def fastest_layer(rows: list[dict], key: str = "adversarial") -> str | None:
    """The layer whose `key` value rose most from the previous defined one (None: never rose)."""
    best, best_rise, prev = None, 0.0, None
    for r in rows:
        v = r[key]
        if v is None:
            continue
        if prev is not None and v - prev > best_rise:
            best, best_rise = r["layer"], v - prev
        prev = v
    return best


def divergence(model: Model, clean: torch.Tensor, adversarial: torch.Tensor, noise: torch.Tensor, *,
               k: int = TOP_K) -> Divergence:
    """The depth curve from pixels [1, 3, H, W] in [0, 1] of one size: one recorded
    forward pass of [clean, adversarial, noise] as one batch (an image equal to an earlier
    one is sent once). The caller holds `model.lock` or lets the recorder take it."""
    images = [clean, adversarial, noise]
    if len({tuple(x.shape) for x in images}) != 1 or clean.ndim != 4 or clean.shape[:2] != (1, 3):
        raise DivergenceError("Compare pictures of one size, as pixels [1, 3, H, W]: got "
                              + ", ".join(str(list(x.shape)) for x in images) + ".")
    batch, row_of = [], []
    for x in images:
        j = next((i for i, b in enumerate(batch) if torch.equal(b, x)), None)
        if j is None:
            batch.append(x)
            j = len(batch) - 1
        row_of.append(j)
    names = layer_names(model)
    _, reduced = record_reduced(model, model.normalize(torch.cat(batch).float()), _reduce, names)
    rows = []
    for name in names:
        if name not in reduced:  # a call this input did not make (another size, another path)
            continue
        norms, means = reduced[name]
        norms, means = norms.double().tolist(), means.double().numpy()
        base = norms[0]
        diff = [0.0 if j == 0 else norms[j] for j in row_of]  # ||aj - a0|| by image
        kk = min(k, means.shape[1])
        tops = [set(_top(means[j], kk)) for j in row_of]
        rows.append({"layer": name, "adversarial": _relative(diff[1], base), "noise": _relative(diff[2], base),
                     "top_changed": kk - len(tops[0] & tops[1]), "noise_top_changed": kk - len(tops[0] & tops[2]),
                     "channels": int(means.shape[1])})
    return Divergence(rows, fastest_layer(rows), k)


def layer_pair(model: Model, clean: torch.Tensor, adversarial: torch.Tensor, layer: str, *,
               k: int = TOP_K) -> LayerPair:
    """`layer`'s outputs for [clean, adversarial] from one pass that stops at it."""
    _, outs = record(model, model.normalize(torch.cat([clean, adversarial]).float()), [layer], stop=True)
    out = outs[layer]
    a = (out if out.ndim == 4 else out.reshape(2, out.shape[1], -1, 1)).float().numpy()
    return LayerPair(layer, a[0].copy(), a[1].copy(), spatial=out.ndim == 4, k=k)


def run(model: Model, image: Image.Image | torch.Tensor, spec: DivergenceSpec | LayerPairSpec, *,
        progress: Progress | None = None) -> Divergence | LayerPair:
    """`image`: the clean picture (PIL, resized and cropped as the model does, or pixels
    [1, 3, H, W] in [0, 1]), put on the 1/255 grid as the attacks put it."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    x0 = grid_pixels(model, image)
    x1 = spec.adversarial.pixels()
    if tuple(x0.shape[-2:]) != spec.adversarial.shape[:2]:
        raise DivergenceError(f"The clean image is {x0.shape[-1]}x{x0.shape[-2]} pixels, the adversarial one "
                              f"{spec.adversarial.shape[1]}x{spec.adversarial.shape[0]}; compare pictures of one size.")
    progress(0.0, "one forward pass")
    if isinstance(spec, DivergenceSpec):
        out = divergence(model, x0, x1, spec.noise.pixels())
    elif isinstance(spec, LayerPairSpec):
        out = layer_pair(model, x0, x1, spec.layer)
    else:
        raise TypeError(f"cnnviz.divergence cannot run {type(spec).__name__}")
    progress(1.0, "one forward pass")
    return out
