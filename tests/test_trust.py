import numpy as np
import pytest
import torch

from cnnviz import saliency as S
from cnnviz import trust as T
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
    curve = T.deletion_curve(bundled, img, cam, target, steps=10)
    assert len(curve) == 11
    assert curve[0] == pytest.approx(probabilities(bundled, img)[target], abs=1e-5)
    assert curve[-1] < curve[0]
    r1, r2 = (T.deletion_curve(bundled, img, None, target, steps=10, seed=3) for _ in range(2))
    assert np.array_equal(r1, r2)
    assert 0 <= T.area(curve) <= 1 and T.area(np.ones(5)) == pytest.approx(1.0)
