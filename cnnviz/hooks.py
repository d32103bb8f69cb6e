"""The one place that registers forward hooks.

`Recorder` records the output of every call of the chosen layers. A module that runs
several times in one pass (EfficientNet-Lite's shared ReLU6) yields `name`,
`name#1`, `name#2`, ... in call order. Handles are removed on exit, also on error.
The caller holds the model's lock (the job runner does), so concurrent sessions never
mix. This module imports no other part of cnnviz: `Model` is taken by its attributes.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

# Modules that are the identity in eval mode: listing them would only add noise.
_SKIP = (nn.Identity, nn.modules.dropout._DropoutNd)


def _is_noop(m: nn.Module) -> bool:
    return isinstance(m, _SKIP) or type(m).__name__ == "StochasticDepth"


def layer_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Inspectable modules by path: leaves, and convolutions/linears as one piece
    even when they hold a helper (a padding module) inside."""
    found: dict[str, nn.Module] = {}
    inside = None  # named_modules() is depth-first: a unit's helpers follow it directly
    for name, m in net.named_modules():
        if not name or (inside and name.startswith(inside)):
            continue
        is_unit = isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        if is_unit or next(m.children(), None) is None:
            if is_unit:
                inside = name + "."
            if not _is_noop(m):
                found[name] = m
    return found


def split_call(name: str) -> tuple[str, int]:
    """'_swish#1' -> ('_swish', 1); '_conv_stem' -> ('_conv_stem', 0)."""
    base, _, k = name.partition("#")
    return base, int(k) if k else 0


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
    After the block, `outputs` maps call names, in execution order, to tensors.
    """

    def __init__(self, model, layers=None, *, detach: bool = True, leaf: bool = False):
        """`model`: a `cnnviz.model.Model` or a bare `nn.Module`."""
        is_module = isinstance(model, nn.Module)
        self.net = model if is_module else model.net
        self._lock = contextlib.nullcontext() if is_module else model.lock
        modules = layer_modules(self.net) if is_module else model.layer_modules
        if layers is None:
            self._wanted = {n: None for n in modules}
        else:
            all_named = dict(self.net.named_modules())
            self._wanted = {}
            for layer in layers:
                base, k = split_call(layer)
                if base not in all_named or not base:
                    raise KeyError(layer)
                calls = self._wanted.setdefault(base, set())
                if calls is not None:
                    calls.add(k)
            modules = {n: all_named[n] for n in self._wanted}
        self._modules = modules
        self.detach = detach
        self.leaf = leaf and not detach
        self.copy: set[str] = set() if is_module else model.mutated_layers
        self.outputs: dict[str, torch.Tensor] = {}
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
        self._versions.clear()
        self._calls.clear()

    def mutated(self) -> set[str]:
        """Recorded views that an in-place op changed after they were recorded."""
        return {n for n, v in self._versions.items() if self.outputs[n]._version != v}

    def _hook(self, name: str):
        wanted = self._wanted[name]

        calls, outputs, versions = self._calls, self.outputs, self._versions

        def hook(module, inputs, output):  # runs ~130 times a pass: kept lean
            k = calls.get(name, 0)
            calls[name] = k + 1
            if not isinstance(output, torch.Tensor) or (wanted is not None and k not in wanted):
                return
            cn = f"{name}#{k}" if k else name
            if not self.detach:
                if self.leaf and not output.requires_grad:
                    output.requires_grad_(True)
                outputs[cn] = output
            elif cn in self.copy:
                outputs[cn] = output.detach().clone()
            else:
                outputs[cn] = output.detach() if output.requires_grad else output
                versions[cn] = output._version
        return hook


def record(model, x: torch.Tensor, layers=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass of `model.net` on `x`; returns (logits, {call name: output})."""
    with Recorder(model, layers) as rec, torch.no_grad():
        logits = model.net(x)
        changed = rec.mutated()
        if changed:  # learnt once per model (the first pass, at load); then copied
            model.mutated_layers.update(changed)
            rec.reset()
            logits = model.net(x)
    return logits, rec.outputs


_ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "gelu", "hardswish", "leaky_relu",
                "elu", "mish", "sigmoid", "tanh"}


def unguided_activations(model) -> list[str]:
    """Activation functions applied outside an nn.ReLU module in one forward pass
    (ReLU6/SiLU modules, or F.relu inside another module's forward, as in DenseNet).
    Guided Backprop only modifies nn.ReLU modules, so these would pass plain gradients."""
    from torch.overrides import TorchFunctionMode

    depth = [0]  # > 0 while an nn.ReLU module runs
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
                if type(m) is nn.ReLU:
                    handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
            with torch.no_grad(), Spy():
                model.net(torch.zeros(1, 3, *model.input_size))
        finally:
            for h in handles:
                h.remove()
    return sorted(found)
