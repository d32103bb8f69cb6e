import copy
import json
import threading

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from torch import nn

from cnnviz import jobs, models
from cnnviz import saliency as S
from cnnviz.cli import build_parser, main
from cnnviz.contract import Cancelled, Progress
from cnnviz.model import Model
from cnnviz.predict import probabilities


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
    ours = S.attribute(model, cat, "scorecam", layer=layer, progress=Progress(lambda f, text, _: seen.append(f)))
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
    S.attribute(resnet, small, method, batch_size=4, progress=Progress(lambda f, text, _: seen.append(f)))
    assert len(seen) >= 4 and seen == sorted(seen) and seen[-1] == 1.0 and seen[0] < 0.5


def test_guided_methods_refused_where_they_would_lie(cat):
    densenet = models.load("torchvision:densenet121@random")
    with pytest.raises(S.SaliencyError, match="F.relu outside nn.ReLU"):
        S.attribute(densenet, cat, "guided_gradcam")
    effnet = models.load("torchvision:efficientnet_b0@random")  # SiLU: smooth, no rule
    with pytest.raises(S.SaliencyError, match="SiLU"):
        S.attribute(effnet, cat, "guided_backprop")
    assert all(not m._forward_hooks for m in densenet.net.modules())


@pytest.mark.parametrize("method", ["guided_backprop", "guided_gradcam"])
def test_guided_methods_work_on_the_relu6_model(bundled, cat, method):
    a = S.attribute(bundled, cat, method)
    plain = S.attribute(bundled, cat, "gradients")
    assert a.map.shape == (224, 224) and np.isfinite(a.map).all() and not a.empty
    assert not np.allclose(a.map, plain.map)  # the rule changed the backward pass
    assert all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
               for m in bundled.net.modules())


def test_guided_rule_for_relu6_equals_a_hand_written_guided_backward():
    """Three layers, float64: the guided gradient is relu(grad_out) * [0 < z < 6] at each clamp."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU6(), nn.Linear(16, 12), nn.ReLU6(), nn.Linear(12, 3)).double()
    with torch.no_grad():  # large enough that the clamp's top (6) is reached, not only its bottom
        for lin in (net[0], net[2]):
            lin.weight.mul_(8)
    x = torch.randn(5, 8, dtype=torch.float64)
    w1, b1, w2, b2, w3 = net[0].weight, net[0].bias, net[2].weight, net[2].bias, net[4].weight
    with torch.no_grad():
        z1 = x @ w1.T + b1
        z2 = z1.clamp(0, 6) @ w2.T + b2
        g = w3[1].expand(5, -1)  # d logit_1 / d a2
        g = g.clamp(min=0) * ((z2 > 0) & (z2 < 6))
        g = (g @ w2).clamp(min=0) * ((z1 > 0) & (z1 < 6))
        expected = g @ w1
    for z in (z1, z2):  # every regime of the clamp occurs
        assert (z < 0).any() and ((z > 0) & (z < 6)).any() and (z > 6).any()
    got = S._guided_class()(net).attribute(x.clone().requires_grad_(True), target=1)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10)
    x_ = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(net(x_)[:, 1].sum(), x_)
    assert not torch.allclose(plain, expected)  # the guided rule is not the plain gradient here


def test_bad_arguments(bundled, cat):
    with pytest.raises(S.SaliencyError, match="Unknown method"):
        S.attribute(bundled, cat, "lrp")
    with pytest.raises(S.SaliencyError, match="does not exist"):
        S.attribute(bundled, cat, "gradcam", target=1000)
    with pytest.raises(S.LayerNotFound):
        S.attribute(bundled, cat, "gradcam", layer="_fc")


def test_the_lock_keeps_two_threads_captum_hooks_apart(resnet, cat):
    """The job runner holds the model's lock around short jobs (analyses take none themselves)."""
    expected = {m: S.attribute(resnet, cat, m, target=7).map for m in ("guided_backprop", "gradients")}
    results, barrier = {}, threading.Barrier(2)

    def run(method):
        barrier.wait()
        results[method] = [jobs.run(resnet, cat, S.SaliencySpec(method, target=7)).map for _ in range(3)]

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
    assert out["target"]["prob"] == pytest.approx(probabilities(bundled, cat)[281], abs=1e-6)
    assert (tmp_path / "o.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, words", [
    (["--method", "gradcam", "--layer", "_fc"], "Closest"),
    (["--method", "gradients", "--layer", "_conv_head"], "--layer applies"),
    (["--method", "gradcam", "--target", "tabbby"], "Did you mean: tabby"),
    (["--method", "lrp"], "invalid choice"),
])
def test_cli_bad_input(capsys, samples, argv, words):
    assert main(["saliency", str(samples["cat"]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_the_registry_is_the_one_list_of_methods(bundled):
    assert list(S.METHODS) == ["gradcam", "gradcampp", "scorecam", "guided_gradcam", "gradients", "smoothgrad", "ig",
                               "occlusion", "guided_backprop"]
    assert [m for m, d in S.METHODS.items() if d.takes_layer] == ["gradcam", "gradcampp", "scorecam", "guided_gradcam"]
    assert [m for m, d in S.METHODS.items() if d.guided] == ["guided_gradcam", "guided_backprop"]
    sub = next(a for a in build_parser()._actions if a.dest == "cmd").choices["saliency"]
    assert list(next(a for a in sub._actions if a.dest == "method").choices) == list(S.METHODS)
    # Images through the network (issue #14: Score-CAM's were counted in batches), with the
    # target given; no target adds the pass that finds the top-1 (SmoothGrad makes it anyway).
    passes = {m: S.SaliencySpec(m, target=3).check(bundled).passes(bundled) for m in S.METHODS}
    assert passes == {"gradcam": 1, "gradcampp": 1, "scorecam": 2 + 1280, "guided_gradcam": 2, "gradients": 1,
                      "smoothgrad": 24 + 1, "ig": 34, "occlusion": 1 + 13 * 13, "guided_backprop": 1}
    assert {m: S.SaliencySpec(m).check(bundled).passes(bundled) - passes[m] for m in S.METHODS} == {
        m: int(m != "smoothgrad") for m in S.METHODS}
    assert [m for m, p in passes.items() if p > jobs.SHORT_PASSES] == ["scorecam", "smoothgrad", "ig", "occlusion"]


def test_spec_through_the_runner(bundled, cat):
    spec = S.SaliencySpec("gradcam", target=281)
    assert spec.check(bundled) == S.SaliencySpec("gradcam", target=281, layer="_swish#1")
    assert S.SaliencySpec("ig", layer="_swish#1").check(bundled).layer is None  # only CAM methods take a layer
    a = jobs.run(bundled, cat, spec)
    direct = S.attribute(bundled, cat, "gradcam", 281)
    assert np.array_equal(a.map, direct.map) and a.model == bundled.id and a.seconds > 0
    assert a.to_dict() == {"model": bundled.id, "method": "gradcam", "layer": "_swish#1",
                           "target": {"index": 281, "label": "tabby", "prob": probabilities(bundled, cat)[281]},
                           "shape": [224, 224], "peak": list(direct.peak), "seconds": a.seconds}
    top = jobs.run(bundled, cat, S.SaliencySpec("gradients"))  # no target: the top-1, and its probability
    probs = probabilities(bundled, cat)
    assert top.target == int(probs.argmax()) and top.prob == probs.max() and top.label == bundled.categories[top.target]
    with pytest.raises(S.SaliencyError, match="at least 1"):
        jobs.run(bundled, cat, S.SaliencySpec("ig", ig_steps=0))
    sweep = jobs.run(bundled, cat, S.SweepSpec(281))
    assert list(sweep.maps) == S.stage_layers(bundled) and sweep.to_dict()["layers"] == S.stage_layers(bundled)


@pytest.mark.parametrize("method", ["ig", "smoothgrad"])
def test_fast_passes_match_the_exact_network(resnet, cat, method):
    """IG and SmoothGrad run their passes on the BatchNorm-folded `fast_net`: the same maps to float rounding."""
    small = resnet.to_pixels(cat)[..., ::2, ::2]
    assert resnet.fast_net is not resnet.pixel_net  # folded: the comparison means something
    maps = []
    for exact in (False, True):
        torch.manual_seed(0)  # SmoothGrad's noise
        maps.append(S.attribute(resnet, small, method, target=3, ig_steps=8, smooth_samples=4, exact=exact))
    fast, exact = maps
    # Not elementwise: a ReLU kink crossed by a rounding difference moves a few pixels by up to ~1% of the peak.
    assert np.abs(fast.map - exact.map).mean() <= 1e-4 * exact.map.max()
    assert pearson(fast.map, exact.map) > 0.9999
    if method == "ig":
        assert fast.delta == pytest.approx(exact.delta, abs=1e-3) and fast.prob == exact.prob


@pytest.mark.parametrize("method, options", [
    ("scorecam", {"layer": "layer3.1.conv1"}), ("ig", {}), ("smoothgrad", {}), ("occlusion", {})])
def test_multipass_methods_stop_within_one_batch(resnet, cat, method, options, monkeypatch):
    """A stop request made at the first report ends the job before the next batch. Batches are
    counted on `net` (pixel_net's passes) and on a counting `fast_net` (IG's and SmoothGrad's)."""
    small = resnet.to_pixels(cat)[..., ::2, ::2]
    batches, at_stop = [], []

    class Counting(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.inner = net

        def forward(self, x):
            batches.append(len(x))
            return self.inner(x)

    counting = Counting(resnet.fast_net)
    monkeypatch.setattr(Model, "fast_net", property(lambda self: counting))

    def report(fraction, text, _):
        if not at_stop:
            at_stop.append(len(batches))
            progress.stop()

    progress = Progress(report)
    spec = S.SaliencySpec(method, target=3, batch_size=4, **options)
    handle = resnet.net.register_forward_hook(lambda m, i, o: batches.append(len(i[0])))
    try:
        with pytest.raises(Cancelled):
            S.run(resnet, small, spec, progress=progress)
    finally:
        handle.remove()
    assert at_stop and len(batches) <= at_stop[0] + 1, (at_stop, batches)
    assert spec.check(resnet).passes(resnet) > 4 * (at_stop[0] + 1)  # it had many more batches to go


@pytest.mark.parametrize("model_fixture, layer", [("bundled", "_swish#1"), ("bundled", "_blocks.5._swish"),
                                                  ("resnet", "layer4.1.conv2"), ("resnet", "layer4.1.bn2")])
def test_gradient_from_the_layer_on_is_the_full_graphs(request, cat, model_fixture, layer):
    """Grad-CAM's pass builds its graph from the layer's output on (the recorder makes it the
    leaf): the same gradient as with the input carrying the graph. ResNet's `bn2` outputs are
    changed in place by `out += identity`, so there the input carries it."""
    from cnnviz.hooks import Recorder

    model = request.getfixturevalue(model_fixture)
    assert (layer in model.mutated_layers) == (layer == "layer4.1.bn2")
    x = model.to_pixels(cat)
    score = S._Score(model.pixel_net, 7, None)
    act, grad = S._layer_and_grad(model, score, x, layer)
    xg = x.detach().requires_grad_(True)
    with Recorder(model, [layer], detach=False) as rec, torch.enable_grad():
        (ref,) = torch.autograd.grad(score(xg).sum(), rec.outputs[layer])
    assert torch.equal(grad, ref[0]) and torch.equal(act, rec.outputs[layer].detach()[0])
    assert all(not m._forward_hooks for m in model.net.modules())
