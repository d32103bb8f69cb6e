"""Adversarial perturbations: FGSM and PGD from `captum.robust`, in pixel space.

One entry point, `attack(model, image, method, eps, ...)`, returns a `Result`: the
8-bit picture the network sees, the adversarial picture, and both probability vectors.
Budgets (`eps`) and step sizes are in 1/255 units, the steps of an 8-bit image.

- The attacks run on `model.pixel_net` ([0, 1] pixels, normalization inside), starting
  from the network's input rounded to 8 bits, so "before" is an image one can save.
- Captum's default loss is -log(output), meant for probabilities; on logits targeted
  attacks silently fail, so the loss is cross-entropy on the logits.
- PGD's steps after the first run on `Model.fast_net` (BatchNorm folded into the
  convolutions: the same function, faster); the first step, whose forward pass also
  gives the answer on the original, and every classification use `pixel_net`.
- The last quarter of PGD's steps stay on the 1/255 grid (one-level sign steps, then
  rounding), and every result is rounded onto it: the adversarial image survives
  saving as an 8-bit PNG (`png_check` saves, reloads and classifies it again).
- The random-sign control (`noise`) has the same L-infinity norm as the attack; it
  should almost never change the answer. `budget_sweep` attacks at growing budgets,
  each starting from the previous budget's image.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from .contract import CnnvizError
from .model import Model

METHODS = ("fgsm", "pgd")
MAX_EPS = 255.0
MAX_STEPS = 1000
GRID_FRACTION = 4  # the last 1/GRID_FRACTION of PGD's steps move on the 1/255 grid
SATURATED = 1e-3  # a sweep stops attacking once the goal's probability is this close to done
Progress = Callable[[float, str], None]
# Captum's FGSM warns on every step that the (detached) input did not require grad.
warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")


class AttackError(CnnvizError):
    """Attack parameters that cannot work (the message says which and what instead)."""


@dataclass
class Result:
    """One attack on one image. Images are uint8 [H, W, 3] at the network's input size."""

    method: str  # "fgsm" | "pgd" | "noise"
    eps: float  # budget, 1/255 units
    steps: int
    step_size: float  # 1/255 units
    target: int | None  # the class a targeted attack aims at; None: untargeted
    random_start: bool
    seed: int
    original: np.ndarray
    adversarial: np.ndarray
    probs_before: np.ndarray  # float64 [num_classes]
    probs_after: np.ndarray

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


def succeeded(probs: np.ndarray, label: int, target: int | None) -> bool:
    top = int(np.argmax(probs))
    return top == target if target is not None else top != label


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


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> uint8 [H, W, 3] (exact on the grid)."""
    return torch.round(x[0].permute(1, 2, 0) * 255).clamp(0, 255).to(torch.uint8).numpy()


def from_uint8(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, np.uint8)).permute(2, 0, 1)[None].float() / 255


def classify(model: Model, x: torch.Tensor) -> np.ndarray:
    """Softmax of the pixel network for a batch of pixels, float64 [N, num_classes]."""
    with model.lock, torch.no_grad():
        return model.pixel_net(x).double().softmax(-1).numpy()


# ---------------------------------------------------------------- attacks

def check(model: Model, method: str, eps: float, steps: int, step_size: float | None,
          target: int | None) -> float:
    """Validate parameters; returns the step size (default 2.5 * eps / steps, Madry et al.)."""
    if method not in METHODS:
        raise AttackError(f"Unknown attack {method!r}; choose one of {', '.join(METHODS)}.")
    if not 1 <= eps <= MAX_EPS or not math.isfinite(eps):
        raise AttackError(f"The budget must be between 1 and {MAX_EPS:.0f} (in 1/255 units), got {eps:g}: "
                          "an 8-bit image cannot change by less than 1/255.")
    if not 1 <= steps <= MAX_STEPS:
        raise AttackError(f"The number of steps must be between 1 and {MAX_STEPS}, got {steps}.")
    if step_size is not None and not (0 < step_size <= MAX_EPS and math.isfinite(step_size)):
        raise AttackError(f"The step size must be positive (in 1/255 units), got {step_size:g}.")
    n = len(model.categories)
    if target is not None and not 0 <= target < n:
        raise AttackError(f"Class {target} does not exist; the model has {n} classes (0 to {n - 1}).")
    if method == "fgsm":
        return float(eps)
    return float(step_size) if step_size is not None else 2.5 * eps / steps


def attack(model: Model, image: Image.Image | torch.Tensor, method: str = "pgd", eps: float = 2,
           steps: int = 10, step_size: float | None = None, target: int | None = None,
           random_start: bool = False, seed: int = 0) -> Result:
    """FGSM or PGD within an L-infinity ball of `eps`/255 around the 8-bit input.

    Untargeted (`target` None): push away from the network's answer on the original.
    Targeted: pull towards class `target`. PGD takes `steps` steps of `step_size`/255
    (default 2.5 * eps / steps), from a random point of the ball if `random_start`
    (drawn from `seed`, never from torch's global generator). FGSM is one step of eps.
    """
    alpha = check(model, method, eps, steps, step_size, target)
    x0 = pixels(model, image)
    with model.lock:
        if method == "pgd" and not random_start:  # the label comes free with the first step
            before, start = _first_step(model, x0, eps, alpha, target)
        else:
            before, start = classify(model, x0)[0], None
        goal = _goal(model, before, target)
        if method == "fgsm":
            adv = _fgsm(model, x0, eps, goal, target is not None)
            steps = 1
        elif start is not None:
            adv = _pgd(model, x0, start, eps, alpha, steps, goal, target is not None, done=1)
        else:
            adv = _pgd(model, x0, _random_start(x0, eps, seed), eps, alpha, steps, goal, target is not None)
        after = classify(model, adv)[0]
    return Result(method, float(eps), steps, alpha, target, bool(random_start and method == "pgd"), int(seed),
                  to_uint8(x0), to_uint8(adv), before, after)


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
         goal: int, targeted: bool, done: int = 0) -> torch.Tensor:
    """PGD from `start` (anywhere inside the ball around x0): float steps of `alpha`,
    then one-level steps on the 1/255 grid. Captum clips around its own input, so the
    ball around x0 is imposed through the documented `bound` attribute instead.
    `done`: float steps already taken (by `_first_step`). The steps run on the
    BatchNorm-folded copy (`Model.fast_net`, ~0.8x the time per step); every
    probability reported comes from `pixel_net`, as everywhere else."""
    from captum.robust import PGD

    grid_steps = steps // GRID_FRACTION
    target = torch.tensor([goal])
    x = start
    with torch.enable_grad():
        for n, size, grid in ((steps - grid_steps - done, alpha, False), (grid_steps, 1.0, True)):
            if n == 0:
                continue
            pgd = PGD(model.fast_net, loss_func=_loss())
            pgd.fgsm.zero_thresh = 0.0
            pgd.bound = _ball(x0, eps, grid)
            x = pgd.perturb(x, radius=1.0, step_size=size / 255, step_num=n, target=target, targeted=targeted)
    return _ball(x0, eps, grid=True)(x.detach())


def _random_start(x0: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(x0.shape, generator=g) * 2 - 1
    return (x0 + u * eps / 255).clamp(0, 1)


def noise(model: Model, image: Image.Image | torch.Tensor, eps: float, seed: int = 0) -> Result:
    """The control: every pixel value moved by +-eps/255 with random signs (seeded)."""
    check(model, "fgsm", eps, 1, None, None)
    x0 = pixels(model, image)
    g = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, x0.shape, generator=g).float() * 2 - 1
    x = _ball(x0, eps, grid=True)(x0 + signs * math.floor(eps) / 255)
    with model.lock:
        before, after = classify(model, torch.cat([x0, x]))
    return Result("noise", float(eps), 1, float(eps), None, False, int(seed), to_uint8(x0), to_uint8(x), before, after)


# ---------------------------------------------------------------- 8-bit check

@dataclass
class PngCheck:
    png: bytes
    probs: np.ndarray  # the reloaded PNG's probabilities
    success: bool  # the reloaded PNG still fools the network


def png_check(model: Model, result: Result) -> PngCheck:
    """Save the adversarial image as an 8-bit PNG, decode the bytes again and classify
    them at the network's input size (no resizing): does the file still fool it?"""
    from .images import decode

    buf = io.BytesIO()
    Image.fromarray(result.adversarial).save(buf, "PNG")
    data = buf.getvalue()
    reloaded = np.asarray(decode(data, "the adversarial PNG"))
    probs = classify(model, from_uint8(reloaded))[0]
    return PngCheck(data, probs, succeeded(probs, result.label, result.target))


# ---------------------------------------------------------------- budget sweep

@dataclass
class Sweep:
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


def budget_sweep(model: Model, image: Image.Image | torch.Tensor, method: str = "pgd", budgets=range(1, 17),
                 steps: int = 10, step_size: float | None = None, target: int | None = None,
                 random_start: bool = False, seed: int = 0, progress: Progress | None = None) -> Sweep:
    """Attack at each budget (ascending) and record the original and target probabilities.

    Work is reused: FGSM's gradient at the original does not depend on the budget, so
    one Captum step of 1/255 gives the direction for all budgets; PGD at each budget
    starts from the previous budget's image (inside the larger ball), keeps it if the
    new one is worse, and stops attacking once the goal is reached with
    near-certainty (larger budgets hold that image too). `step_size` is scaled with
    the budget when not given (2.5 * eps / steps)."""
    budgets = sorted(float(b) for b in budgets)
    if not budgets:
        raise AttackError("Give at least one budget.")
    for b in budgets:
        check(model, method, b, steps, step_size, target)
    x0 = pixels(model, image)
    before = classify(model, x0)[0]
    label, goal = int(before.argmax()), _goal(model, before, target)
    if method == "fgsm":
        with model.lock:
            probs = classify(model, _fgsm_sweep(model, x0, budgets, goal, target is not None))
        if progress:
            progress(1.0, f"FGSM at {len(budgets)} budgets")
    else:  # the lock is taken per budget, so other sessions are not held up for the whole sweep
        probs = _pgd_sweep(model, x0, budgets, steps, step_size, goal, target, random_start, seed, progress)
    probs = np.concatenate([before[None], probs])
    budgets = [0.0, *budgets]
    success = [succeeded(p, label, target) for p in probs]
    return Sweep(budgets, label, target, [float(p[label]) for p in probs],
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


def _pgd_sweep(model, x0, budgets, steps, step_size, goal, target, random_start, seed, progress) -> np.ndarray:
    def worse(new, old) -> bool:  # for the attack's goal
        return new[goal] < old[goal] if target is not None else new[goal] > old[goal]

    out, x, best = [], None, None
    for i, b in enumerate(budgets):
        done = best is not None and (best[goal] > 1 - SATURATED if target is not None else best[goal] < SATURATED)
        if not done:
            alpha = step_size if step_size is not None else 2.5 * b / steps
            start = x if x is not None else (_random_start(x0, b, seed) if random_start else x0)
            with model.lock:
                new = _pgd(model, x0, start, b, alpha, steps, goal, target is not None)
                p = classify(model, new)[0]
            if best is None or not worse(p, best):
                x, best = new, p
        out.append(best)
        if progress:
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
