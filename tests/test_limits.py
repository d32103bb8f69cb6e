"""CNN limits backend and CLI: pure transforms, identity = predict, batching, min flip, seeds."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cnnviz import jobs, limits as L
from cnnviz import models
from cnnviz.cli import main
from cnnviz.contract import Cancelled, Progress
from cnnviz.images import load_image
from cnnviz.predict import classify, predict, probabilities


@pytest.fixture(scope="module")
def x():
    return torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def cli_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- pure transforms

def test_geometric_transforms(x):
    assert torch.allclose(L.rotate(x, 90), torch.rot90(x, 1, (-2, -1)), atol=1e-4)  # anticlockwise
    ref = TF.rotate(x, 30, interpolation=TF.InterpolationMode.BILINEAR, fill=L.GREY)  # torchvision's, interior
    assert torch.allclose(L.rotate(x, 30)[..., 40:184, 40:184], ref[..., 40:184, 40:184], atol=1e-4)
    assert torch.equal(L.flip(L.flip(x, 1), 1), x)
    shifted = L.translate(x, 0.25)
    assert torch.equal(shifted[..., 56:], x[..., :168]) and bool((shifted[..., :56] == L.GREY).all())
    out = L.scale(x, -1)  # half size, centred in a grey frame
    assert bool((out[..., :56, :] == L.GREY).all()) and not bool((out[..., 56:168, 56:168] == L.GREY).all())
    zoomed = L.scale(x, 1)
    assert zoomed.shape == x.shape and torch.allclose(zoomed[..., 1::2, 1::2].mean(), x[..., 56:168, 56:168].mean(), atol=0.02)


def test_photometric_transforms(x):
    assert torch.allclose(L.brightness(x, -1), x / 2)
    flat = L.contrast(x, -30)
    assert float(flat.std()) < 1e-6  # no contrast left: one grey level
    assert torch.allclose(L.gamma(x, 1), x ** 2)
    b = L.blur(x, 3)
    assert float(b.std()) < float(x.std()) / 3 and abs(float(b.mean() - x.mean())) < 0.01


def test_noise_and_shuffle_are_seeded(x):
    assert torch.equal(L.noise(x, 0.1, seed=3), L.noise(x, 0.1, seed=3))
    assert not torch.equal(L.noise(x, 0.1, seed=3), L.noise(x, 0.1, seed=4))
    s = L.shuffle(x, 4, seed=1)
    assert torch.equal(s, L.shuffle(x, 4, seed=1)) and not torch.equal(s, L.shuffle(x, 4, seed=2))
    assert not torch.equal(s, x)
    tiles = lambda t: sorted(t[0, :, i:i + 56, j:j + 56].sum().item() for i in range(0, 224, 56) for j in range(0, 224, 56))
    assert np.allclose(tiles(s), tiles(x))  # the same tiles, another order
    assert torch.equal(L.shuffle(x, 2, seed=0), L.shuffle(x, 2, seed=0)) and not torch.equal(L.shuffle(x, 2), x)


def test_occlusion_grid_covers_the_image():
    corners = L.occlusion_grid((224, 224), 56)
    assert len(corners) == 49 and corners[-1] == (168, 168)
    odd = L.occlusion_grid((224, 224), 50)
    assert odd[-1] == (174, 174)  # flush with the edge


def test_parse_values():
    assert L.parse_values("rotate", "0:90:30") == (0, 30, 60, 90)  # STOP included
    assert L.parse_values("noise", "0:0.3:0.1") == (0, 0.1, 0.2, 0.3)
    assert L.parse_values("flip", None) == (0, 1)
    assert len(L.parse_values("rotate", "")) == 24
    for name, text, msg in [("blur", "-1", "out of range"), ("flip", "0.5", "flip takes 0"), ("shuffle", "2.5", "whole"),
                            ("rotate", "0:a:1", "Cannot read"), ("occlude", "20,40", "one value"),
                            ("rotate", "0:1000:1", "at most"), ("nope", "1", "Unknown transform")]:
        with pytest.raises(L.LimitsError, match=msg):
            L.parse_values(name, text)


# ---------------------------------------------------------------- sweeps on the bundled model

@pytest.mark.parametrize("name", list(L.TRANSFORMS))
def test_identity_is_exactly_predict(bundled, cat, name):
    top = predict(bundled, cat, 1)[0]
    sw = L.run(bundled, cat, L.SweepSpec(name, (0,)))  # occlude: patch size 0
    p = sw.points[0]
    assert p.top1 == top and p.orig_prob == top.prob and p.orig_rank == 1 and sw.original == top


def test_batched_sweep_matches_one_by_one(bundled, cat, monkeypatch):
    sizes = []
    probs = probabilities(bundled, cat)
    monkeypatch.setattr(L, "classify", lambda m, b: sizes.append(len(b)) or classify(m, b))
    values = (0, 20, 40, 60, 80)
    big = L.run(bundled, cat, L.SweepSpec("rotate", values, batch_size=3, probs=probs))
    assert sizes == [3, 1]  # the identity needs no pass; memory bounded by batch_size
    for v, p in zip(values, big.points):
        single = classify(bundled, L.apply(bundled, cat, "rotate", v))[0]
        assert p.top1.index == int(single.argmax()) and abs(p.top1.prob - single.max()) < 1e-5
        assert abs(p.orig_prob - single[big.original.index]) < 1e-5
        assert p.orig_rank == int((single > single[big.original.index]).sum()) + 1
        assert (p.orig_rank == 1) == (p.top1.index == big.original.index)
    assert big.original.index == int(probs.argmax())
    assert big.thumbs.shape == (5, 96, 96, 3) and big.thumbs.dtype == np.uint8


def test_occlusion_map(bundled, samples):
    sw = L.run(bundled, load_image(samples["rocket"]), L.SweepSpec("occlude", (112,)))
    assert [p.value for p in sw.points] == [(0, 0), (0, 56), (0, 112), (56, 0), (56, 56), (56, 112), (112, 0),
                                            (112, 56), (112, 112)]
    assert sw.grid == (3, 3) and sw.prob_map().shape == (3, 3)
    # hiding the middle of the rocket costs most
    assert np.unravel_index(sw.prob_map().argmin(), (3, 3)) == (1, 1) and sw.prob_map().min() < sw.original.prob / 2
    drop = sw.drop_map((224, 224))
    assert drop[112, 112] == pytest.approx(np.mean([sw.original.prob - p.orig_prob for p in sw.points
                                                    if p.value[0] <= 112 < p.value[0] + 112 and p.value[1] <= 112 < p.value[1] + 112]))
    assert drop[0, 0] == pytest.approx(sw.original.prob - sw.points[0].orig_prob)


def test_min_flip_is_a_real_flip_and_minimal(bundled, cat):
    probs = probabilities(bundled, cat)
    target = int(probs.argmax())
    flip = L.run(bundled, cat, L.FlipSpec("noise", seed=0, probs=probs))
    assert flip.value is not None and flip.to.index != target
    at = classify(bundled, L.apply(bundled, cat, "noise", flip.value))[0]
    assert int(at.argmax()) == flip.to.index
    below = classify(bundled, L.apply(bundled, cat, "noise", round(flip.value - flip.step, 10)))[0]
    assert int(below.argmax()) == target
    assert flip.sentence() == (f"Adding noise of standard deviation {flip.value:g} turns 'Egyptian cat' into "
                               f"'{flip.to.label}' ({flip.to.prob:.0%}).")
    for name in ("flip", "occlude", "shuffle"):  # no continuous parameter: no search
        assert L.run(bundled, cat, L.LimitsSpec(name, (0,), probs=probs)).flip is None
        with pytest.raises(L.LimitsError, match="no continuous parameter"):
            L.run(bundled, cat, L.FlipSpec(name))


def test_min_flip_signed_and_bounded_by_the_sweep(bundled, cat):
    res = L.run(bundled, cat, L.LimitsSpec("rotate", (0, 15, 345)))
    sw, flip = res.sweep, res.flip
    assert sw.flipped and flip.value is not None and abs(flip.value) <= 15  # never "none" when the sweep saw one
    at = classify(bundled, L.apply(bundled, cat, "rotate", flip.value))[0]
    assert int(at.argmax()) == flip.to.index != sw.original.index
    assert ("clockwise" in flip.sentence()) and "turns 'Egyptian cat' into" in flip.sentence()


def test_compare_two_models(bundled, cat):
    resnet = models.load("torchvision:resnet18@random")
    a, b = (jobs.run(m, cat, L.SweepSpec("flip")) for m in (bundled, resnet))
    assert (a.model, b.model) == (bundled.id, resnet.id)
    # Jobs and predict may run on different torch thread counts (a heavy job's own
    # thread, a server's one-thread short jobs), which changes float rounding at 1e-6.
    for res, m in ((a, bundled), (b, resnet)):
        probs = probabilities(m, cat)
        assert res.points[0].top1.index == int(probs.argmax())
        assert res.points[0].top1.prob == pytest.approx(float(probs.max()), abs=1e-5)


def stopping(model, at):
    """A forward hook on `model.net` counting batches, and a Progress that asks to stop on
    its first report and notes the count then."""
    n = [0]
    handle = model.net.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    p = Progress(lambda f, text, preview: at.append(n[0]) or p.stop())
    return n, handle, p


@pytest.mark.parametrize("spec", [L.SweepSpec("rotate", (10, 20, 30, 40, 50, 60), batch_size=2),
                                  L.FlipSpec("noise", batch_size=2),
                                  L.LimitsSpec("blur", (1, 2, 3, 4), batch_size=2)])
def test_sweeps_and_the_search_stop_within_one_batch(bundled, cat, spec):
    probs = probabilities(bundled, cat)
    at = []
    n, handle, p = stopping(bundled, at)
    try:
        with pytest.raises(Cancelled):
            L.run(bundled, cat, replace(spec, probs=probs), progress=p)
    finally:
        handle.remove()
    assert len(at) == 1 and n[0] - at[0] <= 1  # at most one more batch after the stop request


def test_specs_say_what_they_cost(bundled):
    assert L.SweepSpec("flip").passes(bundled) == 2  # the original, and the mirrored image
    assert L.SweepSpec("rotate", (0, 15, 30), probs=np.ones(3)).passes(bundled) == 2
    assert L.SweepSpec("occlude", (112,)).passes(bundled) == 10
    assert L.LimitsSpec("rotate").passes(bundled) > jobs.SHORT_PASSES
    assert L.SweepSpec("rotate", (1, 2)) == L.SweepSpec("rotate", (1, 2), probs=np.ones(3))  # a hint, not a key
    assert L.SweepSpec("rotate", (1, 2)).key() == L.SweepSpec("rotate", (1, 2), probs=np.ones(3)).key()
    with pytest.raises(L.LimitsError, match="out of range"):
        L.LimitsSpec("blur", (-1,)).check(bundled)


# ---------------------------------------------------------------- CLI

def test_cli_contract(capsys, samples, bundled, cat):
    out = cli_json(capsys, "limits", str(samples["cat"]), "--transform", "noise", "--values", "0,0.1")
    assert set(out) == {"model", "transform", "original", "points", "min_flip", "seconds"}
    top = predict(bundled, cat, 1)[0]
    assert out["original"] == top.to_dict() and out["points"][0]["top1"] == top.to_dict()
    assert [p["value"] for p in out["points"]] == [0.0, 0.1]
    assert set(out["points"][1]) == {"value", "top1", "orig_prob", "orig_rank"}
    assert isinstance(out["min_flip"], float) and out["seconds"] > 0


def test_cli_defaults_occlude_flip_and_seeds(capsys, samples, tmp_path):
    img = str(samples["cat"])
    flip = cli_json(capsys, "limits", img, "--transform", "flip")
    assert [p["value"] for p in flip["points"]] == [0, 1] and flip["min_flip"] is None
    occ = cli_json(capsys, "limits", img, "--transform", "occlude", "--values", "112", "--out", str(tmp_path / "s.png"))
    assert occ["points"][1]["value"] == [0, 56] and len(occ["points"]) == 9
    assert (tmp_path / "s.png").stat().st_size > 1000
    runs = [cli_json(capsys, "limits", img, "--transform", "shuffle", "--values", "4", "--seed", s)["points"]
            for s in ("1", "1", "2")]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_cli_bad_input_is_one_line(capsys, samples):
    assert main(["limits", str(samples["cat"]), "--transform", "blur", "--values", "0:-3:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step must be positive" in err


@pytest.mark.parametrize("ids, words", [
    ("torchvision:vit_b_16@random,nosuch", "--compare: unknown model id 'nosuch'"),
    ("torchvision:vit_b_16@random,torchvision:swin_t@random,torchvision:resnet18@random",
     "--compare takes at most 2 models (3 with --model's on one chart); got 3"),
])
def test_cli_compare_bounded_before_loading(capsys, samples, monkeypatch, ids, words):
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["limits", str(samples["cat"]), "--transform", "flip", "--compare", ids]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_versus_puts_the_other_families_beside_a_model(bundled):
    from types import SimpleNamespace

    import torchvision

    def arch(name):  # only the network's class matters: built on the meta device, no weights
        with torch.device("meta"):
            return SimpleNamespace(net=torchvision.models.get_model(name))

    assert L.versus(bundled) == L.versus(arch("resnet18")) == (L.VIT, L.CONVNEXT)
    for name in ("vit_b_16", "swin_t"):  # a transformer: the bundled CNN beside it
        assert L.versus(arch(name)) == (models.BUNDLED_ID, L.CONVNEXT)
    assert L.versus(arch("convnext_tiny")) == (models.BUNDLED_ID, L.VIT)
    assert all(models.known(i) and models.known(i + "@random") for i in (L.VIT, L.CONVNEXT))
