import json
import subprocess
import sys

import pytest

from cnnviz.cli import main
from cnnviz.images import load_image
from cnnviz.predict import predict

from .conftest import ROOT


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object
    return json.loads(out)


def test_predict_json(capsys, bundled, samples):
    out = run_json(capsys, "predict", str(samples["coffee"]))
    assert set(out) == {"model", "image", "top", "seconds"}
    assert out["model"] == "efficientnet_lite0" and out["image"] == str(samples["coffee"])
    assert len(out["top"]) == 5 and set(out["top"][0]) == {"index", "label", "prob"}
    expected = predict(bundled, load_image(samples["coffee"]), 5)
    assert [t["index"] for t in out["top"]] == [t.index for t in expected]
    assert out["top"][0]["prob"] == pytest.approx(expected[0].prob, abs=1e-9)
    assert 0 < out["seconds"] < 60


def test_predict_topk_and_model(capsys, samples):
    out = run_json(capsys, "predict", str(samples["cat"]), "--topk", "3", "--model", "torchvision:resnet18@random")
    assert out["model"] == "torchvision:resnet18@random" and len(out["top"]) == 3
    probs = [t["prob"] for t in out["top"]]
    assert probs == sorted(probs, reverse=True)


def test_models_json(capsys):
    out = run_json(capsys, "models")
    ids = {m["id"]: m for m in out["models"]}
    assert ids["efficientnet_lite0"] == {**ids["efficientnet_lite0"], "source": "bundled", "available": True}
    assert ids["torchvision:vgg16"]["source"] == "torchvision" and ids["torchvision:vgg16"]["params"] > 1e8
    assert all(set(m) == {"id", "source", "available", "params"} for m in out["models"])


def test_layers_json_bundled(capsys, bundled):
    out = run_json(capsys, "layers")
    assert set(out) == {"model", "input_size", "layers", "seconds"}
    assert out["input_size"] == [224, 224]
    names = [l["name"] for l in out["layers"]]
    assert names == [l.name for l in bundled.layers]
    first = out["layers"][0]
    assert first == {"name": "_conv_stem", "type": "Conv2dDynamicSamePadding", "shape": [32, 112, 112], "params": 864,
                     "block": False}
    assert "_swish#1" in names


def test_layers_json_random_torchvision(capsys):
    out = run_json(capsys, "layers", "--model", "torchvision:resnet18@random")
    layers = {l["name"]: l for l in out["layers"]}
    assert out["layers"][0]["name"] == "conv1" and layers["conv1"]["shape"] == [64, 112, 112]
    assert layers["fc"] == {"name": "fc", "type": "Linear", "shape": [1000], "params": 513000, "block": False}
    assert layers["maxpool"]["shape"] == [64, 56, 56]
    # blocks are layers too, marked, each after its own layers: a residual block and a stage
    assert layers["layer1.0"]["block"] and layers["layer1.0"]["type"] == "BasicBlock"
    assert layers["layer4"]["block"] and layers["layer4"]["shape"] == [512, 7, 7]
    names = list(layers)
    assert names.index("layer1.0.bn2") < names.index("layer1.0") < names.index("layer1.1.conv1")
    assert "layer1.0.downsample" not in layers  # a convolution with its norm is one layer's parts


@pytest.mark.parametrize("argv, words", [
    (["predict", "/nonexistent.png"], "Cannot read"),
    (["predict", "{junk}", "--model", "nosuch"], "Unknown model id"),
    (["predict", "{samples}/SOURCES.md"], "not an image"),
    (["predict", "{cat}", "--topk", "0"], "--topk"),
    (["predict", "{cat}", "--topk", "x"], "invalid int"),
    (["layers", "--model", "torchvision:resnet18"], "not in the local cache"),
    (["frobnicate"], "invalid choice"),
    (["download", "torchvision:resnet18@random"], "pretrained torchvision model"),
])
def test_bad_input_exit_2_one_line(capsys, samples, argv, words):
    cat = str(samples["cat"])
    argv = [a.replace("{cat}", cat).replace("{samples}", str(samples["cat"].parent)).replace("{junk}", cat) for a in argv]
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("cnnviz: error:")


def test_internal_error_exit_1(capsys, monkeypatch, samples):
    import cnnviz.predict

    monkeypatch.setattr(cnnviz.predict, "logits", lambda *a: 1 / 0)
    assert main(["predict", str(samples["cat"])]) == 1
    assert capsys.readouterr().err.strip() == "cnnviz: internal error: ZeroDivisionError: division by zero"


def test_real_process_exit_codes_and_no_traceback(samples, tmp_path):
    """The twin as users run it: a subprocess, JSON on stdout, one line on errors."""
    ok = subprocess.run([sys.executable, "-m", "cnnviz", "predict", str(samples["coffee"]), "--json", "--topk", "1"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["top"][0]["label"] == "espresso"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(samples["coffee"].read_bytes()[:3000])
    err = subprocess.run([sys.executable, "-m", "cnnviz", "predict", str(bad), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert err.returncode == 2 and err.stdout == ""
    assert "Traceback" not in err.stderr and len(err.stderr.strip().splitlines()) == 1
    assert "truncated or corrupt" in err.stderr


# ---------------------------------------------------------------- bad paths and own weights (issue #14)

def cli(*argv):
    """The twin as users run it: a fresh process."""
    return subprocess.run([sys.executable, "-m", "cnnviz", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def files_for_cli(tmp_path_factory):
    """A small fine-tuned-like checkpoint (resnet18, 3 classes), labels, and hostile files."""
    import torch
    import torchvision

    from .hostile import huge_head, stream_png

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    torch.save(net.state_dict(), d / "ft.pth")
    (d / "labels.txt").write_text("apple\nbanana\ncherry\n")
    (d / "two.txt").write_text("apple\nbanana\n")
    (d / "huge.pth").write_bytes(huge_head())
    with open(d / "big.txt", "wb") as f:  # 600 MB on paper, nothing on disk
        f.truncate(600 * 2 ** 20)
    (d / "tall.png").write_bytes(stream_png(40, 1_000_000, color_type=2))
    (d / "folder").mkdir()
    return d


@pytest.mark.parametrize("argv, words", [
    (["predict", "{d}/folder"], "folder is a folder, not a file; give an image file"),
    (["predict", "/dev/zero"], "/dev/zero is larger than 50 MB; the limit is 50 MB for images"),
    (["predict", "{d}/missing.png"], "Cannot read {d}/missing.png: No such file or directory"),
    (["rf", "--layer", "_conv_stem", "--image", "{d}/folder"], "is a folder, not a file"),
    (["activations", "{cat}", "--layer", "_conv_stem", "--npy", "{d}/no/such/acts.npy"],
     "cannot write --npy {d}/no/such/acts.npy: the folder {d}/no/such does not exist"),
    (["saliency", "{cat}", "--method", "gradcam", "--out", "{d}/folder"], "--out {d}/folder is a folder; give a file name"),
    (["saliency", "{cat}", "--method", "gradcam", "--out", "/proc/cam.png"], "cannot write --out /proc/cam.png"),
    (["filters", "--layer", "_conv_stem", "--out", "{cat}/tiles.png"], "is not a folder"),
    (["predict", "{cat}", "--model", "torchvision:resnet18@random", "--weights", "{d}/ft.pth", "--arch", "resnet18"],
     "give either --model ID or --weights PATH"),
    (["predict", "{cat}", "--weights", "{d}/ft.pth"], "--weights needs --arch NAME"),
    (["predict", "{cat}", "--labels", "{d}/labels.txt"], "--labels goes with --weights PATH"),
    (["predict", "{cat}", "--weights", "{d}/ft.pth", "--arch", "nosuchnet"], "Unknown torchvision model 'nosuchnet'"),
    (["predict", "{cat}", "--weights", "{d}/folder", "--arch", "resnet18"], "is a folder, not a file; give a state dict"),
    (["predict", "{cat}", "--weights", "{d}/huge.pth", "--arch", "resnet18"], "a classifier of 8,000,000 classes"),
    (["predict", "{cat}", "--weights", "{d}/ft.pth", "--arch", "resnet18", "--labels", "{d}/big.txt"],
     "big.txt is 600 MB; the limit is 1 MB for labels files"),
    (["layers", "--weights", "{d}/ft.pth", "--arch", "resnet18", "--labels", "{d}/two.txt"],
     "The labels file has 2 names but the model has 3 classes"),
])
def test_bad_input_in_a_real_process_exits_2_with_one_line(files_for_cli, samples, argv, words):
    d, cat = str(files_for_cli), str(samples["cat"])
    r = cli(*(a.replace("{d}", d).replace("{cat}", cat) for a in argv))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnviz: error: "), r.stderr
    assert words.replace("{d}", d) in lines[0], lines[0]


def test_intake_note_on_stderr(files_for_cli):
    r = cli("predict", str(files_for_cli / "tall.png"), "--json", "--topk", "1")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 and json.loads(r.stdout)["top"]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnviz: note: ")
    assert "tall.png was 40x1000000 pixels; cropped to its centre, 40x320" in lines[0]


def test_own_weights_through_several_subcommands(capsys, files_for_cli, samples):
    from cnnviz import models

    d, cat = files_for_cli, str(samples["cat"])
    own = ["--arch", "resnet18", "--weights", str(d / "ft.pth"), "--labels", str(d / "labels.txt")]
    out = run_json(capsys, "predict", cat, "--topk", "3", *own)
    assert out["model"].startswith("checkpoint:resnet18:")
    assert {t["label"] for t in out["top"]} == {"apple", "banana", "cherry"}
    ref = models.load_checkpoint("resnet18", (d / "ft.pth").read_bytes(), "ft.pth", ["apple", "banana", "cherry"])
    expected = predict(ref, load_image(samples["cat"]), 3)
    assert [t["index"] for t in out["top"]] == [t.index for t in expected]
    assert out["top"][0]["prob"] == pytest.approx(expected[0].prob, abs=1e-6)
    layers = {l["name"]: l for l in run_json(capsys, "layers", *own)["layers"]}
    assert layers["fc"]["shape"] == [3]
    sal = run_json(capsys, "saliency", cat, "--method", "gradcam", "--target", "banana", *own)
    assert sal["target"]["label"] == "banana" and sal["target"]["index"] == 1
    no_labels = run_json(capsys, "predict", cat, "--arch", "resnet18", "--weights", str(d / "ft.pth"))
    assert {t["label"] for t in no_labels["top"]} == {"class 0", "class 1", "class 2"}
