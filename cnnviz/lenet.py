"""LeNet-5, trained here: the first CNN, built in front of the class.

The network (LeCun et al. 1998, as usually implemented: two convolution + subsampling
stages and three fully connected layers; the published C3 partial connections and RBF
output are left out), in its classic form (tanh, average pooling) or a modern one (ReLU,
max pooling); the data (scikit-learn's bundled 8 x 8 digits, offline, upsampled as MNIST
is laid out: the digit in the centre 28 x 28 of 32 x 32); and training as a job of the
runner (`TrainSpec`), deterministic for a seed on CPU. A trained net is a `Model` like any
other (`models.lenet`), so every page works on it.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import bounds
from .contract import CnnvizError, Progress, Result, Spec

VARIANTS = {"classic": "LeNet-5 as published: tanh, average pooling",
            "modern": "modern: ReLU, max pooling"}
DATA = {"digits": "scikit-learn's handwritten digits (1,797, offline)",
        "mnist": "MNIST through torchvision (downloaded once)"}
SIDE = 32  # LeNet's input: 32 x 32, the digit in its centre 28 x 28
CLASSES = [str(d) for d in range(10)]
DIGITS = 1797  # images in scikit-learn's digits (a test checks it)


class TrainError(CnnvizError):
    """A training request that cannot run (with the reason)."""


class Ink(nn.Module):
    """The picture as the network learnt digits: one grey channel, light ink on dark. A
    photo of a handwritten digit (dark ink on light paper: mean above one half) is
    inverted, so both kinds of image read the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(1, keepdim=True)
        light = grey.mean((2, 3), keepdim=True) > 0.5
        return torch.where(light, 1 - grey, grey)


class LeNet5(nn.Module):
    """32 x 32 pixels in [0, 1] (any number of colour channels) -> 10 logits. 61,706 weights.
    The variant is a buffer, so a saved state dict says which one it is."""

    def __init__(self, variant: str = "classic"):
        super().__init__()
        if variant not in VARIANTS:
            raise TrainError(f"Unknown LeNet variant {variant!r}: choose {' or '.join(VARIANTS)}.")
        modern = variant == "modern"
        act = nn.ReLU if modern else nn.Tanh
        pool = (lambda: nn.MaxPool2d(2)) if modern else (lambda: nn.AvgPool2d(2))
        self.register_buffer("modern", torch.tensor(modern))
        self.ink = Ink()
        self.conv1, self.act1, self.pool1 = nn.Conv2d(1, 6, 5), act(), pool()  # C1 6@28x28, S2 6@14x14
        self.conv2, self.act2, self.pool2 = nn.Conv2d(6, 16, 5), act(), pool()  # C3 16@10x10, S4 16@5x5
        self.flatten = nn.Flatten()
        self.fc1, self.act3 = nn.Linear(400, 120), act()  # C5
        self.fc2, self.act4 = nn.Linear(120, 84), act()  # F6
        self.fc3 = nn.Linear(84, 10)

    @property
    def variant(self) -> str:
        return "modern" if bool(self.modern) else "classic"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(self.ink(x))))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.act3(self.fc1(self.flatten(x)))
        return self.fc3(self.act4(self.fc2(x)))


def fresh(variant: str = "classic", seed: int = 0) -> LeNet5:
    """An untrained LeNet-5 from `seed` (torch's default init); the global generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LeNet5(variant)


def variant_of(state_dict: dict) -> str:
    """Which variant a saved state dict is (its `modern` buffer)."""
    flag = state_dict.get("modern")
    if not isinstance(flag, torch.Tensor) or flag.numel() != 1:
        raise TrainError("This is not a LeNet-5 state dict from cnnviz: it has no 'modern' flag.")
    return "modern" if bool(flag) else "classic"


# ---------------------------------------------------------------- data

@functools.cache  # made once per process (~0.2 s): read-only, every job and page shares it
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as pixels [N, 3, 32, 32] in [0, 1] (grey, light on dark)
    and labels [N]: the 8 x 8 images (0-16) upsampled to 28 x 28, padded to 32 x 32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    x = F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()
    return x, torch.tensor(d.target, dtype=torch.int64)


def mnist(limit: int = bounds.MAX_TRAIN_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's training images (the first `limit`) as [N, 3, 32, 32] in [0, 1] and labels;
    downloaded once by torchvision into the torch cache; offline, a `TrainError`."""
    import torchvision

    root = torch.hub.get_dir() + "/mnist"
    try:
        ds = torchvision.datasets.MNIST(root, train=True, download=True)
    except Exception as e:  # urllib, HTTP or a broken archive: say it in one line
        raise TrainError(f"MNIST could not be downloaded ({type(e).__name__}); this machine may be offline. "
                         "Train on the bundled digits instead (they need no network).") from None
    x = ds.data[:limit].float()[:, None] / 255.0
    x = F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()
    return x, ds.targets[:limit].clone()


def split(n: int, seed: int, test_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices of `n` images, shuffled by `seed`."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * test_fraction))
    return order[k:], order[:k]


def drawn_digit(rgba: np.ndarray):
    """A digit drawn on a canvas (uint8 [H, W, 4] or [H, W, 3]; any colours, the network's
    `Ink` reads light-on-dark and dark-on-light alike) as the training digits are framed: the
    drawing in the centre 28/32 of a square, the rest background. Transparent pixels (a
    canvas without a background) count as background. A PIL image; None when nothing is drawn."""
    from PIL import Image

    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 8 or max(a.shape[:2]) > 4096:
        raise TrainError("A drawing is an RGB or RGBA picture between 8 and 4,096 pixels a side.")
    rgb = a[..., :3].astype(np.float32)
    if a.shape[2] == 4:  # transparent: the background (black)
        rgb = rgb * (a[..., 3:4].astype(np.float32) / 255.0)
    grey = rgb.mean(2)
    if float(grey.max() - grey.min()) < 1:
        return None
    side = max(grey.shape)
    frame = int(round(side * SIDE / 28))
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    out = np.full((frame, frame), background, np.float32)
    top, left = (frame - grey.shape[0]) // 2, (frame - grey.shape[1]) // 2
    out[top: top + grey.shape[0], left: left + grey.shape[1]] = grey
    return Image.fromarray(out.clip(0, 255).astype(np.uint8)).convert("RGB")


# ---------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainSpec(Spec):
    """Train LeNet-5 (the job's model: an untrained one, `fresh(variant, seed)`) on `data`
    for `epochs` with Adam (`lr`) in mini-batches of `batch`; `seed` fixes the split, the
    batches and the initial weights."""

    data: str = "digits"
    epochs: int = 15
    lr: float = 0.003
    batch: int = 32
    seed: int = 0

    def check(self, model) -> "TrainSpec":
        if self.data not in DATA:
            raise TrainError(f"Unknown data {self.data!r}: choose {' or '.join(DATA)}.")
        epochs = bounds.whole(self.epochs, "Epochs", 1, bounds.MAX_EPOCHS, TrainError)
        lr = bounds.number(self.lr, "The learning rate", 0, 1, TrainError, above=True)
        batch = bounds.whole(self.batch, "The batch size", 1, bounds.MAX_TRAIN_BATCH, TrainError)
        seed = bounds.seed(self.seed, TrainError)
        if model is not None and not isinstance(getattr(model, "net", None), LeNet5):
            raise TrainError("Only LeNet-5 is trained here; the job's model must be one (lenet.fresh).")
        return replace(self, epochs=epochs, lr=lr, batch=batch, seed=seed)

    def passes(self, model) -> int:
        """Counted in batches, not images: a forward and backward pass of 256 images of
        32 x 32 through LeNet-5 (~0.4 M multiply-adds each) costs less than one 224-px image
        through the smallest zoo model (~300 M). An epoch is its training batches and one
        evaluation batch per 256 test images."""
        n = bounds.MAX_TRAIN_IMAGES if self.data == "mnist" else DIGITS
        test = int(round(n * 0.2))
        return self.epochs * (math.ceil((n - test) / self.batch) + math.ceil(test / 256))


@dataclass
class Training(Result):
    data: str
    variant: str
    epochs: list[dict]  # per epoch: epoch, loss and train_accuracy (running, over its batches), test_accuracy
    test_accuracy: float
    confusion: list[list[int]]  # [true][predicted] on the test split
    state_dict: dict = field(repr=False)  # the trained weights (torch tensors)
    filters: np.ndarray = field(repr=False)  # float32 [epochs + 1, 6, 5, 5]: conv1 before training and after each epoch
    test_index: np.ndarray = field(repr=False)  # the test split's image indices
    test_predicted: np.ndarray = field(repr=False)  # and what the trained net says for each

    @functools.cached_property
    def state_bytes(self) -> bytes:
        """The weights as `torch.save` writes them (the download, `train --out`), made once."""
        buf = io.BytesIO()
        torch.save(self.state_dict, buf)
        return buf.getvalue()

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "variant": self.variant, "epochs": self.epochs,
                "test_accuracy": self.test_accuracy, "confusion": self.confusion, "seconds": self.seconds}


def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        pred = torch.cat([net(x[k: k + 256]).argmax(1) for k in range(0, len(x), 256)])
    return float((pred == y).float().mean()), pred


def epoch_steps(net: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch: int,
                each=lambda: None) -> tuple[float, float]:
    """One epoch of mini-batch steps over `x[order]`; `each()` after every step (a stop
    check). Returns the mean training loss and the running training accuracy (each batch
    scored by the weights it was trained with, as Keras reports it: no extra pass)."""
    total, right = 0.0, 0
    for k in range(0, len(order), batch):
        idx = order[k: k + batch]
        logits = net(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        right += int((logits.detach().argmax(1) == y[idx]).sum())
        each()
    return total / len(order), right / len(order)


def run(model, image, spec: TrainSpec = TrainSpec(), *, progress: Progress | None = None) -> Training:
    """Train a copy of `model.net` (an untrained LeNet-5); `image` is unused. Reports after
    each epoch with the curve so far and the first layer's filters as its preview."""
    progress = Progress.of(progress)
    spec = spec.check(model)
    progress(0.0, "reading the digits" if spec.data == "digits" else "MNIST: downloaded once (about 10 MB), then read")
    x, y = digits() if spec.data == "digits" else mnist()
    train_i, test_i = split(len(x), spec.seed)
    net = LeNet5(model.net.variant)
    net.load_state_dict(model.net.state_dict())  # own tensors: the job's model stays untrained
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    history, filters = [], [net.conv1.weight.detach()[:, 0].clone()]
    progress(0.0, f"epoch 0 of {spec.epochs}", {"epochs": [], "filters": filters[-1].numpy()})
    for epoch in range(1, spec.epochs + 1):
        order = train_i[torch.randperm(len(train_i), generator=gen)]
        loss, train_acc = epoch_steps(net, opt, x, y, order, spec.batch, progress.check)
        net.eval()
        test_acc, pred = _evaluate(net, x[test_i], y[test_i])
        net.train()
        history.append({"epoch": epoch, "loss": loss, "train_accuracy": train_acc, "test_accuracy": test_acc})
        filters.append(net.conv1.weight.detach()[:, 0].clone())
        progress(epoch / spec.epochs, f"epoch {epoch} of {spec.epochs}: test accuracy {test_acc:.1%}",
                 {"epochs": list(history), "filters": filters[-1].numpy()})
    confusion = np.zeros((10, 10), np.int64)  # of the last epoch's evaluation: the trained net
    np.add.at(confusion, (y[test_i].numpy(), pred.numpy()), 1)
    return Training(spec.data, net.variant, history, test_acc, confusion.tolist(),
                    {k: v.detach().clone() for k, v in net.state_dict().items()},
                    torch.stack(filters).numpy(), test_i.numpy(), pred.numpy())
