import copy
import json
import threading

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cnnviz import models
from cnnviz import saliency as S
from cnnviz.cli import main
from cnnviz.images import load_image


@pytest.fixture(scope="module")
def cat(samples):
    return load_image(samples["cat"])


@pytest.fixture(scope="module")
def resnet():
    return models.load("torchvision:resnet18@random")


def reference(model, image, cls, layer, target):
    """pytorch-grad-cam on a copy of the same network, at the same layer and target."""
    net = copy.deepcopy(model.pixel_net).requires_grad_(True)
    module = dict(net[1].named_modules())[layer]
    with cls(model=net, target_layers=[module]) as cam:
        cam.batch_size = 32
        return cam(input_tensor=model.to_pixels(image), targets=[ClassifierOutputTarget(target)])[0]


def pearson(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("model_fixture, layer", [("bundled", "_bn1"), ("resnet", "layer4.1.conv2")])
@pytest.mark.parametrize("method, cls", [("gradcam", GradCAM), ("gradcampp", GradCAMPlusPlus)])
def test_gradcam_family_matches_pytorch_grad_cam(request, cat, model_fixture, layer, method, cls):
    model = request.getfixturevalue(model_fixture)
    ours = S.attribute(model, cat, method, layer=layer)
    ref = reference(model, cat, cls, layer, ours.target)
    assert not ours.empty and ours.map.shape == (224, 224) and ours.map.min() >= 0
    assert pearson(ours.map, ref) >= 0.99


@pytest.mark.parametrize("model_fixture, layer", [("bundled", "_blocks.15._project_conv"),
                                                  ("resnet", "layer3.1.conv1")])  # non-degenerate at random init
def test_scorecam_matches_pytorch_grad_cam(request, cat, model_fixture, layer):
    model = request.getfixturevalue(model_fixture)
    seen = []
    ours = S.attribute(model, cat, "scorecam", layer=layer, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    ref = reference(model, cat, ScoreCAM, layer, ours.target)
    assert not ours.empty and pearson(ours.map, ref) >= 0.99


def test_default_layer_is_the_second_call_of_the_shared_relu6(bundled, cat):
    a = S.attribute(bundled, cat, "gradcam")
    assert a.layer == "_swish#1" and a.layer_map.shape == (7, 7) and not a.empty


def test_contrast_is_the_logit_difference(bundled, cat):
    a, b = 281, 282  # tabby rather than tiger cat
    both = S.attribute(bundled, cat, "gradcam", target=a, contrast=b, layer="_swish#1")
    score_a = S._Score(bundled.pixel_net, a, None)
    score_b = S._Score(bundled.pixel_net, b, None)
    x = bundled.to_pixels(cat)
    act, ga = S._layer_and_grad(bundled, score_a, x, "_swish#1")
    _, gb = S._layer_and_grad(bundled, score_b, x, "_swish#1")
    manual = torch.relu(((ga - gb).mean((1, 2))[:, None, None] * act).sum(0)).numpy()
    assert np.allclose(both.layer_map, manual, atol=1e-5)
    assert both.contrast == b and both.target == a


def test_integrated_gradients_completeness(resnet, cat):
    a = S.attribute(resnet, cat, "ig", target=3, ig_steps=64)
    x = resnet.to_pixels(cat)
    with torch.no_grad():
        logits = resnet.pixel_net(torch.cat([x, torch.zeros_like(x)]))
    diff = float(logits[0, 3] - logits[1, 3])
    assert abs(a.total - diff) <= a.delta + 1e-4  # completeness, within the reported delta
    assert a.delta >= 0 and abs(a.total) > 0


@pytest.mark.parametrize("method", ["gradients", "smoothgrad", "occlusion", "guided_backprop", "guided_gradcam"])
def test_input_methods_shapes_and_no_hooks_left(resnet, cat, method):
    a = S.attribute(resnet, cat, method, smooth_samples=4, occlusion_window=56, occlusion_stride=56)
    assert a.map.shape == (224, 224) and np.isfinite(a.map).all() and not a.empty
    assert all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
               for m in resnet.net.modules())


@pytest.mark.parametrize("method", ["smoothgrad", "ig", "occlusion"])
def test_captum_methods_report_progress_per_batch(resnet, cat, method):
    seen, small = [], resnet.to_pixels(cat)[..., ::2, ::2]  # 112x112: same loops, a quarter of the work
    S.attribute(resnet, small, method, batch_size=4, progress=seen.append)
    assert len(seen) >= 4 and seen == sorted(seen) and seen[-1] == 1.0 and seen[0] < 0.5


def test_guided_methods_refused_where_they_would_lie(bundled, cat):
    with pytest.raises(S.SaliencyError, match="ReLU6"):
        S.attribute(bundled, cat, "guided_backprop")
    densenet = models.load("torchvision:densenet121@random")
    with pytest.raises(S.SaliencyError, match="F.relu outside nn.ReLU"):
        S.attribute(densenet, cat, "guided_gradcam")
    assert all(not m._forward_hooks for m in densenet.net.modules())


def test_bad_arguments(bundled, cat):
    with pytest.raises(S.SaliencyError, match="Unknown method"):
        S.attribute(bundled, cat, "lrp")
    with pytest.raises(S.SaliencyError, match="does not exist"):
        S.attribute(bundled, cat, "gradcam", target=1000)
    with pytest.raises(S.LayerNotFound):
        S.attribute(bundled, cat, "gradcam", layer="_fc")


def test_the_lock_keeps_two_threads_captum_hooks_apart(resnet, cat):
    expected = {m: S.attribute(resnet, cat, m, target=7).map for m in ("guided_backprop", "gradients")}
    results, barrier = {}, threading.Barrier(2)

    def run(method):
        barrier.wait()
        results[method] = [S.attribute(resnet, cat, method, target=7).map for _ in range(3)]

    threads = [threading.Thread(target=run, args=(m,)) for m in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m, maps in results.items():
        assert all(np.array_equal(r, expected[m]) for r in maps), m


def test_cli_json(capsys, samples, bundled, cat, tmp_path):
    npy = tmp_path / "map.npy"
    assert main(["saliency", str(samples["cat"]), "--method", "gradcam", "--target", "tabby",
                 "--json", "--npy", str(npy), "--out", str(tmp_path / "o.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "method", "layer", "target", "shape", "peak", "seconds"}
    assert out["layer"] == "_swish#1" and out["target"]["index"] == 281 and out["target"]["label"] == "tabby"
    m = np.load(npy)
    assert m.shape == (224, 224) and m.dtype == np.float32 and m.min() >= 0
    assert list(np.unravel_index(m.argmax(), m.shape)) == out["peak"]
    assert (tmp_path / "o.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, words", [
    (["--method", "gradcam", "--layer", "_fc"], "Closest"),
    (["--method", "gradients", "--layer", "_conv_head"], "--layer applies"),
    (["--method", "gradcam", "--target", "tabbby"], "Did you mean: tabby"),
    (["--method", "guided_backprop"], "ReLU6"),
    (["--method", "lrp"], "invalid choice"),
])
def test_cli_bad_input(capsys, samples, argv, words):
    assert main(["saliency", str(samples["cat"]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
