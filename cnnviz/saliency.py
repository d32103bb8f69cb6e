"""Saliency: which pixels (or which regions of a layer) drove a class score.

One entry point, `attribute(model, image, method, target=..., layer=..., contrast=...)`,
for every method (Captum's uniform signature, mirrored). Maps come back at input
resolution, float32 [H, W]; CAM maps are non-negative.

- Grad-CAM, Grad-CAM++ and Score-CAM are written here over `hooks.Recorder`: a layer
  call is named exactly (`_swish#1`, the second call of a shared module), and the
  gradient is taken with `torch.autograd.grad` down to that layer only.
- Vanilla gradients, SmoothGrad, Integrated Gradients, Occlusion and Guided Backprop
  come from Captum, run on the pixel-space network ([0, 1] inputs). Guided Grad-CAM is
  Captum's Guided Backprop times our upsampled Grad-CAM (Captum's GuidedGradCam cannot
  name one call of a shared module).
- A target "A rather than B" (`contrast`) attributes the logit difference A - B.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .contract import CnnvizError
from .activations import LayerNotFound
from .hooks import Recorder, unguided_activations
from .model import Model

CAM_METHODS = ("gradcam", "gradcampp", "scorecam")
METHODS = ("gradcam", "gradcampp", "scorecam", "guided_gradcam", "gradients", "smoothgrad", "ig", "occlusion",
           "guided_backprop")
GUIDED = ("guided_backprop", "guided_gradcam")
EPS = 1e-7


class SaliencyError(CnnvizError):
    """A method cannot be applied as asked (the message says why and what instead)."""


@dataclass
class Attribution:
    method: str
    layer: str | None
    target: int
    contrast: int | None
    map: np.ndarray  # float32 [H, W] at input resolution
    layer_map: np.ndarray | None = None  # CAM at the layer's resolution
    delta: float | None = None  # Integrated Gradients' convergence delta
    total: float | None = None  # IG: sum of the signed attributions (completeness)

    @property
    def empty(self) -> bool:
        """All zero: e.g. ReLU'd Grad-CAM for a class the layer does not support."""
        return not np.any(self.map)

    @property
    def peak(self) -> tuple[int, int]:
        y, x = np.unravel_index(int(np.argmax(self.map)), self.map.shape)
        return int(y), int(x)


def cam_layers(model: Model) -> list[str]:
    """Layers with a spatial output larger than 1x1, in execution order."""
    return [l.name for l in model.layers if len(l.shape) == 3 and l.shape[1] * l.shape[2] > 1]


def check_cam_layer(model: Model, layer: str | None) -> str:
    names = cam_layers(model)
    layer = layer or model.gradcam_layer
    if layer not in names:
        raise LayerNotFound(layer, names, fallback=True)
    return layer


class _Score(nn.Module):
    """Logit of `target`, minus the logit of `contrast` when given; output [N, 1]."""

    def __init__(self, net: nn.Module, target: int, contrast: int | None):
        super().__init__()
        self.net, self.target, self.contrast = net, target, contrast
        self.counter = None

    def count(self, total: int, progress) -> None:
        """Report `progress(fraction)` as images pass through: Captum's batched loops
        (IG steps, SmoothGrad samples, Occlusion windows) have no callback of their own."""
        seen = 0

        def counter(n):
            nonlocal seen
            seen += n
            progress(min(1.0, seen / total))

        self.counter = counter if progress else None

    def forward(self, x):
        if self.counter:
            self.counter(x.shape[0])
        logits = self.net(x)
        s = logits[:, self.target]
        if self.contrast is not None:
            s = s - logits[:, self.contrast]
        return s[:, None]


def attribute(model: Model, image: Image.Image | torch.Tensor, method: str, target: int | None = None,
              layer: str | None = None, contrast: int | None = None, *, batch_size: int = 8,
              smooth_samples: int = 24, smooth_std: float = 0.15, ig_steps: int = 32,
              occlusion_window: int = 32, occlusion_stride: int = 16, progress=None) -> Attribution:
    """Attribution of one class score for one image.

    `image`: a PIL image, or pixels [1, 3, H, W] in [0, 1] (already resized).
    `target`: class index (default: the model's top-1). `layer`: for CAM methods and
    Guided Grad-CAM (default: `model.gradcam_layer`). Multi-pass methods batch their
    passes `batch_size` at a time, so memory stays flat. `progress(fraction)` is called
    as the passes of multi-pass methods finish.
    """
    if method not in METHODS:
        raise SaliencyError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    x = model.to_pixels(image) if isinstance(image, Image.Image) else image
    n = len(model.categories)
    with model.lock:
        if target is None:
            with torch.no_grad():
                target = int(model.pixel_net(x).argmax(1))
        for t in (target, contrast):
            if t is not None and not 0 <= t < n:
                raise SaliencyError(f"Class {t} does not exist; the model has {n} classes (0 to {n - 1}).")
        if method in GUIDED:
            check_guided(model)
        cam_layer = check_cam_layer(model, layer) if method in CAM_METHODS + ("guided_gradcam",) else None
        # No .eval(): the net is in eval mode already, and walking its 2,800 modules costs 2.6 ms.
        score = _Score(model.pixel_net, target, contrast)
        delta = layer_map = total = None
        if method in CAM_METHODS or method == "guided_gradcam":
            fn = {"gradcam": _gradcam, "gradcampp": _gradcampp, "scorecam": _scorecam,
                  "guided_gradcam": _gradcam}[method]
            layer_map = fn(model, score, x, cam_layer, batch_size, progress)
            full = upsample(layer_map, x.shape[-2:])
            if method == "guided_gradcam":
                full = full * _guided_backprop(score, x)
        else:
            passes = {"smoothgrad": smooth_samples, "ig": ig_steps + 2,  # + the two ends for the delta
                      "occlusion": 1 + _windows(x.shape[-2], occlusion_window, occlusion_stride)
                      * _windows(x.shape[-1], occlusion_window, occlusion_stride)}
            if method in passes:
                score.count(passes[method], progress)
            full, delta, total = _captum(method, score, x, batch_size, smooth_samples, smooth_std, ig_steps,
                                         occlusion_window, occlusion_stride)
    return Attribution(method, cam_layer, target, contrast, np.ascontiguousarray(full, np.float32),
                       layer_map, delta, total)


def _windows(size: int, window: int, stride: int) -> int:
    """Positions of a sliding window along one axis, as Captum's Occlusion counts them."""
    return -(-max(size - window, 0) // stride) + 1


def upsample(cam: np.ndarray, size) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(cam, np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


# ---------------------------------------------------------------- CAMs over our hooks

def _layer_and_grad(model: Model, score: nn.Module, x: torch.Tensor, layer: str):
    """The layer's output [C, h, w] and d(score)/d(output), one forward + a partial backward."""
    x = x.detach().requires_grad_(True)  # parameters are frozen: the input carries the graph
    with Recorder(model, [layer], detach=False) as rec, torch.enable_grad():
        s = score(x).sum()
        act = rec.outputs[layer]
        (grad,) = torch.autograd.grad(s, act)
    return act.detach()[0], grad[0]


def _gradcam(model, score, x, layer, batch_size, progress=None) -> np.ndarray:
    act, grad = _layer_and_grad(model, score, x, layer)
    weights = grad.mean((1, 2))
    return F.relu((weights[:, None, None] * act).sum(0)).numpy()


def _gradcampp(model, score, x, layer, batch_size, progress=None) -> np.ndarray:
    """Chattopadhyay et al. 2018: pixel-wise weights from second and third powers of
    the gradient (the closed form for an exponential score)."""
    act, grad = _layer_and_grad(model, score, x, layer)
    g2, g3 = grad ** 2, grad ** 3
    denom = 2 * g2 + act.sum((1, 2), keepdim=True) * g3
    alpha = torch.where(grad != 0, g2 / (denom + EPS), torch.zeros_like(grad))
    weights = (alpha * F.relu(grad)).sum((1, 2))
    return F.relu((weights[:, None, None] * act).sum(0)).numpy()


def _scorecam(model, score, x, layer, batch_size, progress=None) -> np.ndarray:
    """Wang et al. 2020: each channel, upsampled and min-max normalized, masks the input;
    the masked inputs' scores, softmaxed over channels, weight the channels.

    A constant channel (most of a ReLU layer's) normalizes to an all-zero mask, so all
    of them share one pass on the blank input: the same numbers for far fewer passes.
    Masks are made a batch at a time, so memory stays flat for 1280 channels.
    """
    with Recorder(model, [layer]) as rec, torch.no_grad():
        score.net(x)
    act = rec.outputs[layer][0]
    flat = act.flatten(1)
    varying = (flat.amax(1) > flat.amin(1)).nonzero()[:, 0]
    scores = torch.empty(len(act))
    with torch.no_grad():
        scores[:] = score(torch.zeros_like(x))[0, 0]
        for i in range(0, len(varying), batch_size):
            idx = varying[i: i + batch_size]
            # align_corners=True, as the Score-CAM reference code (pytorch-grad-cam) upsamples
            up = F.interpolate(act[idx][None], size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
            lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
            scores[idx] = score(x * ((up - lo) / (hi - lo + EPS))[:, None])[:, 0]
            if progress:
                progress(min(1.0, (i + batch_size) / len(varying)))
    weights = torch.softmax(scores, 0)
    return F.relu((weights[:, None, None] * act).sum(0)).numpy()


def stage_layers(model: Model) -> list[str]:
    """The last CAM layer at each spatial resolution: one per stage of the network."""
    last: dict[tuple, str] = {}
    for name in cam_layers(model):
        last[next(l.shape[1:] for l in model.layers if l.name == name)] = name
    return list(last.values())


def gradcam_sweep(model: Model, image: Image.Image, target: int | None = None, contrast: int | None = None,
                  layers: list[str] | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM at several layers from one forward and one backward pass, each map
    upsampled to the input: early layers are sharp but literal, late ones coarse
    but semantic."""
    x = model.to_pixels(image)
    layers = [check_cam_layer(model, l) for l in (layers or stage_layers(model))]
    with model.lock:
        if target is None:
            with torch.no_grad():
                target = int(model.pixel_net(x).argmax(1))
        score = _Score(model.pixel_net, target, contrast)
        xg = x.detach().requires_grad_(True)
        with Recorder(model, layers, detach=False) as rec, torch.enable_grad():
            s = score(xg).sum()
            acts = [rec.outputs[l] for l in layers]
            grads = torch.autograd.grad(s, acts)
    out = {}
    for name, act, grad in zip(layers, acts, grads):
        cam = F.relu((grad[0].mean((1, 2))[:, None, None] * act.detach()[0]).sum(0)).numpy()
        out[name] = upsample(cam, x.shape[-2:])
    return out


# ---------------------------------------------------------------- Captum

def _captum(method, score, x, batch_size, samples, std, steps, window, stride):
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    x = x.detach().requires_grad_(True)
    if method == "gradients":
        a = Saliency(score).attribute(x, target=0, abs=True)
    elif method == "smoothgrad":
        a = NoiseTunnel(Saliency(score)).attribute(
            x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=batch_size, stdevs=std, target=0, abs=True)
    elif method == "ig":
        a, d = IntegratedGradients(score).attribute(
            x, baselines=torch.zeros_like(x), target=0, n_steps=steps, internal_batch_size=batch_size,
            return_convergence_delta=True)
        return a.detach()[0].sum(0).abs().numpy(), float(d.abs().max()), float(a.detach().sum())
    elif method == "occlusion":
        a = Occlusion(score).attribute(
            x.detach(), sliding_window_shapes=(3, window, window), strides=(3, stride, stride), target=0,
            baselines=0.5, perturbations_per_eval=batch_size)
        return a[0].mean(0).numpy(), None, None  # signed: the score drops where the patch hides evidence
    elif method == "guided_backprop":
        return _guided_backprop(score, x), None, None
    return a.detach()[0].amax(0).numpy(), None, None


def _guided_backprop(score, x) -> np.ndarray:
    from captum.attr import GuidedBackprop

    a = GuidedBackprop(score).attribute(x.detach().requires_grad_(True), target=0)
    return a.detach()[0].abs().amax(0).numpy()


# ---------------------------------------------------------------- guided methods

_PRETTY = {"hardtanh": "ReLU6 (hardtanh)", "relu": "F.relu outside nn.ReLU modules", "silu": "SiLU"}


def check_guided(model: Model) -> None:
    bad = unguided_activations(model)  # found by watching one forward pass
    if bad:
        raise SaliencyError(
            f"Guided Backprop only changes nn.ReLU modules, but {model.label} also applies "
            f"{', '.join(_PRETTY.get(b, b) for b in bad)}, so its guided maps would silently be plain gradients. "
            "Use Grad-CAM, gradients or Integrated Gradients for this model.")
