"""One unit of a real network, computed by hand: how one number of a layer's map is made.

For a convolution unit: the input patch it reads (only its group's channels in a grouped
or depthwise layer), the elementwise products with its kernel, each channel's sum, the
total plus the bias; then each step the network applies to that number next (BatchNorm,
an activation) in float64, each checked against the value the recorder stored (what the
Activations page and `activations --npy` show). For a pooling unit: its window, which
input won (max) or the average and its divisor. The padding is the one the layer really
applies, read from the torch functions its forward calls (`hooks.functional_calls`):
EfficientNet-Lite pads "same" in its own forward, asymmetrically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from . import arithmetic, bounds, hooks
from .activations import LayerNotFound, compute, find_layer
from .contract import CnnvizError, Progress, Result, Spec

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)

# What an elementwise step computes, written for the page (x: the number coming in).
_ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "max(0, x)", nn.ReLU6: "min(max(0, x), 6)", nn.SiLU: "x · sigmoid(x)",
    nn.Hardswish: "x · min(max(x + 3, 0), 6) / 6", nn.Hardsigmoid: "min(max(x + 3, 0), 6) / 6",
    nn.GELU: "x · Φ(x)", nn.Sigmoid: "1 / (1 + exp(-x))", nn.Tanh: "tanh(x)",
    nn.LeakyReLU: "max(0, x) + slope · min(0, x)", nn.ELU: "x if x > 0 else exp(x) - 1",
    nn.Mish: "x · tanh(softplus(x))", nn.Hardtanh: "min(max(x, lo), hi)",
}
# The worked value (float64) and the recorded one (the network's float32) agree when their
# difference is at most this, relative to the recorded value; or, where the sum nearly
# cancels (a value under 1% of the size of the terms summed), to 1% of that size: float32
# rounds relative to the terms, not to the result. Measured: at most 2.4e-6 (tests/test_unit.py).
TOLERANCE = 1e-4
CANCELLING = 1e-2


class UnitError(CnnvizError):
    """A layer or unit this analysis cannot work out (with the reason)."""


def _activation(m: nn.Module) -> str | None:
    for kind in type(m).__mro__:  # ReLU6 is a Hardtanh: the most specific formula first
        if kind in _ACTIVATIONS:
            return _ACTIVATIONS[kind]
    return None


def is_step(m: nn.Module) -> bool:
    """An elementwise step a unit's number goes through next: an eval BatchNorm, or an
    activation without weights."""
    return type(m) is nn.BatchNorm2d or (_activation(m) is not None and next(m.parameters(), None) is None)


def kind_of(m: nn.Module) -> str | None:
    """"convolution", "depthwise", "grouped", "max pooling", "average pooling"; None for other layers."""
    if isinstance(m, nn.Conv2d):
        if m.groups == 1:
            return "convolution"
        return "depthwise" if m.groups == m.in_channels else "grouped"
    if isinstance(m, nn.MaxPool2d):
        return "max pooling"
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "average pooling"
    return None


def unit_layers(model) -> list[str]:
    """Call names of the convolution and pooling layers with a spatial output, execution order."""
    mods = model.layer_modules
    return [l.name for l in model.layers
            if len(l.shape) == 3 and kind_of(mods[hooks.split_call(l.name)[0]]) is not None]


@dataclass(frozen=True)
class UnitSpec(Spec):
    """One unit: `layer` (a convolution or pooling call name; "" the first convolution),
    output row `y` and column `x` (None: the map's centre), output `channel`."""

    layer: str = ""
    y: int | None = None
    x: int | None = None
    channel: int = 0

    def passes(self, model) -> int:
        return 2  # one pass that keeps the layer's input; the recorder's own pass

    def check(self, model) -> "UnitSpec":
        names = unit_layers(model)
        if not names:
            raise UnitError(f"{model.label or model.id} has no convolution or pooling layer with a spatial map.")
        layer = find_layer(self.layer, names, error=LayerNotFound) if self.layer else names[0]
        C, H, W = next(l.shape for l in model.layers if l.name == layer)
        y = H // 2 if self.y is None else bounds.whole(self.y, f"The row of {layer} ({H}x{W})", 0, H - 1, UnitError)
        x = W // 2 if self.x is None else bounds.whole(self.x, f"The column of {layer} ({H}x{W})", 0, W - 1, UnitError)
        c = bounds.whole(self.channel, f"The channel of {layer}", 0, C - 1, UnitError)
        return replace(self, layer=layer, y=y, x=x, channel=c)


@dataclass
class Unit(Result):
    layer: str
    kind: str
    y: int
    x: int
    channel: int
    channels: list[int]  # input channels the unit reads
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right, as the layer really pads
    box: tuple[int, int, int, int]  # the window in the layer's input: top, left, bottom, right (exclusive); < 0: padding
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    patch: np.ndarray = field(repr=False)  # float64 [channels read, kh, kw] as the window sees it (padding included)
    weights: np.ndarray | None = field(repr=False)  # float64 [channels read, kh, kw]; None for pooling
    channel_sums: list[float]  # per channel read: sum of its products (pooling: of its window)
    bias: float
    pre_activation: float  # the layer's own output, worked out
    steps: list[dict]  # the layer and each step after it: name, type, formula, value, recorded
    recorded: float  # what the recorder stored at the last step (the Activations page's value)
    worked: float  # the last step's value, worked out in float64
    scale: float  # size of the terms behind the last value (sum of |products| + |bias|, through each step)
    error: float  # |worked - recorded| / max(|recorded|, CANCELLING x scale, 1e-30)
    winner: tuple[int, int] | None  # max pooling: the winning input's (row, column)
    divisor: int | None  # average pooling: the number the sum is divided by
    input_map: np.ndarray = field(repr=False)  # float32 [H, W]: the layer's input, mean over the channels read
    coverage: np.ndarray = field(repr=False)  # int [H, W]: windows reading each input position

    @property
    def agrees(self) -> bool:
        return self.error <= TOLERANCE

    @property
    def products(self) -> np.ndarray | None:
        return None if self.weights is None else self.patch * self.weights

    @property
    def skipped(self) -> int:
        """Input positions no unit of the layer reads (a stride longer than the kernel)."""
        return int((self.coverage == 0).sum())

    def to_dict(self) -> dict:
        return {"model": self.model, "layer": self.layer, "kind": self.kind, "y": self.y, "x": self.x,
                "channel": self.channel, "channels": self.channels, "patch_shape": list(self.patch.shape),
                "kernel": list(self.kernel), "stride": list(self.stride), "dilation": list(self.dilation),
                "padding": list(self.padding), "box": list(self.box), "bias": self.bias,
                "channel_sums": self.channel_sums, "pre_activation": self.pre_activation,
                "steps": self.steps, "recorded": self.recorded, "worked": self.worked, "error": self.error,
                "scale": self.scale, "agrees": self.agrees, "winner": None if self.winner is None else list(self.winner),
                "divisor": self.divisor, "skipped_inputs": self.skipped, "seconds": self.seconds}


def _conv(model, m: nn.Conv2d, inp: torch.Tensor, spec: UnitSpec) -> dict:
    calls = hooks.functional_calls(model, m, inp, {"pad", "conv2d"})
    convs = [a for n, a in calls if n == "conv2d"]
    if len(convs) != 1:
        raise UnitError(f"{spec.layer} does not compute one conv2d ({len(convs)} found): cannot work it out.")
    top = left = bottom = right = 0
    for name, a in calls:  # paddings the layer's forward applies before its convolution
        if name == "pad":
            p = list(a["pad"]) + [0, 0, 0, 0]
            left, right, top, bottom = left + p[0], right + p[1], top + p[2], bottom + p[3]
    a = convs[0]
    x, w, b = a["input"].double(), a["weight"].double(), a.get("bias")
    kh, kw = w.shape[-2:]
    stride, dilation = _pair(a.get("stride", 1)), _pair(a.get("dilation", 1))
    groups = int(a.get("groups", 1))
    pad = a.get("padding", 0)
    if isinstance(pad, str):  # "valid", or "same": the odd one extra at the bottom and right, as torch does
        total = [0, 0] if pad == "valid" else [dilation[0] * (kh - 1), dilation[1] * (kw - 1)]
        pt, pl, pb, pr = total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2
    else:
        (pt, pl), (pb, pr) = _pair(pad), _pair(pad)
    x = F.pad(x, [pl, pr, pt, pb])
    top, left, bottom, right = top + pt, left + pl, bottom + pb, right + pr
    c_out = w.shape[0]
    c_in_g = w.shape[1]
    group = spec.channel // (c_out // groups)
    chans = list(range(group * c_in_g, (group + 1) * c_in_g))
    r0, c0 = spec.y * stride[0], spec.x * stride[1]
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    patch = x[0, chans, r0: r0 + span[0]: dilation[0], c0: c0 + span[1]: dilation[1]]
    weights = w[spec.channel]
    sums = (patch * weights).sum((1, 2))
    bias = 0.0 if b is None else float(b[spec.channel].double())
    return dict(kind=kind_of(m), channels=chans, kernel=(kh, kw), stride=stride, dilation=dilation,
                padding=(top, left, bottom, right), box=(r0 - top, c0 - left, r0 - top + span[0], c0 - left + span[1]),
                patch=patch.numpy(), weights=weights.numpy(), channel_sums=[float(s) for s in sums], bias=bias,
                value=float(sums.sum()) + bias, scale=float((patch * weights).abs().sum()) + abs(bias),
                winner=None, divisor=None)


def _pool(m: nn.Module, inp: torch.Tensor, out_hw: tuple[int, int], spec: UnitSpec) -> dict:
    x = inp.double()[0, spec.channel]
    H, W = x.shape
    c, i, j = spec.channel, spec.y, spec.x
    if isinstance(m, nn.AdaptiveAvgPool2d):  # PyTorch's windows: floor(i H / h) to ceil((i + 1) H / h)
        oh, ow = out_hw
        r0, r1 = (i * H) // oh, -((-(i + 1) * H) // oh)
        c0, c1 = (j * W) // ow, -((-(j + 1) * W) // ow)
        win = x[r0:r1, c0:c1]
        return dict(kind="average pooling", channels=[c], kernel=(r1 - r0, c1 - c0), stride=(r1 - r0, c1 - c0),
                    dilation=(1, 1), padding=(0, 0, 0, 0), box=(r0, c0, r1, c1), patch=win[None].numpy(),
                    weights=None, channel_sums=[float(win.sum())], bias=0.0, value=float(win.mean()),
                    scale=float(win.abs().mean()), winner=None, divisor=win.numel())
    k, p = _pair(m.kernel_size), _pair(m.padding)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    d = _pair(getattr(m, "dilation", 1))
    rs, cs = i * s[0] - p[0], j * s[1] - p[1]  # the window's first row and column, in the input
    if isinstance(m, nn.MaxPool2d):
        # -inf padding; with ceil_mode a window may run past the padded edge: torch clips it
        re, ce = min(rs + d[0] * (k[0] - 1) + 1, H + p[0]), min(cs + d[1] * (k[1] - 1) + 1, W + p[1])
        padded = F.pad(x, [p[1], p[1] + W, p[0], p[0] + H], value=-math.inf)
        win = padded[rs + p[0]: re + p[0]: d[0], cs + p[1]: ce + p[1]: d[1]]
        flat = int(torch.argmax(win))
        wi, wj = divmod(flat, win.shape[1])
        return dict(kind="max pooling", channels=[c], kernel=k, stride=s, dilation=d, padding=(p[0], p[1], p[0], p[1]),
                    box=(rs, cs, re, ce), patch=win[None].numpy(), weights=None,
                    channel_sums=[float(win[torch.isfinite(win)].sum())], bias=0.0, value=float(win.max()),
                    scale=abs(float(win.max())), winner=(rs + wi * d[0], cs + wj * d[1]), divisor=None)
    # AvgPool2d, as torch divides: by the window clipped to the padded input (count_include_pad),
    # or to the input itself; divisor_override replaces both
    re, ce = min(rs + k[0], H + p[0]), min(cs + k[1], W + p[1])
    size = (re - rs) * (ce - cs)
    r0, c0, r1, c1 = max(rs, 0), max(cs, 0), min(re, H), min(ce, W)
    inside = x[r0:r1, c0:c1]
    divisor = m.divisor_override or (size if m.count_include_pad else (r1 - r0) * (c1 - c0))
    win = F.pad(x, [p[1], p[1] + W, p[0], p[0] + H])[rs + p[0]: re + p[0], cs + p[1]: ce + p[1]]
    return dict(kind="average pooling", channels=[c], kernel=k, stride=s, dilation=(1, 1),
                padding=(p[0], p[1], p[0], p[1]), box=(rs, cs, re, ce), patch=win[None].numpy(), weights=None,
                channel_sums=[float(inside.sum())], bias=0.0, value=float(inside.sum()) / divisor,
                scale=float(inside.abs().sum()) / divisor, winner=None,
                divisor=int(divisor))


def _activation_step(m: nn.Module, v: float) -> tuple[float, str]:
    """An activation applied to the worked value `v` in float64, with its formula."""
    out = float(m(torch.tensor([[[[v]]]], dtype=torch.float64)).reshape(-1)[0])
    return out, f"{type(m).__name__}: {_activation(m)} with x = {v:.6g}"


def _batchnorm(m: nn.BatchNorm2d, c: int, v: float, scale: float) -> tuple[float, str, float]:
    """An eval BatchNorm on channel c, (x - mean) / sqrt(var + eps) x gamma + beta, applied to
    the worked value `v`: (value, formula, the size of the terms behind it, from `scale`'s)."""
    mean, var = float(m.running_mean[c].double()), float(m.running_var[c].double())
    gamma = float(m.weight[c].double()) if m.weight is not None else 1.0
    beta = float(m.bias[c].double()) if m.bias is not None else 0.0
    gain = gamma / math.sqrt(var + m.eps)
    out = (v - mean) * gain + beta
    return out, (f"BatchNorm: (x - mean) / sqrt(var + eps) x gamma + beta = ({v:.6g} - {mean:.6g}) / "
                 f"sqrt({var:.6g} + {m.eps:g}) x {gamma:.6g} + {beta:.6g}"), \
        (scale + abs(mean)) * abs(gain) + abs(beta)


def run(model, image, spec: UnitSpec = UnitSpec(), *, progress: Progress | None = None) -> Unit:
    """Work out one unit of `spec.layer` on `image` (PIL, or [1, 3, H, W] pixels in [0, 1])."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    mods = model.layer_modules
    names = [l.name for l in model.layers]
    shape = next(l.shape for l in model.layers if l.name == spec.layer)
    follow = []  # the elementwise steps that come right after the layer, in execution order
    for name in names[names.index(spec.layer) + 1:]:
        if not is_step(mods[hooks.split_call(name)[0]]) or len(follow) == 4:
            break
        follow.append(name)
    progress(0.0, "one forward pass")
    x = model.preprocess(image)
    io = hooks.record_io(model, x, [spec.layer, *follow])
    inp, out = io[spec.layer]
    m = mods[hooks.split_call(spec.layer)[0]]
    part = _pool(m, inp, shape[1:], spec) if isinstance(m, POOLS) else _conv(model, m, inp, spec)
    value, scale = part.pop("value"), part.pop("scale")
    c, i, j = spec.channel, spec.y, spec.x
    steps = [{"name": spec.layer, "type": type(m).__name__, "value": value,
              "formula": ("sum of the products over every channel read + bias" if part["weights"] is not None
                          else "the largest value in the window" if part["kind"] == "max pooling"
                          else f"the window's sum / {part['divisor']}")}]
    prev = out
    for name in follow:  # a step counts only if it takes exactly what came before (not a residual sum)
        s_in, s_out = io.get(name, (None, None))
        if s_in is None or s_in.shape != prev.shape or not torch.equal(s_in, prev):
            break
        sm = mods[hooks.split_call(name)[0]]
        if type(sm) is nn.BatchNorm2d:
            value, formula, scale = _batchnorm(sm, c, value, scale)
        else:
            value, formula = _activation_step(sm, value)
        steps.append({"name": name, "type": type(sm).__name__, "value": value, "formula": formula})
        prev = s_out
    progress(0.5, "the recorder's pass")
    maps = compute(model, image, [s["name"] for s in steps])  # what the Activations page shows
    for s in steps:
        s["recorded"] = float(maps[s["name"]][c, i, j])
    recorded = steps[-1]["recorded"]
    chans = part["channels"]
    inp_map = inp[0, chans].float().mean(0).numpy()
    kh, kw = part["kernel"]
    cover = arithmetic.coverage(inp.shape[-2], inp.shape[-1], (kh, kw), part["stride"], part["dilation"],
                                part["padding"], shape[1:]) if not isinstance(m, nn.AdaptiveAvgPool2d) \
        else np.ones(inp.shape[-2:], np.int64)
    progress(1.0, "done")
    return Unit(layer=spec.layer, y=i, x=j, channel=c, input_shape=tuple(inp.shape[1:]), output_shape=tuple(shape),
                pre_activation=steps[0]["value"], steps=steps, recorded=recorded, worked=value,
                scale=scale, error=abs(value - recorded) / max(abs(recorded), CANCELLING * scale, 1e-30), input_map=inp_map, coverage=cover, **part)
