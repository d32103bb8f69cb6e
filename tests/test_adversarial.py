"""Adversarial backend: budgets hold on the 8-bit image, attacks reach their goal, seeds
reproduce, the PNG round trip is exact, the model is left as it was; the CLI contract.

Most tests attack a small crop (the bundled model takes any input size) to stay fast."""
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnviz import adversarial as A
from cnnviz import cli, models
from cnnviz.images import load_image


@pytest.fixture(scope="module")
def small(bundled, samples):
    """The cat at 96x96, on the 1/255 grid."""
    x = bundled.to_pixels(load_image(samples["cat"]))
    return A.pixels(bundled, F.interpolate(x, size=(96, 96), mode="bilinear", antialias=True))


@pytest.mark.parametrize("method,eps,kw", [
    ("fgsm", 1, {}), ("fgsm", 3.5, {}), ("pgd", 2, {"steps": 4}), ("pgd", 2.7, {"steps": 4, "random_start": True}),
    ("pgd", 5, {"steps": 4, "step_size": 3.0, "target": 409}),
])
def test_linf_never_exceeds_eps(bundled, small, method, eps, kw):
    r = A.attack(bundled, small, method, eps, **kw)
    assert r.linf <= eps and r.linf == np.abs(r.delta).max()
    assert r.linf == int(eps) if method == "fgsm" else r.linf >= 1  # FGSM moves by the whole (whole-level) budget
    assert np.array_equal(r.original, A.to_uint8(small))  # "before" is the 8-bit input itself
    assert r.l2 == pytest.approx(np.sqrt(((r.delta / 255.0) ** 2).sum()))


def test_noise_control_moves_every_value_by_the_budget(bundled, small):
    r = A.noise(bundled, small, 3, seed=1)
    d = r.delta
    inside = (r.original >= 3) & (r.original <= 252)  # not clipped at 0 or 255
    assert r.linf == 3 and np.all(np.abs(d[inside]) == 3)
    assert 0.45 < (d[inside] > 0).mean() < 0.55  # uniform signs
    assert np.array_equal(A.noise(bundled, small, 3, seed=1).adversarial, r.adversarial)
    assert not np.array_equal(A.noise(bundled, small, 3, seed=2).adversarial, r.adversarial)


def test_untargeted_pgd_flips_and_targeted_pgd_reaches_a_far_class(bundled, small):
    r = A.attack(bundled, small, "pgd", 2, 5)
    assert r.success and r.predicted != r.label and r.probs_after[r.label] < r.probs_before[r.label]
    target = A.far_targets(bundled, r.probs_before, 3)[1]
    t = A.attack(bundled, small, "pgd", 8, 20, target=target)
    assert t.success and t.predicted == target and t.probs_before[target] < 1e-3
    # The pitfall avoided: Captum's default loss -log(output) on logits gets NaN gradients
    # wherever the target's logit is negative, and a far target never moves.
    from captum.robust import PGD

    naive = PGD(bundled.pixel_net, lower_bound=0, upper_bound=1).perturb(
        small, radius=8 / 255, step_size=0.5 / 255, step_num=3, target=target, targeted=True)
    assert A.classify(bundled, naive)[0].argmax() != target


@pytest.mark.parametrize("target", [None, 409])
def test_the_fused_first_step_is_captums_step(bundled, small, target):
    """attack() takes PGD's first step itself (its forward pass gives the label too):
    the result equals Captum's PGD run from the start with a separate label pass."""
    r = A.attack(bundled, small, "pgd", 3, 6, target=target)
    goal = target if target is not None else int(A.classify(bundled, small)[0].argmax())
    alone = A._pgd(bundled, small, small, 3, r.step_size, 6, goal, target is not None)
    assert np.array_equal(r.adversarial, A.to_uint8(alone))
    assert np.allclose(r.probs_before, A.classify(bundled, small)[0])


def test_seed_reproducibility_without_touching_the_global_generator(bundled, small):
    state = torch.get_rng_state()
    a = A.attack(bundled, small, "pgd", 4, 3, random_start=True, seed=7)
    b = A.attack(bundled, small, "pgd", 4, 3, random_start=True, seed=7)
    c = A.attack(bundled, small, "pgd", 4, 3, random_start=True, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(a.adversarial, b.adversarial) and np.array_equal(a.probs_after, b.probs_after)
    assert not np.array_equal(a.adversarial, c.adversarial)


def test_png_round_trip_is_exact(bundled, small):
    r = A.attack(bundled, small, "pgd", 3, 4, target=409)
    check = A.png_check(bundled, r)
    back = np.asarray(Image.open(io.BytesIO(check.png)))
    assert back.dtype == np.uint8 and np.array_equal(back, r.adversarial)
    assert np.allclose(check.probs, r.probs_after) and check.success == r.success


def test_the_downloaded_png_still_fools_the_model_when_uploaded_again(bundled, samples):
    from cnnviz.predict import predict

    r = A.attack(bundled, load_image(samples["coffee"]), "pgd", 3, 5, target=409)
    png = A.png_check(bundled, r).png
    again = load_image(png, "adversarial.png")  # what the sidebar does with an upload
    assert r.success and np.array_equal(np.asarray(again), r.adversarial)
    assert predict(bundled, again, 1)[0].index == 409


def test_model_state_restored(samples):
    """Hooks, requires_grad, .grad, train/eval and grad mode are as before every call."""
    model = models.load("torchvision:resnet18@random")
    x = A.pixels(model, F.interpolate(model.to_pixels(load_image(samples["coffee"])), size=(64, 64)))
    net = model.pixel_net
    net[1].fc.weight.requires_grad_(True)  # a caller's own setting must survive
    before = [p.requires_grad for p in net.parameters()]
    with torch.no_grad():  # the attacks enable grad themselves, and leave it off again
        A.attack(model, x, "fgsm", 2)
        A.attack(model, x, "pgd", 2, 3, random_start=True)
        A.budget_sweep(model, x, "pgd", [1, 2], 2)
        A.budget_sweep(model, x, "fgsm", [1, 2])
        assert not torch.is_grad_enabled()
    assert [p.requires_grad for p in net.parameters()] == before
    assert all(p.grad is None for p in net.parameters())
    assert not net.training
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert not x.requires_grad


def test_sweeps_reuse_work_and_agree_with_single_attacks(bundled, small):
    seen = []
    s = A.budget_sweep(bundled, small, "fgsm", [1, 2, 4], progress=lambda f, t: seen.append(f))
    assert s.budgets == [0, 1, 2, 4] and seen == [1.0]
    for b, p in zip(s.budgets[1:], s.p_label[1:]):  # one gradient serves every budget
        assert p == pytest.approx(A.attack(bundled, small, "fgsm", b).probs_after[s.label], abs=1e-6)
    seen.clear()
    s = A.budget_sweep(bundled, small, "pgd", [1, 2, 3], 3, progress=lambda f, t: seen.append(f))
    assert seen == pytest.approx([1 / 3, 2 / 3, 1])
    assert s.success[0] is False and all(np.diff(s.p_label[1:]) <= 0)  # warm starts: never worse
    assert s.smallest == next(b for b, ok in zip(s.budgets, s.success) if ok)
    assert s.success[s.budgets.index(s.smallest):] == [True] * (len(s.budgets) - s.budgets.index(s.smallest))


@pytest.mark.parametrize("kw,match", [
    ({"eps": 0.5}, "between 1 and 255"), ({"eps": 300}, "between 1 and 255"), ({"steps": 0}, "steps"),
    ({"step_size": -1}, "step size"), ({"target": 5000}, "does not exist"), ({"method": "cw"}, "Unknown attack"),
])
def test_bad_parameters_say_what_to_do(bundled, small, kw, match):
    with pytest.raises(A.AttackError, match=match):
        A.attack(bundled, small, **{"method": "pgd", **kw})


def test_targeting_the_current_answer_is_refused(bundled, small):
    label = int(A.classify(bundled, small)[0].argmax())
    with pytest.raises(A.AttackError, match="already classified as"):
        A.attack(bundled, small, "pgd", 2, 2, target=label)


def test_far_targets(bundled, small):
    probs = A.classify(bundled, small)[0]
    far = A.far_targets(bundled, probs, 5)
    assert len(set(far)) == 5 and probs.argmax() not in far
    assert all(probs[i] <= np.quantile(probs, 0.05) for i in far)
    assert A.far_targets(bundled, np.array([0.7, 0.3]), 5) == [1]  # a two-class checkpoint: no repeats


def test_concurrent_sessions_do_not_mix(bundled, small):
    """Streamlit sessions share one model: attacks from two threads equal the serial ones."""
    from concurrent.futures import ThreadPoolExecutor

    x = small[..., :48, :48]
    jobs = [dict(target=409), dict(target=951), dict(random_start=True, seed=4)]
    serial = [A.attack(bundled, x, "pgd", 4, 2, **kw).adversarial for kw in jobs]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda kw: A.attack(bundled, x, "pgd", 4, 2, **kw).adversarial, jobs))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel))
    assert not np.array_equal(serial[0], serial[1])


def test_cli_attack_json_contract(samples, tmp_path, capsys):
    out = tmp_path / "adv.png"
    code = cli.main(["attack", str(samples["cat"]), "--method", "fgsm", "--eps", "2", "--out", str(out), "--json"])
    assert code == 0
    j = json.loads(capsys.readouterr().out)
    assert set(j) == {"model", "method", "eps", "steps", "original", "adversarial", "target", "success", "linf",
                      "l2", "png_success", "seconds"}
    assert j["method"] == "fgsm" and j["eps"] == 2 and j["steps"] == 1 and j["target"] is None
    assert set(j["original"]) == {"index", "label", "prob"} and 0 < j["linf"] <= 2 and j["l2"] > 0
    assert isinstance(j["png_success"], bool) and j["seconds"] > 0
    assert j["success"] == (j["original"]["index"] != j["adversarial"]["index"])
    assert np.asarray(Image.open(out)).shape == (224, 224, 3)


def test_cli_attack_targeted_by_name_and_bad_input(samples, capsys):
    code = cli.main(["attack", str(samples["cat"]), "--method", "fgsm", "--eps", "1", "--target", "Tabby", "--json"])
    j = json.loads(capsys.readouterr().out)
    assert code == 0 and j["target"]["index"] == 281 and j["png_success"] is None
    assert cli.main(["attack", str(samples["cat"]), "--eps", "0"]) == 2
    assert "between 1 and 255" in capsys.readouterr().err
