"""The model type: a network with its preprocessing, class names and layers.

Loading (bundled, zoo, downloads, checkpoints) lives in `cnnviz.models`; this module
knows nothing of where a network came from. It imports `hooks` and `fold` (which import
neither back).
"""
from __future__ import annotations

import copy
import hashlib
import threading
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from .hooks import block_modules, layer_modules, record, split_call


@dataclass(frozen=True)
class LayerInfo:
    name: str  # module path, with "#k" for the k-th extra call of a shared module
    type: str  # the module's class name
    shape: tuple[int, ...]  # output shape without the batch dimension
    params: int
    # A block's output (a residual, Inception or dense block, a stage: `hooks.block_modules`)
    # rather than one layer's; it comes after its children's calls.
    block: bool = False


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
    # hooks on shared modules see every thread's pass, so all use of `net` holds this
    # (the job runner, cnnviz.jobs, takes it; long jobs run on a private copy instead).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Layer calls whose output a later op changes in place (ResNet's `out += identity`):
    # the recorder copies only these. Found by the recorder itself on first use.
    mutated_layers: set[str] = field(default_factory=set, repr=False)
    # What private copies share with the model they came from (computed once for all):
    # the layer list, the BatchNorm-folded network, the weights' fingerprint.
    shared: dict = field(default_factory=dict, repr=False)

    def to_pixels(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop to the model's input: [1, 3, H, W] in [0, 1]. An image
        already at the input size goes in untouched (a saved adversarial image, a crop
        the user made for this model): resizing it would zoom it and blur its pixels.
        Pixels [1, 3, H, W] in [0, 1] are returned as they are."""
        if isinstance(image, torch.Tensor):
            return image
        fit = [] if image.size == self.input_size[::-1] else [
            T.Resize(self.resize_size, interpolation=self.interpolation, antialias=True),
            T.CenterCrop(self.input_size)]
        tf = T.Compose([*fit, T.ToImage(), T.ToDtype(torch.float32, scale=True)])
        return tf(image.convert("RGB")).unsqueeze(0)

    def input_image(self, image: Image.Image) -> Image.Image:
        """The resized, cropped picture the network actually sees (for overlays)."""
        from .pixels import to_image

        return to_image(self.to_pixels(image))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def preprocess(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """PIL image (or [0, 1] pixels) -> normalized model input [1, 3, H, W]."""
        return self.normalize(self.to_pixels(image))

    @cached_property
    def pixel_net(self) -> nn.Module:
        """The network taking [0, 1] pixels (attacks, saliency, feature visualization)."""
        return nn.Sequential(T.Normalize(list(self.mean), list(self.std)), self.net).eval()

    def private_copy(self) -> Model:
        """This network over the same weight tensors, with its own modules and lock: for
        jobs that hook modules for long (many-pass jobs, feature visualization) or swap
        weights (the randomization check) without making other sessions wait on `lock`.
        Swap a parameter for a new one, never write into it: the tensors are shared."""
        with self.lock:  # no session's hooks are on the modules while they are copied
            net = module_copy(self.net)
        return replace(self, net=net, lock=threading.RLock(), mutated_layers=self.mutated_layers)

    def _shared(self, key: str, make):
        """A value computed once for this model and all its private copies."""
        with self.shared.setdefault("_lock", threading.RLock()):
            if key not in self.shared:
                self.shared[key] = make()
            return self.shared[key]

    @property
    def fast_net(self) -> nn.Module:
        """`pixel_net` with BatchNorms folded into their convolutions (see `fold`): the
        same function to float rounding, faster per gradient step; for many-pass loops
        whose every number need not match `pixel_net` to the last bit. It carries no
        hooks ever, so every copy of the model shares one."""
        def make():
            from .fold import fast_copy

            probe = torch.rand(1, 3, *self.input_size, generator=torch.Generator().manual_seed(0))
            with self.lock:  # the probe pass hooks this model's modules
                return fast_copy(self.pixel_net, probe)

        return self._shared("fast_net", make)

    @property
    def layers(self) -> list[LayerInfo]:
        """Inspectable layers in execution order, one entry per call."""
        return self._shared("layers", self.probe_layers)

    def probe_layers(self) -> list[LayerInfo]:
        """Every recorded call of every inspectable layer, for the model's input size."""
        modules = self.layer_modules
        with self.lock:
            _, outs = record(self, torch.zeros(1, 3, *self.input_size))
        blocks = self.blocks
        return [LayerInfo(name=name, type=type(modules[base]).__name__, shape=tuple(out.shape[1:]),
                          params=sum(p.numel() for p in modules[base].parameters()), block=base in blocks)
                for name, out in outs.items() for base in [split_call(name)[0]]]

    @cached_property
    def layer_modules(self) -> dict[str, nn.Module]:
        """Inspectable modules by path (see hooks.layer_modules), found once per copy."""
        return layer_modules(self.net)

    @cached_property
    def blocks(self) -> frozenset[str]:
        """Paths of the modules in `layer_modules` that are blocks (see hooks.block_modules):
        containers whose children are layers too (receptive fields trace through them)."""
        return frozenset(block_modules(self.net))

    @property
    def params(self) -> int:
        return self._shared("params", lambda: sum(p.numel() for p in self.net.parameters()))

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and the class names, not just the id: cache keys use it, so
        a model rebuilt with other weights under the same id never gets results computed on
        the old ones, and the same checkpoint with another labels file never gets the old
        names in its top-5."""
        def make():
            h = hashlib.blake2b(self.id.encode(), digest_size=10)
            h.update("\0".join(self.categories).encode())
            for name, t in self.net.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
            return h.hexdigest()

        return self._shared("fingerprint", make)

    @property
    def gradcam_layer(self) -> str:
        """The last layer with a spatial output (the usual Grad-CAM target); a ViT's last
        block's input norm (see `tokens.cam_layer`)."""
        from .tokens import cam_layer

        if (layer := cam_layer(self.net)) is not None:
            return layer
        spatial = [layer.name for layer in self.layers if len(layer.shape) == 3 and min(layer.shape[1:]) > 1]
        return spatial[-1]


def module_copy(net: nn.Module) -> nn.Module:
    """New modules (their own hooks, classes and train/eval flags) over the same tensors."""
    return copy.deepcopy(net, {id(t): t for t in (*net.parameters(), *net.buffers())})


def finish(model: Model) -> Model:
    """Eval mode, frozen weights, no in-place activations: how every model is served."""
    net = model.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    for m in net.modules():
        # In-place activations overwrite the recorded output of the layer before them
        # and break tensor gradient hooks; turning them off changes no number.
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    return model
