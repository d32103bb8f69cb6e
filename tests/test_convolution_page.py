"""The Convolution page in AppTest: the playground's formula, drawing and costs; one unit of
the network with its worked sum (numbers from the backend, clicks, URL state); pooling and
stride; the softmax with a temperature; lecture mode."""
import json

import numpy as np

from cnnviz import arithmetic
from cnnviz import unit as U
from cnnviz.predict import logits

from .apptest import open_page, qp

UNIT = "One unit of the network"


def figure(at, key: str) -> dict:
    """The Plotly figure JSON of chart `key` (AppTest keeps charts as generic elements)."""
    for el in at.main.get("plotly_chart"):
        if el.proto.id.endswith("-" + key):
            return json.loads(el.proto.spec)
    raise AssertionError(f"no chart {key}")


def array(v) -> np.ndarray:
    """A figure's array: a list, or Plotly's typed array {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(v, dict):
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        shape = v.get("shape")
        return a.reshape([int(n) for n in str(shape).split(",")]) if shape else a
    return np.array(v, dtype=float)


def texts(at) -> str:
    return "\n".join(m.value for m in at.main.markdown)


def test_the_playground_writes_the_rule_with_its_numbers_and_draws_every_step():
    at = open_page("convolution.py", size="7", kernel="3", pad="1", stride="2")
    o = arithmetic.output_size(7, 3, 1, 2)
    assert o.formula in texts(at)
    assert at.success and "tiles the padded input exactly" in at.success[0].value
    fig = figure(at, "cv_play")
    assert len(fig["frames"]) == o.output ** 2  # one frame per output unit: Play and the slider step through them
    z = array(fig["data"][2]["z"])  # the output map drawn is torch's convolution of the toy input
    want = arithmetic.toy_conv(arithmetic.toy_input(7), arithmetic.toy_kernel("edges", 3), 1, 2, 1)
    assert np.allclose(z, want)
    assert fig["frames"][-1]["layout"]["title"]["text"].startswith(f"unit ({o.output - 1}, {o.output - 1}):")
    table = at.main.dataframe[0].value
    full = arithmetic.conv_cost(64, 128, 3, o.output, o.output)
    assert table.iloc[0]["weights"] == f"{full.params:,}" and table.iloc[0]["multiply-adds"] == f"{full.mult_adds:,}"


def test_an_inexact_stride_says_what_is_dropped_and_a_kernel_too_big_says_why():
    at = open_page("convolution.py", size="7", kernel="3", pad="0", stride="3")
    assert "never read" in at.warning[0].value and not at.exception
    assert len(figure(at, "cv_play")["frames"]) == 4
    at.number_input(key="cv_kernel").set_value(9).run()
    assert not at.exception and at.error and "No output" in at.error[0].value
    assert qp(at, "kernel") == "9"
    at = open_page("convolution.py", size="500")
    assert any("up to 48 cells" in i.value for i in at.info)
    assert not at.main.get("plotly_chart")  # nothing drawn past the bound, the numbers still written
    assert "500" in texts(at)


def test_the_link_is_clamped_to_the_widgets_range():
    at = open_page("convolution.py", size="1e309", kernel="99", stride="-1", toy="nope")
    assert not at.exception
    assert at.number_input(key="cv_kernel").value == 11  # above the range: its largest
    assert at.number_input(key="cv_stride").value == 2  # below it: the default
    notes = " ".join(i.value for i in at.info)
    assert "kernel" in notes and "stride" in notes and "toy" in notes


def test_one_unit_shows_the_worked_sum_and_the_recorded_value(bundled, cat):
    layer = "_blocks.2._expand_conv"
    at = open_page("convolution.py", cv_view=UNIT, layer=layer, y="5", x="3", channel="4")
    assert at.selectbox(key="cv_layer").value == layer
    u = U.run(bundled, cat, U.UnitSpec(layer, 5, 3, 4))
    verdict = at.success[0].value
    assert f"**{u.recorded:.6g}**" in verdict and f"{u.worked:.8g}" in verdict
    body = texts(at)
    assert f"plus the bias {u.bias:.6g}: **{u.pre_activation:.6g}**" in body
    assert "BatchNorm: (x - mean)" in body and "ReLU6" in body
    sums = figure(at, "cv_sums")  # 24 input channels, largest |sum| first
    assert len(array(sums["data"][0]["y"])) == 24 and abs(array(sums["data"][0]["y"])[0]) == max(np.abs(u.channel_sums))
    strongest = u.channels[int(np.argmax(np.abs(u.channel_sums)))]
    assert qp(at, "ich") == str(strongest)
    assert (qp(at, "layer"), qp(at, "y"), qp(at, "x"), qp(at, "channel")) == (layer, "5", "3", "4")


def test_clicks_pick_a_unit_and_an_input_channel(bundled, cat):
    layer = "_blocks.2._expand_conv"
    at = open_page("convolution.py", cv_view=UNIT, layer=layer, y="5", x="3", channel="4")
    at.session_state["cv_map"] = {"selection": {"points": [{"customdata": [10, 20]}]}}
    at.run()
    assert not at.exception
    assert (at.number_input(key="cv_y").value, at.number_input(key="cv_x").value) == (10, 20)
    u = U.run(bundled, cat, U.UnitSpec(layer, 10, 20, 4))
    assert f"**{u.recorded:.6g}**" in at.success[0].value
    at.session_state["cv_sums"] = {"selection": {"points": [{"customdata": 7}]}}
    at.run()
    assert qp(at, "ich") == "7"
    k = u.channels.index(7)
    assert f"Input channel 7**: patch x kernel = products, summing to **{u.channel_sums[k]:.6g}**" in texts(at)
    patch = figure(at, "cv_patch")
    assert np.allclose(array(patch["data"][2]["z"]), u.patch[k] * u.weights[k])


def test_a_pooling_unit_and_a_strided_layer(bundled, cat):
    at = open_page("convolution.py", cv_view=UNIT, layer="_avg_pooling", y="0", x="0", channel="9")
    assert not at.exception and "sum of the window" in texts(at) and "/ 49 =" in texts(at)
    assert at.success
    at = open_page("convolution.py", cv_view=UNIT, layer="_blocks.1._depthwise_conv", y="0", x="3", channel="4")
    assert "**Stride 2**" in texts(at)
    cover = array(figure(at, "cv_cover")["data"][0]["z"])
    u = U.run(bundled, cat, U.UnitSpec("_blocks.1._depthwise_conv", 0, 3, 4))
    assert np.array_equal(cover, u.coverage) and cover.min() >= 1  # 3x3 stride 2 overlaps: nothing skipped


def test_a_one_by_one_stride_two_layer_skips_inputs():
    at = open_page("convolution.py", cv_view=UNIT, model="torchvision:resnet18@random", layer="layer2.0.downsample.0",
                   y="0", x="0", channel="0")
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    assert "never read" in warning and "75%" in warning  # a 1x1 window every 2 positions reads 1 input in 4


def test_bad_unit_links_are_said_and_replaced():
    at = open_page("convolution.py", cv_view=UNIT, layer="nope", y="99999", x="-1", channel="1e309", ich="5000")
    assert not at.exception
    assert at.selectbox(key="cv_layer").value == "_conv_stem"
    notes = " ".join(i.value for i in at.info)
    assert "layer" in notes and "99999" in notes
    assert at.success  # still a worked unit


def test_softmax_with_a_temperature(bundled, cat):
    at = open_page("convolution.py", cv_view="Softmax", t="0.5")
    assert at.slider(key="cv_temp").value == 0.5
    z = logits(bundled, cat)
    p = arithmetic.softmax(z, 0.5)
    rows = at.main.dataframe[0].value
    top = int(np.argmax(z))
    assert rows.iloc[0]["class"] == bundled.categories[top]
    assert rows.iloc[0]["probability"] == f"{p[top]:.2%}"
    at.slider(key="cv_temp").set_value(4.0).run()
    flat = at.main.dataframe[0].value.iloc[0]["probability"]
    assert flat == f"{arithmetic.softmax(z, 4.0)[top]:.2%}" and float(flat[:-1]) < p[top] * 100
    assert qp(at, "t") == "4"


def test_lecture_mode_from_the_link():
    at = open_page("convolution.py", lecture="1")
    assert at.toggle(key="cv_lecture").value is True
    assert not at.main.markdown or "A convolution unit's value" not in texts(at)


def test_every_part_on_a_vision_transformer():
    at = open_page("convolution.py", cv_view=UNIT, model="torchvision:vit_b_16@random")
    assert not at.exception and at.selectbox(key="cv_layer").value == "conv_proj" and at.success
