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
    assert first == {"name": "_conv_stem", "type": "Conv2dDynamicSamePadding", "shape": [32, 112, 112], "params": 864}
    assert "_swish#1" in names


def test_layers_json_random_torchvision(capsys):
    out = run_json(capsys, "layers", "--model", "torchvision:resnet18@random")
    layers = {l["name"]: l for l in out["layers"]}
    assert out["layers"][0]["name"] == "conv1" and layers["conv1"]["shape"] == [64, 112, 112]
    assert layers["fc"] == {"name": "fc", "type": "Linear", "shape": [1000], "params": 513000}
    assert layers["maxpool"]["shape"] == [64, 56, 56]
    assert "layer1" not in layers and "layer1.0" not in layers  # containers are not layers


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

    monkeypatch.setattr(cnnviz.predict, "probabilities", lambda *a: 1 / 0)
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
