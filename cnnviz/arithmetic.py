"""The arithmetic of one convolution layer, as the Convolution page's playground shows it:
the output-size rule and what it drops, where the window steps, which inputs it reads,
what a layer costs (and its depthwise-separable twin), and the softmax with a
temperature. Pure numbers: no network here (one unit of a real network is `cnnviz.unit`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import bounds
from .contract import CnnvizError


class NoOutput(CnnvizError):
    """A layer whose (dilated) kernel is larger than its padded input: not one output."""


@dataclass(frozen=True)
class OutputSize:
    """One spatial side of a layer: (W + 2P - D(F - 1) - 1) / S + 1, rounded down."""

    input: int
    kernel: int
    padding: int
    stride: int
    dilation: int
    output: int
    exact: bool  # the division has no remainder: the window ends on the last column
    dropped: int  # columns of the padded input the window never reaches (the remainder)
    formula: str

    @property
    def span(self) -> int:
        """Columns one window covers: a dilated kernel spans D(F - 1) + 1."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def padded(self) -> int:
        return self.input + 2 * self.padding

    def starts(self) -> list[int]:
        """First column of each window, in the padded input."""
        return [k * self.stride for k in range(self.output)]

    def to_dict(self) -> dict:
        return {"output": self.output, "exact": self.exact, "dropped": self.dropped, "formula": self.formula}


def _knob(value, name: str, lo: int, hi: int) -> int:
    return bounds.whole(value, name, lo, hi, NoOutput)


def output_size(size, kernel, padding=0, stride=1, dilation=1) -> OutputSize:
    """The output side of a convolution or pooling layer, with the formula written out
    with its numbers; `NoOutput` (with the reason) when the kernel cannot fit once."""
    W = _knob(size, "The input size", 1, bounds.CONV_SIDE)
    Fk = _knob(kernel, "The kernel size", 1, bounds.CONV_KNOB)
    P = _knob(padding, "The padding", 0, bounds.CONV_KNOB)
    S = _knob(stride, "The stride", 1, bounds.CONV_KNOB)
    D = _knob(dilation, "The dilation", 1, bounds.CONV_KNOB)
    span = D * (Fk - 1) + 1
    room = W + 2 * P - span
    if D == 1:
        rule, numbers = "(W - F + 2P) / S + 1", f"({W} - {Fk} + 2x{P}) / {S} + 1"
    else:
        rule, numbers = "(W + 2P - D(F - 1) - 1) / S + 1", f"({W} + 2x{P} - {D}x({Fk} - 1) - 1) / {S} + 1"
    if room < 0:
        what = f"a {Fk}x{Fk} kernel" + (f" dilated by {D} spans {span} columns" if D > 1 else f" spans {span} columns")
        raise NoOutput(f"No output: {what}, but the padded input has only {W} + 2x{P} = {W + 2 * P}. "
                       f"{rule} = {numbers} = {room / S + 1:g}, less than 1.")
    q, r = divmod(room, S)
    value = f"{room}/{S} + 1 = {q + 1}" if r == 0 else f"{room}/{S} + 1 = {room / S + 1:.4g}, rounded down to {q + 1}"
    return OutputSize(W, Fk, P, S, D, q + 1, r == 0, r, f"{rule} = {numbers} = {value}")


def drop_sentence(o: OutputSize) -> str:
    """Why a combination that does not tile its input loses columns ('' when it does)."""
    if o.exact:
        return ""
    last = o.starts()[-1] + o.span  # first column after the last window
    pads = max(0, min(o.dropped, o.padding))  # the dropped columns that are padding
    one = o.dropped == 1
    cells = "column is" if one else f"{o.dropped} columns are"
    padding = "" if not pads else " (it is padding)" if one else f" ({pads} of them padding)"
    return (f"The division is not exact ({o.input + 2 * o.padding - o.span} is not a multiple of the stride "
            f"{o.stride}): the last window ends at column {last - 1} of the padded input (0 to "
            f"{o.padded - 1}), so the last {cells} never read{padding}. Frameworks round down and drop "
            f"{'it' if one else 'them'}; a padding or stride that divides evenly keeps every column.")


def coverage(height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int], padding: tuple[int, int, int, int], out: tuple[int, int]) -> np.ndarray:
    """How many output units read each input position, [height, width] int: 0 where the
    window never lands (a stride larger than the kernel skips inputs; a dropped remainder).
    `padding` is (top, left, bottom, right); `out` the output's (rows, columns)."""
    top, left, bottom, right = padding
    rows = np.zeros(height + top + bottom, np.int64)
    cols = np.zeros(width + left + right, np.int64)
    for i in range(out[0]):
        rows[i * stride[0]: i * stride[0] + dilation[0] * (kernel[0] - 1) + 1: dilation[0]] += 1
    for j in range(out[1]):
        cols[j * stride[1]: j * stride[1] + dilation[1] * (kernel[1] - 1) + 1: dilation[1]] += 1
    counts = np.outer(rows, cols)  # windows are products of a row range and a column range
    return counts[top: top + height, left: left + width]


@dataclass(frozen=True)
class Cost:
    params: int
    mult_adds: int

    def to_dict(self) -> dict:
        return asdict(self)


def conv_cost(c_in: int, c_out: int, kernel: int, out_h: int, out_w: int, *, groups: int = 1,
              bias: bool = True) -> Cost:
    """Weights and multiply-adds of one convolution: each of the c_out x out_h x out_w units
    is a dot product of (c_in / groups) x F x F numbers."""
    per_unit = (c_in // groups) * kernel * kernel
    return Cost(c_out * per_unit + (c_out if bias else 0), c_out * out_h * out_w * per_unit)


def separable_cost(c_in: int, c_out: int, kernel: int, out_h: int, out_w: int, *, bias: bool = True) -> Cost:
    """The depthwise-separable twin (MobileNet): c_in depthwise F x F filters at the same
    output size, then a 1 x 1 convolution mixing c_in channels into c_out."""
    depth = conv_cost(c_in, c_in, kernel, out_h, out_w, groups=c_in, bias=bias)
    point = conv_cost(c_in, c_out, 1, out_h, out_w, bias=bias)
    return Cost(depth.params + point.params, depth.mult_adds + point.mult_adds)


def toy_input(size: int, seed: int = 0) -> np.ndarray:
    """A small integer input for the playground (digits 0-9, one seed per size)."""
    return np.random.default_rng(seed).integers(0, 10, (size, size)).astype(np.float64)


TOY_KERNELS = {
    "edges": "vertical edges (Sobel)",
    "blur": "blur (mean)",
    "identity": "identity (centre tap)",
}


def toy_kernel(name: str, size: int) -> np.ndarray:
    """A size x size kernel of one of `TOY_KERNELS`, with small round numbers."""
    if name not in TOY_KERNELS:
        raise CnnvizError(f"Unknown kernel {name!r}: choose one of {', '.join(TOY_KERNELS)}.")
    k = np.zeros((size, size))
    if name == "identity":
        k[size // 2, size // 2] = 1
    elif name == "blur":
        k[:] = 1 / (size * size)
    else:  # -1 ... +1 across the columns, weighted 1-2-1 down the rows for a 3x3: Sobel
        cols = np.linspace(-1, 1, size) if size > 1 else np.zeros(1)
        rows = 1 + (np.arange(size) == size // 2) if size > 1 else np.ones(1)
        k = np.outer(rows, cols)
    return k


def toy_conv(x: np.ndarray, kernel: np.ndarray, padding: int, stride: int, dilation: int) -> np.ndarray:
    """The playground's output map: torch's own conv2d in float64 (zero padding)."""
    t = torch.from_numpy(x)[None, None]
    w = torch.from_numpy(np.ascontiguousarray(kernel))[None, None]
    return F.conv2d(t, w, padding=padding, stride=stride, dilation=dilation)[0, 0].numpy()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """exp(z_i / T) / sum_j exp(z_j / T) in float64, the largest term subtracted first
    (the same probabilities; no overflow)."""
    t = bounds.number(temperature, "The temperature", *bounds.TEMPERATURE)
    z = np.asarray(logits, np.float64) / t
    e = np.exp(z - z.max())
    return e / e.sum()


def softmax_table(logits: np.ndarray, temperature: float = 1.0, k: int = 5) -> dict:
    """The softmax written out for the top-k classes (by logit): each one's logit, logit / T,
    exp(logit / T - max), and probability; the denominator over every class; the entropy
    (in bits) of the whole distribution."""
    t = bounds.number(temperature, "The temperature", *bounds.TEMPERATURE)
    z = np.asarray(logits, np.float64)
    scaled = z / t
    top = float(scaled.max())
    e = np.exp(scaled - top)
    total = float(e.sum())
    p = e / total
    order = np.argsort(-z, kind="stable")[: max(1, min(int(k), len(z)))]
    nz = p[p > 0]
    return {"temperature": t, "max_scaled": top, "denominator": total, "classes": len(z),
            "entropy_bits": float(-(nz * np.log2(nz)).sum()),
            "rows": [{"index": int(i), "logit": float(z[i]), "scaled": float(scaled[i]),
                      "exp": float(e[i]), "prob": float(p[i])} for i in order]}
