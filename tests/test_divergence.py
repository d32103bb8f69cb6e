"""Where the attack takes over (cnnviz.divergence): an image against itself is exactly 0
everywhere; the attack's change outgrows the noise's; one recorded pass of one batch;
the definitions checked against plain hooks; no hooks left; the CLI's `attack --layers`."""
import json

import numpy as np
import pytest
import torch

from cnnviz import adversarial as A
from cnnviz import divergence as D
from cnnviz import jobs
from cnnviz.activations import LayerNotFound
from cnnviz.cli import main
from cnnviz.pixels import from_uint8, to_uint8


@pytest.fixture(scope="module")
def fgsm(bundled, cat):
    """FGSM at 2/255 on the cat, and the noise control of the same size."""
    return A.run(bundled, cat, A.AttackSpec("fgsm", 2)), A.run(bundled, cat, A.NoiseSpec(2, 0))


@pytest.fixture(scope="module")
def curve(bundled, cat, fgsm):
    res, ctl = fgsm
    return jobs.run(bundled, cat, D.DivergenceSpec(D.Picture.of(res.adversarial), D.Picture.of(ctl.adversarial)))


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.net.modules())


@pytest.fixture
def forwards(bundled, monkeypatch):
    """Every call of the network's forward, as its batch size."""
    bundled.layers  # the layer list's probe pass, once per model, before counting
    seen, real = [], bundled.net.forward
    monkeypatch.setattr(bundled.net, "forward", lambda x, *a, **k: seen.append(x.shape[0]) or real(x, *a, **k))
    return seen


def test_an_image_against_itself_is_zero_at_every_layer(bundled, cat):
    x = A.pixels(bundled, cat)
    for d in (D.divergence(bundled, x, x.clone(), x.clone()),
              jobs.run(bundled, cat, D.DivergenceSpec(*[D.Picture.of(to_uint8(x))] * 2))):
        assert d.layers == D.layer_names(bundled)
        assert all(r["adversarial"] == 0.0 and r["noise"] == 0.0 for r in d.rows)  # exactly
        assert all(r["top_changed"] == 0 and r["noise_top_changed"] == 0 for r in d.rows)
        assert d.fastest is None  # nothing ever rises


def test_the_attack_grows_the_noise_fades(curve, fgsm):
    res, ctl = fgsm
    assert res.success and not ctl.success
    rows = curve.rows
    first, last = rows[0], rows[-1]
    assert last["adversarial"] > 3 * last["noise"]  # FGSM's last-layer change exceeds the noise's
    assert last["adversarial"] > 5 * first["adversarial"]  # the attack grows with depth
    assert last["noise"] < max(r["noise"] for r in rows) / 1.5  # the noise fades after its peak
    # at the pixels' first layer both are the same size (within a factor 2)
    assert 0.5 < first["adversarial"] / first["noise"] < 2
    assert curve.fastest in curve.layers and sum(r["top_changed"] for r in rows) > sum(
        r["noise_top_changed"] for r in rows)


def test_rows_are_the_models_layers_in_execution_order(bundled, curve):
    assert curve.layers == [l.name for l in bundled.layers if not getattr(l, "block", False)]
    assert curve.layers[0] == "_conv_stem" and curve.layers[-1] == "_fc"
    assert curve.layers.index("_swish") < curve.layers.index("_blocks.0._depthwise_conv") < curve.layers.index(
        "_swish#1")
    d = curve.to_dict()
    assert set(d) == {"model", "layers", "fastest", "k", "seconds"} and d["model"] == bundled.id
    assert all(set(r) == {"layer", "adversarial", "noise", "top_changed"} for r in d["layers"])
    json.dumps(d)


def test_one_recorded_pass_of_one_batch_and_no_hooks_left(bundled, cat, fgsm, forwards):
    res, ctl = fgsm
    spec = D.DivergenceSpec(D.Picture.of(res.adversarial), D.Picture.of(ctl.adversarial))
    assert spec.passes(bundled) == 3 and not jobs.RUNNER.is_heavy(bundled, spec)
    jobs.run(bundled, cat, spec)
    assert forwards == [3]  # clean, adversarial and noise in one pass
    assert no_hooks(bundled)
    forwards.clear()
    jobs.run(bundled, cat, D.LayerPairSpec("_blocks.6._bn1", D.Picture.of(res.adversarial)))
    assert forwards == [2] and no_hooks(bundled)


def test_relative_change_and_top_changed_against_plain_hooks(bundled, cat, fgsm, curve):
    """Recomputed from each layer's full output, taken by plain forward hooks."""
    res, ctl = fgsm
    names = ["_conv_stem", "_blocks.4._bn1", "_blocks.9._swish#1", "_swish#1", "_fc"]
    mods = dict(bundled.net.named_modules())
    got, handles = {}, []
    for n in names:
        base, _, k = n.partition("#")
        count = {"n": 0}

        def hook(m, i, o, n=n, k=int(k or 0), count=count):
            if count["n"] == k:
                got[n] = o.detach().clone().double()
            count["n"] += 1
        handles.append(mods[base].register_forward_hook(hook))
    x = torch.cat([A.pixels(bundled, cat), from_uint8(res.adversarial), from_uint8(ctl.adversarial)])
    try:
        with torch.no_grad():
            bundled.net(bundled.normalize(x))
    finally:
        for h in handles:
            h.remove()
    for n in names:
        a = got[n].reshape(3, got[n].shape[1], -1)
        row = curve.row(n)
        for j, key in ((1, "adversarial"), (2, "noise")):
            assert row[key] == pytest.approx(float((a[j] - a[0]).norm() / a[0].norm()), rel=1e-4), (n, key)
        means = a.mean(-1).numpy()
        top = [set(np.lexsort((np.arange(means.shape[1]), -means[j]))[:10]) for j in range(3)]
        assert row["top_changed"] == 10 - len(top[0] & top[1]), n
        assert row["noise_top_changed"] == 10 - len(top[0] & top[2]), n


def test_definitions_zero_clean_activation_and_fastest():
    assert D._relative(0.0, 0.0) == 0.0 and D._relative(2.0, 0.0) is None and D._relative(1.0, 4.0) == 0.25
    rows = [{"layer": "a", "adversarial": 0.1}, {"layer": "b", "adversarial": 0.5}, {"layer": "c", "adversarial": None},
            {"layer": "d", "adversarial": 1.2}, {"layer": "e", "adversarial": 0.2}]
    assert D.fastest_layer(rows) == "d"  # 0.5 -> 1.2 across the undefined layer
    assert D.fastest_layer([{"layer": "a", "adversarial": 1.0}, {"layer": "b", "adversarial": 0.5}]) is None
    assert D._top(np.array([1.0, 3.0, 3.0, 0.0]), 2) == [1, 2]  # ties by index


def test_layer_pair_maps_and_channels(bundled, cat, fgsm):
    from cnnviz.activations import compute

    res, _ = fgsm
    pic = D.Picture.of(res.adversarial)
    pair = jobs.run(bundled, cat, D.LayerPairSpec("_blocks.10._swish", pic))
    assert pair.spatial and pair.clean.shape == pair.adversarial.shape and pair.clean.ndim == 3
    alone = compute(bundled, A.pixels(bundled, cat), ["_blocks.10._swish"])["_blocks.10._swish"]
    np.testing.assert_allclose(pair.clean, alone, rtol=1e-4, atol=1e-5)  # a batch of 2 rounds a little otherwise
    ch = pair.channels()
    assert len(ch) == D.TOP_CHANNELS and [c["change"] for c in ch] == sorted((c["change"] for c in ch), reverse=True)
    assert ch[0]["change"] == pytest.approx(float(np.linalg.norm(pair.adversarial[ch[0]["index"]].astype(np.float64)
                                                                 - pair.clean[ch[0]["index"]])))
    left, entered = pair.top_sets()
    assert len(left) == len(entered)
    fc = jobs.run(bundled, cat, D.LayerPairSpec("_fc", pic))
    assert not fc.spatial and fc.clean.shape == (1000, 1, 1)


def test_bad_requests_say_what_is_wrong(bundled, cat, fgsm):
    res, ctl = fgsm
    pic = D.Picture.of(res.adversarial)
    with pytest.raises(LayerNotFound, match="No layer '_blocks.3.expand_conv'.*Closest: _blocks.3._expand_conv"):
        jobs.run(bundled, cat, D.LayerPairSpec("_blocks.3.expand_conv", pic))
    with pytest.raises(D.DivergenceError, match="one size"):
        jobs.run(bundled, cat, D.DivergenceSpec(pic, D.Picture.of(res.adversarial[:100])))
    with pytest.raises(D.DivergenceError, match="one size"):
        D.run(bundled, A.pixels(bundled, cat)[..., :100, :100], D.DivergenceSpec(pic, pic))
    forged = D.Picture(pic.digest, pic.shape, bytes(len(pic.data)))
    with pytest.raises(D.DivergenceError, match="does not hold its pixels"):
        jobs.run(bundled, cat, D.DivergenceSpec(forged, pic))
    assert no_hooks(bundled)
    # equal pictures are one cache key; the key names the digest, not the pixels
    assert D.DivergenceSpec(pic, pic) == D.DivergenceSpec(D.Picture.of(res.adversarial.copy()), pic)
    assert len(D.DivergenceSpec(pic, pic).key()) < 300


def test_cli_attack_layers_json(capsys, bundled, samples):
    assert main(["attack", str(samples["cat"]), "--method", "fgsm", "--layers", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"method", "success", "linf", "seconds", "layers"} <= set(out)
    assert [r["layer"] for r in out["layers"]] == D.layer_names(bundled)
    assert all(set(r) == {"layer", "adversarial", "noise", "top_changed"} for r in out["layers"])
    last = out["layers"][-1]
    assert last["adversarial"] > last["noise"] and isinstance(last["top_changed"], int)
    assert main(["attack", str(samples["cat"]), "--method", "fgsm", "--json"]) == 0
    assert "layers" not in json.loads(capsys.readouterr().out)  # only when asked
    assert main(["attack", str(samples["cat"]), "--method", "fgsm", "--eps", "1", "--layers"]) == 0
    text = capsys.readouterr().out
    assert "_swish#1" in text and "top changed" in text
