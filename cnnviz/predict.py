"""Classify an image: probabilities and the top-k classes.

`classify` is the one forward pass that turns pixels into probabilities (float32
network, float64 softmax), used by every analysis that reports a class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from . import bounds
from .contract import CnnvizError, Progress, Result, Spec
from .model import Model


@dataclass(frozen=True)
class Top:
    index: int
    label: str
    prob: float

    def to_dict(self) -> dict:
        return asdict(self)


def classify(model: Model, x: torch.Tensor) -> np.ndarray:
    """Softmax over the classes for pixels [N, 3, H, W] in [0, 1]: float64 [N, num_classes]."""
    with torch.inference_mode():
        return model.pixel_net(x).double().softmax(-1).numpy()


def logits(model: Model, image: Image.Image | torch.Tensor) -> np.ndarray:
    """The network's logits for one image, float64 [num_classes] (float32 network)."""
    with torch.inference_mode():
        return model.pixel_net(model.to_pixels(image)).double()[0].numpy()


def probabilities(model: Model, image: Image.Image | torch.Tensor) -> np.ndarray:
    """Softmax over the model's classes for one image, float64 [num_classes]."""
    return classify(model, model.to_pixels(image))[0]


def top_k(model: Model, probs: np.ndarray, k: int = 5) -> list[Top]:
    k = max(1, min(int(k), len(probs)))
    order = np.argsort(-probs, kind="stable")[:k]
    return [Top(int(i), model.categories[i], float(probs[i])) for i in order]


def predict(model: Model, image: Image.Image, k: int = 5) -> list[Top]:
    return top_k(model, probabilities(model, image), k)


@dataclass(frozen=True)
class PredictSpec(Spec):
    topk: int = 5

    def check(self, model) -> "PredictSpec":
        if not (isinstance(self.topk, int) and self.topk >= 1):
            raise CnnvizError(f"--topk must be at least 1, not {bounds._shown(self.topk)}")
        return self


@dataclass
class Prediction(Result):
    top: list[Top]
    probs: np.ndarray = field(repr=False)  # float64 [num_classes]; not in the JSON
    logits: np.ndarray | None = field(default=None, repr=False)  # float64 [num_classes]: what the softmax took


def run(model: Model, image, spec: PredictSpec = PredictSpec(), *, progress: Progress | None = None) -> Prediction:
    spec = spec.check(model)
    z = logits(model, image)  # one pass; the softmax as `classify` takes it (float64)
    probs = torch.from_numpy(z).softmax(-1).numpy()
    return Prediction(top_k(model, probs, spec.topk), probs, z)


class UnknownClass(CnnvizError):
    """A class given by index or name that the model does not have."""


def class_index(model: Model, value: str | int) -> int:
    """A class by index ("281") or by name ("tabby", case-insensitive)."""
    text = str(value).strip()
    n = len(model.categories)
    if text.lstrip("-").isdigit():
        i = int(text)
        if 0 <= i < n:
            return i
        raise UnknownClass(f"Class {i} does not exist; the model has {n} classes (0 to {n - 1}).")
    lowered = [c.lower() for c in model.categories]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    from .contract import closest

    close = closest(text.lower(), lowered, cutoff=0.6)
    hint = f" Did you mean: {', '.join(model.categories[lowered.index(c)] for c in close)}?" if close else ""
    raise UnknownClass(f"No class named {text!r}.{hint}")
