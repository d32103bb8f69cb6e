"""LeNet-5 trained here (issue #17, first part): the network, the bundled digits, training
that learns and repeats bitwise for a seed, bounds, saved weights as a model, the CLI, and
every analysis of the other pages on the trained net."""
import functools
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz import jobs, lenet, models
from cnnviz.cli import main
from cnnviz.contract import CnnvizError

SHORT = lenet.TrainSpec(epochs=3, seed=0)


@pytest.fixture(scope="module")
def trained():
    return jobs.run(models.untrained_lenet("classic", 0), None, SHORT)


@pytest.fixture(scope="module")
def model(trained):
    buf = io.BytesIO()
    torch.save(trained.state_dict, buf)
    return models.lenet_checkpoint(buf.getvalue(), "lenet.pt")


_digits = functools.cache(lenet.digits)  # read-only here


def digit_image(k: int, invert: bool = False) -> Image.Image:
    x, _ = _digits()
    a = (x[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(255 - a if invert else a)


def test_the_architecture_as_published():
    net = lenet.LeNet5("classic")
    assert sum(p.numel() for p in net.parameters()) == 61_706
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n, m in net.named_children()]
    net(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes["conv1"] == (6, 28, 28) and shapes["pool1"] == (6, 14, 14)
    assert shapes["conv2"] == (16, 10, 10) and shapes["pool2"] == (16, 5, 5)
    assert shapes["fc1"] == (120,) and shapes["fc2"] == (84,) and shapes["fc3"] == (10,)
    assert isinstance(net.act1, torch.nn.Tanh) and isinstance(net.pool1, torch.nn.AvgPool2d)
    modern = lenet.LeNet5("modern")
    assert isinstance(modern.act1, torch.nn.ReLU) and isinstance(modern.pool1, torch.nn.MaxPool2d)
    assert lenet.variant_of(modern.state_dict()) == "modern" and lenet.variant_of(net.state_dict()) == "classic"


def test_the_bundled_digits():
    x, y = lenet.digits()
    assert x.shape == (lenet.DIGITS, 3, 32, 32) and y.shape == (1797,) and set(y.tolist()) == set(range(10))
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert float(x[:, :, :2].abs().max()) == 0  # the digit sits in the centre 28 x 28
    train, test = lenet.split(len(x), 0)
    assert len(test) == 359 and not set(train.tolist()) & set(test.tolist())


def test_a_short_run_learns(trained):
    assert len(trained.epochs) == 3
    assert trained.test_accuracy > 0.8  # ten classes: chance is 10%
    assert trained.epochs[-1]["loss"] < trained.epochs[0]["loss"]
    c = np.array(trained.confusion)
    assert c.sum() == 359 and np.trace(c) / c.sum() == pytest.approx(trained.test_accuracy)
    assert trained.filters.shape == (4, 6, 5, 5)  # before training, then after each epoch
    assert not np.array_equal(trained.filters[0], trained.filters[-1])


def test_same_seed_same_curve_bitwise(trained):
    again = jobs.run(models.untrained_lenet("classic", 0), None, SHORT)
    assert again.epochs == trained.epochs  # floats compared exactly
    assert all(torch.equal(again.state_dict[k], v) for k, v in trained.state_dict.items())
    other = jobs.run(models.untrained_lenet("classic", 1), None, lenet.TrainSpec(epochs=3, seed=1))
    assert other.epochs != trained.epochs


def test_the_modern_variant_learns_too():
    r = jobs.run(models.untrained_lenet("modern", 0), None, lenet.TrainSpec(epochs=2))
    assert r.variant == "modern" and r.test_accuracy > 0.8


def test_training_is_bounded_and_refuses_bad_knobs():
    m = models.untrained_lenet()
    for spec, says in ((lenet.TrainSpec(epochs=0), "Epochs"), (lenet.TrainSpec(epochs=10 ** 9), "Epochs"),
                       (lenet.TrainSpec(epochs=float("nan")), "Epochs"), (lenet.TrainSpec(lr=0), "learning rate"),
                       (lenet.TrainSpec(lr=float("inf")), "learning rate"), (lenet.TrainSpec(batch=0), "batch"),
                       (lenet.TrainSpec(data="imagenet"), "digits")):
        with pytest.raises(CnnvizError, match=says):
            jobs.run(m, None, spec)
    with pytest.raises(jobs.OverBudget):  # 100 epochs of 16,000 MNIST images one at a time
        jobs.run(m, None, lenet.TrainSpec(data="mnist", epochs=100, batch=1))
    with pytest.raises(CnnvizError, match="LeNet-5"):
        jobs.run(models.load("torchvision:resnet18@random"), None, lenet.TrainSpec(epochs=1))


def test_mnist_offline_is_a_clear_message():
    with pytest.raises(lenet.TrainError, match="offline"):
        jobs.run(models.untrained_lenet(), None, lenet.TrainSpec(data="mnist", epochs=1))


def test_digits_read_the_same_light_on_dark_and_dark_on_light(model):
    from cnnviz.predict import predict

    x, y = lenet.digits()
    _, test = lenet.split(len(x), 0)
    right = 0
    for k in test[:40].tolist():
        a, b = predict(model, digit_image(k), 1)[0], predict(model, digit_image(k, invert=True), 1)[0]
        assert a.index == b.index  # a photo of ink on paper is inverted by the network's own first step
        right += a.index == int(y[k])
    assert right >= 32


def test_saved_weights_are_checked_before_loading(trained, tmp_path):
    buf = io.BytesIO()
    torch.save(trained.state_dict, buf)
    m = models.lenet_checkpoint(buf.getvalue(), "ok.pt")
    assert m.categories == [str(d) for d in range(10)] and m.input_size == (32, 32)
    bad = dict(trained.state_dict, **{"fc3.weight": torch.zeros(11, 84)})
    for sd, says in ((bad, "fc3.weight"), (dict(trained.state_dict, **{"conv1.bias": torch.full((6,), float("nan"))}),
                                           "NaN"),
                     ({k: v for k, v in trained.state_dict.items() if k != "modern"}, "not a LeNet-5")):
        b = io.BytesIO()
        torch.save(sd, b)
        with pytest.raises(models.ModelError, match=says):
            models.lenet_checkpoint(b.getvalue(), "bad.pt")


def test_every_analysis_runs_on_the_trained_net(model):
    from cnnviz import activations as A
    from cnnviz import adversarial as Ad
    from cnnviz import filters as Fi
    from cnnviz import limits as Li
    from cnnviz import receptive as R
    from cnnviz import saliency as S
    from cnnviz import unit as U

    six = digit_image(6)
    for spec in (A.ActivationsSpec(("conv1",)), A.DepthSpec(), U.UnitSpec("conv2", 4, 4, 3), U.UnitSpec("pool1", 0, 0, 1),
                 R.TableSpec(), R.EffectiveSpec("conv2", 2, 2, None), Fi.FiltersSpec("conv1"), S.SaliencySpec("gradcam"),
                 S.SaliencySpec("ig"), Ad.AttackSpec("pgd", 8.0, steps=5)):
        assert jobs.run(model, six, spec).to_dict()
    assert jobs.run(model, six, U.UnitSpec("conv2", 4, 4, 3)).agrees
    turned = jobs.run(model, six, Li.LimitsSpec("rotate"))  # rotate a digit until it reads otherwise
    labels = {p["top1"]["label"] for p in turned.to_dict()["points"]}
    assert labels <= set(model.categories) and len(labels) > 1


def test_cli_train_then_use_the_net_everywhere(tmp_path, capsys):
    out = tmp_path / "lenet.pt"
    assert main(["train", "--epochs", "2", "--seed", "3", "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [e["epoch"] for e in d["epochs"]] == [1, 2] and d["test_accuracy"] > 0.5
    assert set(d["epochs"][0]) == {"epoch", "loss", "train_accuracy", "test_accuracy"} and "seconds" in d
    png = tmp_path / "seven.png"
    x, y = lenet.digits()
    k = int((y == 7).nonzero()[0])
    digit_image(k, invert=True).resize((200, 200)).save(png)  # a "photo": dark ink on light paper, another size
    assert main(["predict", str(png), "--model", f"lenet:{out}", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert top[0]["label"] in [str(d) for d in range(10)]
    assert main(["unit", str(png), "--model", f"lenet:{out}", "--layer", "conv2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agrees"]
    assert main(["predict", str(png), "--model", f"lenet:{tmp_path / 'nope.pt'}"]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main(["train", "--epochs", "0"]) == 2
    assert "Epochs" in capsys.readouterr().err
    assert main(["predict", str(png), "--arch", "lenet5", "--weights", str(out), "--json"]) == 0  # "your own weights"
    assert json.loads(capsys.readouterr().out)["top"][0]["label"] == top[0]["label"]
    # a link cannot make the server read a file: lenet:PATH is for the command line only
    assert not models.known(f"lenet:{out}") and not models.servable(f"lenet:{out}")


def test_a_drawn_digit_is_classified(model):
    """Drawings made here as a canvas gives them (RGBA, strokes on a transparent or a white
    background, another size) from held-out digits: framed as the training digits and read."""
    from cnnviz.predict import predict

    x, y = _digits()
    _, test = lenet.split(len(x), 0)
    right = 0
    for n, k in enumerate(test[:20].tolist()):
        ink = torch.nn.functional.interpolate(x[k: k + 1, :1, 2:30, 2:30], size=(280, 280), mode="bilinear")[0, 0]
        strokes = (ink.numpy() * 255).round().astype(np.uint8)
        if n % 2:  # white strokes on transparent
            rgba = np.stack([np.full_like(strokes, 255)] * 3 + [strokes], -1)
        else:  # black strokes on white
            rgba = np.stack([255 - strokes] * 3 + [np.full_like(strokes, 255)], -1)
        image = lenet.drawn_digit(rgba)
        assert image.size == (320, 320)
        right += predict(model, image, 1)[0].index == int(y[k])
    assert right >= 16
    assert lenet.drawn_digit(np.zeros((200, 200, 4), np.uint8)) is None  # nothing drawn yet
    with pytest.raises(CnnvizError):
        lenet.drawn_digit(np.zeros((5000, 10, 4), np.uint8))
