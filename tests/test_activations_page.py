"""The Activations page in AppTest: layer walk, channel clicks, compare, no needless passes."""
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cnnviz import activations as A
from cnnviz import bounds
from cnnviz.images import load_image

from .apptest import open_page
from .conftest import ROOT


@pytest.fixture
def page():
    return open_page("activations.py", 180)


def channel_title(at) -> str:
    return [h.value for h in at.main.subheader if h.value.startswith("Channel")][0]


def stats_shown(at) -> dict:
    return {m.label: m.value for m in at.main.metric}


def test_defaults_and_url(page, bundled):
    first = A.spatial_layers(bundled)[0]
    assert page.selectbox(key="act_layer").value == first
    assert page.query_params["layer"] in (first, [first])
    assert channel_title(page) == "Channel 0"


def test_layer_change_shows_that_layers_numbers(page, bundled, samples):
    page.selectbox(key="act_layer").set_value("_swish#1").run()
    assert not page.exception
    acts = A.compute(bundled, load_image(samples["cat"]), ["_swish#1"])["_swish#1"]
    assert page.number_input(key="act_channel").max == 1279
    assert stats_shown(page)["max"] == f"{acts[0].max():.4g}"
    assert page.slider(key="act_depth").value == A.spatial_layers(bundled).index("_swish#1") + 1
    page.button[[b.label for b in page.button].index("Shallower")].click().run()
    names = A.spatial_layers(bundled)
    assert page.selectbox(key="act_layer").value == names[names.index("_swish#1") - 1]


def test_block_picker_jumps_to_the_blocks_first_layer(page):
    page.selectbox(key="act_block").set_value("_blocks.4").run()
    assert page.selectbox(key="act_layer").value == "_blocks.4._expand_conv"
    page.selectbox(key="act_layer").set_value("_swish#1").run()
    assert page.selectbox(key="act_block").value == "top level (stem, head)"


def test_depth_slider_walks_layers(page, bundled):
    page.slider(key="act_depth").set_value(5).run()
    assert page.selectbox(key="act_layer").value == A.spatial_layers(bundled)[4]


def test_mosaic_click_selects_a_channel(page, bundled, samples):
    page.session_state["act_mosaic"] = {"selection": {"points": [{"customdata": 17, "point_index": 3}]}}
    page.run()
    assert not page.exception
    assert channel_title(page) == "Channel 17" and page.number_input(key="act_channel").value == 17
    acts = A.compute(bundled, load_image(samples["cat"]), ["_conv_stem"])["_conv_stem"]
    assert stats_shown(page)["mean"] == f"{acts[17].mean(dtype=np.float64):.4g}"
    assert page.query_params["channel"] in ("17", ["17"])
    page.number_input(key="act_channel").set_value(3).run()  # the old click does not win again
    assert channel_title(page) == "Channel 3"


def test_depth_chart_click_jumps_to_layer(page):
    page.session_state["act_depth_chart"] = {"selection": {"points": [{"customdata": "_blocks.6._bn1"}]}}
    page.run()
    assert page.selectbox(key="act_layer").value == "_blocks.6._bn1"


def test_query_params_open_a_view():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params.update({"layer": "_blocks.2._swish", "channel": "5", "sort": "max", "scale": "channel"})
    at.switch_page("pages/activations.py").run()
    assert not at.exception
    assert at.selectbox(key="act_layer").value == "_blocks.2._swish"
    assert channel_title(at) == "Channel 5"
    assert at.radio(key="act_sort").value == "max" and at.radio(key="act_scale").value == "channel"


def open_tab(at, label: str):
    """The page's tabs are lazy (bound to `act_view`): only the open one computes."""
    at.session_state["act_view"] = label
    return at.run()


def test_compare_modes(page, bundled, samples):
    page.selectbox(key="act_layer").set_value("_blocks.10._swish").run()
    open_tab(page, "Compare two images")
    assert page.selectbox(key="act_other").value == "mirror"
    assert not page.exception
    page.selectbox(key="act_other").set_value("coffee").run()
    assert not page.exception and not page.error
    charts = [c.proto.spec for c in page.main.get("plotly_chart")]
    assert any("channel 0: coffee" in spec for spec in charts)
    a = A.compute(bundled, load_image(samples["cat"]), ["_blocks.10._swish"])["_blocks.10._swish"]
    b = A.compute(bundled, load_image(samples["coffee"]), ["_blocks.10._swish"])["_blocks.10._swish"]
    top = A.compare(a, b)[0]["index"]
    assert any(f"ch {top} " in spec for spec in charts)


def test_view_changes_run_no_forward_pass(page, bundled):
    from cnnviz import models
    from cnnviz.app import cache

    calls = []
    handle = cache.model(models.BUNDLED_ID).net.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        page.number_input(key="act_channel").set_value(9).run()
        page.radio(key="act_sort").set_value("sparsity").run()
        page.radio(key="act_scale").set_value("channel").run()
        page.slider(key="act_opacity").set_value(0.3).run()
        assert not page.exception
        assert calls == []
        # A recording keeps only the layer on screen: a new layer is one more (partial)
        # pass, and a layer seen before is a cache hit.
        page.selectbox(key="act_layer").set_value("_blocks.5._bn2").run()
        assert not page.exception and len(calls) == 1
        page.selectbox(key="act_layer").set_value(A.spatial_layers(bundled)[0]).run()
        assert len(calls) == 1
    finally:
        handle.remove()


def test_compare_with_a_second_upload(page, bundled, samples, monkeypatch):
    from cnnviz.app import sidebar

    released = []
    monkeypatch.setattr(sidebar, "_release", lambda *files: released.extend(files))
    open_tab(page, "Compare two images")
    data = samples["rocket"].read_bytes()
    page.file_uploader(key="act_upload").set_value(("mine.jpg", data, "image/jpeg")).run()
    assert not page.exception and page.selectbox(key="act_other").value == "upload"
    specs = [c.proto.spec for c in page.main.get("plotly_chart")]
    assert any("channel 0: mine.jpg" in s for s in specs)
    # The session keeps the image once; Streamlit's copy of the upload is released (it would
    # otherwise stay for the session's life), and the uploader reads back empty.
    assert page.session_state["act_second"]["name"] == "mine.jpg"
    assert [f.name for f in released] == ["mine.jpg"]
    page.file_uploader(key="act_upload").set_value(("bad.jpg", b"nope", "image/jpeg")).run()
    assert not page.exception
    assert any("bad.jpg is not an image" in e.value for e in page.main.error)
    # a bad file loses nothing: the earlier upload is still the second image
    assert page.selectbox(key="act_other").value == "upload"
    assert any("channel 0: mine.jpg" in c.proto.spec for c in page.main.get("plotly_chart"))
    big = b"\xff" * (bounds.IMAGE_BYTES + 1)  # over the image limit: refused before it is even hashed
    page.file_uploader(key="act_upload").set_value(("huge.jpg", big, "image/jpeg")).run()
    assert not page.exception and any("huge.jpg" in e.value for e in page.main.error)
    assert page.session_state["act_second"]["name"] == "mine.jpg"


def test_the_page_records_only_the_layer_it_shows(page, bundled, monkeypatch):
    """Issue #14: the page's recording keeps one full map (the layer on screen), not all
    132 of them (~75 MB per image); the depth summary comes from its own job, which keeps
    none, and only when its tab is open."""
    from cnnviz import jobs

    ran = []
    real = jobs.RUNNER.run

    def spy(model, image, spec, **kw):
        result = real(model, image, spec, **kw)
        ran.append((spec, result))
        return result

    monkeypatch.setattr(jobs.RUNNER, "run", spy)
    layer = "_blocks.7._expand_conv"  # not opened by another test: no cache hit
    page.selectbox(key="act_layer").set_value(layer).run()
    assert not page.exception
    recordings = [(s, r) for s, r in ran if isinstance(s, A.ActivationsSpec)]
    assert [s.layers for s, _ in recordings] == [(layer,)]
    result = recordings[0][1]
    assert list(result.maps) == [layer]
    shape = next(l.shape for l in bundled.layers if l.name == layer)
    assert result.nbytes == 4 * int(np.prod(shape)) < 10 * 2**20
    assert not any(isinstance(s, A.DepthSpec) for s, _ in ran)  # its tab is closed
    open_tab(page, "Depth summary")
    assert not page.exception
    depth = [r for s, r in ran if isinstance(s, A.DepthSpec)]
    assert len(depth) <= 1  # none if an earlier test cached it
    charts = [c.proto.spec for c in page.main.get("plotly_chart")]
    assert any("fraction of zeros" in c for c in charts)
