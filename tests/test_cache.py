"""The one cache: keyed on the weights (the model's fingerprint), the image and the spec;
bounded in bytes; one computation for every session asking at once."""
import io
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cnnviz import models
from cnnviz.app import cache
from cnnviz.contract import Cancelled, Result, Spec
from cnnviz.images import load_image
from cnnviz.predict import PredictSpec, probabilities


@pytest.fixture
def cat(samples):
    data = samples["cat"].read_bytes()
    return load_image(data, "cat.jpg"), cache.sha(data)


def test_random_models_are_the_same_in_every_build():
    a, b = models.load("torchvision:resnet18@random"), models.load("torchvision:resnet18@random")
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != models.load("torchvision:mobilenet_v2@random").fingerprint


def test_a_rebuilt_model_with_other_weights_never_gets_the_old_result(cat):
    image, sha = cat
    old = models.load("torchvision:resnet18@random")
    before = cache.run(PredictSpec(), old, image, sha).probs
    # Evicted and rebuilt under the same id, but with other weights (another seed, a
    # re-exported checkpoint): the cache must not hand back the old model's numbers.
    new = models.load("torchvision:resnet18@random")
    new.net.fc.weight = nn.Parameter(torch.randn_like(new.net.fc.weight), requires_grad=False)
    assert new.id == old.id and new.fingerprint != old.fingerprint
    after = cache.run(PredictSpec(), new, image, sha).probs
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(after, probabilities(new, image))
    # ... and the old weights still get theirs (a hit, same numbers).
    np.testing.assert_array_equal(cache.run(PredictSpec(), old, image, sha).probs, before)


def test_the_key_is_the_spec_not_only_the_model(cat):
    image, sha = cat
    model = models.load("torchvision:resnet18@random")
    assert len(cache.run(PredictSpec(3), model, image, sha).top) == 3
    assert len(cache.run(PredictSpec(5), model, image, sha).top) == 5


# ---------------------------------------------------------------- bounded in bytes, computed once

@dataclass(frozen=True)
class SizedSpec(Spec):
    """A test analysis (this module's `run`): `mb` megabytes of `seed`, after `sleep` s."""
    seed: int
    mb: float = 1.0
    sleep: float = 0.0
    fail: bool = False


@dataclass
class Sized(Result):
    data: np.ndarray


CALLS: list[int] = []


def run(model, image, spec, *, progress=None):
    CALLS.append(spec.seed)
    progress(0.5, "half way")
    time.sleep(spec.sleep)
    if spec.fail:
        raise Cancelled()
    return Sized(np.full(int(spec.mb * 2 ** 18), spec.seed, np.float32))


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(cache.RESULTS, "budget", int(3.5 * 2 ** 20))  # three 1 MB results
    cache.RESULTS.clear()
    CALLS.clear()
    yield models.load("torchvision:squeezenet1_1@random")
    cache.RESULTS.clear()


def test_results_are_bounded_in_bytes_least_recently_used_out(small_budget):
    model = small_budget
    for seed in range(5):
        assert cache.run(SizedSpec(seed), model).data[0] == seed
    assert cache.RESULTS.total <= cache.RESULTS.budget and len(cache.RESULTS) == 3
    CALLS.clear()
    cache.run(SizedSpec(4), model)  # kept: no work
    cache.run(SizedSpec(2), model)
    assert CALLS == []
    cache.run(SizedSpec(0), model)  # the oldest went first: computed again
    assert CALLS == [0]
    first, again = cache.run(SizedSpec(0), model), cache.run(SizedSpec(0), model)
    assert first.data is not again.data  # still a copy per read


def test_a_result_larger_than_the_budget_is_computed_and_not_kept(small_budget):
    model = small_budget
    cache.run(SizedSpec(1), model)
    assert cache.run(SizedSpec(9, mb=4), model).data.size == 2 ** 20
    assert len(cache.RESULTS) == 1 and CALLS == [1, 9]  # and it pushed nothing out
    cache.run(SizedSpec(9, mb=4), model)
    assert CALLS == [1, 9, 9]


def test_sessions_asking_at_once_compute_once_and_a_stopped_job_keeps_nothing(small_budget):
    model = small_budget
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.run(SizedSpec(7, sleep=0.5), model)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CALLS == [7] and len(got) == 4 and all(g.data[0] == 7 for g in got)
    with pytest.raises(Cancelled):
        cache.run(SizedSpec(8, fail=True), model)
    assert len(cache.RESULTS) == 1 and not cache._RUNNING


def test_the_same_checkpoint_with_other_labels_gets_its_own_names(cat):
    """The labels are part of the model's identity: the same weights uploaded with another
    labels file must not get the first upload's class names back from the cache."""
    image, sha = cat
    net = torchvision.models.resnet18(num_classes=3)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    a = models.load_checkpoint("resnet18", buf.getvalue(), "ft.pth", ["cat", "dog", "fox"])
    b = models.load_checkpoint("resnet18", buf.getvalue(), "ft.pth", ["chat", "chien", "renard"])
    assert a.fingerprint != b.fingerprint
    assert models.load_checkpoint("resnet18", buf.getvalue(), "ft.pth", ["cat", "dog", "fox"]).fingerprint == a.fingerprint
    top_a = cache.run(PredictSpec(3), a, image, sha).top
    top_b = cache.run(PredictSpec(3), b, image, sha).top
    assert {t.label for t in top_a} == {"cat", "dog", "fox"}
    assert {t.label for t in top_b} == {"chat", "chien", "renard"}
    assert [t.index for t in top_a] == [t.index for t in top_b]  # same weights, same numbers


def test_two_sessions_keeping_the_same_upload_share_one_copy():
    first = models.load("torchvision:resnet18@random")
    second = models.load("torchvision:resnet18@random")
    key = cache.own_key("resnet18", b"same bytes", None)
    try:
        assert cache.keep_own(key, first) is first
        assert cache.keep_own(key, second) is first  # the later session gets the kept one
        assert cache.own_model(key) is first
    finally:
        cache.OWN_MODELS.clear()


def test_a_progress_bar_redraws_at_most_every_quarter_second(monkeypatch):
    """A 100-step PGD reported ~19 times a second: each report was a message to the browser."""
    clock, draws = [100.0], []

    class Slot:
        def progress(self, fraction, text=""):
            draws.append((clock[0], fraction))

        def empty(self):
            draws.append((clock[0], "removed"))

    monkeypatch.setattr(cache.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(cache.st, "empty", Slot)
    with cache.progress_bar("PGD:") as progress:
        for step in range(1, 101):  # 100 reports, 62.5 ms apart (exact in binary): 6.25 s
            progress(step / 100, f"step {step}")
            clock[0] += 0.0625
    times = [t for t, f in draws if f != "removed"]
    assert draws[0] == (100.0, 0.01)  # the first report is drawn at once
    assert draws[-2][1] == 1.0 and draws[-1][1] == "removed"  # 100% is drawn, then the bar goes
    assert all(b - a >= cache.DRAW_EVERY_S - 1e-9 for a, b in zip(times[:-2], times[1:-1]))
    assert len(times) == 26  # every 4th report (0.25 s): steps 1, 5, ..., 97, and the last


def test_a_loaded_model_costs_no_spinner(monkeypatch):
    """`st.spinner` starts a thread and sends the browser a message on every use; the
    sidebar asks for its model on every rerun of every session."""
    import contextlib

    shown = []

    @contextlib.contextmanager
    def spinner(text):
        shown.append(text)
        yield

    monkeypatch.setattr(cache.st, "spinner", spinner)
    model_id = "torchvision:mobilenet_v3_small@random"
    cache.MODELS.discard(model_id)  # not loaded yet, whatever ran before
    first = cache.model(model_id)
    assert shown == ["Loading the model..."]  # loaded: the spinner showed while it did
    assert cache.model(model_id) is first and cache.model(model_id) is first
    assert shown == ["Loading the model..."]  # in memory: no spinner, no message
