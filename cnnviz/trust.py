"""Checks of whether a saliency map explains the model at all.

One job, `run(model, image, TrustSpec(methods, target))` -> `TrustReport`, runs both
checks for several methods (the saliency page's "Trust checks" tab, and
`python -m cnnviz trust`):

- Model randomization (`randomization_check`): Adebayo et al. 2018's cascading model
  randomization. Weights are re-drawn from the top block down, one block more per step
  (a CNN's top-level blocks and stages; a transformer's blocks one by one, see
  `randomization_blocks`); a method whose map barely changes (high rank correlation with
  the original) is not explaining what the model learned. The new weights are new
  Parameters put in place of the old ones, which are put back at the end: the job runner
  hands this job a private copy of the modules (it is heavy), whose weight tensors are the
  shared model's, so swapping Parameters (never writing into them) leaves every other
  session's model alone.
- Deletion (`cnnviz.faithfulness`): remove the most salient pixels first and watch the
  target probability fall; a faithful map makes it fall faster (smaller area) than a
  random order does. Every method's curve and the random order's in one batched set.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import bounds, tokens
from .contract import CnnvizError, NotFound, Progress, Result, Spec
from .faithfulness import RANDOM, area, curves, passes as curve_passes
from .model import Model
from .predict import classify
from .saliency import METHODS, SaliencySpec, attribute, check_class

DEFAULT_METHODS = ("gradcam", "gradients", "ig")
DELETION_STEPS = 20


class TrustError(CnnvizError):
    """Trust-check parameters that cannot work."""


def trust_methods() -> list[str]:
    """The methods the checks are offered for (not the guided ones, not Score-CAM)."""
    return [name for name, m in METHODS.items() if m.trust]


@dataclass(frozen=True)
class TrustSpec(Spec):
    """Both checks for `methods` (names from `trust_methods()`) and one target class
    (None: the top-1). `steps`: randomization steps after the trained model; `seed`:
    the new weights and the random deletion order."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    target: int | None = None
    steps: int = 6
    seed: int = 0

    def check(self, model) -> "TrustSpec":
        if isinstance(self.methods, str):
            raise TrustError(f"Give the methods as a list of names (from {', '.join(trust_methods())}), "
                             f"not the text {bounds._shown(self.methods)}.")
        methods = tuple(dict.fromkeys(self.methods))
        if not methods:
            raise TrustError("Choose at least one method to check.")
        for m in methods:
            if m not in METHODS:
                raise NotFound("method", m, trust_methods())
            if not METHODS[m].trust:
                raise TrustError(f"The trust checks do not take {METHODS[m].label}; choose from "
                                 f"{', '.join(trust_methods())}.")
        steps = bounds.whole(self.steps, "steps", 1, bounds.MAX_TRUST_STEPS, TrustError)
        checked = replace(self, methods=methods, target=check_class(model, self.target), steps=steps,
                          seed=bounds.seed(self.seed, TrustError))
        return self if checked == self else checked

    def passes(self, model) -> int:
        """Every method's map (with the target known) at every step of the cascade, a
        deletion curve per method and for the random order (their shared ends once), and
        the top-1 when `target` is None."""
        maps = sum(METHODS[m].passes(SaliencySpec(m, target=0), model) for m in self.methods if m in METHODS)
        steps = min(int(self.steps), bounds.MAX_TRUST_STEPS)
        return (maps * len(_cuts(randomization_blocks(model), steps))
                + curve_passes(len(self.methods) + 1, DELETION_STEPS, ("deletion",)) + (self.target is None))


@dataclass
class TrustReport(Result):
    target: int
    label: str
    prob: float  # the target's probability on the image
    methods: list[str]
    steps: list[str]  # "trained", then how much of the network is random
    blocks: list[str]  # the cascade's blocks, top first
    correlation: dict[str, list[float]]  # method -> rank correlation with its trained map, per step
    deletion: dict[str, list[float]]  # method (and RANDOM) -> target probability as pixels are removed
    areas: dict[str, float]  # method (and RANDOM) -> area under its deletion curve (lower: more faithful)

    def to_dict(self) -> dict:
        return {"model": self.model, "target": {"index": self.target, "label": self.label, "prob": self.prob},
                "methods": list(self.methods), "steps": list(self.steps), "blocks": list(self.blocks),
                "correlation": self.correlation, "deletion": self.deletion, "areas": self.areas,
                "seconds": self.seconds}


def run(model: Model, image, spec: TrustSpec, *, progress: Progress | None = None) -> TrustReport:
    """The randomization check (80% of the progress) and a deletion curve per method and
    for a random order (the rest). Run it through the job runner (`jobs.run`): it is a
    heavy job, so it gets a private copy of the modules to randomize."""
    spec = spec.check(model)
    progress = Progress.of(progress)
    x = model.to_pixels(image)
    target = spec.target if spec.target is not None else int(classify(model, x)[0].argmax())
    maps: dict = {}  # the trained model's attributions, from the randomization's first step
    rand = randomization_check(model, x, list(spec.methods), target, spec.steps, spec.seed,
                               progress=progress.part(0.0, 0.8), keep=maps)
    progress(0.8, "Deletion curves")
    orders = {m: maps[m].map for m in spec.methods} | {RANDOM: None}
    deletion = {m: c["deletion"] for m, c in curves(model, image, orders, target, DELETION_STEPS, spec.seed,
                                                    ("deletion",), progress=progress.part(0.8, 1.0)).items()}
    progress(1.0, "Done")
    first = maps[spec.methods[0]]
    return TrustReport(target, first.label, first.prob, list(spec.methods), rand["steps"], rand["blocks"],
                       rand["correlation"],
                       {m: c.tolist() for m, c in deletion.items()}, {m: area(c) for m, c in deletion.items()})


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps (ties get their mean rank)."""
    def ranks(v):
        v = v.ravel()
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def randomization_blocks(model: Model) -> list[str]:
    """The cascade's steps in execution order (it randomizes them from the last). A CNN:
    its top-level children with parameters, long containers (stages, ModuleLists) child by
    child. A transformer: its blocks one by one (`_transformer_steps`)."""
    if tokens.family(model.net):
        return _transformer_steps(model.net)
    order = [l.name.split(".")[0].split("#")[0] for l in model.layers]
    seen = list(dict.fromkeys(order))
    mods = dict(model.net.named_children())
    blocks = []
    for top in seen:
        m = mods.get(top)
        if m is None or not any(True for _ in m.parameters()):
            continue
        # Long containers (ModuleList of blocks, Sequential stages) step block by block.
        kids = [f"{top}.{n}" for n, c in m.named_children() if any(True for _ in c.parameters())]
        blocks.extend(kids if len(kids) > 1 else [top])
    return blocks


def _transformer_steps(net: nn.Module) -> list[str]:
    """A transformer's steps: each block (`tokens.blocks`: ViT's 12 encoder blocks, Swin's),
    each part with parameters that holds no block (patch embedding, Swin's patch merging,
    final norm, head), and the parameters a container holds itself (ViT's class token and
    position embedding, named as parameters, just before the first block they feed). A
    CNN's top-level rule would take ViT's 12 blocks as one step. Registration order is
    execution order in torchvision's ViT and Swin."""
    blocks = list(tokens.blocks(net))

    def holds(path: str) -> bool:
        return any(b == path or b.startswith(path + ".") for b in blocks) if path else bool(blocks)

    steps: list[str] = []

    def walk(path: str, mod: nn.Module) -> None:
        if path in blocks or not holds(path):
            if any(True for _ in mod.parameters()):
                steps.append(path)
            return
        own = [f"{path}.{n}".lstrip(".") for n, _ in mod.named_parameters(recurse=False)]
        for name, child in mod.named_children():
            sub = f"{path}.{name}".lstrip(".")
            if own and holds(sub):
                steps.extend(own)
                own = []
            walk(sub, child)
        steps.extend(own)

    walk("", net)
    return steps


def cascade_sentence(model: Model) -> str:
    """What the randomization check re-draws, in the order it does, in one sentence."""
    steps = randomization_blocks(model)[::-1]
    shown = ", ".join(f"`{s}`" for s in steps) if len(steps) <= 6 else \
        ", ".join(f"`{s}`" for s in steps[:3]) + ", ..., " + ", ".join(f"`{s}`" for s in steps[-2:])
    if tokens.family(model.net):
        n = len(tokens.blocks(model.net))
        return (f"{model.label} is a transformer: its weights are re-drawn from the top, its {n} blocks one at a "
                f"time from the last to the first, in {len(steps)} parts ({shown}).")
    return f"{model.label}'s weights are re-drawn from the top in {len(steps)} parts ({shown})."


def _cuts(blocks: list[str], steps: int) -> list[int]:
    """How many blocks (from the top) are random at each step; 0 first (the trained model)."""
    return sorted(set(int(round(k)) for k in np.linspace(0, len(blocks), steps + 1)))


@contextlib.contextmanager
def randomizing(net: nn.Module):
    """Yields `randomize(names, gen)`, which gives the named modules new random
    parameters (same shape and spread); every parameter it replaced is put back on exit,
    also on error. New tensors in place of the old, never writes into them: a private
    copy shares its tensors with the model every session uses."""
    saved: list[tuple[nn.Module, str, nn.Parameter]] = []

    def randomize(names: list[str], gen: torch.Generator) -> None:
        for name in names:
            for holder, leaf, p in _parameters(net, name):
                std = float(p.std()) if p.numel() > 1 else 1.0
                new = torch.randn(p.shape, generator=gen) * (std or 1.0)
                saved.append((holder, leaf, p))
                setattr(holder, leaf, nn.Parameter(new, p.requires_grad))

    try:
        yield randomize
    finally:
        for holder, leaf, p in reversed(saved):
            setattr(holder, leaf, p)


def _parameters(net: nn.Module, name: str) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """(holder, attribute, parameter) for every parameter under module `name`, or for the
    one parameter `name` names (ViT's class token)."""
    owner, _, leaf = name.rpartition(".")
    own = dict(net.get_submodule(owner).named_parameters(recurse=False))
    if leaf in own:
        return [(net.get_submodule(owner), leaf, own[leaf])]
    mod = net.get_submodule(name)
    return [(mod.get_submodule(path.rpartition(".")[0]), path.rpartition(".")[2], p)
            for path, p in mod.named_parameters()]


def randomization_check(model: Model, image: Image.Image | torch.Tensor, methods: list[str], target: int,
                        steps: int = 6, seed: int = 0, progress: Progress | None = None,
                        keep: dict | None = None) -> dict:
    """{"steps": [label...], "correlation": {method: [rho per step]}, "blocks": [...]};
    step 0 is the trained model (rho = 1). `model`'s parameters are swapped for random
    ones step by step and put back at the end (see `randomizing`). `keep`, a dict, gets
    the trained model's `Attribution` per method. Every map reports to `progress` (per
    batch for multi-pass methods), so a stop request ends the check within one batch."""
    progress = Progress.of(progress)
    blocks = randomization_blocks(model)[::-1]  # top first
    cuts = _cuts(blocks, steps)
    x = model.to_pixels(image)
    result = {"steps": [], "correlation": {m: [] for m in methods}, "blocks": blocks}
    originals = {} if keep is None else keep
    slots, done = len(cuts) * len(methods), 0
    gen = torch.Generator().manual_seed(seed)
    with randomizing(model.net) as randomize:
        for i, cut in enumerate(cuts):
            randomize(blocks[done:cut], gen)
            done = cut
            step = "trained" if cut == 0 else f"top {cut} of {len(blocks)} blocks random"
            result["steps"].append(step)
            for j, m in enumerate(methods):
                k = i * len(methods) + j
                text = f"{'the trained model' if cut == 0 else step}: {METHODS[m].label}"
                progress(k / slots, text)
                part = progress.part(k / slots, (k + 1) / slots, f"{text}, ")
                if cut == 0:
                    originals[m] = attribute(model, x, m, target, progress=part)
                    result["correlation"][m].append(1.0)
                else:
                    # exact: the folded fast_net is shared by every copy, so it is the trained network
                    a = attribute(model, x, m, target, progress=part, exact=True)
                    result["correlation"][m].append(spearman(originals[m].map, a.map))
    return result
