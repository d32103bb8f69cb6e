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
# A state dict's index (the pickle naming its tensors) takes ~150 bytes a tensor: a few hundred
# KB for the largest torchvision model. One far larger makes millions of tensor objects from a
# small file (views of one shared storage), so it is refused before torch.load reads it.
CHECKPOINT_INDEX_BYTES = 4 * MiB
# Zip records in a torch.save file: one per tensor storage (~1,000 for DenseNet-121).
CHECKPOINT_RECORDS = 65_536
# A classifier needs two classes to have a decision: with one, every softmax is 1.0 and
# top-k, attacks ("away from the top-1") and flips have nothing to compare.
MIN_CLASSES = 2
# One class name: torchvision's longest (ImageNet, Kinetics) are under 40 characters;
# a line past this is not a name (a binary or minified file given by mistake).
LABEL_CHARS = 256
# The largest upload kind: `server.maxUploadSize` in .streamlit/config.toml (in MB) is
# this, and each kind is then checked against its own limit above (a test keeps them equal).
UPLOAD_BYTES = max(IMAGE_BYTES, WEIGHTS_BYTES, LABELS_BYTES)

# ---------------------------------------------------------------- images (at intake, once per upload)
# Decoded pixels, from the header before any pixel is decoded (~6300 x 6300, 120 MB as RGB).
IMAGE_PIXELS = 40_000_000
# After decoding, an image is cut to at most IMAGE_ASPECT : 1 about its centre, then scaled
# so its longest side is at most IMAGE_SIDE, and the user is told. Every model resizes the
# shortest side to its input (224-600 pixels) and centre-crops a square, so the crop never
# removes what a network sees, and 4096 keeps a photo sharp well past any model's input;
# without the bound a 40 x 1,000,000 image became 256 x 6,400,000 (6.5 GB) on every rerun.
IMAGE_ASPECT = 8
IMAGE_SIDE = 4096
# ICO decodes its payload inside Image.open, before any check of ours: every payload's
# size is read from the directory and the payload's own header first. 256 is the format's
# largest directory size; a bigger "icon" is a disguised bitmap.
ICO_SIDE = 1024

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
# Models on one CNN-limits chart, the selected one included (the page's comparison, `limits
# --compare`): each adds a whole sweep (up to MAX_POINTS images; a ViT-B/16 forward is ~0.5 s on
# a CPU core), the server keeps MODELS (3) loaded, so a fourth would push one out and reload it
# on every rerun, and three lines (a CNN, ViT-B/16, ConvNeXt: the lecture's comparison) are
# what one chart and one row of occlusion maps stay readable with.
LIMITS_MODELS = 3
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
# Layers of the depth chart's effective-field curve (receptive.DepthSpec): a backward pass each.
MAX_DEPTH_POINTS = 16
# Model randomization steps of the trust checks (the page uses 6): the cascade has at most one
# step per block of the network anyway, and each step costs every method's map once more.
MAX_TRUST_STEPS = 64
# Deletion and insertion curves (the layer advisor, the method comparison; the pages use 20
# cuts): each cut is one more image per curve. A sweep's layers: every CAM layer of the
# largest zoo network is about 300 calls; the advisor scores each (MAX_PASSES bounds the total).
MAX_CURVE_STEPS = 100
MAX_SWEEP_LAYERS = 512
# Training LeNet-5 (the Train page, `cnnviz train`): epochs, batch size, and images taken from
# a dataset (MNIST's 60,000 would make an epoch ~40 s here; the bundled digits are 1,797). A
# job's cost is counted in batches (see lenet.TrainSpec.passes), so MAX_PASSES bounds it too.
MAX_EPOCHS = 100
MAX_TRAIN_BATCH = 512
MAX_TRAIN_IMAGES = 20_000
# The Convolution page. The output-size rule takes any layer a real network has (the
# largest inputs here are a few thousand pixels; kernels, paddings, strides and dilations
# are single or double digits); the playground draws its grid only up to DRAW_SIDE cells of
# padded input a side, and animates it (one frame per output unit) up to DRAW_FRAMES units:
# Plotly validates every frame, ~2.5 ms of server CPU each, so 400 frames cost ~1 s (2,304, a
# 48 x 48 output, cost 6 s). The softmax temperature spans sharp to flat.
CONV_SIDE = 100_000
CONV_KNOB = 1_000  # kernel, stride, dilation, padding of one layer (the largest real ones: 11, 4, 32, 10)
CONV_CHANNELS = 100_000
DRAW_SIDE = 48
DRAW_FRAMES = 400
TEMPERATURE = (0.05, 20.0)


# ---------------------------------------------------------------- memory (per process, every session together)
# The caches are bounded in bytes (cnnviz.lru.nbytes), not only in entries: one entry can be a
# 120 MB decoded image or a recording of every layer (~75 MB for the bundled model). The sums
# below keep a server with a few models loaded under ~3 GB whatever the sessions ask for.
RESULT_BYTES = 512 * MiB  # analysis results (pickled, copied per read): hundreds of maps and curves
SHARED_RESULT_BYTES = 512 * MiB  # large read-only results (layer recordings): about 6 of ~75 MB
IMAGE_CACHE_BYTES = 256 * MiB  # decoded images: two at the 40-megapixel limit (120 MB each), or many photos
THUMBNAIL_BYTES = 16 * MiB  # the sample picker's JPEG thumbnails (~5 KB each)
DISPLAY_BYTES = 32 * MiB  # Home's JPEG of the current picture (at most 1460 px a side: ~0.1-0.5 MB each)
MAX_MODEL_PARAMS = 150_000_000  # a model a link or the picker may load (VGG-16, the zoo's largest: 138 M)
MODELS = 3  # zoo and bundled models kept loaded: three of the largest (VGG-16, 528 MB) are 1.6 GB
MODEL_BYTES = 2 * 2 ** 30  # ... and never more than this in all (a model above it is used, not kept)
OWN_MODELS = 4  # uploaded checkpoints kept for their sessions (one copy per file, whoever loaded it)
OWN_MODEL_BYTES = 1280 * MiB  # more than two of the largest upload (WEIGHTS_BYTES), so each one fits
FEATUREVIS_MEMORY_BYTES = 64 * MiB  # finished synthetic images: ~1300 at 128 px, 80 at 512 px
FEATUREVIS_NATURAL_BYTES = 256 * MiB  # the sample photos' recordings of a layer (~4-15 MB; early VGG layers ~130 MB)

# ---------------------------------------------------------------- disk
# Feature visualizations kept between runs ($CNNVIZ_CACHE/featurevis), least recently used out
# first: a 128 px render is ~50 KB, so this keeps about 5000 of them.
FEATUREVIS_DISK_BYTES = 256 * MiB


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
