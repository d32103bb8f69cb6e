import json

import numpy as np
import pytest
import torch

from cnnviz import jobs
from cnnviz import saliency as S
from cnnviz import faithfulness as F
from cnnviz import trust as T
from cnnviz.cli import main
from cnnviz.contract import Cancelled, CnnvizError, Progress
from cnnviz.images import load_image
from cnnviz.predict import probabilities


def test_spearman():
    a = np.arange(10.0)
    assert T.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert T.spearman(a, -a) == pytest.approx(-1.0)
    assert T.spearman(a, np.zeros(10)) == 0.0
    assert T.spearman(np.array([1, 1, 2, 3.0]), np.array([5, 5, 6, 7.0])) == pytest.approx(1.0)


def test_randomization_check_leaves_the_shared_model_alone(bundled, samples):
    img = load_image(samples["cat"])
    x = bundled.preprocess(img)
    with torch.no_grad():
        before = bundled.net(x).clone()
    r = T.randomization_check(bundled, img, ["gradcam", "gradients"], 285, steps=3)
    with torch.no_grad():
        assert torch.equal(bundled.net(x), before)
    assert r["steps"][0] == "trained" and len(r["steps"]) == 4
    assert r["correlation"]["gradcam"][0] == 1.0
    assert r["correlation"]["gradcam"][-1] < 0.5  # Grad-CAM depends on the weights
    assert r["blocks"][0] == "_fc" and "_blocks.15" in r["blocks"]


def test_deletion_curve(bundled, samples):
    img = load_image(samples["coffee"])
    target = 967
    cam = S.attribute(bundled, img, "gradcam", target).map
    curve = F.deletion_curve(bundled, img, cam, target, steps=10)
    assert len(curve) == 11
    assert curve[0] == pytest.approx(probabilities(bundled, img)[target], abs=1e-5)
    assert curve[-1] < curve[0]
    r1, r2 = (F.deletion_curve(bundled, img, None, target, steps=10, seed=3) for _ in range(2))
    assert np.array_equal(r1, r2)
    assert 0 <= F.area(curve) <= 1 and F.area(np.ones(5)) == pytest.approx(1.0)


def _weights(model):
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_trust_report_through_the_runner(bundled, samples):
    img = load_image(samples["cat"])
    before = _weights(bundled)
    spec = T.TrustSpec(("gradcam", "gradients"), 285, steps=2)
    assert spec.check(bundled) is spec and spec.passes(bundled) > jobs.SHORT_PASSES  # heavy: a private copy
    r = jobs.run(bundled, img, spec)
    assert all(torch.equal(v, before[k]) for k, v in bundled.net.state_dict().items())
    assert r.steps[0] == "trained" and len(r.steps) == 3 and r.blocks[0] == "_fc"
    assert all(len(v) == 3 and v[0] == 1.0 for v in r.correlation.values())
    assert list(r.deletion) == list(r.areas) == ["gradcam", "gradients", "random"]
    cam = S.attribute(bundled, img, "gradcam", 285).map
    # the same curve made on its own (other batches: equal to float rounding)
    assert np.allclose(r.deletion["gradcam"], F.deletion_curve(bundled, img, cam, 285), atol=1e-6, rtol=0)
    assert r.areas["gradcam"] == F.area(np.array(r.deletion["gradcam"]))
    assert r.prob == pytest.approx(probabilities(bundled, img)[285], abs=1e-6) and r.label == "Egyptian cat"
    d = r.to_dict()
    assert set(d) == {"model", "target", "methods", "steps", "blocks", "correlation", "deletion", "areas", "seconds"}
    assert d["target"]["index"] == 285 and d["methods"] == ["gradcam", "gradients"]


def test_randomized_integrated_gradients_use_the_randomized_network(bundled, samples):
    """IG's passes run on the folded `fast_net`, shared by every copy and so always the trained
    network: the randomized maps must come from the randomized one, or IG would look perfect."""
    r = jobs.run(bundled, load_image(samples["cat"]), T.TrustSpec(("ig",), 285, steps=1))
    assert r.correlation["ig"][0] == 1.0 and r.correlation["ig"][-1] < 0.5


def test_trust_checks_refuse_what_they_cannot_check(bundled):
    with pytest.raises(CnnvizError, match="Closest: gradcam"):
        T.TrustSpec(("gradcan",)).check(bundled)
    with pytest.raises(CnnvizError, match="do not take Guided Backprop"):
        T.TrustSpec(("guided_backprop",)).check(bundled)
    with pytest.raises(CnnvizError, match="at least one"):
        T.TrustSpec(()).check(bundled)
    assert T.trust_methods() == ["gradcam", "gradcampp", "gradients", "smoothgrad", "ig", "occlusion"]


@pytest.mark.parametrize("stop_at", [1, 5])
def test_trust_stops_within_one_batch_and_restores_the_weights(bundled, samples, stop_at):
    """Stopped at the first report, or in the middle of the randomization: no more than one
    batch runs after the request, and the swapped parameters are back."""
    img = load_image(samples["cat"])
    before = _weights(bundled)
    batches, reports, at_stop = [], [], []

    def report(fraction, text, _):
        reports.append(text)
        if len(reports) == stop_at:
            at_stop.append(len(batches))
            progress.stop()

    progress = Progress(report)
    handle = bundled.net.register_forward_hook(lambda m, i, o: batches.append(len(i[0])))
    try:
        with pytest.raises(Cancelled):
            T.run(bundled, img, T.TrustSpec(("gradcam", "gradients"), 285, steps=3), progress=progress)
    finally:
        handle.remove()
    assert at_stop and len(batches) <= at_stop[0] + 1, (at_stop, batches, reports)
    assert all(torch.equal(v, before[k]) for k, v in bundled.net.state_dict().items())


def test_cli_trust(capsys, samples):
    assert main(["trust", str(samples["cat"]), "--methods", "gradcam,gradients", "--target", "tabby", "--steps", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "target", "methods", "steps", "blocks", "correlation", "deletion", "areas", "seconds",
                        "image"}
    assert out["target"]["index"] == 281 and out["methods"] == ["gradcam", "gradients"] and len(out["steps"]) == 3
    assert len(out["deletion"]["random"]) == T.DELETION_STEPS + 1 and 0 <= out["areas"]["gradcam"] <= 1
    assert out["seconds"] > 0


@pytest.mark.parametrize("argv, words", [
    (["--methods", "gradcam,lrp"], "No method 'lrp'"),
    (["--methods", "guided_backprop"], "do not take"),
    (["--target", "tabbby"], "Did you mean: tabby"),
    (["--steps", "0"], "at least 1"),
])
def test_cli_trust_bad_input(capsys, samples, argv, words):
    assert main(["trust", str(samples["cat"]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
