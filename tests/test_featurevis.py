"""Activation maximization: reproducible, rising objective, model restored, stop, caches,
natural evidence cut to receptive fields, gallery, CLI contract."""
import json

import numpy as np
import pytest
import torch

from cnnviz import cli, jobs, models, pixels
from cnnviz import featurevis as FV
from cnnviz.activations import LayerNotFound
from cnnviz.contract import Cancelled, Progress
from cnnviz.hooks import record
from cnnviz.images import load_image
from cnnviz.receptive import clip, fields

LAYER = "_blocks.3._swish#1"


pytestmark = pytest.mark.usefixtures("cache_dir")  # a private feature-visualization cache


def spec(channel=5, **kw):
    return FV.FeatureVisSpec(kw.pop("layer", LAYER), channel, **{"size": 48, "steps": 6, **kw})


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
    c = FV.optimize(bundled, FV.FeatureVisSpec("ignored", 949, "class", size=48, steps=12))
    assert c.spec.layer is None and c.activation_end > c.activation_start + 1


def test_a_unit_clamped_at_the_start_still_moves(bundled):
    """Redirected ReLU gradients: a channel the start image leaves at zero everywhere."""
    layer = "_blocks.14._swish#1"
    gen = torch.Generator().manual_seed(0)
    start = FV._pixels(FV._init(64, gen), FV._freq_scale(64, 64)).detach()
    _, outs = record(bundled, bundled.normalize(start), [layer])
    dead = int(torch.nonzero(outs[layer][0].mean((1, 2)) == 0)[0])
    assert FV.measure(bundled, FV.FeatureVisSpec(layer, dead), start)[0] == 0
    r = FV.optimize(bundled, FV.FeatureVisSpec(layer, dead, size=64, steps=20))
    assert r.activation_start == 0 and r.activation_end > 0.5


def test_model_state_restored_also_on_error(bundled):
    before = _state(bundled.net)
    FV.optimize(bundled, spec(steps=2))
    assert _state(bundled.net) == before

    def boom(fraction, text, preview):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        FV.optimize(bundled, spec(steps=4), Progress(boom))
    assert _state(bundled.net) == before
    stop = Progress()
    stop.stop()
    with pytest.raises(Cancelled):
        FV.run(bundled, None, spec(steps=4), progress=stop)
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
    finishes while it is still going (it used to wait on the model's lock). The job
    runner runs it on a private copy; the shared model is left as it was."""
    import threading

    from cnnviz.predict import PredictSpec

    image, answers = load_image(samples["cat"]), []
    want = jobs.run(bundled, image, PredictSpec(1)).top[0].index
    before = _state(bundled.net)
    steps = jobs.SHORT_PASSES + 2  # a long job: the runner's private copy

    def progress(fraction, text, preview):
        if text == f"Step 1 of {steps}":  # mid-run: another session asks for a prediction
            other = threading.Thread(target=lambda: answers.append(
                jobs.run(bundled, image, PredictSpec(1)).top[0].index))
            other.start()
            other.join(timeout=60)
            answers.append("waited" if other.is_alive() else "done")
            answers.append(_state(bundled.net) == before)  # no swapped classes, no hooks on the shared model

    r = jobs.run(bundled, None, spec(steps=steps), progress=Progress(progress))
    assert answers == [want, "done", True] and r.steps_done == steps and r.model == bundled.id


def test_progress_previews_and_stop(bundled):
    seen = []

    def report(fraction, text, preview):
        seen.append((round(fraction * 8), text, None if preview is None else preview.shape))
        if len(seen) == 5:
            p.stop()

    p = Progress(report)
    with pytest.raises(Cancelled):
        FV.run(bundled, None, spec(steps=8, preview_every=2), progress=p)
    assert len(seen) == 5  # stopped: no sixth step
    assert seen == [(1, "Step 1 of 8", None), (2, "Step 2 of 8", (48, 48, 3)), (3, "Step 3 of 8", None),
                    (4, "Step 4 of 8", (48, 48, 3)), (5, "Step 5 of 8", None)]
    assert FV.cached(bundled, spec(steps=8)) is None  # a stopped run is not cached


def test_memory_and_disk_cache(bundled, cache_dir):
    s = spec()
    first = FV.run(bundled, None, s)
    assert first.cached == "" and len(list(cache_dir.glob("*.npz"))) == 1
    again = FV.run(bundled, None, s, progress=Progress(lambda *a: None))
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
    s = FV.FeatureVisSpec("layer1.0.conv1", 1, size=32, steps=2)
    FV.run(net, None, s)
    assert not cache_dir.exists() or not list(cache_dir.glob("*.npz"))
    assert FV.cached(net, s).cached == "memory"  # in memory, for these very weights ...
    assert FV.cached(net.private_copy(), s).cached == "memory"  # ... which the runner's copy shares
    other = models.load("torchvision:resnet18@random")  # new weights, same id
    assert FV.cached(other, s) is None


def test_bad_settings(bundled):
    with pytest.raises(FV.FeatureVisError, match="channels 0 to 143"):
        spec(channel=144).check(bundled)
    with pytest.raises(FV.FeatureVisError, match="size"):
        spec(size=8).check(bundled)
    with pytest.raises(FV.FeatureVisError, match="classes 0 to 999"):
        FV.FeatureVisSpec(None, 1000, "class").check(bundled)
    with pytest.raises(FV.FeatureVisError, match="learning rate"):
        spec(lr=0).check(bundled)
    with pytest.raises(LayerNotFound):
        spec(layer="_blocks.99").check(bundled)
    with pytest.raises(FV.FeatureVisError, match="gallery walks the channels"):
        FV.GallerySpec(LAYER, 2, "class").check(bundled)
    with pytest.raises(FV.FeatureVisError, match="channels 0 to 143"):
        FV.EvidenceSpec(LAYER, 144).check(bundled)


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
    s = FV.FeatureVisSpec(LAYER, 7)
    mean, best = natural.stats(s)
    v = natural.maps[:, 7].mean((1, 2))
    assert best == pytest.approx(v.max(), rel=1e-5) and mean == pytest.approx(v.mean(), rel=1e-5)


def test_evidence_crops_are_receptive_fields_of_the_strongest_units(bundled, natural):
    s = FV.FeatureVisSpec(LAYER, 7)
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
    crops = FV.evidence(bundled, FV.FeatureVisSpec(LAYER, 7), nat, k=4)
    assert {c.source for c in crops} <= set(images)


def test_gallery_counts_steps_and_reuses_the_cache(bundled):
    calls = []
    gallery = FV.GallerySpec(LAYER, 2, size=32, steps=3)
    res = FV.run(bundled, None, gallery, progress=Progress(lambda f, text, preview: calls.append((f, text, preview))))
    out = res.units
    assert [r.spec.channel for r in out] == [0, 1]
    assert [round(c[0] * 6) for c in calls] == list(range(1, 7))
    assert [c[1] for c in calls][2:4] == ["Channel 0 of 2: step 3 of 3", "Channel 1 of 2: step 1 of 3"]
    replay = []
    again = FV.run(bundled, None, gallery, progress=Progress(lambda f, text, preview: replay.append(preview))).units
    assert all(r.cached == "memory" for r in again)
    grid = pixels.grid([r.image for r in out], cols=2, gap=4)
    assert grid.shape == (32, 68, 3)
    np.testing.assert_array_equal(grid[:, 36:], out[1].image)
    np.testing.assert_array_equal(res.image, grid)
    # The preview is the whole grid: channel 1 still grey while channel 0 finishes ...
    first = calls[2][2]
    assert first.shape == grid.shape and first[:, :32].std() > 0
    assert (first[:, 36:] == FV.BLANK).all() and (first[:, 32:36] == 255).all()
    assert calls[3][2] is None and (calls[-1][2][:, 36:] != FV.BLANK).any()
    np.testing.assert_array_equal(replay[-1], grid)  # ... and cached channels show at once
    # What the page shows before a run: the rendered ones, and how long the rest take.
    assert [r is not None for r in FV.cached_gallery(bundled, FV.GallerySpec(LAYER, 3, size=32, steps=3))] == \
        [True, True, False]
    assert FV.GallerySpec(LAYER, 3, size=64, steps=10).estimate_seconds(2) == pytest.approx(2 * 10 * 0.1 * 0.25)


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


# ---------------------------------------------------------------- the contract: run, stop, evidence specs

def _stop_on_first_report(model, job, image=None):
    """Run `job` with a forward pre-hook on `model.net` counting passes; the first report
    asks the job to stop. (passes when asked, passes in all)."""
    calls, asked = [0], []
    h = model.net.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))

    def report(fraction, text, preview):
        if not asked:
            asked.append(calls[0])
            p.stop()

    p = Progress(report)
    try:
        with pytest.raises(Cancelled):
            FV.run(model, image, job, progress=p)
    finally:
        h.remove()
    return asked[0], calls[0]


@pytest.mark.parametrize("job", [spec(steps=12), FV.GallerySpec(LAYER, 3, size=32, steps=4),
                                 FV.NaturalSpec(LAYER), FV.EvidenceSpec(LAYER, 7), FV.EvidenceSpec(None, 3, "class")],
                         ids=["optimize", "gallery", "natural", "evidence", "evidence-class"])
def test_every_job_stops_within_one_batch(bundled, job):
    FV.NATURAL.clear()  # the recording, not a kept one
    before = _state(bundled.net)
    asked, ran = _stop_on_first_report(bundled, job)
    assert asked >= 1 and ran - asked <= 1
    assert _state(bundled.net) == before
    if isinstance(job, FV.FeatureVisSpec):
        assert FV.cached(bundled, job) is None  # a stopped run is never cached
    if isinstance(job, FV.GallerySpec):
        assert all(r is None for r in FV.cached_gallery(bundled, job))
    assert not FV.NATURAL._d  # nor a stopped recording


def test_natural_spec_records_the_samples_and_the_upload(bundled, natural):
    from PIL import Image

    FV.NATURAL.clear()
    nat = FV.run(bundled, None, FV.NaturalSpec(LAYER))
    assert nat.names == natural.names == list(FV.sample_images())
    np.testing.assert_array_equal(nat.maps, natural.maps)
    np.testing.assert_array_equal(nat.pixels, natural.pixels)
    assert FV.run(bundled, None, FV.NaturalSpec(LAYER)).maps is nat.maps  # one recording per layer
    n = len(FV.sample_images())  # images through the network (issue #14: these were batches, 2)
    assert FV.NaturalSpec(LAYER).passes(bundled) == n and FV.NaturalSpec(LAYER, "x").passes(bundled) == n + 1
    red = Image.new("RGB", (300, 200), (250, 10, 10))
    up = FV.run(bundled, red, FV.NaturalSpec(LAYER, "upload: red.png"))
    assert up.names == natural.names + ["upload: red.png"] and up.maps.shape[0] == len(natural.names) + 1
    np.testing.assert_array_equal(up.pixels[-1], pixels.to_uint8(bundled.to_pixels(red)))
    blue = Image.new("RGB", (300, 200), (10, 10, 250))
    assert not np.array_equal(FV.run(bundled, blue, FV.NaturalSpec(LAYER, "upload: red.png")).pixels[-1],
                              up.pixels[-1])  # the memory is keyed by the image, not only its name
    with pytest.raises(FV.FeatureVisError, match="only with its image"):
        FV.run(bundled, None, FV.NaturalSpec(LAYER, "upload: red.png"))
    assert set(nat.to_dict()) == {"names", "layer", "model", "seconds"}


def test_evidence_spec_is_what_the_page_showed(bundled, natural):
    s = FV.FeatureVisSpec(LAYER, 7)
    ev = jobs.run(bundled, None, FV.EvidenceSpec.of(s))
    assert (ev.natural_mean, ev.natural_max) == natural.stats(s)
    assert ev.images == 9 and ev.size == (224, 224)
    want = FV.evidence(bundled, s, natural)
    assert [(c.source, c.value, c.unit, c.box) for c in ev.crops] == [(c.source, c.value, c.unit, c.box) for c in want]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(ev.crops, want))
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["natural_max"] == ev.natural_max and d["crops"][0]["box"] == list(want[0].box)
    # A class logit: the best photos whole.
    c = FV.run(bundled, None, FV.EvidenceSpec(None, 281, "class"))
    logits = FV.natural(bundled, None, FV.sample_images()).logits[:, 281].astype(np.float64)
    assert [x.source for x in c.crops] == [natural.names[n] for n in np.argsort(-logits)[:4]]
    assert all(x.unit is None and x.pixels.shape == (224, 224, 3) for x in c.crops)
    assert c.natural_max == pytest.approx(logits.max())


def test_result_json_is_the_cli_contract(bundled):
    r = jobs.run(bundled, None, spec(steps=2, cache=False))
    assert set(r.to_dict()) == {"model", "layer", "channel", "steps", "size", "activation_start", "activation_end",
                                "natural_mean", "natural_max", "seconds"}
    assert r.to_dict()["model"] == bundled.id and r.seconds > 0
    assert FV.cached(bundled, spec(steps=2)) is None  # cache=False keeps nothing
    assert spec(cache=False) == spec() and spec(preview_every=3).key() == spec().key()
    assert spec().digest("m") != spec(seed=1).digest("m")
