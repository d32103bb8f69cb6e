"""Classify an image: probabilities and the top-k classes."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from .models import Model


@dataclass(frozen=True)
class Top:
    index: int
    label: str
    prob: float

    def to_dict(self) -> dict:
        return asdict(self)


def probabilities(model: Model, image: Image.Image) -> np.ndarray:
    """Softmax over the model's classes for one image, float64 [num_classes]."""
    x = model.preprocess(image)
    with model.lock, torch.inference_mode():
        logits = model.net(x)
    return logits.double().softmax(-1)[0].numpy()


def top_k(model: Model, probs: np.ndarray, k: int = 5) -> list[Top]:
    k = max(1, min(int(k), len(probs)))
    order = np.argsort(-probs, kind="stable")[:k]
    return [Top(int(i), model.categories[i], float(probs[i])) for i in order]


def predict(model: Model, image: Image.Image, k: int = 5) -> list[Top]:
    return top_k(model, probabilities(model, image), k)


class UnknownClass(ValueError):
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
    import difflib

    close = difflib.get_close_matches(text.lower(), lowered, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(model.categories[lowered.index(c)] for c in close)}?" if close else ""
    raise UnknownClass(f"No class named {text!r}.{hint}")
