"""Saliency: which pixels (or which regions of a layer) drove a class score.

The contract's one entry point, `run(model, image, spec)`, takes a `SaliencySpec` (one
method, one target) or a `SweepSpec` (Grad-CAM at every stage from one pass). Every
method is described once, in `METHODS` (label, whether it takes a layer, whether it is
guided, what it costs, whether the trust checks offer it): the page, the CLI and
`cnnviz.trust` read it. Maps come back at input resolution, float32 [H, W]; CAM maps are
non-negative. `attribute(model, image, method, ...)` is the same computation with the
spec's fields as arguments (Captum's uniform signature, mirrored).

- Grad-CAM, Grad-CAM++ and Score-CAM are written here over `hooks.Recorder`: a layer
  call is named exactly (`_swish#1`, the second call of a shared module), and the
  gradient is taken with `torch.autograd.grad` down to that layer only; the recorder
  makes the layer's output the graph's leaf, so the pass before it builds no graph.
- Vanilla gradients, SmoothGrad, Integrated Gradients, Occlusion and Guided Backprop
  come from Captum, run on the pixel-space network ([0, 1] inputs). Guided Grad-CAM is
  Captum's Guided Backprop times our upsampled Grad-CAM (Captum's GuidedGradCam cannot
  name one call of a shared module).
- Integrated Gradients' and SmoothGrad's many gradient passes, and Score-CAM's masked
  passes, run on `Model.fast_net`
  (BatchNorm folded into the convolutions: the same function to float rounding, faster
  per pass); IG's convergence delta and the target's probability come from `pixel_net`.
- A target "A rather than B" (`contrast`) attributes the logit difference A - B.
- The result names the target's label and probability, taken from the logits of the
  method's own pass on the image where it makes one, else from one `predict.classify`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import bounds, faithfulness
from .activations import LayerNotFound
from .contract import CnnvizError, Progress, Result, Spec
from .hooks import Recorder, as_map, unguided_activations
from .model import Model
from .predict import classify

EPS = 1e-7


class SaliencyError(CnnvizError):
    """A method cannot be applied as asked (the message says why and what instead)."""


# ---------------------------------------------------------------- specs and the method registry

@dataclass(frozen=True)
class SaliencySpec(Spec):
    """One attribution. `target`: class index (None: the model's top-1). `layer`: for
    methods that take one (None: `model.gradcam_layer`; ignored by the others).
    `contrast`: explain `target` rather than this class (logit difference). Multi-pass
    methods run `batch_size` images at a time, so memory stays flat."""

    method: str
    target: int | None = None
    layer: str | None = None
    contrast: int | None = None
    batch_size: int = 8
    smooth_samples: int = 24
    smooth_std: float = 0.15
    ig_steps: int = 32
    occlusion_window: int = 32
    occlusion_stride: int = 16

    def check(self, model) -> "SaliencySpec":
        method = METHODS.get(self.method)
        if method is None:
            raise SaliencyError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        target, contrast = check_class(model, self.target), check_class(model, self.contrast)
        side = min(model.input_size)
        knobs = {name: bounds.whole(getattr(self, name), name, 1, hi, SaliencyError) for name, hi in (
            ("batch_size", bounds.MAX_BATCH), ("smooth_samples", bounds.MAX_SAMPLES), ("ig_steps", bounds.MAX_SAMPLES),
            ("occlusion_window", side), ("occlusion_stride", side))}
        smooth_std = bounds.number(self.smooth_std, "smooth_std", 0, 1, SaliencyError, unit="(pixel range 0-1)")
        layer = check_cam_layer(model, self.layer) if method.takes_layer else None
        checked = replace(self, target=target, contrast=contrast, layer=layer, smooth_std=smooth_std, **knobs)
        return self if checked == self else checked

    def passes(self, model) -> int:
        return self.passes_at(model, tuple(model.input_size))

    def passes_at(self, model, size) -> int:
        """The method's images on pixels of `size`, and the classifying pass that finds
        the top-1 when `target` is None (SmoothGrad makes that pass either way)."""
        method = METHODS.get(self.method)
        return method.passes(self, model, size) if method else 1


@dataclass(frozen=True)
class SweepSpec(Spec):
    """Grad-CAM at several layers (None: the last layer of every stage, `stage_layers`)
    from one forward and one backward pass. `advise`: the layer advisor: each map (and a
    random order) scored by deletion and insertion (`cnnviz.faithfulness`, `steps` cuts,
    one batched set of passes), the best layer named."""

    target: int | None = None
    contrast: int | None = None
    layers: tuple[str, ...] | None = None
    advise: bool = False
    steps: int = faithfulness.STEPS
    seed: int = 0

    def check(self, model) -> "SweepSpec":
        if isinstance(self.layers, str):
            raise SaliencyError(f"Give the layers as a list of names, not the text {bounds._shown(self.layers)}.")
        layers = tuple(dict.fromkeys(check_cam_layer(model, l) for l in (self.layers or stage_layers(model))))
        if len(layers) > bounds.MAX_SWEEP_LAYERS:
            raise SaliencyError(f"A sweep takes at most {bounds.MAX_SWEEP_LAYERS} layers, not {len(layers)}.")
        checked = replace(self, target=check_class(model, self.target), contrast=check_class(model, self.contrast),
                          layers=layers, advise=bool(self.advise),
                          steps=bounds.whole(self.steps, "steps", 2, bounds.MAX_CURVE_STEPS, SaliencyError),
                          seed=bounds.seed(self.seed, SaliencyError))
        return self if checked == self else checked

    def passes(self, model) -> int:
        """One forward and backward for every map, the top-1's pass when `target` is None,
        and the advisor's deletion and insertion images (the layers' and a random order)."""
        layers = self.layers or stage_layers(model)
        curves = faithfulness.passes(len(layers) + 1, int(self.steps)) if self.advise else 0
        return 1 + (self.target is None) + curves


@dataclass(frozen=True)
class Method:
    """What the page, the CLI, the job runner and the trust checks know of a method, and
    its implementation: `compute(model, x, score, spec, progress, exact)` -> `_Maps`."""

    name: str
    label: str  # how the page names it
    compute: Callable[..., "_Maps"] = field(repr=False)
    # images through the network with a target given, (spec, model, (h, w)) -> int
    cost: Callable[[SaliencySpec, Model, tuple], int] = lambda spec, model, size: 1
    takes_layer: bool = False  # Grad-CAM-style: a map of one layer's output
    guided: bool = False  # Guided Backprop inside: only honest on nets whose activations are nn.ReLU
    trust: bool = True  # offered by the trust checks (`cnnviz.trust`)

    def passes(self, spec: SaliencySpec, model: Model, size: tuple[int, int] | None = None) -> int:
        """Images through the network for `spec` on pixels of `size` (default: the input's);
        a target of None adds the pass that finds the top-1 (SmoothGrad's cost has it)."""
        n = int(self.cost(spec, model, tuple(size or model.input_size)))
        return n + (spec.target is None and self.name != "smoothgrad")


def _windows(size: int, window: int, stride: int) -> int:
    """Positions of a sliding window along one axis, as Captum's Occlusion counts them."""
    return -(-max(size - window, 0) // stride) + 1


def _scorecam_passes(spec: SaliencySpec, model: Model, size=None) -> int:
    """The recording pass, the blank input, and one masked image per channel (at most:
    channels that are constant on the image share the blank input's pass)."""
    layer = spec.layer or model.gradcam_layer
    channels = next((l.shape[0] for l in model.layers if l.name == layer), 1)
    return 2 + channels


def _occlusion_passes(spec: SaliencySpec, size: tuple[int, int]) -> int:
    """The image itself, then one pass per window position on an image of `size` (h, w)."""
    h, w = size
    return 1 + (_windows(h, spec.occlusion_window, spec.occlusion_stride)
                * _windows(w, spec.occlusion_window, spec.occlusion_stride))


def check_class(model: Model, t: int | None) -> int | None:
    if t is None:
        return None
    n = len(model.categories)
    try:
        return bounds.whole(t, "The class", 0, n - 1, SaliencyError)
    except SaliencyError:
        raise SaliencyError(f"Class {bounds._shown(t)} does not exist; the model has {n} classes "
                            f"(0 to {n - 1}).") from None


def cam_layers(model: Model) -> list[str]:
    """Layers with a spatial output larger than 1x1, in execution order."""
    return [l.name for l in model.layers if len(l.shape) == 3 and l.shape[1] * l.shape[2] > 1]


def check_cam_layer(model: Model, layer: str | None) -> str:
    names = cam_layers(model)
    layer = layer or model.gradcam_layer
    if layer not in names:
        raise LayerNotFound(layer, names, fallback=True)
    return layer


def stage_layers(model: Model) -> list[str]:
    """The last CAM layer at each spatial resolution: one per stage of the network."""
    last: dict[tuple, str] = {}
    for name in cam_layers(model):
        last[next(l.shape[1:] for l in model.layers if l.name == name)] = name
    return list(last.values())


# ---------------------------------------------------------------- results

@dataclass
class Attribution(Result):
    method: str
    layer: str | None
    target: int
    contrast: int | None
    map: np.ndarray = field(repr=False)  # float32 [H, W] at input resolution
    layer_map: np.ndarray | None = field(default=None, repr=False)  # CAM at the layer's resolution
    delta: float | None = None  # Integrated Gradients' convergence delta
    total: float | None = None  # IG: sum of the signed attributions (completeness)
    label: str = ""  # the target's class name
    prob: float = float("nan")  # the target's probability on the image

    @property
    def empty(self) -> bool:
        """All zero: e.g. ReLU'd Grad-CAM for a class the layer does not support."""
        return not np.any(self.map)

    @property
    def peak(self) -> tuple[int, int]:
        y, x = np.unravel_index(int(np.argmax(self.map)), self.map.shape)
        return int(y), int(x)

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "layer": self.layer,
                "target": {"index": self.target, "label": self.label, "prob": self.prob},
                "shape": list(self.map.shape), "peak": list(self.peak), "seconds": self.seconds}


@dataclass
class Advice:
    """One layer's (or the random order's) deletion and insertion, as the advisor scores it."""

    layer: str
    deletion: np.ndarray = field(repr=False)  # the target's probability as pixels go, most salient first
    insertion: np.ndarray = field(repr=False)  # ... as they come back onto the blurred image
    deletion_auc: float = 0.0  # lower: more faithful
    insertion_auc: float = 0.0  # higher: more faithful

    @property
    def score(self) -> float:
        """Insertion minus deletion area: one number, higher for a map whose top pixels
        both carry the decision alone and take it away when removed."""
        return self.insertion_auc - self.deletion_auc

    def to_dict(self) -> dict:
        return {"layer": self.layer, "deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc}


@dataclass
class Sweep(Result):
    target: int
    contrast: int | None
    maps: dict[str, np.ndarray] = field(repr=False)  # layer -> Grad-CAM float32 [H, W] at input resolution
    advice: list[Advice] | None = None  # the advisor's scores, per layer in the sweep's order
    random: Advice | None = None  # the same for a random order: the bar a layer must clear

    @property
    def best(self) -> str | None:
        """The advisor's choice: the layer with the highest insertion minus deletion area."""
        return max(self.advice, key=lambda a: a.score).layer if self.advice else None

    def to_dict(self) -> dict:
        d = {"model": self.model, "target": self.target, "contrast": self.contrast, "layers": list(self.maps),
             "seconds": self.seconds}
        if self.advice is not None:
            d |= {"advice": [a.to_dict() for a in self.advice], "best": self.best,
                  "random": {k: v for k, v in self.random.to_dict().items() if k != "layer"}}
        return d


# ---------------------------------------------------------------- entry points

def run(model: Model, image, spec: SaliencySpec | SweepSpec, *, progress: Progress | None = None
        ) -> Attribution | Sweep:
    """The job runner's entry point: an `Attribution` for a `SaliencySpec`, a `Sweep` for
    a `SweepSpec`. `image`: a PIL image or pixels [1, 3, H, W] in [0, 1]."""
    if isinstance(spec, SweepSpec):
        return _sweep(model, image, spec.check(model), Progress.of(progress))
    return attribute(model, image, spec.method, spec.target, spec.layer, spec.contrast, batch_size=spec.batch_size,
                     smooth_samples=spec.smooth_samples, smooth_std=spec.smooth_std, ig_steps=spec.ig_steps,
                     occlusion_window=spec.occlusion_window, occlusion_stride=spec.occlusion_stride,
                     progress=progress)


def _sweep(model: Model, image, spec: SweepSpec, progress: Progress) -> Sweep:
    target = spec.target if spec.target is not None else int(classify(model, model.to_pixels(image))[0].argmax())
    maps = gradcam_sweep(model, image, target, spec.contrast, list(spec.layers))
    if not spec.advise:
        return Sweep(target, spec.contrast, maps)
    progress(0.0, "Scoring each layer's map by deletion and insertion")
    # The contrast's maps are scored on the target's probability: what the user asked to explain.
    found = faithfulness.curves(model, image, {**maps, faithfulness.RANDOM: None}, target, spec.steps, spec.seed,
                                progress=progress)
    scored = [Advice(name, c["deletion"], c["insertion"], faithfulness.area(c["deletion"]),
                     faithfulness.area(c["insertion"])) for name, c in found.items()]
    return Sweep(target, spec.contrast, maps, scored[:-1], scored[-1])


class _Score(nn.Module):
    """Logit of `target`, minus the logit of `contrast` when given; output [N, 1].
    Keeps the logits of its first call's first image (`first`): the image itself for
    every method whose first pass is on it, so its probability costs no extra pass."""

    def __init__(self, net: nn.Module, target: int, contrast: int | None, counter=None):
        super().__init__()
        self.net, self.target, self.contrast = net, target, contrast
        self.counter = counter
        self.first: torch.Tensor | None = None

    def forward(self, x):
        if self.counter:
            self.counter(x.shape[0])
        logits = self.net(x)
        if self.first is None:
            self.first = logits[0].detach()
        s = logits[:, self.target]
        if self.contrast is not None:
            s = s - logits[:, self.contrast]
        return s[:, None]


def _counter(total: int, progress: Progress):
    """Report progress as images pass through (Captum's batched loops of IG steps,
    SmoothGrad samples and occlusion windows have no callback of their own): called
    before each batch, so a stop request ends the job within one batch."""
    seen = 0

    def count(n: int) -> None:
        nonlocal seen
        seen += n
        f = min(1.0, seen / total)
        progress(f, f"{f:.0%} of the passes")

    return count


def attribute(model: Model, image: Image.Image | torch.Tensor, method: str, target: int | None = None,
              layer: str | None = None, contrast: int | None = None, *, batch_size: int = 8,
              smooth_samples: int = 24, smooth_std: float = 0.15, ig_steps: int = 32,
              occlusion_window: int = 32, occlusion_stride: int = 16, progress: Progress | None = None,
              exact: bool = False) -> Attribution:
    """Attribution of one class score for one image (the fields of `SaliencySpec`).

    `image`: a PIL image, or pixels [1, 3, H, W] in [0, 1] (already resized). Multi-pass
    methods report `progress(fraction, text)` per batch of passes (and stop there when
    asked). `exact`: run every pass on `pixel_net`, never on the folded `fast_net`: for
    a model whose weights were replaced after its folded copy was made (the
    randomization check's), where `fast_net` would still be the trained network.
    """
    spec = SaliencySpec(method, target, layer, contrast, batch_size, smooth_samples, smooth_std, ig_steps,
                        occlusion_window, occlusion_stride).check(model)
    progress = Progress.of(progress)
    x = model.to_pixels(image)
    target, contrast, cam_layer = spec.target, spec.contrast, spec.layer
    probs = None
    if target is None:
        probs = classify(model, x)[0]
        target = int(probs.argmax())
    if METHODS[method].guided:
        check_guided(model)
    # No .eval(): the net is in eval mode already, and walking its 2,800 modules costs 2.6 ms.
    score = _Score(model.pixel_net, target, contrast)
    out = METHODS[method].compute(model, x, score, spec, progress, exact)
    if probs is None:  # from the method's own pass on the image, where it made one
        probs = score.first.double().softmax(-1).numpy() if score.first is not None else classify(model, x)[0]
    return Attribution(method, cam_layer, target, contrast, np.ascontiguousarray(out.map, np.float32), out.layer_map,
                       out.delta, out.total, label=model.categories[target], prob=float(probs[target]))


class _Maps(NamedTuple):
    map: np.ndarray  # [H, W] at the input's resolution
    layer_map: np.ndarray | None = None
    delta: float | None = None
    total: float | None = None


def upsample(cam: np.ndarray, size) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(cam, np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


# ---------------------------------------------------------------- CAMs over our hooks

def _graph_input(model: Model, x: torch.Tensor, layers: list[str]) -> tuple[torch.Tensor, bool]:
    """(input, leaf) for a pass whose gradient is wanted down to `layers` only. Usually the
    recorder makes the first layer's output the graph's leaf, and the pass before it builds
    no graph. A layer whose output a later in-place op changes (ResNet's `out += identity`)
    cannot be a leaf: then the input carries the graph (parameters are frozen)."""
    if any(l in model.mutated_layers for l in layers):
        return x.detach().requires_grad_(True), False
    return x.detach(), True


def _layer_and_grad(model: Model, score: nn.Module, x: torch.Tensor, layer: str):
    """The layer's output [C, h, w] and d(score)/d(output): one forward (with a graph from
    the layer on) and a backward to the layer only."""
    x, leaf = _graph_input(model, x, [layer])
    with Recorder(model, [layer], detach=False, leaf=leaf, raw=True) as rec, torch.enable_grad():
        s = score(x).sum()
        act = rec.outputs[layer]
        (grad,) = torch.autograd.grad(s, act)
    # A transformer's tokens, and their gradient, on the patch grid (no reshape to write).
    return as_map(model, layer, act.detach())[0], as_map(model, layer, grad)[0]


def _gradcam(model, score, x, layer, batch_size, progress=None) -> np.ndarray:
    act, grad = _layer_and_grad(model, score, x, layer)
    weights = grad.mean((1, 2))
    return F.relu((weights[:, None, None] * act).sum(0)).numpy()


def _gradcampp(model, score, x, layer, batch_size, progress=None) -> np.ndarray:
    """Chattopadhyay et al. 2018: pixel-wise weights from second and third powers of
    the gradient (the closed form for an exponential score),
    alpha = g^2 / (2 g^2 + sum(A) g^3), written as 1 / (2 + sum(A) g): the same ratio with
    g^2 cancelled, so no epsilon is needed (gradients of 1e-4 make 2 g^2 as small as any
    epsilon, which moved the map by up to a quarter of its peak). Only g > 0 counts (the
    weights take relu(g))."""
    act, grad = _layer_and_grad(model, score, x, layer)
    denom = 2 + act.sum((1, 2), keepdim=True) * grad
    alpha = torch.where((grad > 0) & (denom != 0), 1 / denom, torch.zeros_like(grad))
    weights = (alpha * F.relu(grad)).sum((1, 2))
    return F.relu((weights[:, None, None] * act).sum(0)).numpy()


def _scorecam(model, x, score, spec, progress, exact) -> _Maps:
    """Wang et al. 2020: each channel, upsampled and min-max normalized, masks the input;
    the masked inputs' scores, softmaxed over channels, weight the channels.

    A constant channel (most of a ReLU layer's) normalizes to an all-zero mask, so all
    of them share one pass on the blank input: the same numbers for far fewer passes.
    Masks are made a batch at a time, so memory stays flat for 1280 channels. The masked
    passes need no hooks: they run on the folded network (`_fast`), like IG's.
    """
    with Recorder(model, [spec.layer]) as rec, torch.no_grad():
        score(x)
    act = rec.outputs[spec.layer][0]
    flat = act.flatten(1)
    varying = (flat.amax(1) > flat.amin(1)).nonzero()[:, 0]
    scores = torch.empty(len(act))
    masked, n, b = _fast(model, score, exact), len(varying), spec.batch_size
    with torch.no_grad():
        scores[:] = masked(torch.zeros_like(x))[0, 0]
        for i in range(0, n, b):
            progress(i / max(1, n), f"{i} of {n} channels")
            idx = varying[i: i + b]
            # align_corners=True, as the Score-CAM reference code (pytorch-grad-cam) upsamples
            up = F.interpolate(act[idx][None], size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
            lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
            scores[idx] = masked(x * ((up - lo) / (hi - lo + EPS))[:, None])[:, 0]
        progress(1.0, f"{n} of {n} channels")
    weights = torch.softmax(scores, 0)
    layer_map = F.relu((weights[:, None, None] * act).sum(0)).numpy()
    return _Maps(upsample(layer_map, x.shape[-2:]), layer_map)


def gradcam_sweep(model: Model, image: Image.Image | torch.Tensor, target: int | None = None,
                  contrast: int | None = None, layers: list[str] | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM at several layers from one forward and one backward pass, each map
    upsampled to the input: early layers are sharp but literal, late ones coarse
    but semantic."""
    x = model.to_pixels(image)
    layers = [check_cam_layer(model, l) for l in (layers or stage_layers(model))]
    if target is None:
        with torch.no_grad():
            target = int(model.pixel_net(x).argmax(1))
    score = _Score(model.pixel_net, target, contrast)
    xg, leaf = _graph_input(model, x, layers)
    with Recorder(model, layers, detach=False, leaf=leaf, raw=True) as rec, torch.enable_grad():
        s = score(xg).sum()
        acts = [rec.outputs[l] for l in layers]
        grads = torch.autograd.grad(s, acts)
    out = {}
    for name, act, grad in zip(layers, acts, grads):
        act, grad = as_map(model, name, act), as_map(model, name, grad)
        cam = F.relu((grad[0].mean((1, 2))[:, None, None] * act.detach()[0]).sum(0)).numpy()
        out[name] = upsample(cam, x.shape[-2:])
    return out


def _cam(fn):
    """A CAM method over `fn(model, score, x, layer, batch_size, progress)` -> the layer's map."""
    def compute(model, x, score, spec, progress, exact) -> _Maps:
        layer_map = fn(model, score, x, spec.layer, spec.batch_size, progress)
        return _Maps(upsample(layer_map, x.shape[-2:]), layer_map)
    return compute


def _guided_gradcam(model, x, score, spec, progress, exact) -> _Maps:
    cam = _cam(_gradcam)(model, x, score, spec, progress, exact)
    return _Maps(cam.map * _guided_backprop(score, x), cam.layer_map)


# ---------------------------------------------------------------- Captum
# Passes go through `score` (pixel_net; a first pass on the image gives the target's
# probability), except IG's and SmoothGrad's many gradient passes (and Score-CAM's masked
# passes): those go through `_fast` (the folded network). Multi-pass methods count their
# images into `progress`.

def _fast(model, score: _Score, exact: bool) -> _Score:
    return _Score(model.pixel_net if exact else model.fast_net, score.target, score.contrast, score.counter)


def _gradients(model, x, score, spec, progress, exact) -> _Maps:
    from captum.attr import Saliency

    a = Saliency(score).attribute(x.detach().requires_grad_(True), target=0, abs=True)
    return _Maps(a.detach()[0].amax(0).numpy())


def _smoothgrad(model, x, score, spec, progress, exact) -> _Maps:
    """Every pass is on a noisy copy: the image's probability costs `attribute` one more."""
    from captum.attr import NoiseTunnel, Saliency

    score.counter = _counter(spec.smooth_samples, progress)
    a = NoiseTunnel(Saliency(_fast(model, score, exact))).attribute(
        x.detach().requires_grad_(True), nt_type="smoothgrad", nt_samples=spec.smooth_samples,
        nt_samples_batch_size=spec.batch_size, stdevs=spec.smooth_std, target=0, abs=True)
    return _Maps(a.detach()[0].amax(0).numpy())


def _integrated_gradients(model, x, score, spec, progress, exact) -> _Maps:
    from captum.attr import IntegratedGradients

    score.counter = _counter(spec.ig_steps + 2, progress)
    base = torch.zeros_like(x)
    a = IntegratedGradients(_fast(model, score, exact)).attribute(
        x.detach().requires_grad_(True), baselines=base, target=0, n_steps=spec.ig_steps,
        internal_batch_size=spec.batch_size).detach()
    with torch.no_grad():  # the two ends on the network the user sees; the first gives the image's logits
        ends = torch.cat([score(x.detach()), score(base)])[:, 0]  # one at a time: as `classify` rounds
    total = a.sum()
    return _Maps(a[0].sum(0).abs().numpy(), None, float((total - (ends[0] - ends[1])).abs()), float(total))


def _occlusion(model, x, score, spec, progress, exact) -> _Maps:
    from captum.attr import Occlusion

    score.counter = _counter(_occlusion_passes(spec, x.shape[-2:]), progress)  # x may be smaller than the input
    a = Occlusion(score).attribute(
        x.detach(), sliding_window_shapes=(3, spec.occlusion_window, spec.occlusion_window),
        strides=(3, spec.occlusion_stride, spec.occlusion_stride), target=0, baselines=0.5,
        perturbations_per_eval=spec.batch_size)
    return _Maps(a[0].mean(0).numpy())  # signed: the score drops where the patch hides evidence


def _guided_backprop_map(model, x, score, spec, progress, exact) -> _Maps:
    return _Maps(_guided_backprop(score, x))


def _guided_backprop(score, x) -> np.ndarray:
    a = _guided_class()(score).attribute(x.detach().requires_grad_(True), target=0)
    return a.detach()[0].abs().amax(0).numpy()


@functools.cache
def _guided_class():
    """Captum's Guided Backprop, with its rule extended from nn.ReLU to the clamp
    activations (nn.Hardtanh, so nn.ReLU6): the backward hook keeps only the positive
    part of the gradient the module passes back, and a clamp passes gradient only where
    its input lies inside the linear range, so the guided gradient is
    relu(grad_out) * [lo < x < hi], ReLU's own rule (lo = 0, hi = inf) for a clamp.
    Only the choice of modules is ours; Captum registers and removes the hooks."""
    from captum._utils.common import _register_backward_hook
    from captum.attr import GuidedBackprop

    class GuidedClamps(GuidedBackprop):
        def _register_hooks(self, module: nn.Module) -> None:
            if isinstance(module, GUIDED_MODULES):
                self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))

    return GuidedClamps


# ---------------------------------------------------------------- the registry

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM", _cam(_gradcam), takes_layer=True),
    Method("gradcampp", "Grad-CAM++", _cam(_gradcampp), takes_layer=True),
    Method("scorecam", "Score-CAM (slow: one pass per channel)", _scorecam, _scorecam_passes,
           takes_layer=True, trust=False),
    Method("guided_gradcam", "Guided Grad-CAM", _guided_gradcam, lambda spec, model, size: 2, takes_layer=True,
           guided=True, trust=False),
    Method("gradients", "Vanilla gradients", _gradients),
    # the noisy samples, and the image's probability (one classifying pass)
    Method("smoothgrad", "SmoothGrad", _smoothgrad, lambda spec, model, size: spec.smooth_samples + 1),
    Method("ig", "Integrated Gradients", _integrated_gradients,
           lambda spec, model, size: spec.ig_steps + 2),  # + the two ends for the delta
    Method("occlusion", "Occlusion", _occlusion, lambda spec, model, size: _occlusion_passes(spec, size)),
    Method("guided_backprop", "Guided Backprop", _guided_backprop_map, guided=True, trust=False),
)}


# ---------------------------------------------------------------- guided methods

# Activations the guided rule is defined for: ReLU, and the clamps (ReLU6 is an nn.Hardtanh).
GUIDED_MODULES = (nn.ReLU, nn.Hardtanh)
_PRETTY = {"hardtanh": "hardtanh outside nn.Hardtanh/ReLU6 modules", "relu": "F.relu outside nn.ReLU modules",
           "silu": "SiLU", "gelu": "GELU", "hardswish": "Hardswish"}


def unguided(model: Model) -> list[str]:
    """The activations `model` applies outside the guided modules, named for a reader (found
    by watching one forward pass, once per model: weights do not change which functions run)."""
    found = model._shared("unguided", lambda: unguided_activations(model, GUIDED_MODULES))
    return [_PRETTY.get(b, b) for b in found]


def check_guided(model: Model) -> None:
    bad = unguided(model)
    if bad:
        raise SaliencyError(
            f"Guided Backprop changes only ReLU and clamp (ReLU6) modules, but {model.label} also applies "
            f"{', '.join(bad)}: there the rule is not defined (a smooth activation "
            "has no range where its gradient is simply passed or blocked), and its guided maps would silently "
            "be plain gradients. Use Grad-CAM, gradients or Integrated Gradients for this model.")
