"""Server-side bounds on everything a user controls, in one place.

A widget's range is a convenience; these are the limits: a URL, the CLI or a crafted
upload can ask for anything, and the backend refuses (or clamps, saying so) whatever
lies outside them before allocating or running anything.
"""
from __future__ import annotations

import math
import numbers

from .contract import CnnvizError

MiB = 2 ** 20

# ---------------------------------------------------------------- uploads (checked before parsing)
IMAGE_BYTES = 50 * MiB
WEIGHTS_BYTES = 600 * MiB  # VGG-16's state dict is 528 MB
LABELS_BYTES = 1 * MiB
MAX_CLASSES = 100_000  # a head wider than this is refused before it is built

# ---------------------------------------------------------------- jobs
# Images through the network (forward, or forward+backward) in one job, whatever its knobs:
# every spec's `passes(model)`, refused by the job runner (cnnviz.jobs) before anything runs.
# The largest jobs the widgets offer: a gallery of 64 channels at the default 256 steps
# (64 x 258 = 16,512 images), a budget sweep of 32 budgets x 100 PGD steps (3,233), Score-CAM
# at the widest CAM layer of the zoo (ResNet-50's 2,048 channels: 2,051), the trust checks of
# all six methods (about 1,800). 20,000 lets each of those run and refuses what only a crafted
# URL or command line asks for: a 1-pixel occlusion patch (50,177), PGD with 1,000 steps at
# 256 budgets (256,257), a gallery of 64 channels x 1,024 steps (65,664).
MAX_PASSES = 20_000
# Images in one batch (the `batch_size` knobs): memory stays flat whatever the job's length.
# The pages use 8 for gradients and 32 for the limits sweeps' forward passes. Measured on the
# bundled model at 224 x 224, peak memory added: forward and backward of 8 images 0.7 GB, of
# 32 images 2.6 GB, of 64 images 5.3 GB; a sweep's forward batch of 32 0.5 GB.
MAX_BATCH = 32
# Seeds: the widgets' range, which every generator here (torch, numpy) takes.
MAX_SEED = 2 ** 31 - 1
# SmoothGrad's noisy samples and Integrated Gradients' steps (defaults 24 and 32; papers use 50-300).
MAX_SAMPLES = 1024
# Points of one limits sweep (values, or occlusion positions), and so thumbnails kept per
# sweep: 400 x 96 x 96 x 3 bytes = 11 MB, and a slider of at most 400 options. A 1-pixel
# occlusion patch would be 50,176 positions (1.4 GB of thumbnails).
MAX_POINTS = 400
MAX_THUMB = 256  # side of a sweep's thumbnails, pixels (the page shows 96)
MAX_VALUES_TEXT = 4_000  # characters of a typed list of values: 400 values of 9 characters
# Adversarial attacks, in 1/255 units: the budget cannot exceed the pixel range; the page's
# sliders stop at 32 levels, 100 steps and sweeps of 32 budgets.
MAX_EPS = 255.0
MAX_ATTACK_STEPS = 1000
MAX_BUDGETS = 256
# Feature visualization: image side (the page offers 32 to 256) and optimization steps (to 1,024).
FEATUREVIS_SIDES = (32, 512)
MAX_FEATUREVIS_STEPS = 4096
MAX_GALLERY = 64  # channels in one gallery
# Receptive fields: the traced input's sides, and noise inputs averaged (the page offers 4 to 64).
RF_SIDES = (16, 2048)
MAX_NOISE_INPUTS = 256
# Model randomization steps of the trust checks (the page uses 6): the cascade has at most one
# step per block of the network anyway, and each step costs every method's map once more.
MAX_TRUST_STEPS = 64


# ---------------------------------------------------------------- checks of one knob

def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def whole(value, name: str, lo: int, hi: int, error: type[CnnvizError] = CnnvizError) -> int:
    """`value` as an int in [lo, hi] (an integral float such as 3.0 is taken), else `error`
    naming the range: never an OverflowError, ValueError or TypeError (inf, nan, 1e309, "3")."""
    ok = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer())
    if ok and lo <= value <= hi:
        return int(value)
    raise error(f"{name} must be a whole number, at least {lo:,} and at most {hi:,}; got {_shown(value)}.")


def number(value, name: str, lo: float, hi: float, error: type[CnnvizError] = CnnvizError, *,
           above: bool = False, unit: str = "") -> float:
    """`value` as a finite float in [lo, hi] (`above`: lo itself excluded), else `error` naming
    the range (inf, nan and 1e309 never get past)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (lo < value if above else lo <= value) and value <= hi:
        return float(value)
    where = f"above {lo:g}" if above else f"at least {lo:g}"
    raise error(f"{name} must be a number, {where} and at most {hi:g}{' ' + unit if unit else ''}; "
                f"got {_shown(value)}.")


def seed(value, error: type[CnnvizError] = CnnvizError) -> int:
    return whole(value, "The seed", 0, MAX_SEED, error)


def batch(value, error: type[CnnvizError] = CnnvizError, name: str = "The batch size") -> int:
    return whole(value, name, 1, MAX_BATCH, error)
