"""Server-side bounds on jobs (issue #14): the pass budget in the runner, what every spec's
`passes` counts (images through the network, checked with a hook), each spec's knobs and
non-finite numbers, the occlusion sweep from a URL, and pages that clamp what a link asks
for and say so."""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch

from cnnviz import adversarial as A
from cnnviz import bounds, jobs
from cnnviz import featurevis as FV
from cnnviz import filters as Fi
from cnnviz import limits as L
from cnnviz import receptive as R
from cnnviz import saliency as S
from cnnviz import trust as T
from cnnviz.activations import ActivationsSpec
from cnnviz.contract import CnnvizError, Result, Spec
from cnnviz.predict import PredictSpec

from . import apptest
from .conftest import ROOT

FV_LAYER = "_blocks.3._swish#1"  # 144 channels
SMALL_LAYER = "_blocks.0._project_conv"  # 16 channels
RF_LAYER = "_blocks.8._project_conv"


# ---------------------------------------------------------------- the runner's budget

@dataclass(frozen=True)
class CostSpec(Spec):
    """A job that says it costs `n` images (this module is its analysis: `run` below)."""
    n: int

    def passes(self, model) -> int:
        return self.n


RAN: list[int] = []


def run(model, image, spec: CostSpec, *, progress=None) -> Result:
    RAN.append(spec.n)
    return Result()


def test_the_runner_refuses_a_job_over_the_budget_before_it_runs(bundled):
    RAN.clear()
    with pytest.raises(jobs.OverBudget) as e:
        jobs.Runner().run(bundled, None, CostSpec(bounds.MAX_PASSES + 1))
    assert f"{bounds.MAX_PASSES + 1:,} images" in str(e.value) and f"at most {bounds.MAX_PASSES:,}" in str(e.value)
    assert RAN == [] and isinstance(e.value, CnnvizError)
    jobs.Runner().run(bundled, None, CostSpec(bounds.MAX_PASSES))  # the limit itself runs
    assert RAN == [bounds.MAX_PASSES]


class Images:
    """Counts images entering a root network of `model`'s class (the shared net, private
    copies, the folded fast_net) while installed: a global forward pre-hook."""

    def __init__(self, model):
        self.cls, self.n = type(model.net), 0

    def hook(self, module, args):
        if type(module) is self.cls and args and isinstance(args[0], torch.Tensor):
            self.n += args[0].shape[0]

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("make, image", [
    (lambda: A.BudgetSweepSpec("pgd", tuple(range(1, 256)), steps=1000), "pil"),  # 255,256 images
    (lambda: S.SaliencySpec("occlusion", target=1, occlusion_window=1, occlusion_stride=1), "pil"),  # 50,177
    (lambda: FV.GallerySpec(FV_LAYER, 64, steps=1024), None),  # 64 x 1,026
    # Fine at the model's 224 x 224 (3,027 images); on these 600 x 600 pixels 22,203.
    (lambda: S.SaliencySpec("occlusion", target=1, occlusion_window=8, occlusion_stride=4), "big"),
])
def test_jobs_over_the_budget_are_refused_without_a_pass(bundled, cat, make, image):
    x = {"pil": cat, "big": torch.rand(1, 3, 600, 600), None: None}[image]
    bundled.layers  # the model's one probe pass (a spec's check reads the layers), not the job's
    with Images(bundled) as seen, pytest.raises(jobs.OverBudget, match="at most 20,000"):
        jobs.run(bundled, x, make())
    assert seen.n == 0


def test_a_job_takes_one_image(bundled):
    with pytest.raises(CnnvizError, match=r"\[1, 3, H, W\]"):
        jobs.run(bundled, torch.rand(2, 3, 64, 64), PredictSpec())


# ---------------------------------------------------------------- what passes counts

def _pixels(bundled, cat, side):
    return torch.nn.functional.interpolate(bundled.to_pixels(cat), size=(side, side), mode="bilinear")


@pytest.mark.parametrize("name, make, side, exact", [
    ("predict", lambda: PredictSpec(), None, True),
    ("record", lambda: ActivationsSpec(), None, True),
    ("gradcam, top-1", lambda: S.SaliencySpec("gradcam"), None, True),
    ("gradcam", lambda: S.SaliencySpec("gradcam", target=3), None, True),
    ("scorecam", lambda: S.SaliencySpec("scorecam", target=3, layer=SMALL_LAYER), None, False),  # was 2 + C / 8
    ("smoothgrad", lambda: S.SaliencySpec("smoothgrad", target=3, smooth_samples=4), None, True),  # was 4
    ("ig", lambda: S.SaliencySpec("ig", target=3, ig_steps=4), None, True),
    ("occlusion", lambda: S.SaliencySpec("occlusion", target=3, occlusion_window=112, occlusion_stride=112),
     None, True),
    ("occlusion, 336 px", lambda: S.SaliencySpec("occlusion", target=3, occlusion_window=112,
                                                 occlusion_stride=112), 336, True),  # was counted at 224
    ("sweep", lambda: L.SweepSpec("rotate", (0, 90)), None, True),
    ("occlude", lambda: L.SweepSpec("occlude", (112,)), None, True),
    ("occlude, 336 px", lambda: L.SweepSpec("occlude", (112,)), 336, True),  # was counted at 224
    ("flip", lambda: L.FlipSpec("brightness"), None, False),
    ("fgsm", lambda: A.AttackSpec("fgsm", 2, png=True), None, True),
    ("pgd", lambda: A.AttackSpec("pgd", 2, 3, random_start=True), None, True),
    ("noise", lambda: A.NoiseSpec(2), None, True),
    ("fgsm sweep", lambda: A.BudgetSweepSpec("fgsm", (1, 2, 3)), None, True),
    ("pgd sweep", lambda: A.BudgetSweepSpec("pgd", (1, 2), 2), None, False),
    ("featurevis", lambda: FV.FeatureVisSpec(FV_LAYER, 0, steps=3, cache=False), None, True),  # was 3
    ("gallery", lambda: FV.GallerySpec(FV_LAYER, 2, steps=2, cache=False), None, True),  # was 4
    ("natural", lambda: FV.NaturalSpec(FV_LAYER), None, True),  # was 2 (batches)
    ("effective", lambda: R.EffectiveSpec(RF_LAYER, 3, 4), None, True),
    ("average", lambda: R.AverageSpec(RF_LAYER, 3, 4, source="noise", n=4, batch_size=3), None, True),
    ("trust", lambda: T.TrustSpec(("gradcam", "gradients"), 285, steps=1), None, True),  # was 2 x 2 + 3
])
def test_passes_count_the_images_through_the_network(bundled, cat, cache_dir, name, make, side, exact):
    """Through the runner, a hook counts every image entering the network (shared, private
    copy or folded): never more than the spec said, and exactly that where nothing can stop
    the job early."""
    FV.NATURAL.clear()
    bundled.layers, bundled.fast_net  # made once per model (probe passes), not by the job
    image = cat if side is None else _pixels(bundled, cat, side)
    spec = make().check(bundled)
    said = jobs.cost(bundled, image, spec)
    with Images(bundled) as seen:
        jobs.run(bundled, image, spec)
    assert seen.n == said if exact else 0 < seen.n <= said, (name, seen.n, said)


def test_the_old_counts_that_were_batches_or_left_passes_out(bundled):
    assert S.SaliencySpec("scorecam", target=3).check(bundled).passes(bundled) == 2 + 1280  # a masked image per channel
    assert S.SaliencySpec("scorecam").check(bundled).passes(bundled) == 3 + 1280  # and the top-1
    assert FV.GallerySpec(FV_LAYER, 64, steps=256).passes(bundled) == 64 * 258
    # two Grad-CAMs, and the deletion curves of the map and of a random order, their shared ends once
    assert T.TrustSpec(("gradcam",), 285, steps=1).passes(bundled) == 2 * 1 + 2 + 2 * (T.DELETION_STEPS - 1)


# ---------------------------------------------------------------- knobs and non-finite numbers

HUGE = [float("inf"), float("-inf"), float("nan"), float("1e309"), 10 ** 30, 2.5, "3"]

SPECS = {
    "ig_steps": lambda v: S.SaliencySpec("ig", target=1, ig_steps=v),
    "smooth_samples": lambda v: S.SaliencySpec("smoothgrad", target=1, smooth_samples=v),
    "smooth_std": lambda v: S.SaliencySpec("smoothgrad", target=1, smooth_std=v),
    "saliency target": lambda v: S.SaliencySpec("gradcam", target=v),
    "contrast": lambda v: S.SaliencySpec("gradcam", target=1, contrast=v),
    "occlusion window": lambda v: S.SaliencySpec("occlusion", target=1, occlusion_window=v),
    "occlusion stride": lambda v: S.SaliencySpec("occlusion", target=1, occlusion_stride=v),
    "saliency batch": lambda v: S.SaliencySpec("ig", target=1, batch_size=v),
    "eps": lambda v: A.AttackSpec("pgd", eps=v),
    "attack steps": lambda v: A.AttackSpec("pgd", steps=v),
    "step size": lambda v: A.AttackSpec("pgd", step_size=v),
    "attack target": lambda v: A.AttackSpec("pgd", target=v),
    "attack seed": lambda v: A.AttackSpec("pgd", seed=v),
    "noise eps": lambda v: A.NoiseSpec(eps=v),
    "noise seed": lambda v: A.NoiseSpec(seed=v),
    "budget": lambda v: A.BudgetSweepSpec("pgd", (1, v)),
    "sweep value": lambda v: L.SweepSpec("rotate", (0, v)),
    "sweep seed": lambda v: L.SweepSpec("noise", seed=v),
    "sweep batch": lambda v: L.SweepSpec("rotate", batch_size=v),
    "thumb": lambda v: L.SweepSpec("rotate", thumb=v),
    "flip seed": lambda v: L.FlipSpec("noise", seed=v),
    "flip seen": lambda v: L.FlipSpec("rotate", seen=(v,)),
    "limits seed": lambda v: L.LimitsSpec("noise", seed=v),
    "fv steps": lambda v: FV.FeatureVisSpec(FV_LAYER, 0, steps=v),
    "fv size": lambda v: FV.FeatureVisSpec(FV_LAYER, 0, size=v),
    "fv lr": lambda v: FV.FeatureVisSpec(FV_LAYER, 0, lr=v),
    "fv seed": lambda v: FV.FeatureVisSpec(FV_LAYER, 0, seed=v),
    "fv channel": lambda v: FV.FeatureVisSpec(FV_LAYER, v),
    "fv class": lambda v: FV.FeatureVisSpec(None, v, "class"),
    "gallery n": lambda v: FV.GallerySpec(FV_LAYER, v),
    "natural batch": lambda v: FV.NaturalSpec(FV_LAYER, batch=v),
    "evidence k": lambda v: FV.EvidenceSpec(FV_LAYER, 0, k=v),
    "unit y": lambda v: R.UnitSpec(RF_LAYER, y=v),
    "rf channel": lambda v: R.EffectiveSpec(RF_LAYER, 0, 0, channel=v),
    "noise inputs": lambda v: R.AverageSpec(RF_LAYER, source="noise", n=v),
    "rf seed": lambda v: R.AverageSpec(RF_LAYER, source="noise", seed=v),
    "rf batch": lambda v: R.AverageSpec(RF_LAYER, batch_size=v),
    "input size": lambda v: R.TableSpec((v, 224)),
    "trust steps": lambda v: T.TrustSpec(steps=v),
    "trust seed": lambda v: T.TrustSpec(seed=v),
    "trust target": lambda v: T.TrustSpec(target=v),
    "topk": lambda v: PredictSpec(v),
    "filter index": lambda v: Fi.FiltersSpec(SMALL_LAYER, index=v),
}


# Knobs that take fractions (budgets, step sizes, rotations) or any magnitude (a flip seen, top-k).
VALID = {(k, 2.5) for k in ("eps", "noise eps", "budget", "step size", "sweep value", "flip seen")} | {
    ("flip seen", 10 ** 30), ("topk", 10 ** 30), ("sweep value", "3")}


@pytest.mark.parametrize("value", HUGE, ids=repr)
@pytest.mark.parametrize("knob", list(SPECS))
def test_every_knob_refuses_non_finite_and_out_of_range_values(bundled, knob, value):
    """A CnnvizError with its message, never an OverflowError, ValueError or TypeError
    (those used to escape from int(inf), int(nan), range(2.5), manual_seed(10**30))."""
    if (knob, value) in VALID:
        SPECS[knob](value).check(bundled)
        return
    with pytest.raises(CnnvizError) as e:
        SPECS[knob](value).check(bundled)
    assert str(e.value)


def test_knob_messages_name_the_range(bundled):
    with pytest.raises(S.SaliencyError, match="ig_steps must be a whole number, at least 1 and at most 1,024; got inf"):
        S.SaliencySpec("ig", target=1, ig_steps=float("inf")).check(bundled)
    with pytest.raises(A.AttackError, match="steps must be a whole number, at least 1 and at most 1,000; got 5000"):
        A.AttackSpec("pgd", 2, 5000).check(bundled)
    with pytest.raises(L.LimitsError, match="seed must be a whole number, at least 0 and at most 2,147,483,647"):
        L.SweepSpec("noise", seed=2 ** 40).check(bundled)
    with pytest.raises(T.TrustError, match="at most 64"):
        T.TrustSpec(steps=10 ** 9).check(bundled)  # np.linspace(0, blocks, 10**9 + 1) was 8 GB
    with pytest.raises(FV.FeatureVisError, match="Steps must be a whole number, at least 1 and at most 4,096"):
        FV.FeatureVisSpec(FV_LAYER, 0, steps=2.5).check(bundled)


@pytest.mark.parametrize("text, words", [
    ("0:inf:1", "inf is not a finite number"), ("nan:1:1", "nan is not a finite number"),
    ("1e309", "inf is not a finite number"), ("0,-inf,3", "-inf is not a finite number"),
    ("-1e308:1e308:1e-308", "more than 400 values"), ("0:1e300:1e-300", "more than 400 values"),
    ("1," * 3000, "characters long; at most 4,000"), ("0," * 401, "401 values; at most 400"),
])
def test_typed_values_are_refused_with_their_message(text, words):
    """These raised OverflowError / ValueError past the page's LimitsError handler."""
    with pytest.raises(L.LimitsError, match=words):
        L.parse_values("rotate", text)
    with pytest.raises(A.AttackError):
        A.parse_budgets(text)


@pytest.mark.parametrize("argv, words", [
    (["limits", "{cat}", "--transform", "rotate", "--values", "0:inf:1"], "inf is not a finite number"),
    (["limits", "{cat}", "--transform", "occlude", "--values", "1"], "use a patch of 22 pixels or more"),
    (["attack", "{cat}", "--steps", "5000"], "at most 1,000"),
    (["sweep", "{cat}", "--budgets", "1:255:1", "--steps", "1000"], "255,256 images through the network"),
])
def test_the_cli_refuses_beyond_the_bounds_with_one_line(capsys, samples, argv, words):
    """Exit 2 and one line (the OverflowError was an internal error, exit 1; the others ran)."""
    from cnnviz.cli import main

    assert main([a.replace("{cat}", str(samples["cat"])) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and err[0].startswith("cnnviz: error:"), err


# ---------------------------------------------------------------- occlusion: positions bounded

def test_occlusion_positions_are_bounded_and_the_smallest_patch_named(bundled):
    for size in ((224, 224), (299, 299), (64, 100), (17, 400)):
        for patch in (1, 2, 7, 22, 23, 56, 80, 112, 500):
            assert L.occlusion_positions(size, patch) == len(L.occlusion_grid(size, patch)), (size, patch)
    assert L.smallest_patch((224, 224)) == 22
    assert L.occlusion_positions((224, 224), 22) <= L.MAX_POINTS < L.occlusion_positions((224, 224), 21)
    with pytest.raises(L.LimitsError, match="makes 50,176 positions .* use a patch of 22 pixels or more"):
        L.SweepSpec("occlude", (1,)).check(bundled)
    values, said = L.fit_values("occlude", (1.0,), (224, 224))
    assert values == (22.0,) and "50,176 positions" in said and "the patch is 22 pixels" in said
    assert L.fit_values("occlude", (56.0,), (224, 224)) == ((56.0,), "")
    assert L.fit_values("rotate", (1.0, 2.0), (224, 224)) == ((1.0, 2.0), "")
    with pytest.raises(L.LimitsError, match="positions"):  # on pixels larger than the input too
        L.run(bundled, torch.rand(1, 3, 448, 448), L.SweepSpec("occlude", (22,)))


MEMORY_CASE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from bench.common import peak_rss_mb
    from tests import apptest
    apptest.open_page("limits.py", sample="cat")  # imports, the model, the caches: the baseline
    out = {{}}

    def case():
        at = apptest.open_page("limits.py", sample="cat", demo="occlude", preset="custom", values="1")
        chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "lim_map" in c.proto.id)
        out.update(info=[i.value for i in at.info], errors=[e.value for e in at.error],
                   positions=len(chart["data"][1]["x"]), options=len(at.select_slider(key="lim_point").options),
                   thumbs=sum(len(i.proto.imgs) for i in at.get("image")))

    out["peak_mb"] = peak_rss_mb(case)
    print(json.dumps(out))
""")


def test_a_one_pixel_occlusion_link_is_clamped_and_memory_stays_bounded(tmp_path):
    """`/limits?demo=occlude&preset=custom&values=1` asked for 50,176 positions (50k thumbnails
    pickled into the cache, 1.4 GB, and a 50k-option slider). Now the patch is enlarged to
    22 pixels, the page says so, and the case (in its own process) adds under 1 GB: about
    0.5 GB is the sweep's batches of 32 images through the network, against 1.4 GB for the
    old thumbnails and 0.4 GB for their probabilities alone."""
    script = tmp_path / "case.py"
    script.write_text(MEMORY_CASE.format(root=str(ROOT)))
    env = {**os.environ, "CNNVIZ_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("50,176 positions" in i and "the patch is 22 pixels" in i for i in out["info"]), out
    assert not out["errors"], out
    assert out["positions"] <= L.MAX_POINTS and out["options"] <= L.MAX_POINTS, out
    assert out["peak_mb"] < 1024, out


# ---------------------------------------------------------------- pages: the URL clamped, and said

def _infos(at) -> str:
    return "\n".join(i.value for i in at.info)


def _no_failure(at):
    assert not at.exception, at.exception
    assert not any("Something went wrong" in e.value for e in at.error), [e.value for e in at.error]


def test_limits_page_non_finite_values_get_their_message():
    for values in ("0:inf:1", "nan:1:1"):
        at = apptest.open_page("limits.py", sample="cat", demo="rotate", preset="custom", values=values)
        _no_failure(at)
        assert any("is not a finite number" in e.value and "first preset" in e.value for e in at.error)


def test_adversarial_link_beyond_the_sliders_is_clamped_and_said(bundled):
    at = apptest.open_page("adversarial.py", sample="cat", attack="fgsm", steps="5000", eps="1e309", sweep="1",
                           seed="-4", start="maybe")
    _no_failure(at)
    said = _infos(at)
    assert "steps='5000'; this page takes a whole number from 1 to 100, so 100 is used" in said
    assert "sweep='1' is not used: give a whole number from 2 to 32; the page shows its default" in said
    assert "seed='-4' is not used" in said
    assert "eps='1e309' is not used" in said and "start='maybe' is not used" in said
    assert at.slider(key="adv_steps").value == 100 and at.slider(key="adv_sweep_max").value == 16  # the default
    assert at.slider(key="adv_eps").value == 2  # the default
    # The backend still refuses beyond its own bounds, whatever a page lets through.
    with pytest.raises(A.AttackError, match="at most 1,000"):
        A.AttackSpec("pgd", 2, 5000).check(bundled)


def test_filters_gallery_link_is_clamped_to_the_layer_and_the_budget(bundled):
    """n=64 on a 16-channel layer raised StreamlitValueAboveMaxError; lr below the widget's
    minimum raised StreamlitValueBelowMinError."""
    at = apptest.open_page("filters.py", sample="cat", view="gallery", layer=SMALL_LAYER, n="64", steps="5000",
                           size="9999", lr="0.00001", seed="1e309")
    _no_failure(at)
    said = _infos(at)
    assert "steps='5000' is not used: the choices are 8, 16, 32, 64, 128, 256, 512, 1024 steps" in said
    assert "size='9999' is not used: the sizes are 32, 64" in said
    assert "lr='0.00001' is not used: give a number from 0.001 to 1" in said
    assert "seed='1e309' is not used" in said
    assert f"A gallery of 64 channels is more than this one can render: {SMALL_LAYER} has 16 channels" in said
    assert at.number_input(key="fv_n").value == 16 and at.number_input(key="fv_lr").value == 0.05
    at = apptest.open_page("filters.py", sample="cat", view="gallery", layer=FV_LAYER, n="64", steps="1024")
    _no_failure(at)
    assert "one job runs at most 20,000 images through the network (1,026 per channel at 1024 steps). " \
           "Rendering 19." in _infos(at)
    assert at.number_input(key="fv_n").value == 19
    assert FV.GallerySpec(FV_LAYER, 19, steps=1024).check(bundled).passes(bundled) <= bounds.MAX_PASSES
    with pytest.raises(jobs.OverBudget):  # the backend refuses the gallery the page would not ask for
        jobs.check_budget(bundled, None, FV.GallerySpec(FV_LAYER, 64, steps=1024).check(bundled))


def test_filters_unit_link_beyond_the_widgets():
    at = apptest.open_page("filters.py", sample="cat", view="unit", layer=FV_LAYER, channel="999", lr="7")
    _no_failure(at)
    assert at.number_input(key="fv_lr").value == 1.0 and "lr='7'; this page takes a number from 0.001 to 1, so 1 is used" \
        in _infos(at)
    assert "channel=999 is not a channel of _blocks.3._swish#1 (0 to 143); showing 0" in _infos(at)


def test_saliency_job_over_the_budget_is_a_message_not_a_crash(monkeypatch):
    monkeypatch.setattr(bounds, "MAX_PASSES", 100)  # Score-CAM here: 2 + 1,280 images
    at = apptest.open_page("saliency.py", sample="cat", method="scorecam", target="1e309", layer="nope")
    _no_failure(at)
    assert any("1,282 images through the network" in w.value and "at most 100" in w.value for w in at.warning)
    said = _infos(at)
    assert "target='1e309' is not used" in said and "layer='nope' is not used" in said


def test_receptive_link_outside_the_map_is_said():
    at = apptest.open_page("receptive_fields.py", sample="cat", layer=RF_LAYER, y="99999", x="-3", channel="inf")
    _no_failure(at)
    said = _infos(at)
    assert "y=99999 is outside _blocks.8._project_conv's 14x14 map; showing the centre, y=6" in said
    assert "x='-3' is not used" in said and "channel='inf' is not used" in said
    assert at.number_input(key="rf_y").value == 6
