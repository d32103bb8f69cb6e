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
from cnnviz.contract import Cancelled, Progress
from cnnviz.images import load_image


def attack(model, x, method="pgd", eps=2, steps=10, step_size=None, target=None, random_start=False, seed=0, **kw):
    return A.run(model, x, A.AttackSpec(method, eps, steps, step_size, target, random_start, seed, **kw))


def budget_sweep(model, x, method="pgd", budgets=range(1, 17), steps=10, progress=None, **kw):
    return A.run(model, x, A.BudgetSweepSpec(method, tuple(budgets), steps, **kw), progress=progress)


def reports(seen):
    """A Progress whose reports append their fraction to `seen`."""
    return Progress(lambda f, text, preview: seen.append(f))


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
    r = attack(bundled, small, method, eps, **kw)
    assert r.linf <= eps and r.linf == np.abs(r.delta).max()
    assert r.linf == int(eps) if method == "fgsm" else r.linf >= 1  # FGSM moves by the whole (whole-level) budget
    assert np.array_equal(r.original, A.to_uint8(small))  # "before" is the 8-bit input itself
    assert r.l2 == pytest.approx(np.sqrt(((r.delta / 255.0) ** 2).sum()))


def test_noise_control_moves_every_value_by_the_budget(bundled, small):
    r = A.run(bundled, small, A.NoiseSpec(3, seed=1))
    d = r.delta
    inside = (r.original >= 3) & (r.original <= 252)  # not clipped at 0 or 255
    assert r.linf == 3 and np.all(np.abs(d[inside]) == 3)
    assert 0.45 < (d[inside] > 0).mean() < 0.55  # uniform signs
    assert np.array_equal(A.run(bundled, small, A.NoiseSpec(3, seed=1)).adversarial, r.adversarial)
    assert not np.array_equal(A.run(bundled, small, A.NoiseSpec(3, seed=2)).adversarial, r.adversarial)


def test_untargeted_pgd_flips_and_targeted_pgd_reaches_a_far_class(bundled, small):
    r = attack(bundled, small, "pgd", 2, 5)
    assert r.success and r.predicted != r.label and r.probs_after[r.label] < r.probs_before[r.label]
    target = A.far_targets(bundled, r.probs_before, 3)[1]
    t = attack(bundled, small, "pgd", 8, 20, target=target)
    assert t.success and t.predicted == target and t.probs_before[target] < 1e-3
    # The pitfall avoided: Captum's default loss -log(output) on logits gets NaN gradients
    # wherever the target's logit is negative, and a far target never moves.
    from captum.robust import PGD

    naive = PGD(bundled.pixel_net, lower_bound=0, upper_bound=1).perturb(
        small, radius=8 / 255, step_size=0.5 / 255, step_num=3, target=target, targeted=True)
    assert A.classify(bundled, naive)[0].argmax() != target


@pytest.mark.parametrize("target", [None, 409])
def test_the_fused_first_step_is_captums_step(bundled, small, target):
    """The attack takes PGD's first step itself (its forward pass gives the label too):
    the result equals Captum's PGD run from the start with a separate label pass."""
    r = attack(bundled, small, "pgd", 3, 6, target=target)
    goal = target if target is not None else int(A.classify(bundled, small)[0].argmax())
    alone = A._pgd(bundled, small, small, 3, r.step_size, 6, goal, target is not None)
    assert np.array_equal(r.adversarial, A.to_uint8(alone))
    assert np.allclose(r.probs_before, A.classify(bundled, small)[0])


def test_seed_reproducibility_without_touching_the_global_generator(bundled, small):
    state = torch.get_rng_state()
    a = attack(bundled, small, "pgd", 4, 3, random_start=True, seed=7)
    b = attack(bundled, small, "pgd", 4, 3, random_start=True, seed=7)
    c = attack(bundled, small, "pgd", 4, 3, random_start=True, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(a.adversarial, b.adversarial) and np.array_equal(a.probs_after, b.probs_after)
    assert not np.array_equal(a.adversarial, c.adversarial)


def test_png_round_trip_is_exact(bundled, small):
    r = attack(bundled, small, "pgd", 3, 4, target=409, png=True)
    back = np.asarray(Image.open(io.BytesIO(r.png)))
    assert back.dtype == np.uint8 and np.array_equal(back, r.adversarial)
    assert np.allclose(r.png_probs, r.probs_after) and r.png_success == r.success
    assert attack(bundled, small, "pgd", 3, 4, target=409).png_success is None  # only when asked


def test_the_downloaded_png_still_fools_the_model_when_uploaded_again(bundled, samples):
    from cnnviz.predict import predict

    r = attack(bundled, load_image(samples["coffee"]), "pgd", 3, 5, target=409, png=True)
    png = r.png
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
        attack(model, x, "fgsm", 2, png=True)
        attack(model, x, "pgd", 2, 3, random_start=True)
        budget_sweep(model, x, "pgd", [1, 2], 2)
        budget_sweep(model, x, "fgsm", [1, 2])
        assert not torch.is_grad_enabled()
    assert [p.requires_grad for p in net.parameters()] == before
    assert all(p.grad is None for p in net.parameters())
    assert not net.training
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert not x.requires_grad


def test_sweeps_reuse_work_and_agree_with_single_attacks(bundled, small):
    seen = []
    s = budget_sweep(bundled, small, "fgsm", [1, 2, 4], progress=reports(seen))
    assert s.budgets == [0, 1, 2, 4] and seen == [1.0]
    for b, p in zip(s.budgets[1:], s.p_label[1:]):  # one gradient serves every budget
        assert p == pytest.approx(attack(bundled, small, "fgsm", b).probs_after[s.label], abs=1e-6)
    seen.clear()
    s = budget_sweep(bundled, small, "pgd", [1, 2, 3], 3, progress=reports(seen))
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
        attack(bundled, small, **{"method": "pgd", **kw})


def test_targeting_the_current_answer_is_refused(bundled, small):
    label = int(A.classify(bundled, small)[0].argmax())
    with pytest.raises(A.AttackError, match="already classified as"):
        attack(bundled, small, "pgd", 2, 2, target=label)


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
    serial = [attack(bundled, x, "pgd", 4, 2, **kw).adversarial for kw in jobs]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda kw: attack(bundled, x, "pgd", 4, 2, **kw).adversarial, jobs))
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


def test_the_registry_says_what_each_attack_takes_and_costs(bundled):
    from cnnviz import jobs

    assert list(A.ATTACKS) == ["fgsm", "pgd"] and A.ATTACKS["pgd"].label == "PGD"
    fgsm = A.AttackSpec("fgsm", 3, steps=40, step_size=1.0, random_start=True).check(bundled)
    assert (fgsm.steps, fgsm.step_size, fgsm.random_start, fgsm.alpha) == (1, None, False, 3.0)  # one step of eps
    assert fgsm.passes(bundled) == 3 and not jobs.RUNNER.is_heavy(bundled, fgsm)
    pgd = A.AttackSpec("pgd", 4, 10).check(bundled)
    assert pgd.alpha == 1.0 and pgd.passes(bundled) == 11 and jobs.RUNNER.is_heavy(bundled, pgd)
    assert A.AttackSpec("pgd", 4, 10, png=True, random_start=True).passes(bundled) == 13
    assert A.BudgetSweepSpec("pgd", (4, 1, 2)).check(bundled).budgets == (1.0, 2.0, 4.0)
    with pytest.raises(A.AttackError, match="at least one budget"):
        A.BudgetSweepSpec("pgd", ()).check(bundled)
    with pytest.raises(A.AttackError, match="between 1 and 255"):
        A.BudgetSweepSpec("pgd", (1, 300)).check(bundled)
    assert A.parse_budgets("1:4:1") == (1, 2, 3, 4) and A.parse_budgets("8,2") == (8, 2)
    assert A.parse_budgets(None) == tuple(range(1, 17))
    with pytest.raises(A.AttackError, match="Cannot read"):
        A.parse_budgets("1:x")


class Counter:
    """Counts forward passes of the given modules (both PGD networks) while installed."""

    def __init__(self, *modules):
        self.n, self.handles = 0, [m.register_forward_hook(self.hook) for m in modules]

    def hook(self, *_):
        self.n += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def stopping(counter, at):
    """A Progress that asks to stop on its first report and notes the passes run by then."""
    p = Progress(lambda f, text, preview: at.append(counter.n) or p.stop())
    return p


@pytest.mark.parametrize("spec", [A.AttackSpec("pgd", 2, 8), A.AttackSpec("pgd", 2, 8, random_start=True),
                                  A.BudgetSweepSpec("pgd", (1, 2, 3), 4)])
def test_pgd_and_the_sweep_stop_within_one_step(bundled, small, spec):
    counter, at = Counter(bundled.net, bundled.fast_net), []
    try:
        with pytest.raises(Cancelled):
            A.run(bundled, small, spec, progress=stopping(counter, at))
    finally:
        counter.remove()
    assert len(at) == 1 and counter.n - at[0] <= 1  # at most one more step after the stop request
    assert not bundled.fast_net._forward_hooks and not bundled.net._forward_hooks


def test_cli_sweep_json_contract(samples, capsys):
    code = cli.main(["sweep", str(samples["cat"]), "--method", "fgsm", "--budgets", "1:3:1", "--json"])
    assert code == 0
    j = json.loads(capsys.readouterr().out)
    assert set(j) == {"budgets", "label", "target", "p_label", "p_target", "predicted", "success", "smallest",
                      "model", "seconds", "image"}
    assert j["budgets"] == [0, 1, 2, 3] and j["target"] is None and j["p_target"] is None
    assert j["success"][0] is False and j["predicted"][0] == j["label"] and j["seconds"] > 0
    assert j["smallest"] == next((b for b, ok in zip(j["budgets"], j["success"]) if ok), None)
    code = cli.main(["sweep", str(samples["cat"]), "--budgets", "1,2", "--steps", "2", "--target", "409", "--json"])
    j = json.loads(capsys.readouterr().out)
    assert code == 0 and j["target"] == 409 and len(j["p_target"]) == 3 and j["budgets"] == [0, 1, 2]
    assert cli.main(["sweep", str(samples["cat"]), "--budgets", "0:2:1"]) == 2
    assert "between 1 and 255" in capsys.readouterr().err
