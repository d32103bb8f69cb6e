"""The Train page in AppTest: a short run in the background while the page stays usable,
the result, the confusion matrix's cells, and the trained net on every page."""
import time

import pytest

from cnnviz import lenet

from .apptest import open_page, qp

PAGES = ["home.py", "convolution.py", "activations.py", "filters.py", "receptive_fields.py", "saliency.py",
         "adversarial.py", "limits.py"]


def finish(at, timeout: float = 180):
    """Rerun until the session's training has ended (its end, not a moment of it)."""
    run = at.session_state["tr_run"]
    assert run.wait(timeout), "training did not end"
    at.run()
    assert not at.exception, at.exception
    return run


@pytest.fixture(scope="module")
def trained():
    from cnnviz import jobs

    # app.py sets the runner's short-job threads to 1 (as served). A module fixture runs before
    # conftest's per-test restore has looked, so it restores them itself: later modules compare
    # numbers bitwise with torch's default threads.
    runner, short = jobs.RUNNER, jobs.RUNNER.short_threads
    yield from _trained()
    jobs.RUNNER, runner.short_threads = runner, short


def _trained():
    at = open_page("train.py", epochs="2", seed="1")
    at.button(key="tr_start").click().run()
    assert not at.exception
    run = at.session_state["tr_run"]
    at.number_input(key="tr_seed").set_value(5).run()  # the page stays usable: the run goes on
    assert at.session_state["tr_run"] is run and not at.exception
    finish(at)
    yield at, run


def test_a_run_in_the_background_gives_the_result(trained):
    at, run = trained
    assert run.error is None and run.result is not None
    assert [e["epoch"] for e in run.result.epochs] == [1, 2] and run.spec.seed == 1
    heads = [s.value for s in at.main.subheader]
    assert f"Test accuracy: {run.result.test_accuracy:.1%}" in heads and run.result.test_accuracy > 0.8
    assert qp(at, "epochs") == "2" and qp(at, "seed") == "5"


def test_a_confusion_cell_shows_its_digits(trained):
    at, run = trained
    res = run.result
    at.session_state["tr_confusion"] = {"selection": {"points": [{"customdata": [3, 3]}]}}
    at.run()
    n = res.confusion[3][3]
    assert any(f"**True 3, read as 3**: {n} digits" in m.value for m in at.main.markdown)
    _, y = lenet.digits()
    assert n == int(((y.numpy()[res.test_index] == 3) & (res.test_predicted == 3)).sum()) > 0


def test_the_trained_net_on_every_page(trained):
    at, run = trained
    at.button(key="tr_use").click().run()
    own = at.session_state["own_model"]
    assert own["id"].startswith("lenet:") and "trained here" in own["label"]
    assert at.session_state["model_id"] == own["id"]
    for page in PAGES:
        at.switch_page(f"pages/{page}").run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
        assert at.selectbox(key="model_id").value == own["id"]  # the sidebar's picker: the trained net
    at.switch_page("pages/convolution.py")
    at.query_params.update({"cv_view": "One unit of the network"})
    at.run()  # a unit of the trained LeNet, worked out and checked
    assert any("relative difference" in s.value for s in at.success)


def test_stop_ends_the_run_and_keeps_nothing():
    at = open_page("train.py", epochs="50")
    at.button(key="tr_start").click().run()
    run = at.session_state["tr_run"]
    t = time.time()
    while run.latest is None and time.time() - t < 60:  # its first report: the job has started
        time.sleep(0.1)
    at.button(key="tr_stop").click().run()
    assert run.wait(60) and run.result is None and "Stopped" in run.error
    at.run()
    assert not at.exception and any("Stopped" in e.value for e in at.error)


def test_bad_links_are_said():
    at = open_page("train.py", epochs="1e309", lr="7", batch="-3", variant="nope", seed="99999")
    assert not at.exception
    notes = " ".join(i.value for i in at.info)
    assert all(k in notes for k in ("epochs", "lr", "batch", "variant", "seed"))
    assert at.number_input(key="tr_seed").value == 9999 and at.number_input(key="tr_epochs").value == 15


def test_mnist_offline_says_so_and_the_page_keeps_working():
    at = open_page("train.py", data="mnist", epochs="1")
    at.button(key="tr_start").click().run()
    finish(at, 60)
    assert any("offline" in e.value for e in at.error) and not at.main.subheader
