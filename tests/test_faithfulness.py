"""Deletion and insertion curves, the layer advisor and the methods' agreement."""
import json

import numpy as np
import pytest

from cnnviz import agreement as AG
from cnnviz import faithfulness as F
from cnnviz import jobs
from cnnviz import saliency as S
from cnnviz.cli import main
from cnnviz.contract import CnnvizError
from cnnviz.predict import probabilities


def _count_images(monkeypatch, model):
    """Images through the network, counted at its forward."""
    seen = []
    real = model.net.forward
    monkeypatch.setattr(model.net, "forward", lambda x: seen.append(len(x)) or real(x))
    return seen


def test_curves_ends_and_shapes(bundled, cat):
    cam = S.attribute(bundled, cat, "gradcam", 285).map
    c = F.curves(bundled, cat, {"cam": cam, F.RANDOM: None}, 285, steps=8)
    p = probabilities(bundled, cat)[285]
    for kind in F.KINDS:
        assert len(c["cam"][kind]) == 9
    assert c["cam"]["deletion"][0] == pytest.approx(p, abs=1e-5) == c["cam"]["insertion"][-1]
    assert c["cam"]["deletion"][-1] == c["random"]["insertion"][0]  # all blurred: the same image
    # the map finds the cat: restoring its pixels first beats a random order, by a margin
    assert F.area(c["cam"]["insertion"]) > F.area(c["random"]["insertion"]) + 0.1
    assert F.area(np.ones(5)) == pytest.approx(1.0) and F.area([0, 1]) == pytest.approx(0.5)


def test_curves_run_one_batched_set_of_passes(bundled, cat, monkeypatch):
    maps = {"a": np.random.default_rng(0).random((224, 224)), "b": None}
    seen = _count_images(monkeypatch, bundled)
    F.curves(bundled, cat, maps, 1, steps=10)
    assert sum(seen) == F.passes(2, 10) == 2 + 2 * 2 * 9 and max(seen) <= F.BATCH


def test_advisor_scores_equal_separately_computed_areas(bundled, cat):
    sweep = jobs.run(bundled, cat, S.SweepSpec(285, advise=True, steps=10))
    assert [a.layer for a in sweep.advice] == S.stage_layers(bundled) == list(sweep.maps)
    for a in sweep.advice:
        cam = sweep.maps[a.layer]  # the layer's Grad-CAM (equal to its single-layer map: test_saliency_page)
        d = F.deletion_curve(bundled, cat, cam, 285, steps=10)  # each curve on its own, in its own batches
        i = F.insertion_curve(bundled, cat, cam, 285, steps=10)
        assert a.deletion_auc == pytest.approx(F.area(d), abs=1e-6)  # equal to float rounding (other batches)
        assert a.insertion_auc == pytest.approx(F.area(i), abs=1e-6)
    r = sweep.random
    assert r.deletion_auc == pytest.approx(F.area(F.deletion_curve(bundled, cat, None, 285, steps=10)), abs=1e-6)
    assert sweep.best == max(sweep.advice, key=lambda a: a.insertion_auc - a.deletion_auc).layer
    d = sweep.to_dict()
    assert d["best"] == sweep.best and [x["layer"] for x in d["advice"]] == list(sweep.maps)
    assert set(d["advice"][0]) == {"layer", "deletion_auc", "insertion_auc"}


def test_advisor_costs_one_backward_and_the_curves(bundled, cat, monkeypatch):
    spec = S.SweepSpec(285, advise=True, steps=6).check(bundled)
    seen = _count_images(monkeypatch, bundled)
    S.run(bundled, cat, spec)
    layers = len(S.stage_layers(bundled))
    assert sum(seen) == spec.passes(bundled) == 1 + F.passes(layers + 1, 6)
    assert seen[0] == 1  # the one Grad-CAM pass for every stage, then batches of curves


@pytest.mark.parametrize("spec, words", [
    (S.SweepSpec(advise=True, steps=1), "steps"),
    (S.SweepSpec(advise=True, steps=10 ** 6), "steps"),
    (S.SweepSpec(layers="_swish#1"), "list of names"),
    (S.SweepSpec(layers=("_fc",)), "_fc"),
])
def test_advisor_bad_input(bundled, spec, words):
    with pytest.raises(CnnvizError, match=words):
        spec.check(bundled)


def test_agreement_matrix_is_symmetric_with_a_unit_diagonal(bundled, cat):
    r = jobs.run(bundled, cat, AG.AgreementSpec(("gradcam", "gradcampp", "gradients", "ig"), 285, steps=6))
    m = r.matrix
    assert m.shape == (4, 4) and np.array_equal(m, m.T) and np.array_equal(np.diag(m), np.ones(4))
    assert np.all(np.abs(m) <= 1)
    # the entries are the maps' rank correlations, and Grad-CAM++ follows Grad-CAM closely
    assert m[0, 1] > 0.8 and m[0, 1] == pytest.approx(AG.spearman(r.maps["gradcam"], r.maps["gradcampp"]))
    assert r.methods == ["gradcam", "gradcampp", "gradients", "ig"] and not r.skipped
    assert list(r.deletion) == list(r.insertion) == [*r.methods, F.RANDOM]
    for name in r.deletion:
        assert r.areas[name]["deletion"] == pytest.approx(F.area(r.deletion[name]))
    assert "Grad-CAM and Grad-CAM++" in r.summary and "Most faithful here" in r.summary


def test_agreement_summary_names_agreeing_and_apart_methods():
    rho = np.array([[1, 0.9, 0.1], [0.9, 1, 0.0], [0.1, 0.0, 1]])
    said = AG.summary(["A", "B", "C"], rho, {"A": 0.1, "B": 0.3, "C": -0.1})
    assert "Agree: A and B (ρ = 0.90)" in said and "Stands apart: C" in said and "Most faithful here: B" in said
    assert AG.summary(["A", "B"], np.eye(2)).startswith("No two methods agree")


def test_agreement_leaves_out_a_method_the_model_cannot_take(cat):
    from cnnviz import models

    densenet = models.load("torchvision:densenet121@random")  # F.relu: no guided rule
    r = AG.run(densenet, cat, AG.AgreementSpec(("gradcam", "gradients", "guided_backprop"), 1, steps=2))
    assert r.methods == ["gradcam", "gradients"] and "F.relu" in r.skipped["guided_backprop"]
    assert r.matrix.shape == (2, 2)


@pytest.mark.parametrize("methods, words", [(("gradcam",), "at least two"), (("gradcam", "scorecam"), "scorecam"),
                                            ("gradcam,ig", "list of names"), (("gradcam", "lrp"), "lrp")])
def test_agreement_bad_input(bundled, methods, words):
    with pytest.raises(CnnvizError, match=words):
        AG.AgreementSpec(methods).check(bundled)


def test_cli_saliency_advise_and_agree(capsys, samples):
    assert main(["saliency", str(samples["cat"]), "--method", "gradcam", "--advise", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"advice", "best", "random"} <= set(out)
    assert out["layer"] == out["best"] in [a["layer"] for a in out["advice"]]  # the best layer's map
    assert all(0 <= a["deletion_auc"] <= 1 and 0 <= a["insertion_auc"] <= 1 for a in out["advice"])
    assert main(["agree", str(samples["cat"]), "--methods", "gradcam,gradients", "--steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["methods"] == ["gradcam", "gradients"] and len(out["matrix"]) == 2
    assert len(out["deletion"]["random"]) == 5 and out["summary"]
    assert main(["agree", str(samples["cat"]), "--methods", "gradcam"]) == 2
    assert "at least two" in capsys.readouterr().err
