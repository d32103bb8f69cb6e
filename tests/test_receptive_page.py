"""The Receptive fields page in AppTest: unit clicks, numbers from the backend, URL state, averaging."""
import pytest

from cnnviz import receptive as R
from cnnviz.images import load_image

from .apptest import open_page

LAYER = "_blocks.8._project_conv"


@pytest.fixture
def page():
    return open_page("receptive_fields.py", 180, layer=LAYER, y="0", x="13")


def open_tab(at, label: str):
    """The page's tabs are lazy (bound to `rf_view`): only the open one computes."""
    at.session_state["rf_view"] = label
    return at.run()


def metrics(at) -> dict:
    return {m.label: m.value for m in at.main.metric}


def test_url_opens_a_unit_and_numbers_match_the_backend(page, bundled, samples):
    assert page.selectbox(key="rf_layer").value == LAYER
    assert (page.number_input(key="rf_y").value, page.number_input(key="rf_x").value) == (0, 13)
    rows = R.architecture(bundled)
    u = R.unit(rows, LAYER, 0, 13)
    eff = R.effective(bundled, load_image(samples["cat"]), u)
    s = R.summary(u, eff)
    shown = metrics(page)
    assert shown["Theoretical field (in the image)"] == f"{s['theoretical'][0]} x {s['theoretical'][1]} px"
    assert shown["Effective field (90% of mass)"] == f"{s['effective'][0]} x {s['effective'][1]} px"
    assert shown["Effective / theoretical"] == f"{s['ratio']:.2f}"
    assert any("reaches into the padding" in c.value for c in page.main.caption)


def test_clicks_on_the_map_and_on_the_image_pick_units(page):
    page.session_state["rf_map"] = {"selection": {"points": [{"customdata": [5, 7]}]}}
    page.run()
    assert not page.exception
    assert (page.number_input(key="rf_y").value, page.number_input(key="rf_x").value) == (5, 7)
    assert page.query_params["y"] in ("5", ["5"]) and page.query_params["x"] in ("7", ["7"])
    page.session_state["rf_image"] = {"selection": {"points": [{"customdata": [13, 0]}]}}
    page.run()
    assert (page.number_input(key="rf_y").value, page.number_input(key="rf_x").value) == (13, 0)
    page.number_input(key="rf_x").set_value(2).run()  # the old click does not win again
    assert page.number_input(key="rf_x").value == 2


def test_a_new_layer_keeps_looking_at_the_same_place_and_depth_chart_click(page, bundled):
    rows = R.architecture(bundled)
    centre = R.unit(rows, LAYER, 0, 13).centre
    head = R.check_layer(rows, "_conv_head")
    want = R.nearest_unit(head.field, head.shape[1:], *centre)
    assert want == (0, 6)
    page.selectbox(key="rf_layer").set_value("_conv_head").run()  # 7x7: column 13 does not exist
    assert not page.exception
    assert (page.number_input(key="rf_y").value, page.number_input(key="rf_x").value) == want
    page.session_state["rf_depth_chart"] = {"selection": {"points": [{"customdata": "_blocks.2._bn1"}]}}
    page.run()
    assert page.selectbox(key="rf_layer").value == "_blocks.2._bn1"


def test_one_channel_uses_that_channels_gradient(page, bundled, samples):
    page.radio(key="rf_target").set_value("channel").run()
    page.number_input(key="rf_channel").set_value(4).run()
    assert not page.exception and page.query_params["channel"] in ("4", ["4"])
    u = R.unit(R.architecture(bundled), LAYER, 0, 13)
    x = load_image(samples["cat"])
    one, all_ = (R.summary(u, R.effective(bundled, x, u, c)) for c in (4, None))
    assert one["effective"] != all_["effective"]  # else this test could not tell them apart
    assert metrics(page)["Effective field (90% of mass)"] == f"{one['effective'][0]} x {one['effective'][1]} px"


def test_average_over_samples_with_progress(page):
    open_tab(page, "Averaged effective field")
    page.radio(key="rf_avg_source").set_value("noise").run()
    page.slider(key="rf_avg_n").set_value(4).run()
    page.button(key="rf_avg_go").click().run()
    assert not page.exception and not page.error
    assert any("over 4 inputs" in c.value for c in page.main.caption)


def test_only_the_open_tab_computes_and_draws(page, monkeypatch):
    """The Architecture tab's table of every layer went to the browser with every click on a unit."""
    assert not page.main.dataframe and "Effective field (90% of mass)" in metrics(page)  # the unit's tab
    from cnnviz.app import cache

    asked = []  # what the page asks for, cached or not
    real = cache.run
    monkeypatch.setattr(cache, "run", lambda spec, *a, **k: asked.append(type(spec).__name__) or real(spec, *a, **k))
    open_tab(page, "Architecture")
    assert page.main.dataframe and not metrics(page)  # the table, not the unit's numbers
    assert "EffectiveSpec" not in asked and not page.exception


def test_architecture_table_lists_every_layer(page, bundled):
    open_tab(page, "Architecture")
    frames = page.main.dataframe
    assert frames, "no architecture table"
    df = frames[-1].value
    assert list(df["layer"][df["type"] != "add"]) == [l.name for l in bundled.layers]
    assert "851 x 851" in set(df["field"])  # _conv_head's field at 224
