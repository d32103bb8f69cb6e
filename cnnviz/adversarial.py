"""Adversarial perturbations: FGSM and PGD from `captum.robust`, in pixel space.

One entry point, `run(model, image, spec)`, for three specs:

- `AttackSpec`: FGSM or PGD (the registry `ATTACKS` says what each takes and costs),
  giving an `AttackResult`: the 8-bit picture the network sees, the adversarial
  picture and both probability vectors; with `png=True` also the 8-bit PNG check
  (save, decode the bytes again, classify: does the file still fool the network?).
- `NoiseSpec`: the control, random signs of the same L-infinity size; it should almost
  never change the answer.
- `BudgetSweepSpec`: attacks at growing budgets, each starting from the previous
  budget's image (`BudgetSweep`: the smallest budget that changes the decision).

Budgets (`eps`) and step sizes are in 1/255 units, the steps of an 8-bit image.

- The attacks run on `model.pixel_net` ([0, 1] pixels, normalization inside), starting
  from the network's input rounded to 8 bits, so "before" is an image one can save.
- Captum's default loss is -log(output), meant for probabilities; on logits targeted
  attacks silently fail, so the loss is cross-entropy on the logits.
- PGD's steps after the first run on `Model.fast_net` (BatchNorm folded into the
  convolutions: the same function, faster; one copy shared by every private copy of
  the model); the first step, whose forward pass also gives the answer on the
  original, and every classification (`predict.classify`) use `pixel_net`.
- The last quarter of PGD's steps stay on the 1/255 grid (one-level sign steps, then
  rounding), and every result is rounded onto it: the adversarial image survives
  saving as an 8-bit PNG.
- PGD reports progress after every step (a sweep after every budget) and stops within
  one step when its `Progress` is stopped.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import bounds
from .contract import CnnvizError, Progress, Result, Spec
from .model import Model
from .pixels import from_uint8, png_bytes, to_uint8
from .predict import Top, classify

MAX_EPS = bounds.MAX_EPS
MAX_STEPS = bounds.MAX_ATTACK_STEPS
MAX_BUDGETS = bounds.MAX_BUDGETS
GRID_FRACTION = 4  # the last 1/GRID_FRACTION of PGD's steps move on the 1/255 grid
SATURATED = 1e-3  # a sweep stops attacking once the goal's probability is this close to done
# Captum's FGSM warns on every step that the (detached) input did not require grad.
warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")


class AttackError(CnnvizError):
    """Attack parameters that cannot work (the message says which and what instead)."""


# ---------------------------------------------------------------- specs

@dataclass(frozen=True)
class AttackSpec(Spec):
    """FGSM or PGD within an L-infinity ball of `eps`/255 around the 8-bit input.

    Untargeted (`target` None): push away from the network's answer on the original.
    Targeted: pull towards class `target`. PGD takes `steps` steps of `step_size`/255
    (default 2.5 * eps / steps, Madry et al.), from a random point of the ball if
    `random_start` (drawn from `seed`, never from torch's global generator). FGSM is one
    step of eps (its spec is normalized to steps 1, no random start). `png`: also save
    the result as an 8-bit PNG, reload and classify it (one more pass)."""

    method: str = "pgd"
    eps: float = 2.0
    steps: int = 10
    step_size: float | None = None
    target: int | None = None
    random_start: bool = False
    seed: int = 0
    png: bool = False

    def check(self, model) -> "AttackSpec":
        _check(model, self.method, self.eps, self.steps, self.step_size, self.target)
        iterative = ATTACKS[self.method].iterative
        return replace(self, eps=float(self.eps), steps=int(self.steps) if iterative else 1,
                       step_size=None if self.step_size is None or not iterative else float(self.step_size),
                       target=None if self.target is None else int(self.target),
                       random_start=bool(self.random_start and iterative), seed=bounds.seed(self.seed, AttackError),
                       png=bool(self.png))

    @property
    def alpha(self) -> float:
        """The step actually taken, 1/255 units: FGSM's is the budget."""
        if not ATTACKS[self.method].iterative:
            return float(self.eps)
        return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps

    def passes(self, model) -> int:
        return ATTACKS[self.method].passes(self) + int(self.png) if self.method in ATTACKS else 1

    def sweep(self, budgets) -> "BudgetSweepSpec":
        """This attack at each of `budgets` (1/255 units)."""
        return BudgetSweepSpec(self.method, tuple(float(b) for b in budgets), self.steps, self.step_size, self.target,
                               self.random_start, self.seed)


@dataclass(frozen=True)
class NoiseSpec(Spec):
    """The control: every pixel value moved by +-eps/255 with random signs (seeded)."""

    eps: float = 2.0
    seed: int = 0

    def check(self, model) -> "NoiseSpec":
        _check(model, "fgsm", self.eps, 1, None, None)
        return replace(self, eps=float(self.eps), seed=bounds.seed(self.seed, AttackError))

    def passes(self, model) -> int:
        return 2  # the original and the noisy image, one batch


@dataclass(frozen=True)
class BudgetSweepSpec(Spec):
    """The same attack at each budget (ascending; see `_pgd_sweep` for the reuse)."""

    method: str = "pgd"
    budgets: tuple[float, ...] = tuple(float(b) for b in range(1, 17))
    steps: int = 10
    step_size: float | None = None
    target: int | None = None
    random_start: bool = False
    seed: int = 0

    def check(self, model) -> "BudgetSweepSpec":
        if len(self.budgets) > MAX_BUDGETS:
            raise AttackError(f"{len(self.budgets)} budgets; at most {MAX_BUDGETS} per sweep.")
        budgets = tuple(sorted(_check_eps(b) for b in self.budgets))
        if not budgets:
            raise AttackError("Give at least one budget.")
        if len(budgets) > MAX_BUDGETS:
            raise AttackError(f"{len(budgets)} budgets; at most {MAX_BUDGETS} per sweep.")
        one = None
        for b in budgets:
            one = self.attack(b).check(model)
        return replace(self, budgets=budgets, steps=one.steps, step_size=one.step_size, target=one.target,
                       random_start=one.random_start, seed=one.seed)

    def attack(self, eps: float) -> AttackSpec:
        """The single attack at one budget of the sweep."""
        return AttackSpec(self.method, eps, self.steps, self.step_size, self.target, self.random_start, self.seed)

    def passes(self, model) -> int:
        if self.method not in ATTACKS or not ATTACKS[self.method].iterative:
            return 2 + len(self.budgets)  # one gradient, then every budget in one batch
        return 1 + len(self.budgets) * (self.steps + 1)  # at most: a sweep stops once the goal is certain


def _check(model: Model, method: str, eps: float, steps: int, step_size: float | None, target: int | None) -> None:
    if not isinstance(method, str) or method not in ATTACKS:
        raise AttackError(f"Unknown attack {bounds._shown(method)}; choose one of {', '.join(ATTACKS)}.")
    _check_eps(eps)
    bounds.whole(steps, "The number of steps", 1, MAX_STEPS, AttackError)
    if step_size is not None:
        bounds.number(step_size, "The step size", 0, MAX_EPS, AttackError, above=True, unit="(1/255 units)")
    n = len(model.categories)
    if target is not None:
        try:
            bounds.whole(target, "The target", 0, n - 1, AttackError)
        except AttackError:
            raise AttackError(f"Class {bounds._shown(target)} does not exist; the model has {n} classes "
                              f"(0 to {n - 1}).") from None


def _check_eps(eps) -> float:
    """A budget (1/255 units) as a float from 1 to MAX_EPS, else an AttackError."""
    try:
        return bounds.number(eps, "The budget", 1, MAX_EPS, AttackError)
    except AttackError:
        raise AttackError(f"The budget must be between 1 and {MAX_EPS:.0f} (in 1/255 units), got "
                          f"{bounds._shown(eps)}: an 8-bit image cannot change by less than 1/255.") from None


def parse_budgets(text: str | None) -> tuple[float, ...]:
    """'1,2,4,8' or 'START:STOP:STEP' (STOP included); None or '' gives 1 to 16."""
    if text is None or not str(text).strip():
        return BudgetSweepSpec.budgets
    from .limits import parse_numbers

    return parse_numbers(text, AttackError, MAX_BUDGETS, "1,2,4,8", "1:16:1")


# ---------------------------------------------------------------- results

@dataclass
class AttackResult(Result):
    """One attack (or the noise control) on one image. Images are uint8 [H, W, 3] at the
    network's input size."""

    method: str  # "fgsm" | "pgd" | "noise"
    eps: float  # budget, 1/255 units
    steps: int
    step_size: float  # 1/255 units
    target: int | None  # the class a targeted attack aims at; None: untargeted
    random_start: bool
    seed: int
    original: np.ndarray = field(repr=False)
    adversarial: np.ndarray = field(repr=False)
    probs_before: np.ndarray = field(repr=False)  # float64 [num_classes]
    probs_after: np.ndarray = field(repr=False)
    categories: list[str] = field(repr=False)
    png: bytes | None = field(default=None, repr=False)  # the 8-bit PNG (AttackSpec.png)
    png_probs: np.ndarray | None = field(default=None, repr=False)  # the reloaded PNG's probabilities
    png_success: bool | None = None  # the reloaded PNG still fools the network

    @property
    def label(self) -> int:
        """The network's answer on the original image."""
        return int(self.probs_before.argmax())

    @property
    def predicted(self) -> int:
        """The network's answer on the adversarial image."""
        return int(self.probs_after.argmax())

    @property
    def success(self) -> bool:
        return succeeded(self.probs_after, self.label, self.target)

    @property
    def delta(self) -> np.ndarray:
        """The perturbation in 1/255 units, int16 [H, W, 3]."""
        return self.adversarial.astype(np.int16) - self.original.astype(np.int16)

    @property
    def linf(self) -> float:
        """Largest change of any pixel value, in 1/255 units, on the final (8-bit) image."""
        return float(np.abs(self.delta).max())

    @property
    def l2(self) -> float:
        """Euclidean norm of the perturbation over all values, in [0, 1] pixel units."""
        return float(np.linalg.norm(self.delta.astype(np.float64) / 255))

    def _top(self, i: int, probs: np.ndarray) -> dict:
        return Top(i, self.categories[i], float(probs[i])).to_dict()

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "eps": self.eps, "steps": self.steps,
                "original": self._top(self.label, self.probs_before),
                "adversarial": self._top(self.predicted, self.probs_after),
                "target": self._top(self.target, self.probs_after) if self.target is not None else None,
                "success": self.success, "linf": self.linf, "l2": self.l2, "png_success": self.png_success,
                "seconds": self.seconds}


@dataclass
class BudgetSweep(Result):
    budgets: list[float]  # 1/255 units, starting with 0 (the original)
    label: int
    target: int | None
    p_label: list[float]  # probability of the original answer at each budget
    p_target: list[float] | None  # of the target class (targeted attacks)
    predicted: list[int]
    success: list[bool]

    @property
    def smallest(self) -> float | None:
        """The smallest budget that changes the decision as asked (None: none did)."""
        return next((b for b, s in zip(self.budgets, self.success) if s), None)

    def to_dict(self) -> dict:
        return {"model": self.model, "budgets": self.budgets, "label": self.label, "target": self.target,
                "p_label": self.p_label, "p_target": self.p_target, "predicted": self.predicted,
                "success": self.success, "smallest": self.smallest, "seconds": self.seconds}


def succeeded(probs: np.ndarray, label: int, target: int | None) -> bool:
    top = int(np.argmax(probs))
    return top == target if target is not None else top != label


# ---------------------------------------------------------------- the one entry point

def run(model: Model, image: Image.Image | torch.Tensor, spec: AttackSpec | NoiseSpec | BudgetSweepSpec, *,
        progress: Progress | None = None) -> AttackResult | BudgetSweep:
    """`image`: a PIL image (resized and cropped as the model does) or pixels
    [1, 3, H, W] in [0, 1] (any size the network takes)."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    x0 = pixels(model, image)
    if isinstance(spec, AttackSpec):
        return _attack(model, x0, spec, progress)
    if isinstance(spec, NoiseSpec):
        return _noise(model, x0, spec)
    if isinstance(spec, BudgetSweepSpec):
        return _budget_sweep(model, x0, spec, progress)
    raise TypeError(f"adversarial.run takes an AttackSpec, NoiseSpec or BudgetSweepSpec, not {type(spec).__name__}")


# ---------------------------------------------------------------- pixels

def pixels(model: Model, image: Image.Image | torch.Tensor) -> torch.Tensor:
    """The network's input on the 1/255 grid, [1, 3, H, W] in [0, 1].

    `image`: a PIL image (resized and cropped as the model does) or pixels
    [1, 3, H, W] in [0, 1] already at the input size."""
    x = model.to_pixels(image) if isinstance(image, Image.Image) else image.detach().float()
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise AttackError(f"Expected pixels shaped [1, 3, H, W], got {list(x.shape)}.")
    return _to_grid(x.clamp(0, 1))


def _to_grid(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 255) / 255


# ---------------------------------------------------------------- attacks

@dataclass(frozen=True)
class Attack:
    """One attack method: what the page and the CLI show, what it costs, how it runs."""

    name: str
    label: str  # "PGD"
    help: str  # one sentence for a widget's help
    iterative: bool  # takes steps, a step size and a random start
    passes: Callable[[AttackSpec], int]  # forward(+backward) passes, the final classification included
    # (model, 8-bit pixels, checked spec, progress) -> (probabilities on the original, adversarial pixels)
    perturb: Callable = field(repr=False)


def _attack(model: Model, x0: torch.Tensor, spec: AttackSpec, progress: Progress) -> AttackResult:
    before, adv = ATTACKS[spec.method].perturb(model, x0, spec, progress)
    after = classify(model, adv)[0]
    out = AttackResult(spec.method, spec.eps, spec.steps, spec.alpha, spec.target, spec.random_start, spec.seed,
                       to_uint8(x0), to_uint8(adv), before, after, model.categories)
    if spec.png:
        _png_check(model, out)
    return out


def _perturb_fgsm(model: Model, x0: torch.Tensor, spec: AttackSpec, progress: Progress):
    before = classify(model, x0)[0]
    adv = _fgsm(model, x0, spec.eps, _goal(model, before, spec.target), spec.target is not None)
    progress(1.0, "FGSM")
    return before, adv


def _perturb_pgd(model: Model, x0: torch.Tensor, spec: AttackSpec, progress: Progress):
    def step(k: int) -> None:
        progress(k / spec.steps, f"step {k} of {spec.steps}")

    targeted = spec.target is not None
    if not spec.random_start:  # the label comes free with the first step
        before, start = _first_step(model, x0, spec.eps, spec.alpha, spec.target)
        step(1)
        goal = _goal(model, before, spec.target)
        return before, _pgd(model, x0, start, spec.eps, spec.alpha, spec.steps, goal, targeted, done=1, step=step)
    before = classify(model, x0)[0]
    goal = _goal(model, before, spec.target)
    start = _random_start(x0, spec.eps, spec.seed)
    return before, _pgd(model, x0, start, spec.eps, spec.alpha, spec.steps, goal, targeted, step=step)


ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Attack("fgsm", "FGSM", "one step of the full budget along the gradient's sign.", False,
           lambda spec: 3, _perturb_fgsm),
    Attack("pgd", "PGD", "many small steps, each projected back into the budget.", True,
           lambda spec: spec.steps + 1 + int(spec.random_start), _perturb_pgd),
)}


def _goal(model: Model, before: np.ndarray, target: int | None) -> int:
    """The class the loss is about: the target, or (untargeted) the current answer."""
    label = int(before.argmax())
    if target is not None and target == label:
        raise AttackError(f"The image is already classified as {model.categories[label]} ({label}); "
                          "pick another target class, or attack untargeted.")
    return target if target is not None else label


def _loss() -> nn.Module:
    # Per-example cross-entropy on logits (Captum's default -log(output) wants probabilities).
    return nn.CrossEntropyLoss(reduction="none")


def _ball(x0: torch.Tensor, eps: float, grid: bool):
    """Projection onto the budget around x0 within [0, 1]; on the grid, whole levels only."""
    radius = (math.floor(eps) if grid else eps) / 255
    lo, hi = (x0 - radius).clamp(0, 1), (x0 + radius).clamp(0, 1)
    if grid:
        return lambda x: torch.clamp(_to_grid(x), lo, hi)
    return lambda x: torch.clamp(x, lo, hi)


def _fgsm(model: Model, x0: torch.Tensor, eps: float, goal: int, targeted: bool) -> torch.Tensor:
    from captum.robust import FGSM

    fgsm = FGSM(model.pixel_net, loss_func=_loss())
    fgsm.zero_thresh = 0.0  # saturated softmax gives tiny but meaningful gradients
    fgsm.bound = _ball(x0, eps, grid=True)
    with torch.enable_grad():
        return fgsm.perturb(x0, epsilon=eps / 255, target=torch.tensor([goal]), targeted=targeted).detach()


def _first_step(model: Model, x0: torch.Tensor, eps: float, alpha: float, target: int | None):
    """PGD's first step from x0, whose forward pass also gives the answer on the original
    (the untargeted goal), so finding the label costs no pass of its own. Returns
    (probabilities at x0, the stepped image). The same step as Captum's FGSM with
    `zero_thresh=0`: sign of the gradient of the cross-entropy, times alpha, projected."""
    x = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model.pixel_net(x)
        before = logits.detach().double().softmax(-1)[0].numpy()
        goal = target if target is not None else int(before.argmax())
        grad, = torch.autograd.grad(_loss()(logits, torch.tensor([goal])).sum(), x)
    direction = -1 if target is not None else 1
    return before, _ball(x0, eps, grid=False)(x0 + direction * alpha / 255 * grad.sign())


def _pgd(model: Model, x0: torch.Tensor, start: torch.Tensor, eps: float, alpha: float, steps: int,
         goal: int, targeted: bool, done: int = 0, step: Callable[[int], None] | None = None) -> torch.Tensor:
    """PGD from `start` (anywhere inside the ball around x0): float steps of `alpha`,
    then one-level steps on the 1/255 grid. `done`: float steps already taken (by
    `_first_step`); `step(k)` is called after the k-th step (progress, and where a stop
    request ends the attack). The steps run on the BatchNorm-folded copy
    (`Model.fast_net`, ~0.8x the time per step); every probability reported comes from
    `pixel_net`, as everywhere else.

    Each step is Captum's PGD step, one at a time: its FGSM step (`zero_thresh` 0), the
    clip around the phase's start (radius 1: a no-op in [0, 1], kept so every number is
    Captum's), then the projection onto the ball around x0 (Captum's `bound`)."""
    from captum.robust import FGSM

    grid_steps = steps // GRID_FRACTION
    target = torch.tensor([goal])
    fgsm = FGSM(model.fast_net, loss_func=_loss())
    fgsm.zero_thresh = 0.0
    x, k = start, done
    with torch.enable_grad():
        for n, size, grid in ((steps - grid_steps - done, alpha, False), (grid_steps, 1.0, True)):
            bound, origin = _ball(x0, eps, grid), x
            for _ in range(n):
                moved = fgsm.perturb(x, size / 255, target, None, targeted)
                x = bound(origin + torch.clamp(moved - origin, -1.0, 1.0)).detach()
                k += 1
                if step is not None:
                    step(k)
    return _ball(x0, eps, grid=True)(x.detach())


def _random_start(x0: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(x0.shape, generator=g) * 2 - 1
    return (x0 + u * eps / 255).clamp(0, 1)


def _noise(model: Model, x0: torch.Tensor, spec: NoiseSpec) -> AttackResult:
    g = torch.Generator().manual_seed(spec.seed)
    signs = torch.randint(0, 2, x0.shape, generator=g).float() * 2 - 1
    x = _ball(x0, spec.eps, grid=True)(x0 + signs * math.floor(spec.eps) / 255)
    before, after = classify(model, torch.cat([x0, x]))
    return AttackResult("noise", spec.eps, 1, spec.eps, None, False, spec.seed, to_uint8(x0), to_uint8(x),
                        before, after, model.categories)


# ---------------------------------------------------------------- 8-bit check

def _png_check(model: Model, result: AttackResult) -> None:
    """Save the adversarial image as an 8-bit PNG, decode the bytes again and classify
    them at the network's input size (no resizing): does the file still fool it?"""
    from .images import decode

    data = png_bytes(result.adversarial)
    reloaded = np.asarray(decode(data, "the adversarial PNG"))
    probs = classify(model, from_uint8(reloaded))[0]
    result.png, result.png_probs = data, probs
    result.png_success = succeeded(probs, result.label, result.target)


# ---------------------------------------------------------------- budget sweep

def _budget_sweep(model: Model, x0: torch.Tensor, spec: BudgetSweepSpec, progress: Progress) -> BudgetSweep:
    """Attack at each budget (ascending) and record the original and target probabilities.

    Work is reused: FGSM's gradient at the original does not depend on the budget, so
    one Captum step of 1/255 gives the direction for all budgets; PGD at each budget
    starts from the previous budget's image (inside the larger ball), keeps it if the
    new one is worse, and stops attacking once the goal is reached with
    near-certainty (larger budgets hold that image too). `step_size` is scaled with
    the budget when not given (2.5 * eps / steps)."""
    budgets, target = list(spec.budgets), spec.target
    before = classify(model, x0)[0]
    label, goal = int(before.argmax()), _goal(model, before, target)
    if not ATTACKS[spec.method].iterative:
        probs = classify(model, _fgsm_sweep(model, x0, budgets, goal, target is not None))
        progress(1.0, f"FGSM at {len(budgets)} budgets")
    else:
        probs = _pgd_sweep(model, x0, spec, goal, progress)
    probs = np.concatenate([before[None], probs])
    budgets = [0.0, *budgets]
    success = [succeeded(p, label, target) for p in probs]
    return BudgetSweep(budgets, label, target, [float(p[label]) for p in probs],
                       [float(p[target]) for p in probs] if target is not None else None,
                       [int(p.argmax()) for p in probs], success)


def _fgsm_sweep(model, x0, budgets, goal, targeted) -> torch.Tensor:
    from captum.robust import FGSM

    fgsm = FGSM(model.pixel_net, loss_func=_loss())  # unbounded: the step is exactly the direction
    fgsm.zero_thresh = 0.0
    with torch.enable_grad():
        step = fgsm.perturb(x0, epsilon=1.0, target=torch.tensor([goal]), targeted=targeted).detach() - x0
    direction = torch.round(step)  # -1, 0 or +1 per value
    return torch.cat([_ball(x0, b, grid=True)(x0 + direction * math.floor(b) / 255) for b in budgets])


def _pgd_sweep(model, x0, spec: BudgetSweepSpec, goal: int, progress: Progress) -> np.ndarray:
    target, budgets = spec.target, spec.budgets

    def worse(new, old) -> bool:  # for the attack's goal
        return new[goal] < old[goal] if target is not None else new[goal] > old[goal]

    out, x, best = [], None, None
    for i, b in enumerate(budgets):
        done = best is not None and (best[goal] > 1 - SATURATED if target is not None else best[goal] < SATURATED)
        if not done:
            alpha = spec.attack(b).alpha
            start = x if x is not None else (_random_start(x0, b, spec.seed) if spec.random_start else x0)
            new = _pgd(model, x0, start, b, alpha, spec.steps, goal, target is not None,
                       step=lambda k: progress.check())
            p = classify(model, new)[0]
            if best is None or not worse(p, best):
                x, best = new, p
        out.append(best)
        progress((i + 1) / len(budgets), f"budget {b:g}/255 ({i + 1} of {len(budgets)})")
    return np.stack(out)


# ---------------------------------------------------------------- targets

def far_targets(model: Model, probs: np.ndarray, k: int = 5) -> list[int]:
    """Classes far from the current answer: the least probable ones for this image,
    spread over the bottom 5% so the suggestions are not all alike. Never the top-1."""
    order = [int(i) for i in np.argsort(probs, kind="stable") if i != probs.argmax()]  # least probable first
    pool = order[: max(k, len(order) // 20)]
    picks = np.linspace(0, len(pool) - 1, min(k, len(pool))).round().astype(int)
    return [pool[i] for i in dict.fromkeys(picks)]
