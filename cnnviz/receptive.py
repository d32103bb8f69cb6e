"""Receptive fields: which input pixels a unit can see (theory) and which it uses (gradient).

Theory: the network's torch.fx graph is walked in execution order, carrying for every
tensor the field of its unit (0, 0) per spatial axis as (size, jump, top): a k x k
window with stride s, dilation d and padding p turns it into
(size + d(k-1) jump, jump s, top - p jump). Merges (residual adds, concatenations)
take the union of their inputs' fields and must agree on jump. Pixel i of the input
has centre i; boxes are half-open (top, left, bottom, right) and may reach into the
padding outside the image.

Blocks (`Model.blocks`: residual, Inception and dense blocks, stages) are traced through,
not stopped at: a block's row is the field of the tensor its forward returns, found by
the tracer (`_Tracer.calls`), with a note on the merge that made it.

Vision transformers (`tokens.family`): their blocks are traced through too. ViT's patch
grid, flattened into a sequence of tokens (the class token in front), is followed as a
grid; an attention module (`nn.MultiheadAttention`) lets every token see every patch, so
from the first attention on a unit's field is the whole image (`Field.whole`). Swin's
windowed attention lets a token see its window only: the field grows by a bound of
window - 1 tokens each way per block (a token at a window's edge sees that far to one
side), until a stage's map fits in one window (whole again); patch merging is a 2x2
window of stride 2. Rows give a transformer's outputs as the recorder does, [C, h, w].

Effective field (Luo et al. 2016): |d unit / d input|, one forward and one backward,
taken with respect to the network's normalized input (the image is normalized here).

One entry point, `run(model, image, spec)`, for five specs (`DepthSpec`, the depth
curve of theoretical and effective field sizes, below): `TableSpec` (the
architecture table, `Table`), `UnitSpec` (a unit's theoretical field), `EffectiveSpec`
(and its effective field on `image`: PIL or [1, 3, H, W] pixels in [0, 1]) and
`AverageSpec` (its effective field averaged over the sample images or over noise, batch
by batch); the last three give a `UnitField`. The caller holds the model's lock (the job
runner does): the walk and the gradients run the model's own modules.
"""
from __future__ import annotations

import math
import operator
import threading
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from . import bounds, tokens
from .activations import LayerNotFound, find_layer
from .contract import CnnvizError, Progress, Result, Spec
from .hooks import Recorder, _is_noop
from .model import Model

Box = tuple[int, int, int, int]
RF_HINT = "List them with `python -m cnnviz rf --all`."
SOURCES = ("samples", "noise")


class RFError(CnnvizError):
    """Bad receptive-field input (unknown layer, unit outside the map); the message is for the user."""


class UnknownLayer(LayerNotFound, RFError):
    """A layer the receptive-field table does not have (the shared layer-name check)."""

    def __init__(self, layer: str, known: list[str], fallback: bool = False, *, where: str = "in this model",
                 hint: str = RF_HINT):
        super().__init__(layer, known, fallback, where=where, hint=hint)


@dataclass(frozen=True)
class Field:
    size: tuple[int, int]  # (h, w) input pixels one unit sees
    jump: tuple[int, int]  # input pixels between neighbouring units
    start: tuple[float, float]  # centre of unit (0, 0) in input pixels
    # Every unit sees all of this box (attention over the whole map): `size` is its size,
    # and every unit's box is this one, not a box centred on the unit.
    whole: "Box | None" = None

    def centre(self, i: int, j: int) -> tuple[float, float]:
        return (self.start[0] + i * self.jump[0], self.start[1] + j * self.jump[1])

    def box(self, i: int, j: int) -> Box:
        """Half-open (top, left, bottom, right) of unit (i, j); may reach outside the image."""
        if self.whole is not None:
            return self.whole
        cy, cx = self.centre(i, j)
        top, left = int(round(cy - (self.size[0] - 1) / 2)), int(round(cx - (self.size[1] - 1) / 2))
        return (top, left, top + self.size[0], left + self.size[1])


def clip(box: Box, input_size: tuple[int, int]) -> Box:
    """The part of `box` inside an image of `input_size` (h, w)."""
    t, l, b, r = box
    h, w = input_size
    return (min(max(t, 0), h), min(max(l, 0), w), max(min(b, h), 0), max(min(r, w), 0))


def _intersect(a: Box, b: Box) -> Box:
    t, l = max(a[0], b[0]), max(a[1], b[1])
    return (t, l, max(min(a[2], b[2]), t), max(min(a[3], b[3]), l))


def nearest_unit(f: Field, shape: tuple[int, int], y: float, x: float) -> tuple[int, int]:
    """The unit of a map of `shape` (h, w) whose field is centred nearest to input pixel (y, x)."""
    i = round((y - f.start[0]) / f.jump[0]) if f.jump[0] else 0
    j = round((x - f.start[1]) / f.jump[1]) if f.jump[1] else 0
    return (min(max(int(i), 0), shape[0] - 1), min(max(int(j), 0), shape[1] - 1))


# ---------------------------------------------------------------- 1-D field arithmetic
# One axis: (size, jump, top of unit 0's window). Integers throughout, so boxes are exact.

@dataclass(frozen=True)
class _Axis:
    size: int
    jump: int
    top: int
    # Input pixels [lo, hi) that some unit really depends on: inside the image, and short
    # of trailing pixels a floor-mode stride dropped (AlexNet's conv1 at width 131).
    lo: int
    hi: int

    def window(self, k: int, s: int, d: int, p: int, n_out: int) -> "_Axis":
        size, jump, top = self.size + d * (k - 1) * self.jump, self.jump * s, self.top - p * self.jump
        return _Axis(size, jump, top, max(top, self.lo), min(top + (n_out - 1) * jump + size, self.hi))

    def whole(self, n: int) -> "_Axis":
        """One unit that sees all `n` units of this axis (global pooling, flatten)."""
        return _Axis(self.size + (n - 1) * self.jump, self.jump * n, self.top, self.lo, self.hi)

    def everywhere(self, n: int) -> "_Axis":
        """Each of the `n` units sees what all of them see together, [lo, hi) (attention):
        the smallest window centred on every unit's centre that holds it."""
        c0 = self.top + (self.size - 1) / 2
        size = math.ceil(max(2 * (c0 + (n - 1) * self.jump - self.lo) + 1, 2 * (self.hi - c0) - 1))
        size += (size - 1) / 2 % 1 != c0 % 1  # a whole-pixel top
        return _Axis(size, self.jump, int(c0 - (size - 1) / 2), self.lo, self.hi)

    def windowed(self, w: int, n: int) -> "_Axis":
        """Swin's attention in windows of `w` of the `n` units: a unit shares its window with
        units at most w - 1 away (a bound: the other side of its window is nearer), or, when
        the map fits in one window, with all of them."""
        return self.everywhere(n) if w >= n else self.window(2 * w - 1, 1, 1, w - 1, n)


def _merge(parts: list[tuple[_Axis, int]], n_out: int) -> tuple[_Axis, str]:
    """Union of fields entering a merge; `parts` holds (axis, units along it).
    Inputs with one unit broadcast over n_out > 1 units (squeeze-excitation): every
    output unit must also see all of that input's field."""
    local = [a for a, n in parts if n == n_out or n_out == 1]
    wide = [a for a, n in parts if n == 1 and n_out > 1]
    note = ""
    if local:
        jumps = sorted({a.jump for a in local})
        if len(jumps) > 1 and n_out > 1:  # one unit: its jump means nothing
            note = f"branches disagree on jump ({', '.join(map(str, jumps))}): field is a bound"
        jump = jumps[-1]
        top = min(a.top for a in local)
        bottom = max(a.top + a.size for a in local)
    else:
        jump, top, bottom = 0, min(a.top for a in wide), max(a.top + a.size for a in wide)
    for a in wide:
        top = min(top, a.top - (n_out - 1) * jump)
        bottom = max(bottom, a.top + a.size)
        note = note or "global context (a 1x1 branch broadcast over the map): every unit sees all of its field"
    lo, hi = min(a.lo for a, _ in parts), max(a.hi for a, _ in parts)
    return _Axis(bottom - top, jump, top, lo, hi), note


# ---------------------------------------------------------------- graph walk

@dataclass(frozen=True)
class _State:
    """Field of a tensor's unit (0, 0), and where its spatial axes are."""
    y: _Axis
    x: _Axis
    axes: tuple[int, int] | None  # None once the spatial structure is gone (flatten)
    hw: tuple[int, int]
    ndim: int = 4
    # A transformer's patch grid flattened into tokens (axes None, hw the grid): the
    # tokens' axis, and how many tokens come before the grid's (ViT's class token).
    seq: int | None = None
    offset: int = 0
    whole: bool = False  # every unit sees all of the extent (attention over the whole map)

    def extent(self) -> Box:
        return (self.y.lo, self.x.lo, self.y.hi, self.x.hi)

    def field(self) -> Field:
        start = (self.y.top + (self.y.size - 1) / 2, self.x.top + (self.x.size - 1) / 2)
        if self.whole:
            t, l, b, r = self.extent()
            return Field((b - t, r - l), (self.y.jump, self.x.jump), start, self.extent())
        return Field((self.y.size, self.x.size), (self.y.jump, self.x.jump), start)

    def collapsed(self) -> "_State":
        if self.axes is None and self.seq is None:
            return self
        # After attention over the whole map (a ViT's class token into its head) the one
        # unit left still sees just the image, not the union of the tokens' padded windows.
        return _State(self.y.whole(self.hw[0]), self.x.whole(self.hw[1]), None, (1, 1), whole=self.whole)


@dataclass
class Row:
    """One line of the architecture table (a layer call or a merge)."""
    name: str
    type: str
    shape: tuple[int, ...]
    params: int
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None  # top/left padding (the part that moves the field)
    field: Field | None = None
    extent: Box | None = None  # input pixels some unit of this layer depends on (top, left, bottom, right)
    note: str = ""
    layer: bool = True  # False for merges (add, cat, mul) and attention: not inspectable layers
    block: bool = False  # a block's output (see `Model.blocks`): its field is its branches' union
    attention: bool = False  # a transformer's attention (a row of the table, not a layer)

    def to_dict(self) -> dict:
        f = self.field
        return {
            "name": self.name, "type": self.type, "shape": list(self.shape), "params": self.params,
            "kernel": _l(self.kernel), "stride": _l(self.stride), "dilation": _l(self.dilation),
            "padding": _l(self.padding), "size": _l(f and f.size), "jump": _l(f and f.jump),
            "start": _l(f and f.start), "extent": _l(self.extent), "note": self.note, "layer": self.layer,
            "block": self.block, "attention": self.attention,
        }


def _l(t):
    return list(t) if t else None


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _same_pad(n: int, k: int, s: int, d: int) -> int:
    """TF 'SAME' padding before the first pixel (EfficientNet-Lite's dynamic padding)."""
    total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2


def _window_of(m: nn.Module, hw: tuple[int, int]):
    """(kernel, stride, dilation, top/left padding) of a windowed module, or None."""
    if isinstance(m, nn.modules.conv._ConvNd) and len(m.kernel_size) == 2:
        k, s, d = m.kernel_size, m.stride, m.dilation
        if "DynamicSamePadding" in type(m).__name__:
            p = tuple(_same_pad(hw[a], k[a], s[a], d[a]) for a in (0, 1))
        elif m.padding == "same":
            p = tuple(d[a] * (k[a] - 1) // 2 for a in (0, 1))
        elif m.padding == "valid":
            p = (0, 0)
        else:
            p = _pair(m.padding)
        extra = getattr(m, "static_padding", None)  # Conv2dStaticSamePadding holds a ZeroPad2d
        if isinstance(extra, nn.ZeroPad2d):
            p = (p[0] + extra.padding[2], p[1] + extra.padding[0])
        return _pair(k), _pair(s), _pair(d), p
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(m.kernel_size)
        s = _pair(m.stride or m.kernel_size)
        d = _pair(getattr(m, "dilation", 1))
        if "DynamicSamePadding" in type(m).__name__:
            p = tuple(_same_pad(hw[a], k[a], s[a], d[a]) for a in (0, 1))
        else:
            p = _pair(m.padding)
        return k, s, d, p
    return None


def _adaptive(hw_in, hw_out):
    """Adaptive pooling as a window when the sizes divide; (window, exact?)."""
    k, s, exact = [], [], True
    for a in (0, 1):
        n, m = hw_in[a], hw_out[a]
        if n % m == 0:
            k.append(n // m), s.append(n // m)
        else:  # PyTorch's bins: start floor(i n/m), end ceil((i+1) n/m)
            exact = False
            k.append(math.ceil(n / m) + 1), s.append(max(n // m, 1))
    return (tuple(k), tuple(s), (1, 1), (0, 0)), exact


_MERGES = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.mul: "mul",
           operator.imul: "mul", torch.mul: "mul", torch.cat: "cat", torch.concat: "cat", torch.stack: "stack"}
_F_WINDOWS = {F.max_pool2d, F.avg_pool2d, torch.max_pool2d}
_F_ADAPTIVE = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
ATTENTION_NOTE = "attention: every token sees every patch, so the field is the whole image"


def _swin(n: fx.Node) -> str:
    """The name of torchvision's Swin function a node calls (fx keeps them whole), else ""."""
    f = n.target if n.op == "call_function" else None
    return f.__name__ if getattr(f, "__module__", "") == "torchvision.models.swin_transformer" else ""


_UNKNOWN = object()  # the state of a tensor downstream of an op the arithmetic cannot follow


class _Tracer(fx.Tracer):
    """Stops at the inspectable layers (they may compute padding from shapes inside).

    While it traces, fx replaces `nn.Module.__call__` and `__getattr__` process-wide, so
    another session's forward pass (any model, another thread) would be routed into
    this trace and fail. Calls from any thread but the tracing one pass straight through."""

    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves
        self.thread: int | None = None
        # Every call traced through (not a leaf), in the order they return: (module path,
        # index of its first graph node, index after its last, what it returned). A block's
        # row is the returned node's field; which child a node came from names a branch.
        self.calls: list[tuple[str, int, int, object]] = []

    def trace(self, root, concrete_args=None):
        self.thread = threading.get_ident()
        return super().trace(root, concrete_args)

    def _elsewhere(self) -> bool:
        return threading.get_ident() != self.thread

    def call_module(self, m, forward, args, kwargs):
        if self._elsewhere():
            return forward(*args, **kwargs)
        if id(m) in self.leaves:
            return super().call_module(m, forward, args, kwargs)
        start = len(self.graph.nodes)
        out = super().call_module(m, forward, args, kwargs)
        self.calls.append((self.path_of_module(m), start, len(self.graph.nodes), out))
        return out

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self._elsewhere() else super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


class _Walk(fx.Interpreter):
    """Runs the traced graph once on a real input, carrying a `_State` beside every tensor."""

    def __init__(self, gm: fx.GraphModule, inspectable: dict[str, nn.Module],
                 blocks: dict[str, nn.Module] | None = None, traced: list | None = None, to_map=None,
                 root: nn.Module | None = None):
        super().__init__(gm)
        # A transformer's outputs as the recorder gives them ([C, h, w]); its patch grid is
        # followed through the tokens (`_tokens`). None for a CNN.
        self.to_map = to_map
        self.root = root if root is not None else gm
        self.attention: dict[int, str] = {}  # graph index of each attention -> its note
        self.inspectable = inspectable
        self.states: dict[fx.Node, object] = {}  # _State, _UNKNOWN, or None (not from the input)
        self.rows: list[Row] = []
        self.calls: dict[str, int] = {}
        self.unknown = ""  # the first op whose effect on fields is not a window
        self.notes: dict[fx.Node, str] = {}  # a merge's own note (jumps disagree, global context)
        # Blocks by the node their forward returned, inner ones first (a container's call
        # returns after its children's): their rows follow that node's, as their hooks do.
        self.index = {node: k for k, node in enumerate(gm.graph.nodes)}
        self.traced = [(p, a, b) for p, a, b, _ in traced or ()]
        self.blocks_at: dict[fx.Node, list[tuple[str, int, int]]] = {}
        for path, a, b, out in traced or ():
            if path in (blocks or {}) and isinstance(out, fx.Proxy):
                self.blocks_at.setdefault(out.node, []).append((path, a, b))
        self.blocks = blocks or {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.states[n] = self._state(n, out)
        elif n.op == "call_module" and isinstance(self.module.get_submodule(n.target), nn.MultiheadAttention):
            self.states[n] = self._attention(n, out[0])  # (output, weights): `getitem` takes the output on
        else:
            self.states[n] = None
        for k, call in enumerate(self.blocks_at.get(n, ()) if self.states[n] is not None else ()):
            self._block_row(n, out, call, self.blocks_at[n][:k])
        return out

    # ------------------------------------------------------------ blocks

    def _block_row(self, n: fx.Node, out: torch.Tensor, call: tuple[str, int, int], inner: list) -> None:
        """The row of a block whose forward returned node `n`: that tensor's field."""
        path = call[0]
        k = self.calls.get(path, 0)
        self.calls[path] = k + 1
        m = self.blocks[path]
        row = Row(f"{path}#{k}" if k else path, type(m).__name__, self._shape(path, m, out),
                  sum(p.numel() for p in m.parameters()), block=True)
        st = self.states[n]
        if isinstance(st, _State):
            # A transformer block's field is its attention's story; a CNN block's, its merge's.
            said = [note for at, note in self.attention.items() if call[1] <= at < call[2]]
            row.field, row.extent = st.field(), st.extent()
            row.note = said[0] if said else self._explain(n, call, inner)
        else:
            row.note = f"unknown: the arithmetic cannot follow {self.unknown}"
        self.rows.append(row)

    def _explain(self, n: fx.Node, call: tuple[str, int, int], inner: list) -> str:
        """What made a block's output: its last part's output (a stage), or the merge of its
        branches the output comes from without any window after it (ResNet's ReLU after the
        sum); else a chain of layers."""
        path, start, end = call
        last = [p for p, _, _ in inner if p.startswith(path + ".")]
        if last:
            return f"block output: its last part's, {last[-1]}"
        node, field = n, self.states[n].field()
        while start <= self.index[node] < end:
            ins = [a for a in node.all_input_nodes if isinstance(self.states.get(a), _State)]
            kind = _MERGES.get(node.target) if node.op == "call_function" else None
            if kind in ("add", "mul", "cat", "stack") and len(ins) > 1:
                names = [self._branch(a, call) for a in ins]
                shown = names if len(names) <= 4 else [*names[:2], "…", names[-1]]
                what = {"add": "sum", "mul": "product", "cat": "concatenation", "stack": "stack"}[kind]
                note = f"block output: {what} of {len(ins)} branches ({', '.join(shown)}), field = their union"
                return note + (f"; {self.notes[node]}" if self.notes.get(node) else "")
            if len(ins) != 1 or self.states[ins[0]].field() != field:
                break
            node = ins[0]
        return "block output: a chain of layers (no merge), field = its last layer's"

    def _branch(self, a: fx.Node, call: tuple[str, int, int]) -> str:
        """Which child of the block node `a` comes from ("input": the block's own input)."""
        path, start, end = call
        while True:
            if not start <= self.index[a] < end:
                return "input"
            if a.op in ("call_module", "get_attr"):
                owner = str(a.target)
            else:  # the innermost call traced through that made it
                inside = [(p, s) for p, s, e in self.traced if s <= self.index[a] < e]
                owner = max(inside, key=lambda t: t[1])[0] if inside else ""
            if owner.startswith(path + "."):
                child = owner[len(path) + 1:].split(".")[0]
                if not _is_noop(self.blocks[path].get_submodule(child)):  # StochasticDepth: look past it
                    return child
            ins = [x for x in a.all_input_nodes if self.states.get(x) is not None]
            if not ins:  # an op of the block's own forward on constants only
                return a.name
            a = ins[0]  # an op of the block's own forward: follow what it was applied to

    def _shape(self, name: str, m: nn.Module | None, out: torch.Tensor, st=None) -> tuple[int, ...]:
        """A row's output shape without the batch: a transformer's as the recorder gives it
        (`tokens.mapper`); for rows that are not layers (merges, attention), from the state."""
        if self.to_map is None:
            return tuple(out.shape[1:])
        if m is not None:
            return tuple(self.to_map(name, m, out).shape[1:])
        if isinstance(st, _State) and (st.seq is not None or st.axes == (1, 2)) and out.ndim in (3, 4):
            drop = {0, st.seq} if st.seq is not None else {0, 1, 2}
            return (math.prod(out.shape[d] for d in range(out.ndim) if d not in drop), *st.hw)
        return tuple(out.shape[1:])

    def _attention(self, n: fx.Node, out: torch.Tensor):
        """The state after an attention (ViT's `nn.MultiheadAttention` over the tokens, Swin's
        `shifted_window_attention` in windows), and its row."""
        src = self.states.get(n.args[0])
        if not isinstance(src, _State):
            return src
        h, w = src.hw
        if n.op == "call_module":  # every query token against every key token
            path, m = str(n.target), self.module.get_submodule(n.target)
            if src.seq is None and src.axes is None:  # not a grid we follow: one unit, as before
                return src
            st, note = replace(src, y=src.y.everywhere(h), x=src.x.everywhere(w), whole=True), ATTENTION_NOTE
        else:
            window = n.kwargs.get("window_size", n.args[4] if len(n.args) > 4 else None)
            shift = n.kwargs.get("shift_size", n.args[6] if len(n.args) > 6 else (0, 0))
            (wy, wx), (sy, sx) = window, shift
            st = replace(src, y=src.y.windowed(wy, h), x=src.x.windowed(wx, w), whole=wy >= h and wx >= w)
            if st.whole:
                note = f"attention over the whole {h}x{w} map (one {wy}x{wx} window): " + ATTENTION_NOTE.partition(": ")[2]
            else:
                shifted = f", shifted by {sy}x{sx}" if sy < h and sx < w and (sy or sx) else ""
                note = (f"windowed attention: a token sees the {wy}x{wx} window it is in{shifted}; the field is a bound "
                        f"(a window spans {wy - 1} more tokens, split between a token's two sides; the field allows "
                        f"{wy - 1} on each)")
            inside = [(p, a) for p, a, b in self.traced if a <= self.index[n] < b]
            path = max(inside, key=lambda t: t[1])[0] if inside else n.name
            m = self.root.get_submodule(path) if inside else None  # (the graph module keeps only called ones)
        self.attention[self.index[n]] = note
        row = Row(path, type(m).__name__ if m is not None else "attention", self._shape(path, None, out, st),
                  sum(p.numel() for p in m.parameters()) if m is not None else 0, layer=False, attention=True)
        row.field, row.extent, row.note = st.field(), st.extent(), note
        self.rows.append(row)
        return st

    def _state(self, n: fx.Node, out: torch.Tensor):
        """The tensor's `_State`, `_UNKNOWN`, or None for tensors not computed from the input."""
        if n.op == "placeholder":
            h, w = out.shape[-2:]
            return _State(_Axis(1, 1, 0, 0, h), _Axis(1, 1, 0, 0, w), (out.ndim - 2, out.ndim - 1), (h, w), out.ndim)
        raw = [self.states.get(a) for a in n.all_input_nodes]
        if any(s is _UNKNOWN for s in raw):  # downstream of an op the arithmetic cannot follow
            self._row(n, out, None, None, "", _MERGES.get(n.target) if n.op == "call_function" else None)
            return _UNKNOWN
        ins = [s for s in raw if s is not None]
        if not ins:  # a constant, not computed from the input
            return None
        src = ins[0]
        window, note, kind = None, "", None
        if _swin(n) == "shifted_window_attention":
            return self._attention(n, out)
        if _swin(n) == "_patch_merging_pad" and src.axes is not None:  # 2x2 neighbours side by side
            window = ((2, 2), (2, 2), (1, 1), (0, 0))
        elif n.op == "call_module":
            m = self.module.get_submodule(n.target)
            if src.axes is not None:
                window = _window_of(m, src.hw)
                if window is None and isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                    window, exact = _adaptive(src.hw, tuple(out.shape[-2:]))
                    note = "" if exact else "adaptive pooling with uneven bins: field is a bound"
            kind = type(m).__name__
        elif n.op == "call_function" and src.axes is not None:
            if n.target in _F_WINDOWS:
                args = list(n.args[1:]) + [None] * 4
                k = _pair(n.kwargs.get("kernel_size", args[0]))
                s = _pair(n.kwargs.get("stride", args[1]) or k)
                p = _pair(n.kwargs.get("padding", args[2]) or 0)
                d = _pair(n.kwargs.get("dilation", args[3]) or 1) if n.target in (F.max_pool2d, torch.max_pool2d) else (1, 1)
                window = (k, s, d, p)
            elif n.target in _F_ADAPTIVE:
                window, exact = _adaptive(src.hw, tuple(out.shape[-2:]))
                note = "" if exact else "adaptive pooling with uneven bins: field is a bound"
            elif n.target is F.pad:
                pad = list(n.kwargs.get("pad", n.args[1]))
                if len(pad) >= 4:  # (left, right, top, bottom)
                    window = ((1, 1), (1, 1), (1, 1), (pad[2], pad[0]))
            kind = _MERGES.get(n.target)
        if window is not None:
            k, s, d, p = window
            hw = tuple(out.shape[a] for a in src.axes)
            st = _State(src.y.window(k[0], s[0], d[0], p[0], hw[0]), src.x.window(k[1], s[1], d[1], p[1], hw[1]),
                        src.axes, hw, out.ndim)
        else:
            st, note = self._generic(n, out, ins)
        self._row(n, out, st, window, note, kind)
        if note:
            self.notes[n] = note
        return st

    def _generic(self, n: fx.Node, out: torch.Tensor, ins: list[_State]) -> tuple[object, str]:
        """Ops that do not slide a window: elementwise ops and merges keep the spatial
        axes (broadcasting included), permutes move them, anything else (flatten,
        view, mean) folds all units into one."""
        if any(s.seq is not None for s in ins):
            return self._tokens(n, out, [s for s in ins if s.seq is not None])
        ref = max(ins, key=lambda s: s.hw[0] * s.hw[1] if s.axes is not None else 0)
        if ref.axes is None:
            return _merged(ins, None, (1, 1), 1), ""
        if (dims := self._permutation(n, out)) is not None:  # (ConvNeXt's blocks run channels-last)
            return replace(ref, axes=(dims.index(ref.axes[0]), dims.index(ref.axes[1])), ndim=out.ndim), ""
        if self.to_map is not None and ref.axes == (ref.ndim - 2, ref.ndim - 1) and out.ndim == ref.ndim - 1 \
                and out.shape[-1] == ref.hw[0] * ref.hw[1]:  # ViT: the patch grid flattened into tokens
            return replace(ref, axes=None, seq=out.ndim - 1, ndim=out.ndim), ""
        hw = None
        if out.ndim == ref.ndim and all(out.shape[a] == h for a, h in zip(ref.axes, ref.hw)):
            hw, axes = ref.hw, ref.axes
        elif ref.axes == (ref.ndim - 2, ref.ndim - 1) and out.ndim >= 3 and tuple(out.shape[-2:]) == ref.hw:
            hw, axes = ref.hw, (out.ndim - 2, out.ndim - 1)  # a view that keeps H, W last (channel shuffle)
        if hw is None and out.ndim == ref.ndim and any(out.shape[a] > 1 for a in ref.axes):
            op = type(self.module.get_submodule(n.target)).__name__ if n.op == "call_module" \
                else getattr(n.target, "__name__", n.target)
            self.unknown = self.unknown or f"{op} ({n.name})"
            return _UNKNOWN, ""  # slicing, resampling: not a sliding window
        if hw is None:
            return _merged([s.collapsed() for s in ins], None, (1, 1), out.ndim), ""
        spatial = [s for s in ins if s.axes is not None]
        return _merged(spatial, axes, hw, out.ndim, with_note=True)

    def _permutation(self, n: fx.Node, out: torch.Tensor) -> list[int] | None:
        """The dims of a permute (a call, or torchvision's Permute module), else None."""
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        if (n.op == "call_method" and n.target == "permute") or n.target is torch.permute \
                or isinstance(getattr(module, "dims", None), (list, tuple)):
            dims = module.dims if module is not None else n.kwargs.get("dims") or (
                n.args[1] if isinstance(n.args[1], (tuple, list)) else n.args[1:])
            return [int(d) % out.ndim for d in dims]
        return None

    def _tokens(self, n: fx.Node, out: torch.Tensor, ins: list[_State]) -> tuple[object, str]:
        """Ops on a flattened patch grid (ViT's tokens): a permute moves the tokens' axis, a
        concatenation in front of it (the class token) shifts the grid, ops that keep every
        token keep its field (their union for merges); anything else (the class token taken
        out) is one unit that sees all."""
        ref = ins[0]
        if (dims := self._permutation(n, out)) is not None:
            return replace(ref, seq=dims.index(ref.seq), ndim=out.ndim), ""
        if n.target in (torch.cat, torch.concat) and len(ins) == 1:
            parts, dim = n.args[0], n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0) % out.ndim
            if dim == ref.seq:
                k = next(k for k, a in enumerate(parts) if self.states.get(a) is ref)
                before = sum(self.env[a].shape[dim] for a in parts[:k])
                return replace(ref, offset=ref.offset + before, ndim=out.ndim), ""
        if out.ndim == ref.ndim and out.shape[ref.seq] == ref.offset + ref.hw[0] * ref.hw[1]:
            return _merged(ins, None, ref.hw, out.ndim, with_note=True, seq=ref.seq, offset=ref.offset)
        return _merged([s.collapsed() for s in ins], None, (1, 1), out.ndim), ""

    def _row(self, n, out, st, window, note, kind) -> None:
        if n.op == "call_module":
            base = str(n.target)
            if base not in self.inspectable:
                return
            k = self.calls.get(base, 0)
            self.calls[base] = k + 1
            m = self.inspectable[base]
            row = Row(f"{base}#{k}" if k else base, type(m).__name__, self._shape(base, m, out),
                      sum(p.numel() for p in m.parameters()))
        elif kind in ("add", "mul", "cat", "stack") and len(n.all_input_nodes) > 1:
            row = Row(n.name, kind, self._shape(n.name, None, out, st), 0, layer=False)
        else:
            return
        if window is not None:
            row.kernel, row.stride, row.dilation, row.padding = window
        known = isinstance(st, _State)
        row.field = st.field() if known else None
        row.extent = st.extent() if known else None
        row.note = note if known else f"unknown: the arithmetic cannot follow {self.unknown}"
        self.rows.append(row)


def _merged(ins: list[_State], axes, hw, ndim: int, with_note: bool = False, **grid):
    whole = next((s for s in ins if s.whole and all(s.y.lo <= t.y.lo and t.y.hi <= s.y.hi and s.x.lo <= t.x.lo
                                                     and t.x.hi <= s.x.hi for t in ins)), None)
    if whole is not None:  # one input already sees all any of them sees (attention + its residual)
        st = replace(whole, axes=axes, hw=hw, ndim=ndim, **grid)
        return (st, "") if with_note else st
    ys, ny = _merge([(s.y, s.hw[0]) for s in ins], hw[0])
    xs, nx = _merge([(s.x, s.hw[1]) for s in ins], hw[1])
    st = _State(ys, xs, axes, hw, ndim, **grid)
    if with_note:
        return st, (ny or nx) if len(ins) > 1 else ""
    return st


# ---------------------------------------------------------------- the table

def _check_size(input_size) -> tuple[int, int]:
    lo, hi = bounds.RF_SIDES
    try:
        h, w = (bounds.whole(v, "", -2 ** 63, 2 ** 63, RFError) for v in input_size)
    except (TypeError, ValueError):  # RFError is a ValueError too: not two whole numbers
        raise RFError(f"Input size {bounds._shown(input_size)} is not two integers (height, width).") from None
    if not (lo <= h <= hi and lo <= w <= hi):
        raise RFError(f"Input size {h}x{w} is out of range: use {lo} to {hi} pixels a side.")
    return h, w


def architecture(model: Model, input_size=None) -> list[Row]:
    """Every inspectable layer call (names as in `model.layers`) and every merge, in
    execution order, with window parameters, output shape, parameters and receptive
    field, from one traced forward pass on a blank input of `input_size` (h, w).

    The caller holds the model's lock (the job runner does), which keeps other sessions'
    hooks off this model's modules while they are traced and walked; other models'
    passes in other threads go past the tracer (see `_Tracer`)."""
    h, w = _check_size(input_size or model.input_size)
    # Blocks are traced through (their layers have rows of their own); the rest stop it.
    blocks = {n: m for n, m in model.layer_modules.items() if n in model.blocks or n in tokens.blocks(model.net)}
    inspectable = {n: m for n, m in model.layer_modules.items() if n not in blocks}
    tracer = _Tracer({id(m) for m in inspectable.values()})
    try:
        graph = tracer.trace(model.net)
    except Exception as e:  # dynamic control flow fx cannot follow
        raise RFError(f"Cannot trace {model.id} with torch.fx ({type(e).__name__}: {e}); "
                      "receptive fields need a traceable forward.") from None
    walk = _Walk(fx.GraphModule(tracer.root, graph), inspectable, blocks, tracer.calls, tokens.mapper(model.net),
                 model.net)
    try:
        with torch.no_grad():
            walk.run(torch.zeros(1, 3, h, w))
    except (AssertionError, RuntimeError) as e:  # a network made for one size (ViT asserts its own)
        raise RFError(f"{model.id} cannot take a {h}x{w} input ({e}).") from None
    return walk.rows


def table(model: Model, input_size=None, *, fresh: bool = False) -> list[Row]:
    """`architecture`, traced once per model (its private copies included: the fields
    depend on the layers, not the weights) and input size; `fresh`: trace anyway (and
    keep that). Read-only."""
    size = _check_size(input_size or model.input_size)
    memo = model.shared.setdefault("receptive.tables", {})
    rows = None if fresh else memo.get(size)
    if rows is None:  # two threads may both trace; either result is the same table
        rows = memo[size] = architecture(model, size)
    return rows


def fields(model: Model, input_size=None) -> dict[str, Field]:
    """Layer call name (as in `model.layers` / cnnviz.hooks) -> receptive field of its units."""
    return {r.name: r.field for r in architecture(model, input_size) if r.layer and r.field is not None}


# ---------------------------------------------------------------- one unit, theory

@dataclass(frozen=True)
class Unit:
    """One unit of a layer and its theoretical field on the input."""
    layer: str
    unit: tuple[int, int]
    field: Field
    shape: tuple[int, int]  # the layer's map (h, w); (1, 1) for non-spatial layers
    input_size: tuple[int, int]
    extent: Box  # input pixels the layer's units depend on at all
    spatial: bool = True  # False for flat outputs (Linear): no map to take a gradient at

    @property
    def box(self) -> Box:
        return self.field.box(*self.unit)

    @property
    def box_clipped(self) -> Box:
        """The pixels the unit really depends on: its box inside the image, less any trailing
        pixels that a floor-mode stride left out of every unit of the layer."""
        return _intersect(self.box, self.extent)

    @property
    def centre(self) -> tuple[float, float]:
        return self.field.centre(*self.unit)


def rows_by_name(rows: list[Row]) -> dict[str, Row]:
    return {r.name: r for r in rows if r.layer and r.field is not None}


def check_layer(rows: list[Row], layer: str, spatial: bool = False) -> Row:
    """The table row of `layer`, or an `UnknownLayer` (an RFError) naming the closest layer names."""
    named = rows_by_name(rows)
    if spatial:
        named = {n: r for n, r in named.items() if len(r.shape) == 3}
    find_layer(layer, list(named), error=UnknownLayer,
               where="with a spatial output in this model" if spatial else "in this model")
    return named[layer]


def unit(rows: list[Row], layer: str, i: int | None = None, j: int | None = None,
         input_size: tuple[int, int] = (224, 224)) -> Unit:
    """Unit (i, j) of `layer` (default: the centre unit), checked against the map's size."""
    row = check_layer(rows, layer)
    h, w = row.shape[1:] if len(row.shape) == 3 else (1, 1)
    i = (h - 1) // 2 if i is None else i
    j = (w - 1) // 2 if j is None else j
    if not (0 <= i < h and 0 <= j < w):
        raise RFError(f"Unit ({i}, {j}) is outside {layer}'s {h}x{w} map: use 0..{h - 1} and 0..{w - 1}.")
    return Unit(layer, (int(i), int(j)), row.field, (h, w), tuple(input_size), row.extent, len(row.shape) == 3)


# ---------------------------------------------------------------- effective field

@dataclass(frozen=True)
class Effective:
    """|d unit / d input| summed over colour channels, and its mass boxes."""
    map: np.ndarray  # float32 [H, W]
    box50: Box | None  # smallest box around the unit's centre holding 50% of the map's mass
    box90: Box | None
    samples: int = 1

    @property
    def empty(self) -> bool:
        return self.box50 is None


def mass_boxes(m: np.ndarray, centre: tuple[float, float], fractions=(0.5, 0.9)) -> list[Box | None]:
    """For each fraction q, the smallest box centred on `centre` (growing in half-pixel
    steps, clipped to the map) that holds at least q of the map's mass; None if empty."""
    m = np.asarray(m, np.float64)
    total = m.sum()
    if not np.isfinite(total) or total <= 0:
        return [None for _ in fractions]
    h, w = m.shape
    s = np.zeros((h + 1, w + 1))
    s[1:, 1:] = m.cumsum(0).cumsum(1)
    r = np.arange(0, 2 * max(h, w) + 2) / 2
    cy, cx = centre
    t = np.clip(np.ceil(cy - r), 0, h).astype(int)
    l = np.clip(np.ceil(cx - r), 0, w).astype(int)
    b = np.clip(np.floor(cy + r) + 1, 0, h).astype(int)
    rr = np.clip(np.floor(cx + r) + 1, 0, w).astype(int)
    mass = s[b, rr] - s[t, rr] - s[b, l] + s[t, l]
    out = []
    for q in fractions:
        k = int(np.argmax(mass >= q * total * (1 - 1e-9)))
        out.append((int(t[k]), int(l[k]), int(b[k]), int(rr[k])))
    return out


def _input_grads(model: Model, x: torch.Tensor, layer: str, ij: tuple[int, int],
                 channel: int | None) -> np.ndarray:
    """[B, H, W]: |d out[b, channel or all channels summed, i, j] / d x[b]| summed over colours,
    for normalized network inputs x; one forward and one backward for the whole batch
    (samples do not interact in eval mode)."""
    return _probe_grads(model, x, [(layer, ij)], channel)[0]


def _probe_grads(model: Model, x: torch.Tensor, probes: list[tuple[str, tuple[int, int]]],
                 channel: int | None = None, progress: Progress | None = None) -> list[np.ndarray]:
    """`_input_grads` of several (layer, (i, j)) probes from one forward pass, a backward
    each (`progress` after each). A transformer's tokens are taken on their patch grid
    (the recorder's maps), so (i, j) is a token."""
    xg = x.detach().clone().requires_grad_(True)
    grads = []
    with Recorder(model, sorted({layer for layer, _ in probes}), detach=False) as rec, torch.enable_grad():
        model.net(xg)
        for k, (layer, (i, j)) in enumerate(probes):
            out = rec.outputs[layer]
            if layer in rec.mutated():  # a later in-place op (ResNet's `out += identity`) changed it
                raise RFError(f"{layer}'s output is changed in place by the operation after it (a residual add "
                              "or an in-place ReLU), "
                              "so its own gradient cannot be taken; pick the layer right after it.")
            if channel is not None and not 0 <= channel < out.shape[1]:
                raise RFError(f"Channel {channel} does not exist in {layer} (0..{out.shape[1] - 1}).")
            target = out[:, channel, i, j] if channel is not None else out[:, :, i, j].sum(1)
            (g,) = torch.autograd.grad(target.sum(), xg, retain_graph=k < len(probes) - 1)
            grads.append(g.abs().sum(1).numpy().astype(np.float32))
            if progress is not None:
                progress((k + 1) / len(probes), f"{k + 1} of {len(probes)} layers")
    return grads


def network_input(model: Model, image) -> torch.Tensor:
    """The normalized network input for `image` (PIL, or [1, 3, H, W] pixels in [0, 1]);
    a tensor outside [0, 1] is refused (an already-normalized input would give a wrong
    field without a word)."""
    if image is None:
        raise RFError("The effective field needs an image.")
    x = model.to_pixels(image)
    if isinstance(image, torch.Tensor) and (x.ndim != 4 or x.shape[1] != 3 or x.min() < 0 or x.max() > 1):
        raise RFError(f"Pass the image, or pixels [N, 3, H, W] in [0, 1] (got {list(x.shape)} in "
                      f"[{float(x.min()):.3g}, {float(x.max()):.3g}]): normalization happens inside.")
    return model.normalize(x)


def effective(model: Model, image, u: Unit, channel: int | None = None) -> Effective:
    """The effective field of unit `u` on `image` (PIL, or [1, 3, H, W] pixels in [0, 1]):
    |gradient| of that unit (all channels at that position, or one channel) with respect
    to the normalized input."""
    _need_spatial(u)
    m = _input_grads(model, network_input(model, image), u.layer, u.unit, channel)[0]
    return Effective(m, *mass_boxes(m, u.centre))


def _average(model: Model, u: Unit, inputs: torch.Tensor, channel: int | None, batch_size: int,
             progress: Progress) -> Effective:
    """Mean effective field of unit `u` over normalized inputs [N, 3, H, W], batch by
    batch; `progress` after each batch (and so a stop request ends it within one batch)."""
    _need_spatial(u)
    n = len(inputs)
    if n == 0:
        raise RFError("No inputs to average over.")
    total = np.zeros(inputs.shape[-2:], np.float64)
    for k in range(0, n, batch_size):
        progress.check()
        total += _input_grads(model, inputs[k:k + batch_size], u.layer, u.unit, channel).sum(0)
        done = min(k + batch_size, n) / n
        progress(done, f"{done:.0%} of the inputs")
    m = (total / n).astype(np.float32)
    return Effective(m, *mass_boxes(m, u.centre), samples=n)


def noise_inputs(model: Model, n: int, seed: int = 0) -> torch.Tensor:
    """n standard-normal inputs in the network's normalized space (Luo et al.'s setting)."""
    if not 1 <= n <= bounds.MAX_NOISE_INPUTS:
        raise RFError(f"Use 1 to {bounds.MAX_NOISE_INPUTS} noise inputs, not {n}.")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *model.input_size, generator=g)


def sample_inputs(model: Model) -> torch.Tensor:
    """The bundled sample images, preprocessed (normalized) for `model`: [N, 3, H, W]."""
    from .images import load_image
    from .samples import sample_paths

    return torch.cat([model.preprocess(load_image(p)) for p in sample_paths().values()])


def _need_spatial(u: Unit) -> None:
    if not u.spatial:
        raise RFError(f"{u.layer} has no spatial map (it sees the whole image); pick a convolutional layer.")


def summary(u: Unit, eff: Effective | None) -> dict:
    """Theoretical size inside the image, effective (90% mass box) size and their ratio
    (square root of the area ratio)."""
    t, l, b, r = u.box_clipped
    out = {"theoretical": (b - t, r - l), "effective": None, "ratio": None}
    if eff is not None and eff.box90 is not None:
        et, el, eb, er = eff.box90
        out["effective"] = (eb - et, er - el)
        out["ratio"] = math.sqrt((eb - et) * (er - el) / max((b - t) * (r - l), 1))
    return out


# ---------------------------------------------------------------- the contract

@dataclass(frozen=True)
class TableSpec(Spec):
    """The architecture table: every layer's field at `input_size` (default: the model's)."""

    input_size: tuple[int, int] | None = None

    def check(self, model) -> "TableSpec":
        size = _check_size(self.input_size or model.input_size)
        return self if size == self.input_size else replace(self, input_size=size)


@dataclass
class Table(Result):
    """Rows in execution order (layers and merges), and the unit picking the page does on them."""

    rows: list[Row]
    input_size: tuple[int, int]

    @cached_property
    def spatial(self) -> dict[str, Row]:
        """Layers with a spatial map whose field is known, by name, in execution order."""
        return {n: r for n, r in rows_by_name(self.rows).items() if len(r.shape) == 3}

    def row(self, layer: str, spatial: bool = False) -> Row:
        return check_layer(self.rows, layer, spatial)

    @property
    def transformer(self) -> bool:
        return any(r.attention for r in self.rows)

    def default_layer(self) -> str:
        """Deep enough that the field is interesting (among layers: blocks would move it; a
        transformer's are its blocks, what a token is)."""
        names = [n for n, r in self.spatial.items() if r.block == self.transformer]
        return names[len(names) * 3 // 5]

    def place(self, layer: str, i: int | None, j: int | None) -> tuple[int, int]:
        """(i, j) if it is a unit of `layer`'s map; else the centre unit on that axis."""
        h, w = self.spatial[layer].shape[1:]
        return (i if i is not None and 0 <= i < h else (h - 1) // 2,
                j if j is not None and 0 <= j < w else (w - 1) // 2)

    def follow(self, shown: tuple[str, int, int] | None, layer: str) -> tuple[int, int] | None:
        """The unit of `layer` nearest to the centre of unit `shown` = (layer, i, j) of
        another layer (a new layer keeps looking at the same place); None if unknown."""
        if not shown or shown[0] not in self.spatial or layer not in self.spatial:
            return None
        cy, cx = self.spatial[shown[0]].field.centre(*shown[1:])
        new = self.spatial[layer]
        return nearest_unit(new.field, new.shape[1:], cy, cx)

    def centres(self, layer: str) -> tuple[list[float], list[float]]:
        """Centres of the units' fields along y and x, in input pixels."""
        r = self.row(layer)
        f, (h, w) = r.field, (r.shape[1:] if len(r.shape) == 3 else (1, 1))
        return [f.start[0] + k * f.jump[0] for k in range(h)], [f.start[1] + k * f.jump[1] for k in range(w)]

    def unit(self, layer: str, i: int | None = None, j: int | None = None) -> Unit:
        return unit(self.rows, layer, i, j, self.input_size)

    def whole_at(self) -> tuple[int, str, int] | None:
        """Where a unit's field first reaches the input's height (the depth chart's mark):
        (1-based position among the n layers with a field, its name, n); None if never."""
        layers = list(rows_by_name(self.rows).values())
        k = next((k for k, r in enumerate(layers) if r.field.size[0] >= self.input_size[0]), None)
        return None if k is None else (k + 1, layers[k].name, len(layers))

    def depth_sentence(self, label: str) -> str:
        """The depth chart in words, for one network."""
        at = self.whole_at()
        if at is None:
            return f"{label}: no unit's field reaches the whole {self.input_size[0]} px image."
        k, name, n = at
        return (f"{label}: a unit's field covers the whole {self.input_size[0]} px image from layer {k} of {n} "
                f"({k / n:.0%} of the depth, {name}).")

    def to_dict(self) -> dict:
        """`python -m cnnviz rf --all`: the layers' rows (merges left out)."""
        return {"model": self.model, "input_size": list(self.input_size),
                "layers": [r.to_dict() for r in self.rows if r.layer], "seconds": self.seconds}


def _known_layer(model: Model, layer: str) -> None:
    """Before any pass: is `layer` one of the model's layer calls (the table has the same names)."""
    find_layer(layer, [l.name for l in model.layers], error=UnknownLayer)


@dataclass(frozen=True)
class UnitSpec(Spec):
    """Unit (y, x) of `layer` (default: the centre unit): its theoretical field."""

    layer: str
    y: int | None = None
    x: int | None = None

    def check(self, model) -> "UnitSpec":
        _known_layer(model, self.layer)  # the unit is checked against the map in run()
        for name in ("y", "x", "channel"):
            value = getattr(self, name, None)
            if value is not None:  # whole numbers; their range is the layer's map, checked in run()
                bounds.whole(value, f"The unit's {name}" if name != "channel" else "The channel", -2 ** 31, 2 ** 31,
                             RFError)
        return self


@dataclass(frozen=True)
class EffectiveSpec(UnitSpec):
    """And its effective field on the image: all channels at that position, or one `channel`."""

    channel: int | None = None


@dataclass(frozen=True)
class AverageSpec(UnitSpec):
    """Its effective field averaged over the bundled sample images (`source` "samples") or
    over `n` standard-normal inputs in the network's normalized space ("noise"), `batch_size`
    inputs a forward and backward pass."""

    channel: int | None = None
    source: str = "samples"
    n: int = 16
    seed: int = 0
    batch_size: int = 8

    def check(self, model) -> "AverageSpec":
        super().check(model)
        if self.source not in SOURCES:
            raise RFError(f"Average over {' or '.join(SOURCES)}, not {bounds._shown(self.source)}.")
        if self.source == "noise":
            try:
                bounds.whole(self.n, "", 1, bounds.MAX_NOISE_INPUTS, RFError)
            except RFError:
                raise RFError(f"Use 1 to {bounds.MAX_NOISE_INPUTS} noise inputs, not {bounds._shown(self.n)}.") from None
        bounds.seed(self.seed, RFError)
        bounds.batch(self.batch_size, RFError)
        return self

    def inputs(self) -> int:
        if self.source == "noise":
            return self.n
        from .samples import sample_paths

        return len(sample_paths())

    def passes(self, model) -> int:
        return self.inputs()


@dataclass
class UnitField(Result):
    """A unit's theoretical field and, for `EffectiveSpec` / `AverageSpec`, its effective field."""

    unit: Unit
    effective: Effective | None = None

    def summary(self) -> dict:
        return summary(self.unit, self.effective)

    def canvas(self, base):
        """`render.rf_canvas` of this field on `base` (PIL, the network's input size):
        (PIL RGB, margin)."""
        from .render import rf_canvas

        e = self.effective
        return rf_canvas(base, self.unit.box, e and e.map, e and e.box50, e and e.box90)

    def to_dict(self) -> dict:
        """`python -m cnnviz rf --layer ...`."""
        u, e = self.unit, self.effective
        f = u.field
        return {"model": self.model, "layer": u.layer, "size": list(f.size), "jump": list(f.jump),
                "start": list(f.start), "unit": list(u.unit), "box": list(u.box), "box_clipped": list(u.box_clipped),
                "erf_box50": list(e.box50) if e and e.box50 else None,
                "erf_box90": list(e.box90) if e and e.box90 else None, "seconds": self.seconds}




@dataclass(frozen=True)
class DepthSpec(Spec):
    """The depth curve: the centre unit's theoretical field and its effective field on the
    image at `points` layers spread evenly over the depth (of the table's layers with a
    spatial map that a gradient can be taken at), from one forward pass and a backward
    from each layer."""

    points: int = 8

    def check(self, model) -> "DepthSpec":
        bounds.whole(self.points, "The number of layers", 2, bounds.MAX_DEPTH_POINTS, RFError)
        return self

    def passes(self, model) -> int:
        return self.points


@dataclass
class Depth(Result):
    """Per layer (execution order): its depth (k / n among the table's n layers with a
    field, as the depth chart counts them; 1 the last), the theoretical field's side (as the depth chart) and the side of the 90%-mass
    box of the centre unit's effective field (None when the gradient is zero)."""

    layers: list[str]
    depth: list[float]
    theoretical: list[int]
    effective: list[int | None]

    def to_dict(self) -> dict:
        return {"model": self.model, "layers": self.layers, "depth": self.depth, "theoretical": self.theoretical,
                "effective": self.effective, "seconds": self.seconds}


def depth_curve(model: Model, image, points: int = 8, *, progress: Progress | None = None) -> Depth:
    """`DepthSpec`'s work: see there."""
    rows = table(model)
    layers = list(rows_by_name(rows).values())  # the depth chart's x: every layer with a field
    usable = [k for k, r in enumerate(layers) if len(r.shape) == 3 and r.name not in model.mutated_layers]
    if any(r.attention for r in rows):  # a transformer: the patch embedding, then its blocks (what a token
        usable = usable[:1] + [k for k in usable[1:] if layers[k].block]  # is; an untrained LayerNorm's sum is 0)
    picks = sorted({usable[round(q)] for q in np.linspace(0, len(usable) - 1, min(points, len(usable)))})
    units = [unit(rows, layers[k].name, input_size=model.input_size) for k in picks]
    grads = _probe_grads(model, network_input(model, image), [(u.layer, u.unit) for u in units], None,
                         Progress.of(progress))
    sides = []
    for u, g in zip(units, grads):
        box = mass_boxes(g[0], u.centre, (0.9,))[0]
        sides.append(None if box is None else box[2] - box[0])
    return Depth([u.layer for u in units], [(k + 1) / len(layers) for k in picks],
                 [layers[k].field.size[0] for k in picks], sides)


def backdrop(model: Model, image, source: str | None = None):
    """What a field is drawn over (the network's input size): the image as the network
    sees it; greyed for an average over the samples; plain grey for noise or no image."""
    from PIL import Image

    if image is None or source == "noise":
        return Image.new("RGB", model.input_size[::-1], (200, 200, 200) if source == "noise" else (235,) * 3)
    seen = model.input_image(image)
    return seen.convert("L").convert("RGB") if source == "samples" else seen


def run(model: Model, image, spec: Spec, *, progress: Progress | None = None) -> Table | UnitField:
    """`TableSpec` -> `Table`; `UnitSpec` / `EffectiveSpec` / `AverageSpec` -> `UnitField`;
    `DepthSpec` -> `Depth`.
    `image`: PIL or [1, 3, H, W] pixels in [0, 1] (`EffectiveSpec` only; the others take None)."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    if isinstance(spec, TableSpec):
        progress(0.0, "one traced pass")
        return Table(table(model, spec.input_size, fresh=True), spec.input_size)
    if isinstance(spec, DepthSpec):
        progress(0.0, "one forward pass, a backward pass from each layer")
        return depth_curve(model, image, spec.points, progress=progress)
    if not isinstance(spec, UnitSpec):
        raise TypeError(f"cnnviz.receptive cannot run {type(spec).__name__}")
    u = unit(table(model), spec.layer, spec.y, spec.x, model.input_size)
    if isinstance(spec, EffectiveSpec):
        progress(0.0, "one forward and one backward pass")
        return UnitField(u, effective(model, image, u, spec.channel))
    if isinstance(spec, AverageSpec):
        _need_spatial(u)
        inputs = sample_inputs(model) if spec.source == "samples" else noise_inputs(model, spec.n, spec.seed)
        return UnitField(u, _average(model, u, inputs, spec.channel, spec.batch_size, progress))
    return UnitField(u)
