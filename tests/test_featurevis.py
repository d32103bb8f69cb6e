"""Activation maximization: reproducible, rising objective, model restored, stop, caches,
natural evidence cut to receptive fields, gallery, CLI contract."""
import json

import numpy as np
import pytest
import torch

from cnnviz import cli, models
from cnnviz import featurevis as FV
from cnnviz.activations import LayerNotFound
from cnnviz.hooks import record
from cnnviz.images import load_image
from cnnviz.receptive import clip, fields

LAYER = "_blocks.3._swish#1"


pytestmark = pytest.mark.usefixtures("cache_dir")  # a private feature-visualization cache


def spec(channel=5, **kw):
    return FV.Spec(kw.pop("layer", LAYER), channel, **{"size": 48, "steps": 6, **kw})


def _state(net):
    return ([type(m) for m in net.modules()], [p.requires_grad for p in net.parameters()], net.training,
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules()))


def test_same_seed_same_image_bitwise(bundled):
    a, b = FV.optimize(bundled, spec(seed=3)), FV.optimize(bundled, spec(seed=3))
    assert a.image.tobytes() == b.image.tobytes() and a.curve.tobytes() == b.curve.tobytes()
    assert a.activation_end == b.activation_end
    assert FV.optimize(bundled, spec(seed=4)).image.tobytes() != a.image.tobytes()
    # The pass that stops at the target layer reads what a full forward pass reads.
    start = FV._pixels(FV._init(48, torch.Generator().manual_seed(3)), FV._freq_scale(48, 48)).detach()
    assert a.activation_start == pytest.approx(FV.measure(bundled, spec(seed=3), start)[0], rel=1e-6)


def test_objective_rises(bundled):
    r = FV.optimize(bundled, spec(size=64, steps=24))
    assert r.steps_done == 24 and r.activation_end > r.activation_start + 0.3
    assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8 and r.image.std() > 5


def test_neuron_and_class_objectives(bundled):
    n = FV.optimize(bundled, spec(objective="neuron", steps=12))
    assert n.activation_end > n.activation_start
    c = FV.optimize(bundled, FV.Spec("ignored", 949, "class", 48, 12))
    assert c.spec.layer is None and c.activation_end > c.activation_start + 1


def test_a_unit_clamped_at_the_start_still_moves(bundled):
    """Redirected ReLU gradients: a channel the start image leaves at zero everywhere."""
    layer = "_blocks.14._swish#1"
    gen = torch.Generator().manual_seed(0)
    start = FV._pixels(FV._init(64, gen), FV._freq_scale(64, 64)).detach()
    _, outs = record(bundled, bundled.normalize(start), [layer])
    dead = int(torch.nonzero(outs[layer][0].mean((1, 2)) == 0)[0])
    assert FV.measure(bundled, FV.Spec(layer, dead), start)[0] == 0
    r = FV.optimize(bundled, FV.Spec(layer, dead, size=64, steps=20))
    assert r.activation_start == 0 and r.activation_end > 0.5


def test_model_state_restored_also_on_error(bundled):
    before = _state(bundled.net)
    FV.optimize(bundled, spec(steps=2))
    assert _state(bundled.net) == before

    def boom(step, steps, preview):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        FV.optimize(bundled, spec(steps=4), boom)
    assert _state(bundled.net) == before
    p = next(bundled.net.parameters())
    p.requires_grad_(True)
    try:
        FV.optimize(bundled, spec(steps=1))
        assert p.requires_grad and not any(q.requires_grad for q in list(bundled.net.parameters())[1:])
        assert p.grad is None  # the weights are shared with every session: no gradient lands there
    finally:
        p.requires_grad_(False)


def test_other_sessions_are_not_kept_waiting(bundled, samples):
    """A run lasts 10-30 s in the app: another session's prediction on the same model
    finishes while it is still going (it used to wait on the model's lock)."""
    import threading

    from cnnviz.predict import predict

    image, answers = load_image(samples["cat"]), []
    want = predict(bundled, image, 1)[0].index

    def progress(step, steps, preview):
        if step == 1:  # mid-run: another session asks for a prediction
            other = threading.Thread(target=lambda: answers.append(predict(bundled, image, 1)[0].index))
            other.start()
            other.join(timeout=60)
            answers.append("waited" if other.is_alive() else "done")
        return False

    r = FV.optimize(bundled, spec(steps=3), progress)
    assert answers == [want, "done"] and r.steps_done == 3


def test_progress_previews_and_stop(bundled):
    seen = []

    def progress(step, steps, preview):
        seen.append((step, steps, None if preview is None else preview.shape))
        return step == 5

    r = FV.visualize(bundled, spec(steps=8), progress, preview_every=2)
    assert r.stopped and r.steps_done == 5
    assert seen == [(1, 8, None), (2, 8, (48, 48, 3)), (3, 8, None), (4, 8, (48, 48, 3)), (5, 8, None)]
    assert FV.cached(bundled, spec(steps=8)) is None  # a stopped run is not cached


def test_memory_and_disk_cache(bundled, cache_dir):
    s = spec()
    first = FV.visualize(bundled, s)
    assert first.cached == "" and len(list(cache_dir.glob("*.npz"))) == 1
    again = FV.visualize(bundled, s, lambda *a: None)
    assert again.cached == "memory" and again.image is first.image
    FV.MEMORY.clear()
    disk = FV.cached(bundled, s)
    assert disk.cached == "disk" and disk.image.tobytes() == first.image.tobytes()
    assert disk.activation_end == first.activation_end and disk.curve.tobytes() == first.curve.tobytes()
    # Every setting is part of the key.
    for other in (spec(channel=6), spec(seed=1), spec(lr=0.02), spec(size=64), spec(steps=7), spec(objective="neuron")):
        assert FV.cached(bundled, other) is None
    # A damaged file is ignored, not fatal.
    FV.MEMORY.clear()
    next(cache_dir.glob("*.npz")).write_bytes(b"not a numpy file")
    assert FV.cached(bundled, s) is None


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path / "a"))
    assert FV.cache_dir() == tmp_path / "a" / "featurevis"
    monkeypatch.delenv("CNNVIZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FV.cache_dir() == tmp_path / "xdg" / "cnnviz" / "featurevis"


def test_random_init_models_are_not_cached_on_disk(cache_dir):
    net = models.load("torchvision:resnet18@random")
    FV.visualize(net, FV.Spec("layer1.0.conv1", 1, size=32, steps=2))
    assert not cache_dir.exists() or not list(cache_dir.glob("*.npz"))
    other = models.load("torchvision:resnet18@random")  # new weights, same id
    assert FV.cached(other, FV.Spec("layer1.0.conv1", 1, size=32, steps=2)) is None


def test_bad_settings(bundled):
    with pytest.raises(FV.FeatureVisError, match="channels 0 to 143"):
        FV.check(bundled, spec(channel=144))
    with pytest.raises(FV.FeatureVisError, match="size"):
        FV.check(bundled, spec(size=8))
    with pytest.raises(FV.FeatureVisError, match="classes 0 to 999"):
        FV.check(bundled, FV.Spec(None, 1000, "class"))
    with pytest.raises(FV.FeatureVisError, match="learning rate"):
        FV.check(bundled, spec(lr=0))
    with pytest.raises(LayerNotFound):
        FV.check(bundled, spec(layer="_blocks.99"))


def test_colour_matrix_is_the_samples_colour_covariance_root(samples):
    m = FV.colour_sqrt([load_image(p) for p in samples.values()])
    np.testing.assert_allclose(m, FV.COLOUR_SQRT.numpy(), atol=2e-3)


@pytest.fixture(scope="module")
def natural(bundled):
    return FV.natural(bundled, LAYER, FV.sample_images())


def test_natural_values_match_a_plain_forward(bundled, natural, samples):
    from cnnviz.activations import compute

    cat = compute(bundled, load_image(samples["cat"]), [LAYER])[LAYER]
    i = natural.names.index("cat")
    np.testing.assert_allclose(natural.maps[i], cat, rtol=1e-4, atol=1e-5)
    s = FV.Spec(LAYER, 7)
    mean, best = FV.natural_stats(bundled, s, natural)
    v = natural.maps[:, 7].mean((1, 2))
    assert best == pytest.approx(v.max(), rel=1e-5) and mean == pytest.approx(v.mean(), rel=1e-5)


def test_evidence_crops_are_receptive_fields_of_the_strongest_units(bundled, natural):
    s = FV.Spec(LAYER, 7)
    crops = FV.evidence(bundled, s, natural, k=6, per_image=2)
    field = fields(bundled, (224, 224))[LAYER]
    maps = natural.maps[:, 7]
    assert len(crops) == 6 and [c.value for c in crops] == sorted((c.value for c in crops), reverse=True)
    assert crops[0].value == pytest.approx(float(maps.max()))
    for c in crops:
        n = natural.names.index(c.source)
        assert maps[n][c.unit] == pytest.approx(c.value)
        assert c.box == clip(field.box(*c.unit), (224, 224))
        t, l, b, r = c.box
        np.testing.assert_array_equal(c.pixels, natural.pixels[n, t:b, l:r])
    assert max(sum(c.source == name for c in crops) for name in natural.names) <= 2


def test_uploads_join_the_evidence(bundled, samples):
    from PIL import Image

    images = {"cat": load_image(samples["cat"]), "upload: red.png": Image.new("RGB", (300, 200), (250, 10, 10))}
    nat = FV.natural(bundled, LAYER, images)
    assert nat.names == ["cat", "upload: red.png"] and nat.maps.shape[0] == 2
    crops = FV.evidence(bundled, FV.Spec(LAYER, 7), nat, k=4)
    assert {c.source for c in crops} <= set(images)


def test_gallery_counts_steps_and_reuses_the_cache(bundled):
    calls = []
    out = FV.gallery(bundled, spec(steps=3, size=32), 2, lambda step, total, preview: calls.append((step, total)))
    assert [r.spec.channel for r in out] == [0, 1]
    assert [c[0] for c in calls] == list(range(1, 7)) and {c[1] for c in calls} == {6}
    again = FV.gallery(bundled, spec(steps=3, size=32), 2)
    assert all(r.cached == "memory" for r in again)
    grid = FV.grid_image([r.image for r in out], cols=2, gap=4)
    assert grid.shape == (32, 68, 3)
    np.testing.assert_array_equal(grid[:, 36:], out[1].image)


def test_cli_featurevis_contract(capsys, tmp_path):
    png = tmp_path / "fv.png"
    assert cli.main(["featurevis", "--layer", LAYER, "--channel", "5", "--steps", "4", "--size", "32",
                     "--out", str(png), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"model", "layer", "channel", "steps", "size", "activation_start", "activation_end",
                        "natural_mean", "natural_max", "seconds"}
    assert res["layer"] == LAYER and res["channel"] == 5 and res["steps"] == 4 and res["size"] == 32
    assert res["seconds"] > 0 and png.stat().st_size > 500
    assert cli.main(["featurevis", "--layer", LAYER, "--channel", "999", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "channels 0 to 143" in err and "Traceback" not in err
