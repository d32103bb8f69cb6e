import threading

import pytest
import torch
import torchvision

from cnnviz import models
from cnnviz.hooks import Recorder, layer_modules, record


def no_hooks(net) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_every_call_of_a_shared_module_is_recorded(bundled):
    x = torch.randn(1, 3, 224, 224)
    _, outs = record(bundled, x)
    assert [l.name for l in bundled.layers] == list(outs)
    assert outs["_swish"].shape == (1, 32, 112, 112) and outs["_swish#1"].shape == (1, 1280, 7, 7)
    calls = [n for n in outs if n.startswith("_blocks.5._swish")]
    assert calls == ["_blocks.5._swish", "_blocks.5._swish#1"]


def test_values_equal_an_independent_hook(bundled):
    x = torch.randn(1, 3, 224, 224)
    seen = {}
    targets = ["_conv_stem", "_blocks.3._expand_conv", "_blocks.10._bn2", "_fc"]
    mods = dict(bundled.net.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.clone())) for n in targets]
    try:
        with torch.no_grad():
            bundled.net(x)
    finally:
        for h in handles:
            h.remove()
    _, outs = record(bundled, x, targets)
    assert list(outs) == targets
    for n in targets:
        assert torch.equal(outs[n], seen[n]), n


def test_selected_call_only(bundled):
    _, outs = record(bundled, torch.randn(1, 3, 224, 224), ["_swish#1"])
    assert list(outs) == ["_swish#1"]


def test_recording_survives_in_place_ops():
    model = models.load("torchvision:resnet18@random")  # `out += identity` after each block's bn2
    x = torch.randn(1, 3, 64, 64)
    _, outs = record(model, x, ["layer1.0.bn2", "layer1.0.relu"])
    net, blk = model.net, model.net.layer1[0]
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        expected = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(h)))))
    assert torch.equal(outs["layer1.0.bn2"], expected)
    assert (outs["layer1.0.bn2"] < 0).any()  # not the block's ReLU'd sum
    assert "layer1.0.bn2" in model.mutated_layers  # learnt, so later passes copy it up front
    assert "layer1.0.conv1" not in model.mutated_layers


def test_in_place_overwrites_are_detected():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()  # raw: ReLU(inplace=True)
    with Recorder(net, ["conv1", "bn1"]) as rec, torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    assert rec.mutated() == {"bn1"}


def test_no_hooks_left_after_normal_exit_and_after_an_error(bundled):
    with Recorder(bundled):
        assert not no_hooks(bundled.net)
    assert no_hooks(bundled.net)
    with pytest.raises(RuntimeError):
        with Recorder(bundled), torch.no_grad():
            bundled.net(torch.randn(1, 5, 224, 224))  # wrong channel count
    assert no_hooks(bundled.net)
    with pytest.raises(KeyError):
        Recorder(bundled, ["no.such.layer"])
    assert no_hooks(bundled.net)


def test_lock_released_after_exit(bundled):
    with Recorder(bundled):
        pass
    got = []

    def other_thread():
        got.append(bundled.lock.acquire(timeout=5))
        if got[-1]:
            bundled.lock.release()

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert got == [True]


def test_two_threads_never_see_each_others_activations():
    model = models.load("torchvision:resnet18@random")
    layers = ["layer1.0.conv1", "layer4.1.bn2", "fc"]
    inputs = [torch.full((1, 3, 96, 96), v) for v in (-1.0, 1.0)]
    expected = [record(model, x, layers)[1] for x in inputs]
    barrier = threading.Barrier(2)
    failures = []

    def worker(i):
        barrier.wait()
        for _ in range(15):
            _, outs = record(model, inputs[i], layers)
            if list(outs) != layers or not all(torch.equal(outs[n], expected[i][n]) for n in layers):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert no_hooks(model.net)


def test_layer_modules_keep_padded_convs_whole():
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")  # static padding: a ZeroPad2d inside each conv
    mods = layer_modules(net)
    assert "_conv_stem" in mods and "_conv_stem.static_padding" not in mods
    assert not any(".static_padding" in n for n in mods)


def test_reducing_recorder_keeps_no_output_and_leaves_no_hook(bundled):
    from cnnviz.hooks import record_reduced

    x = torch.randn(1, 3, 224, 224)
    _, full = record(bundled, x)
    kept = []

    def reduce(out):
        kept.append(out)  # only to check what the hook sees; the recorder keeps nothing
        return float(out.sum())

    logits, reduced = record_reduced(bundled, x, reduce)
    assert list(reduced) == list(full) and no_hooks(bundled.net)
    assert reduced["_swish#1"] == pytest.approx(float(full["_swish#1"].sum()), rel=1e-5)
    assert logits.shape == (1, 1000)


def test_stop_ends_the_pass_at_the_last_wanted_call_even_through_except_exception():
    from torch import nn

    class Careless(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)
            self.ran_c = 0

        def forward(self, x):
            try:
                x = self.b(self.a(x))
            except Exception:  # a model's own handler must not swallow the stop
                raise AssertionError("swallowed")
            self.ran_c += 1
            return self.c(x)

    net = Careless().eval()
    logits, outs = record(net, torch.randn(1, 3, 16, 16), ["a", "b"], stop=True)
    assert logits is None and list(outs) == ["a", "b"] and net.ran_c == 0 and no_hooks(net)
    logits, outs = record(net, torch.randn(1, 3, 16, 16), ["a"])
    assert logits is not None and net.ran_c == 1
