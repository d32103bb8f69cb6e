"""Every page's query parameters, random and adversarial (Hypothesis), through AppTest.

A link is anything a browser can send: huge and negative numbers, fractions, nan and inf,
empty or very long values, unicode, unknown and repeated keys, layer and model names that
do not exist. Whatever it holds, no exception reaches the page (neither an exception
element nor the app's "Something went wrong" alert), and no job asks the runner for more
than `bounds.MAX_PASSES` images; the jobs that run put no more images through the network
than their spec said (a hook counts them).

Bounded for a 2-core CI box: few examples per page, derandomized (the same examples on
every run, no example database), the bundled model, and the runner wrapped so that a job
of more than `TEST_CAP` images is refused here as the runner refuses one over its budget
(a CnnvizError, which the page must show as a message): a generated value cannot start a
truly heavy job in the test.
"""
from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from cnnviz import bounds, jobs, models
from cnnviz.contract import CnnvizError

from .conftest import ROOT

# Streamlit raises the recursion limit inside a run; Hypothesis only warns that it leaves it so.
pytestmark = pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")

TEST_CAP = 200  # images: an occlusion map (170) runs, a Score-CAM of 1,280 channels is refused here
EXAMPLES = 15

NASTY = st.one_of(
    st.sampled_from([
        "", " ", "nan", "-nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e309", "1e-309", "0", "-0", "-1", "1",
        "2", "3.5", "1e3", " 7 ", "2147483648", str(2 ** 63), str(-2 ** 63), "9" * 400, "9" * 5000, "0x1f", "1_0",
        "\u0663", "\U0001d7d9", "\x00", "%00", "../../etc/passwd", "<script>alert(1)</script>", "\u00fcn\u00efc\u00f8d\u00e9",
        "\U0001f916", "a" * 5000, "0:inf:1", "nan:1:1", "1:10000:0.001", "0,1,2", "-1:1:0.5", "true", "None", "[]",
    ]),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),  # no lone surrogates: not UTF-8
)

LAYERS = ["_conv_stem", "_blocks.0._project_conv", "_blocks.3._swish#1", "_blocks.8._project_conv", "_swish#1",
          "_swish", "_fc", "layer4.1.conv2", "nope", "_blocks.99"]
MODELS = [models.BUNDLED_ID, "torchvision:resnet18@random", "nosuch", "torchvision:nosuch@random"]
SAMPLES = ["cat", "coffee", "nope", ""]

# Per page: its parameters and values worth trying besides the nasty ones.
PAGES: dict[str, dict[str, list[str]]] = {
    "home.py": {},
    "activations.py": {"layer": LAYERS, "channel": ["0", "5", "143", "144", "1279"], "sort": ["mean", "max", "sparsity"],
                       "scale": ["global", "channel"]},
    "filters.py": {"view": ["weights", "unit", "gallery"], "conv": ["_conv_stem", "_blocks.0._project_conv", "nope"],
                   "sort": ["norm", "index"], "filter": ["0", "15", "16"], "layer": LAYERS,
                   "objective": ["channel", "neuron", "class"], "channel": ["0", "5", "999"],
                   "size": ["32", "64", "512", "513"], "steps": ["8", "16", "1024", "4096"], "lr": ["0.05", "1", "0"],
                   "seed": ["0", "3"], "n": ["1", "2", "64", "65"]},
    "receptive_fields.py": {"layer": LAYERS, "y": ["0", "3", "13", "14"], "x": ["0", "6", "111"],
                            "channel": ["0", "15", "16"]},
    "saliency.py": {"method": ["gradcam", "gradcampp", "scorecam", "guided_gradcam", "gradients", "smoothgrad", "ig",
                               "occlusion", "guided_backprop", "lrp"],
                    "target": ["281", "0", "999", "1000"], "contrast": ["285", "1000"], "layer": LAYERS,
                    "view": ["Map", "Methods side by side", "Layer sweep", "Trust checks", "nope"],
                    "advise": ["1", "0", "yes"], "compare": MODELS},
    "adversarial.py": {"attack": ["fgsm", "pgd", "cw"], "eps": ["1", "2", "32", "33", "255"],
                       "steps": ["1", "3", "100", "101", "1000"], "step": ["auto", "0.25", "4", "8"],
                       "start": ["0", "1", "2"], "seed": ["0", "7"], "target": ["409", "999", "1000"],
                       "sweep": ["2", "4", "32", "33"],
                       "adv_view": ["Download (8-bit PNG)", "Where the decision moved", "Budget sweep",
                                    "Where the attack takes over", "nope"], "layer": LAYERS},
    "limits.py": {"demo": ["rotate", "scale", "occlude", "shuffle", "noise", "flip", "nope"],
                  "preset": ["custom", "patch 112 px", "coarse", "nope"],
                  "values": ["0,15,30", "1", "112", "0:360:1", "0:1e300:1e-300", "0,1", "2"],
                  "seed": ["0", "3"], "point": ["0", "1", "399", "400"],
                  "compare": [*MODELS, f"{MODELS[1]},nosuch", ",".join(MODELS * 3)],
                  "lecture": ["1", "0", "yes"], "track": ["versus", "all", "nope"]},
    "convolution.py": {"cv_view": ["Arithmetic playground", "One unit of the network", "Softmax", "nope"],
                       "size": ["1", "7", "48", "1024", "1025"], "kernel": ["1", "3", "11", "12"],
                       "pad": ["0", "10", "11"], "stride": ["1", "8", "9"], "dil": ["1", "4", "5"],
                       "toy": ["edges", "blur", "identity", "nope"], "cin": ["1", "4096", "4097"],
                       "cout": ["1", "4097"], "layer": [*LAYERS, "_avg_pooling", "_blocks.1._depthwise_conv", "maxpool"],
                       "y": ["0", "55", "56", "111", "112"], "x": ["0", "3", "111"], "channel": ["0", "95", "96"],
                       "ich": ["0", "23", "24"], "t": ["0.05", "1", "10", "20", "0"]},
    "train.py": {"variant": ["classic", "modern", "nope"], "epochs": ["1", "15", "50", "51"],
                 "lr": ["0.001", "0.003", "0.03", "1"], "batch": ["16", "128", "129"], "seed": ["0", "9999", "10000"]},
}
COMMON = {"model": MODELS, "sample": SAMPLES, "lecture": ["1"], "zz_unknown": [], "\u00fc": []}
# Where each page's deeper paths start: random values are laid over one of these.
SCENARIOS: dict[str, list[dict[str, str]]] = {
    "home.py": [{}],
    "activations.py": [{}, {"layer": "_blocks.0._project_conv"}],
    "filters.py": [{"view": "weights"}, {"view": "unit"}, {"view": "gallery"}],
    "receptive_fields.py": [{}, {"layer": "_blocks.8._project_conv"}],
    "saliency.py": [{}, {"method": "gradcam"}, {"view": "Methods side by side"}, {"view": "Layer sweep"}],
    "adversarial.py": [{"attack": "fgsm"}, {"attack": "pgd"}, {"attack": "fgsm", "adv_view": "Where the attack takes over"}],
    "limits.py": [{}, {"preset": "custom"}, {"demo": "occlude", "preset": "custom"},
                  {"lecture": "1", "track": "versus", "compare": MODELS[1]}],
    "convolution.py": [{}, {"cv_view": "One unit of the network"}, {"cv_view": "Softmax"}],
    "train.py": [{}],
}
# The links the issue found, and their kin: always tried, before the generated ones.
KNOWN: dict[str, list[dict[str, str]]] = {
    "home.py": [{"model": "nosuch", "sample": "nope", "zz_unknown": "1"}],
    "activations.py": [{"layer": "_swish#1", "channel": "99999", "sort": "nope"}],
    "filters.py": [{"view": "gallery", "layer": "_blocks.0._project_conv", "n": "64"},  # 16 channels: was an exception
                   {"view": "gallery", "layer": "_blocks.3._swish#1", "n": "64", "steps": "1024"},
                   {"view": "unit", "lr": "0.00001", "steps": "5000", "seed": "1e309"}],
    "receptive_fields.py": [{"layer": "_blocks.8._project_conv", "y": "99999", "x": "-3", "channel": "inf"}],
    "saliency.py": [{"method": "scorecam", "layer": "_swish#1", "target": "1e309"}],  # 1,280 masked images
    "adversarial.py": [{"attack": "pgd", "steps": "5000", "eps": "1e309", "sweep": "-1"}],
    "limits.py": [{"demo": "occlude", "preset": "custom", "values": "1"},  # 50,176 positions
                  {"demo": "rotate", "preset": "custom", "values": "0:inf:1"},  # was an OverflowError
                  {"demo": "rotate", "preset": "custom", "values": "nan:1:1"}],  # was a ValueError
    "convolution.py": [{"size": "1024", "kernel": "11", "pad": "10", "stride": "1", "dil": "4"},  # no drawing
                       {"cv_view": "One unit of the network", "layer": "_avg_pooling", "y": "1e309", "ich": "-1"}],
    "train.py": [{"epochs": "1e309", "batch": "0", "lr": "nan"}],
}


def value(good: list[str]):
    one = st.one_of(st.sampled_from(good), NASTY) if good else NASTY
    return st.one_of(one, st.lists(one, min_size=2, max_size=3))  # a repeated key: the page reads the last


def query(page: str):
    keys = {**COMMON, **PAGES[page]}
    extra = st.fixed_dictionaries({}, optional={k: value(v) for k, v in keys.items()})
    return st.builds(lambda base, more: {**more, **base}, st.sampled_from(SCENARIOS[page]), extra)


# ---------------------------------------------------------------- the runner, watched

_here = threading.local()  # the job running in this thread: (root network class, image count)


def _count(module, args):
    job = getattr(_here, "job", None)
    if job is not None and type(module) is job[0] and args and isinstance(args[0], torch.Tensor):
        job[1] += args[0].shape[0]


class Watch:
    """`jobs.RUNNER.run`, wrapped: every job's cost against the budget, the images it put
    through the network against its cost, and jobs over `TEST_CAP` refused."""

    def __init__(self, runner: jobs.Runner):
        self.runner, self.real = runner, runner.run
        self.problems: list[str] = []
        self.ran = 0

    def run(self, model, image, spec, *, progress=None):
        try:
            checked = spec.check(model)
            said = jobs.cost(model, image, checked)
        except CnnvizError:  # the runner refuses it with the same message
            return self.real(model, image, spec, progress=progress)
        if said > bounds.MAX_PASSES:
            self.problems.append(f"{spec!r} asked for {said:,} images (budget {bounds.MAX_PASSES:,})")
        if said > TEST_CAP:
            raise jobs.OverBudget(f"This job would run {said:,} images through the network; this test runs at most "
                                  f"{TEST_CAP}.")
        model.layers, model.fast_net  # made once per model (probe passes), not by any job
        outer, _here.job = getattr(_here, "job", None), [type(model.net), 0]
        try:
            result = self.real(model, image, spec, progress=progress)
        finally:
            seen, _here.job = _here.job[1], outer
        self.ran += 1
        if seen > said:
            self.problems.append(f"{spec!r} put {seen} images through the network; its spec said {said}")
        return result


@pytest.fixture(scope="module")
def watch():
    w = Watch(jobs.RUNNER)
    jobs.RUNNER.run = w.run
    handle = torch.nn.modules.module.register_module_forward_pre_hook(_count)
    try:
        yield w
    finally:
        handle.remove()
        del jobs.RUNNER.run  # the class's method again


def visit(page: str, params: dict, watch: Watch) -> None:
    watch.problems.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.query_params.update(params)
    at.switch_page(f"pages/{page}").run()
    assert not at.exception, (params, [e.value for e in at.exception])
    crashed = [e.value for e in at.error if "Something went wrong" in e.value]
    assert not crashed, (params, crashed)
    assert at.title, (params, "the page drew nothing")
    problems, watch.problems[:] = list(watch.problems), []
    assert not problems, (params, problems)


@pytest.mark.parametrize("page", list(PAGES))
def test_any_query_string_leaves_every_page_working_and_every_job_bounded(page, watch):
    def check(params):
        visit(page, params, watch)

    check = given(params=query(page))(check)
    for params in KNOWN[page]:
        check = example(params=params)(check)
    settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                    HealthCheck.data_too_large])(check)()


def test_the_watch_sees_jobs_and_counts_their_images(watch):
    """The watch itself: a page's jobs go through it, and it counts what they run."""
    before = watch.ran
    visit("saliency.py", {"method": "ig", "target": "281", "sample": "coffee"}, watch)
    assert watch.ran > before and not watch.problems
