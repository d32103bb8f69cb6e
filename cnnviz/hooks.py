"""The one place that registers forward hooks.

`Recorder` records the output of every call of the chosen layers. A module that runs
several times in one pass (EfficientNet-Lite's shared ReLU6) yields `name`,
`name#1`, `name#2`, ... in call order. Handles are removed on exit, also on error.
A recorder can instead reduce each output inside its hook (`reduce`: a few numbers per
layer, so the pass keeps no map alive: `record_reduced`), and `record(..., stop=True)`
ends the pass as soon as every wanted call is recorded.
The caller holds the model's lock (the job runner does), so concurrent sessions never
mix. A vision transformer's token outputs are recorded as maps [B, C, h, w] (see
`cnnviz.tokens`, the one part of cnnviz this module imports), and its blocks are layers.
A CNN's blocks (residual, Inception and dense blocks, stages: `block_modules`) are layers
too; a container's hook fires after its children's, so outputs stay in execution order.
`Model` is taken by its attributes.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import tokens

# Modules that are the identity in eval mode: listing them would only add noise.
_SKIP = (nn.Identity, nn.modules.dropout._DropoutNd)


def _is_noop(m: nn.Module) -> bool:
    return isinstance(m, _SKIP) or type(m).__name__ == "StochasticDepth"


def _is_unit(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))


def _is_leaf(m: nn.Module) -> bool:
    return next(m.children(), None) is None


def layer_modules(net: nn.Module, *, blocks: bool = True) -> dict[str, nn.Module]:
    """Inspectable modules by path: leaves, and convolutions/linears as one piece
    even when they hold a helper (a padding module) inside; a transformer's blocks too;
    with `blocks`, a CNN's blocks (`block_modules`) as well."""
    found: dict[str, nn.Module] = dict(tokens.blocks(net))
    inside = None  # named_modules() is depth-first: a unit's helpers follow it directly
    for name, m in net.named_modules():
        if not name or (inside and name.startswith(inside)):
            continue
        is_unit = _is_unit(m)
        if is_unit or _is_leaf(m):
            if is_unit:
                inside = name + "."
            if not _is_noop(m):
                found[name] = m
    if blocks:
        found.update(block_modules(net, found))
    return found


def _elementwise(m: nn.Module) -> bool:
    """A normalization or an activation module: it changes values, not where they come from."""
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    return isinstance(m, norms) or (type(m).__module__ == "torch.nn.modules.activation"
                                    and not isinstance(m, nn.MultiheadAttention))


def block_modules(net: nn.Module, pieces: dict[str, nn.Module] | None = None) -> dict[str, nn.Module]:
    """A CNN's blocks by module path: containers whose call is a unit of the architecture
    (residual, Inception and dense blocks, transitions, stages). A container counts unless
    it is one of these (their outputs are another layer's, or not one unit's):
    - never called itself (ModuleList, ModuleDict without a forward of its own);
    - an `nn.Sequential` of one module (the output is that module's), or one inside a block
      (a branch of it: Inception's branches, ConvNeXt's and MobileNet's residual branch;
      the block is the unit);
    - a convolution (or linear) with its normalization and activation only (GoogLeNet's
      BasicConv2d, Conv2dNormActivation, ResNet's downsample): one layer, not a block;
    - the network's body or head: a container holding its first or its last layer
      (DenseNet's and ConvNeXt's `features`, VGG's `classifier`).
    A vision transformer's blocks are `tokens.blocks` (layers as they were); nothing else
    of it is added. Whether the forward returns a tensor is seen when it runs: a call
    whose output is not one is not recorded (`Recorder`), so it is no layer."""
    if tokens.family(net) is not None:
        return {}
    pieces = layer_modules(net, blocks=False) if pieces is None else pieces
    ends = [p for p in (next(iter(pieces), None), next(reversed(pieces), None)) if p]
    found: dict[str, nn.Module] = {}
    for name, m in net.named_modules():
        if not name or _is_leaf(m) or _is_unit(m) or _is_noop(m) or name in pieces:
            continue
        if type(m).forward is nn.Module.forward or any(e.startswith(name + ".") for e in ends):
            continue
        kids = list(m.children())
        if type(m) is nn.Sequential and (len(kids) == 1 or name.rpartition(".")[0] in found):
            continue
        if all(_is_leaf(k) or _is_unit(k) for k in kids) and sum(map(_is_unit, kids)) == 1 \
                and all(_is_unit(k) or _is_noop(k) or _elementwise(k) for k in kids):
            continue
        found[name] = m
    return found


def split_call(name: str) -> tuple[str, int]:
    """'_swish#1' -> ('_swish', 1); '_conv_stem' -> ('_conv_stem', 0)."""
    base, _, k = name.partition("#")
    return base, int(k) if k else 0


def wanted_calls(all_named: dict[str, nn.Module], layers) -> dict[str, set[int]]:
    """Call names (``_swish#1``) as {module path: the call indices wanted}; KeyError for a
    name that is not a module of the network."""
    wanted: dict[str, set[int]] = {}
    for layer in layers:
        base, k = split_call(layer)
        if base not in all_named or not base:
            raise KeyError(layer)
        wanted.setdefault(base, set()).add(k)
    return wanted


class Recorder(contextlib.AbstractContextManager):
    """Record layer outputs during forward passes run inside the `with` block.

    `layers`: module paths or call names (``_swish#1``) to record; None = all
    inspectable layers. `detach=True` stores detached views, copied only for calls
    in `model.mutated_layers` (outputs a later in-place op overwrites);
    `mutated()` names any view that changed anyway, so `record` can redo the pass.
    `detach=False` keeps the live tensors, for gradients; with `leaf=True` as well, each
    recorded output that needs no gradient yet is made to need one, in place (with frozen
    weights and an input that needs none, it is a leaf): a backward from a later score then
    stops there, and the pass before it builds no graph at all (Grad-CAM's gradient down
    to its layer only). Not for calls in `model.mutated_layers` (a later in-place op on a
    leaf that needs a gradient is an error). Run the pass under
    `torch.no_grad()`, not inference mode: inference tensors have no version counter.
    After the block, `outputs` maps call names, in execution order, to tensors. A vision
    transformer's token outputs are given as maps [B, C, h, w] (`cnnviz.tokens`), which a
    gradient can flow through to the input; `raw=True` keeps the network's own tensors
    (a gradient with respect to the output itself, attention's tokens).
    `cls=True`: a ViT's class token, which the map drops, is kept apart in `cls_tokens`
    ({call name: [B, C]}, a detached copy, C floats per image); nothing for other networks.

    `reduce` (with `detach=True`): a function of one output, called inside the hook for
    every recorded call; its values go to `reduced` (in execution order) and the output
    itself is not kept, so the pass frees each map as a plain forward does (and may run
    in inference mode). It runs before any later op can change the output in place.
    `stop=True` (given `layers`, without `reduce`): once every wanted call is recorded,
    the hook raises `Enough` to end the pass there (`record` catches it; a model's own
    `except Exception` does not).
    """

    def __init__(self, model, layers=None, *, detach: bool = True, leaf: bool = False,
                 reduce=None, stop: bool = False, raw: bool = False, cls: bool = False):
        """`model`: a `cnnviz.model.Model` or a bare `nn.Module`."""
        is_module = isinstance(model, nn.Module)
        self.net = model if is_module else model.net
        self._lock = contextlib.nullcontext() if is_module else model.lock
        modules = layer_modules(self.net) if is_module else model.layer_modules
        if layers is None:
            self._wanted = {n: None for n in modules}
        else:
            all_named = dict(self.net.named_modules())
            self._wanted = wanted_calls(all_named, layers)
            modules = {n: all_named[n] for n in self._wanted}
        self._modules = modules
        self.detach = detach
        self.leaf = leaf and not detach
        self.copy: set[str] = set() if is_module else model.mutated_layers
        self.outputs: dict[str, torch.Tensor] = {}
        self.reduce = reduce if detach else None
        self.reduced: dict[str, object] = {}
        # Outputs as maps (a transformer's tokens, see the class docstring), unless `raw`:
        # a gradient with respect to the output itself needs the tensor the network goes
        # on from (then `as_map` turns the output and its gradient).
        self._to_map = None if raw else tokens.mapper(self.net)
        self._cls_of = tokens.class_token(self.net) if cls else None
        self.cls_tokens: dict[str, torch.Tensor] = {}
        # Stop only when the wanted calls are known and every one of them is kept.
        self._stop_at = None
        if stop and layers is not None and self.reduce is None:
            self._stop_at = sum(len(c) for c in self._wanted.values())
        self._versions: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._handles: list = []

    def __enter__(self) -> "Recorder":
        self._lock.__enter__()
        try:
            for name, m in self._modules.items():
                self._handles.append(m.register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._lock.__exit__(None, None, None)

    def reset(self) -> None:
        """Forget what was recorded (before another forward pass in the same block)."""
        self.outputs.clear()
        self.reduced.clear()
        self.cls_tokens.clear()
        self._versions.clear()
        self._calls.clear()

    def mutated(self) -> set[str]:
        """Recorded outputs (views, or live tensors) that an in-place op changed after they
        were recorded."""
        return {n for n, v in self._versions.items() if self.outputs[n]._version != v}

    def _hook(self, name: str):
        wanted = self._wanted[name]

        calls, outputs, versions = self._calls, self.outputs, self._versions
        reduce, reduced, stop_at = self.reduce, self.reduced, self._stop_at
        to_map, cls_of, cls_tokens = self._to_map, self._cls_of, self.cls_tokens

        def hook(module, inputs, output):  # runs ~130 times a pass: kept lean
            k = calls.get(name, 0)
            calls[name] = k + 1
            if not isinstance(output, torch.Tensor) or (wanted is not None and k not in wanted):
                return
            cn = f"{name}#{k}" if k else name
            if cls_of is not None and (t := cls_of(name, module, output)) is not None:
                cls_tokens[cn] = t.detach().clone()  # a copy: nothing later changes it
            if to_map is not None:
                output = to_map(name, module, output)
            if reduce is not None:
                reduced[cn] = reduce(output.detach() if output.requires_grad else output)
                return
            if not self.detach:
                if self.leaf and not output.requires_grad:
                    output.requires_grad_(True)
                outputs[cn] = output
                if not output.is_inference():  # (inference tensors keep no version counter)
                    versions[cn] = output._version  # a block's own in-place sum came before: not a change
            elif cn in self.copy:
                outputs[cn] = output.detach().clone()
            else:
                outputs[cn] = output.detach() if output.requires_grad else output
                versions[cn] = output._version
            if stop_at is not None and len(outputs) == stop_at:
                raise Enough
        return hook


def as_map(model, layer: str, t: torch.Tensor) -> torch.Tensor:
    """A live output (or its gradient) of `layer` as the kept recordings have it: a
    transformer's tokens as [B, C, h, w], any other output as it is."""
    net = model if isinstance(model, nn.Module) else model.net
    to_map = tokens.mapper(net)
    if to_map is None:
        return t
    base, _ = split_call(layer)
    return to_map(base, dict(net.named_modules())[base], t)


class Enough(BaseException):
    """Raised by a `stop=True` recorder's hook when every wanted call is recorded: the
    rest of the pass is not needed. A BaseException, so a model's own `except Exception`
    does not swallow it."""


def record(model, x: torch.Tensor, layers=None, *, stop: bool = False, cls_tokens: dict | None = None
           ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward pass of `model.net` on `x`; returns (logits, {call name: output}).
    `stop=True` (with `layers`): the pass ends at the last wanted call; logits are None.
    `cls_tokens`: a dict that receives the class token of every recorded output that has
    one (a ViT's tokens, `Recorder(cls=True)`), from the same pass."""
    rec = Recorder(model, layers, stop=stop, cls=cls_tokens is not None)
    with rec, torch.no_grad():
        logits = _forward(rec, x)
        changed = rec.mutated()
        if changed:  # learnt once per model (the first pass, at load); then copied
            model.mutated_layers.update(changed)
            rec.reset()
            logits = _forward(rec, x)
    if cls_tokens is not None:
        cls_tokens.update(rec.cls_tokens)
    return logits, rec.outputs


def record_reduced(model, x: torch.Tensor, reduce, layers=None) -> tuple[torch.Tensor, dict[str, object]]:
    """One forward pass of `model.net` on `x` in which every recorded call (`layers`,
    None: all) is reduced inside its hook by `reduce(output)` and no output is kept, so
    the pass needs no more memory than a plain one; in inference mode, as nothing
    recorded can be changed in place afterwards. Returns (logits, {call name: value})."""
    rec = Recorder(model, layers, reduce=reduce)
    with rec, torch.inference_mode():
        logits = rec.net(x)
    return logits, rec.reduced


def record_io(model, x: torch.Tensor, calls: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One forward pass of `model.net` on `x` that keeps the first input and the output of
    each of `calls` (call names, as `Recorder` has them), copied inside the hook (a later
    in-place op cannot change them); the pass ends at the last of them. {call: (input, output)}."""
    net = model.net
    all_named = dict(net.named_modules())
    wanted = wanted_calls(all_named, calls)
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    seen: dict[str, int] = {}

    def hook_of(base: str):
        def hook(module, inputs, output):
            k = seen.get(base, 0)
            seen[base] = k + 1
            if k in wanted[base] and inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
                found[f"{base}#{k}" if k else base] = (inputs[0].detach().clone(), output.detach().clone())
                if len(found) == len(calls):
                    raise Enough
        return hook

    with model.lock:
        handles = [all_named[b].register_forward_hook(hook_of(b)) for b in wanted]
        try:
            with torch.no_grad():
                net(x)
        except Enough:
            pass
        finally:
            for h in handles:
                h.remove()
    return found


def functional_calls(model, module: nn.Module, x: torch.Tensor, names: set[str]) -> list[tuple[str, dict]]:
    """Run `module` on `x` once and list the torch functions named in `names` that its
    forward calls (e.g. "pad", "conv2d"), in order, each with its arguments bound to the
    parameter names torch documents for it where known. How one layer really computes,
    whatever its class does around its convolution (EfficientNet-Lite pads in `forward`)."""
    from torch.overrides import TorchFunctionMode

    found: list[tuple[str, dict]] = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in names:
                bound = dict(zip(_PARAMS.get(name, ()), args)) if name in _PARAMS else {"args": args}
                found.append((name, {**bound, **(kwargs or {})}))
            return func(*args, **(kwargs or {}))

    with model.lock, torch.no_grad(), Spy():
        module(x)
    return found


_PARAMS = {"conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
           "pad": ("input", "pad", "mode", "value")}


def _forward(rec: Recorder, x: torch.Tensor) -> torch.Tensor | None:
    try:
        return rec.net(x)
    except Enough:  # a stop=True recorder has all it wanted
        return None


_ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "gelu", "hardswish", "leaky_relu",
                "elu", "mish", "sigmoid", "tanh"}


def unguided_activations(model, guided=(nn.ReLU,)) -> list[str]:
    """Activation functions applied outside a module of the `guided` classes in one
    forward pass (SiLU modules, or F.relu inside another module's forward, as in DenseNet).
    Guided Backprop modifies only those modules, so these would pass plain gradients."""
    from torch.overrides import TorchFunctionMode

    depth = [0]  # > 0 while a guided module runs
    found: set[str] = set()

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in _ACTIVATIONS and not depth[0]:
                found.add(name)
            return func(*args, **(kwargs or {}))

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1

    handles = []
    with model.lock:  # re-entrant: the runner holds it already
        try:
            for m in model.net.modules():
                if isinstance(m, guided):
                    handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
            with torch.no_grad(), Spy():
                model.net(torch.zeros(1, 3, *model.input_size))
        finally:
            for h in handles:
                h.remove()
    return sorted(found)
