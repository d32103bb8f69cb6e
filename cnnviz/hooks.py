"""The one place that registers forward hooks.

`Recorder` records the output of every call of the chosen layers. A module that runs
several times in one pass (EfficientNet-Lite's shared ReLU6) yields `name`,
`name#1`, `name#2`, ... in call order. Handles are removed on exit, also on error,
and the model's lock is held meanwhile, so concurrent sessions never mix.
"""
from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch import nn

from .models import LayerInfo, Model

# Modules that are the identity in eval mode: listing them would only add noise.
_SKIP = (nn.Identity, nn.modules.dropout._DropoutNd)


def _is_noop(m: nn.Module) -> bool:
    return isinstance(m, _SKIP) or type(m).__name__ == "StochasticDepth"


def layer_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Inspectable modules by path: leaves, and convolutions/linears as one piece
    even when they hold a helper (a padding module) inside."""
    found: dict[str, nn.Module] = {}
    inside: list[str] = []
    for name, m in net.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        is_unit = isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        if is_unit or next(m.children(), None) is None:
            if is_unit:
                inside.append(name)
            if not _is_noop(m):
                found[name] = m
    return found


def split_call(name: str) -> tuple[str, int]:
    """'_swish#1' -> ('_swish', 1); '_conv_stem' -> ('_conv_stem', 0)."""
    base, _, k = name.partition("#")
    return base, int(k) if k else 0


def call_name(module_name: str, k: int) -> str:
    return module_name if k == 0 else f"{module_name}#{k}"


class Recorder(contextlib.AbstractContextManager):
    """Record layer outputs during forward passes run inside the `with` block.

    `layers`: module paths or call names (``_swish#1``) to record; None = all
    inspectable layers. `detach=True` stores detached copies (safe from later
    in-place ops); `detach=False` keeps the live tensors, for gradients.
    After the block, `outputs` maps call names, in execution order, to tensors.
    """

    def __init__(self, model: Model | nn.Module, layers=None, *, detach: bool = True):
        self.net = model.net if isinstance(model, Model) else model
        self._lock = model.lock if isinstance(model, Model) else contextlib.nullcontext()
        modules = layer_modules(self.net)
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
        self.outputs: dict[str, torch.Tensor] = {}
        self._calls: Counter[str] = Counter()
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
        self._calls.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            k = self._calls[name]
            self._calls[name] += 1
            wanted = self._wanted[name]
            if not isinstance(output, torch.Tensor) or (wanted is not None and k not in wanted):
                return
            self.outputs[call_name(name, k)] = output.detach().clone() if self.detach else output
        return hook


def record(model: Model, x: torch.Tensor, layers=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass of `model.net` on `x`; returns (logits, {call name: output})."""
    with Recorder(model, layers) as rec, torch.inference_mode():
        logits = model.net(x)
    return logits, rec.outputs


def probe_layers(model: Model) -> list[LayerInfo]:
    """Every recorded call of every inspectable layer, for the model's input size."""
    modules = layer_modules(model.net)
    x = torch.zeros(1, 3, *model.input_size)
    _, outs = record(model, x)
    infos = []
    for name, out in outs.items():
        m = modules[split_call(name)[0]]
        infos.append(LayerInfo(
            name=name, type=type(m).__name__, shape=tuple(out.shape[1:]),
            params=sum(p.numel() for p in m.parameters()),
        ))
    return infos
