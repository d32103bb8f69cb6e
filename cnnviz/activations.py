"""Activation maps: what each layer computes, channel by channel.

One entry point, `run(model, image, spec)`:

- `ActivationsSpec(layers)`: one forward pass recording the chosen layers (call names,
  `_swish#1` for a shared module's second call), or every layer with a spatial output;
  with chosen layers the pass stops at the last of them. The `Activations` result holds
  the maps and derives from them, once each, the channel statistics and the mosaics.
  A ViT's class token, which has no place on the patch grid, comes from the same pass
  apart (`class_token`, and its cosine similarity to each patch token, `cls_similarity`).
- `DepthSpec()`: the depth summary (per spatial layer: mean, fraction of zeros, shape)
  from one pass that reduces every output inside its hook and keeps none.
  The Activations page asks for the layer it shows (`ActivationsSpec((layer,))`: one map,
  at most 4.8 MB for the bundled model, where all of its maps take about 75 MB) and, in
  its own tab, for the depth summary (a few KB per image). Another layer is another
  short job, cached by its spec.
- `LayersSpec()`: the inspectable layers in execution order (`python -m cnnviz layers`).

`check_layer` / `find_layer` are the one layer-name check (cnnviz.receptive,
saliency and featurevis use them too): unknown names raise `LayerNotFound` naming the
closest ones.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from .contract import NotFound, Progress, Result, Spec
from .hooks import record, record_reduced
from .model import LayerInfo, Model

SORTS = ("mean", "max", "sparsity")
SCALES = ("global", "channel")
GAP_RGB = (31, 78, 121)
LAYERS_HINT = "List them with `python -m cnnviz layers`."
TOP_LEVEL = "top level (stem, head)"


class LayerNotFound(NotFound):
    """A layer name the model does not have (or without a spatial output)."""

    def __init__(self, layer: str, known: list[str], fallback: bool = False, *,
                 where: str = "with a spatial output", hint: str = LAYERS_HINT):
        self.layer = layer
        super().__init__("layer", layer, known, hint, where=where, fallback=fallback)


def find_layer(layer: str, known: list[str], *, error: type[LayerNotFound] = LayerNotFound, **message) -> str:
    """The one layer-name check: `layer` if it is one of `known`, else `error` (a
    `LayerNotFound`) naming the closest; `message`: its `where` / `hint` / `fallback`."""
    if layer not in known:
        raise error(layer, list(known), **message)
    return layer


def spatial_layers(model: Model) -> list[str]:
    """Layers whose output is a stack of maps [C, H, W], in execution order."""
    return [l.name for l in model.layers if len(l.shape) == 3]


def check_layer(model: Model, layer: str, *, spatial: bool = True) -> str:
    """`layer` if the model has it (with a spatial output, unless `spatial` is False)."""
    if spatial:
        return find_layer(layer, spatial_layers(model))
    return find_layer(layer, [l.name for l in model.layers], where="")


def compute(model: Model, image: Image.Image, layers: list[str] | None = None) -> dict[str, np.ndarray]:
    """One forward pass; {layer call name: float32 [C, H, W]} for spatial layers
    (all of them when `layers` is None). `image`: PIL or [1, 3, H, W] pixels in [0, 1].
    With `layers` the pass stops at the last of them (the rest of the network is not run)."""
    return _recorded(model, image, layers)[0]


def _recorded(model: Model, image, layers: list[str] | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`compute`'s maps, and from the same pass the class token (float32 [C]) of each
    layer whose output has one (a ViT's tokens; none for a CNN or Swin)."""
    wanted = spatial_layers(model) if layers is None else [check_layer(model, l) for l in layers]
    cls: dict = {}
    _, outs = record(model, model.preprocess(image), wanted, stop=layers is not None, cls_tokens=cls)
    return {n: outs[n][0].numpy() for n in wanted}, {n: cls[n][0].numpy() for n in wanted if n in cls}


def cosine_map(acts: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Cosine similarity of `vector` [C] with the channel vector at each position of
    `acts` [C, H, W] (a patch token, for a ViT): float32 [H, W], 0 where either is zero."""
    flat = acts.reshape(acts.shape[0], -1).astype(np.float64)
    v = vector.astype(np.float64)
    norms = np.linalg.norm(v) * np.linalg.norm(flat, axis=0)
    sim = np.divide(v @ flat, norms, out=np.zeros(flat.shape[1]), where=norms > 0)
    return sim.reshape(acts.shape[1:]).astype(np.float32)


def _reduce(out: torch.Tensor) -> tuple:
    """What the depth summary needs of one output [1, C, H, W], reduced inside the
    recorder's hook (the map itself is then freed): its sum, its number of non-zero values
    (numpy's compare-and-count: torch's count_nonzero is several times slower on CPU), its
    shape [C, H, W]."""
    return out.sum(), int(np.count_nonzero(out.numpy() != 0)), tuple(out.shape[1:])


def depth_rows(model: Model, image) -> list[dict]:
    """One forward pass, no map kept: per spatial layer, in execution order, the mean
    activation, the fraction of zeros, channels and spatial size (as `depth_summary`)."""
    names = spatial_layers(model)
    _, reduced = record_reduced(model, model.preprocess(image), _reduce, names)
    reduced = {n: reduced[n] for n in names if n in reduced}
    sums = torch.stack([r[0] for r in reduced.values()]).tolist() if reduced else []
    rows = []
    for (name, (_, nonzero, shape)), total in zip(reduced.items(), sums):
        n = max(int(np.prod(shape)), 1)
        rows.append({"layer": name, "mean": total / n, "zeros": (n - nonzero) / n,
                     "channels": shape[0], "height": shape[1], "width": shape[2]})
    return rows


def block_of(name: str) -> str:
    """The stage/block a layer call belongs to ("_blocks.4" for "_blocks.4._bn1")."""
    return name.split("#")[0].rsplit(".", 1)[0] if "." in name else TOP_LEVEL


def blocks(names: list[str]) -> dict[str, str]:
    """Block -> its first layer, in execution order (the page's block picker)."""
    out: dict[str, str] = {}
    for n in names:
        out.setdefault(block_of(n), n)
    return out


@dataclass(frozen=True)
class ChannelStats:
    mean: np.ndarray  # [C]
    max: np.ndarray
    min: np.ndarray
    zeros: np.ndarray  # fraction of exactly-zero values

    @classmethod
    def of(cls, acts: np.ndarray) -> "ChannelStats":
        flat = acts.reshape(acts.shape[0], -1)
        return cls(flat.mean(1, dtype=np.float64), flat.max(1), flat.min(1), (flat == 0).mean(1))

    def order(self, by: str = "mean") -> np.ndarray:
        """Channel indices, strongest (or, for sparsity, emptiest) first; ties by index."""
        key = {"mean": -self.mean, "max": -self.max.astype(np.float64), "sparsity": -self.zeros}[by]
        return np.lexsort((np.arange(len(key)), key))

    def rows(self) -> list[dict]:
        return [{"index": i, "mean": float(self.mean[i]), "max": float(self.max[i]), "zeros": float(self.zeros[i])}
                for i in range(len(self.mean))]


def depth_summary(acts: dict[str, np.ndarray]) -> list[dict]:
    """Per layer: mean activation, fraction of zeros, channels and spatial size."""
    return [{"layer": n, "mean": float(a.mean(dtype=np.float64)), "zeros": float((a == 0).mean()),
             "channels": a.shape[0], "height": a.shape[1], "width": a.shape[2]} for n, a in acts.items()]


def mosaic(acts: np.ndarray, order: np.ndarray | None = None, scale: str = "global",
           max_pixels: int = 400_000) -> tuple[np.ndarray, "Grid"]:
    """All channels as one tile image (white = strong), RGB uint8 [H, W, 3].

    `scale`: "global" maps the layer's min..max to black..white for every tile (tiles
    comparable), "channel" stretches each tile on its own (shape of weak maps visible).
    Tiles wider than the pixel budget allows are shrunk by block averaging.
    """
    c, h, w = acts.shape
    order = np.arange(c) if order is None else np.asarray(order)
    f = 1
    while c * (h // f + 1) * (w // f + 1) > max_pixels and min(h, w) // (f + 1) >= 4:
        f += 1
    th, tw = h // f, w // f
    tiles = acts[order, : th * f, : tw * f].reshape(c, th, f, tw, f).mean((2, 4)) if f > 1 else acts[order]
    if scale == "channel":
        lo = tiles.min((1, 2), keepdims=True)
        hi = tiles.max((1, 2), keepdims=True)
    else:
        lo, hi = acts.min(), acts.max()
    norm = (tiles - lo) / np.maximum(hi - lo, 1e-12)
    cols = int(np.ceil(np.sqrt(c * tw / th) if th and tw else 1)) or 1
    cols = min(cols, c)
    rows = int(np.ceil(c / cols))
    gap = 1
    grey = np.zeros((rows * (th + gap) - gap, cols * (tw + gap) - gap), np.float32)
    empty = np.ones(grey.shape, bool)
    for k in range(c):
        r, q = divmod(k, cols)
        y, x = r * (th + gap), q * (tw + gap)
        grey[y: y + th, x: x + tw] = norm[k]
        empty[y: y + th, x: x + tw] = False
    out = np.repeat((np.clip(grey, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    out[empty] = GAP_RGB  # separators in a colour no activation takes
    return out, Grid(rows=rows, cols=cols, tile_h=th, tile_w=tw, gap=gap, order=order)


@dataclass(frozen=True)
class Grid:
    """Where each channel sits in a mosaic (tile k shows channel order[k])."""
    rows: int
    cols: int
    tile_h: int
    tile_w: int
    gap: int
    order: np.ndarray

    def centre(self, k: int) -> tuple[float, float]:
        r, q = divmod(k, self.cols)
        return (r * (self.tile_h + self.gap) + (self.tile_h - 1) / 2, q * (self.tile_w + self.gap) + (self.tile_w - 1) / 2)


def compare(a: np.ndarray, b: np.ndarray) -> list[dict]:
    """Channels ranked by how much their mean activation differs between two images."""
    ma, mb = a.reshape(a.shape[0], -1).mean(1), b.reshape(b.shape[0], -1).mean(1)
    d = mb - ma
    order = np.lexsort((np.arange(len(d)), -np.abs(d)))
    return [{"index": int(i), "mean_a": float(ma[i]), "mean_b": float(mb[i]), "diff": float(d[i])} for i in order]


def nbytes(acts: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in acts.values())


# ---------------------------------------------------------------- the contract

class Memo:
    """Values derived from a result, each computed once: results are shared read-only
    by every session (`cache.run_shared`), so a view change reads what an earlier one
    made. Thread-safe; bounded (least recently used out); pickles empty."""

    def __init__(self, size: int = 64):
        self.size = size
        self._values: dict = {}
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._values:
                self._values[key] = value = self._values.pop(key)  # now the most recent
                return value
        value = make()  # outside the lock: two sessions may both make it, one is kept
        with self._lock:
            value = self._values.setdefault(key, value)
            while len(self._values) > self.size:
                self._values.pop(next(iter(self._values)))
        return value

    def __getstate__(self):
        return {"size": self.size}

    def __setstate__(self, state):
        self.__init__(state["size"])


@dataclass(frozen=True)
class ActivationsSpec(Spec):
    """Record `layers` (call names with a spatial output) in one forward pass, which stops
    at the last of them; None: every spatial layer (all maps: ~75 MB on the bundled model)."""

    layers: tuple[str, ...] | None = None

    def check(self, model) -> "ActivationsSpec":
        if self.layers is None:
            return self
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
        for layer in layers:
            check_layer(model, layer)
        return self if layers == self.layers else replace(self, layers=layers)


@dataclass
class Activations(Result):
    """The recorded maps, {call name: float32 [C, H, W]} in execution order, and what
    the page and the CLI read from them. Read-only: sessions share it."""

    maps: dict[str, np.ndarray] = field(repr=False)
    # A ViT's class token per recorded layer whose output has one, float32 [C] (not on the
    # patch grid, so not in `maps`); empty for a CNN or Swin.
    cls_tokens: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # Stats and channel means of the recorded layers (small); the last two mosaics (the
    # view shown and the one before it, up to 1.2 MB each).
    memo: Memo = field(default_factory=lambda: Memo(1024), repr=False, compare=False)
    mosaics: Memo = field(default_factory=lambda: Memo(2), repr=False, compare=False)

    @property
    def layers(self) -> list[str]:
        """The layers whose full maps were kept."""
        return list(self.maps)

    @property
    def nbytes(self) -> int:
        return nbytes(self.maps) + nbytes(self.cls_tokens)

    def class_token(self, layer: str) -> np.ndarray | None:
        """The class token of `layer`, float32 [C], or None where its output has none."""
        return self.cls_tokens.get(layer)

    def cls_similarity(self, layer: str) -> np.ndarray | None:
        """Cosine similarity of the class token with each patch token of `layer`, [g, g]
        on the patch grid (`cosine_map`); None where the output has no class token."""
        if layer not in self.cls_tokens:
            return None
        return self.memo.get(("cls", layer), lambda: cosine_map(self.maps[layer], self.cls_tokens[layer]))

    def stats(self, layer: str) -> ChannelStats:
        return self.memo.get(("stats", layer), lambda: ChannelStats.of(self.maps[layer]))

    def depth_summary(self) -> list[dict]:
        """Per recorded layer: mean activation, fraction of zeros, channels and spatial size
        (for every layer without keeping their maps: `DepthSpec`)."""
        return self.memo.get("depth", lambda: depth_summary(self.maps))

    def mosaic(self, layer: str, sort: str = "mean", scale: str = "global") -> tuple[np.ndarray, "Grid"]:
        """All channels of `layer` as one tile image, strongest first by `sort` (see `mosaic`)."""
        return self.mosaics.get((layer, sort, scale),
                                lambda: mosaic(self.maps[layer], self.stats(layer).order(sort), scale))

    def channel_map(self, layer: str, channel: int | None = None) -> np.ndarray:
        """One channel's map [H, W], or (None) the mean over channels."""
        if channel is not None:
            return self.maps[layer][channel]
        return self.memo.get(("mean", layer), lambda: self.maps[layer].mean(0))

    def layer_dict(self, layer: str) -> dict:
        s = self.stats(layer)
        out = {"layer": layer, "shape": list(self.maps[layer].shape), "channels": s.rows(),
               "top": [int(i) for i in s.order("mean")[:16]]}
        if layer in self.cls_tokens:
            out["class_token"] = {"values": self.cls_tokens[layer].tolist(),
                                  "similarity": self.cls_similarity(layer).tolist()}
        return out

    def to_dict(self) -> dict:
        """One layer: {"layer", "shape", "channels", "top"} (`python -m cnnviz activations`),
        and for a layer whose output has a class token (a ViT's) "class_token": {"values":
        [C], "similarity": [[g x g]] (cosine with each patch token)}; several layers:
        {"layers": [those]}; with "model" and "seconds"."""
        if len(self.maps) == 1:
            body = self.layer_dict(self.layers[0])
        else:
            body = {"layers": [self.layer_dict(l) for l in self.maps]}
        return {"model": self.model, **body, "seconds": self.seconds}


@dataclass(frozen=True)
class DepthSpec(Spec):
    """The depth summary of every spatial layer, from one forward pass that reduces each
    output inside its hook (sum and count of zeros) and keeps no map."""


@dataclass
class Depth(Result):
    rows: list[dict]  # per spatial layer, execution order: layer, mean, zeros, channels, height, width

    @property
    def layers(self) -> list[str]:
        return [r["layer"] for r in self.rows]

    def to_dict(self) -> dict:
        return {"model": self.model, "layers": self.rows, "seconds": self.seconds}


@dataclass(frozen=True)
class LayersSpec(Spec):
    """The inspectable layers in execution order, one entry per call, with output shapes
    (one probe pass on a blank input at the model's input size)."""


@dataclass
class Layers(Result):
    input_size: tuple[int, int]
    layers: list[LayerInfo]

    def to_dict(self) -> dict:
        return {"model": self.model, "input_size": list(self.input_size),
                "layers": [{"name": l.name, "type": l.type, "shape": list(l.shape), "params": l.params,
                            "block": l.block} for l in self.layers], "seconds": self.seconds}


def run(model: Model, image, spec: ActivationsSpec | DepthSpec | LayersSpec = ActivationsSpec(), *,
        progress: Progress | None = None) -> Activations | Depth | Layers:
    """`ActivationsSpec`, `DepthSpec`: one forward pass on `image` (PIL, or [1, 3, H, W]
    pixels in [0, 1]); `LayersSpec`: the layer list (`image` unused)."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    if isinstance(spec, LayersSpec):
        return Layers(tuple(model.input_size), model.probe_layers())
    if not isinstance(spec, (ActivationsSpec, DepthSpec)):
        raise TypeError(f"cnnviz.activations cannot run {type(spec).__name__}")
    progress(0.0, "one forward pass")
    if isinstance(spec, DepthSpec):
        result = Depth(depth_rows(model, image))
    else:
        result = Activations(*_recorded(model, image, None if spec.layers is None else list(spec.layers)))
    progress(1.0, "one forward pass")
    return result
