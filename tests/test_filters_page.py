"""The Filters page in AppTest: weights of each kind, a unit rendered and cached, the
natural evidence, the gallery, URL state both ways."""
import pytest

from cnnviz import featurevis as FV

from . import apptest
from .apptest import qp


pytestmark = pytest.mark.usefixtures("cache_dir")  # a private feature-visualization cache


def open_page(**params):
    return apptest.open_page("filters.py", **params)


def image_captions(at) -> list[str]:
    found = []

    def walk(node):
        if getattr(node, "type", None) == "image":
            found.extend(img.caption for img in node.proto.imgs)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    return found


def captions(at):
    return " ".join(c.value for c in at.main.caption)


def test_weights_of_each_kind():
    at = open_page()
    assert qp(at, "view") == "weights" and qp(at, "conv") == "_conv_stem" and qp(at, "sort") == "norm"
    assert "32 filters of 3x3 over the 3 colour channels" in captions(at)
    at.selectbox(key="flt_conv").set_value("_blocks.3._depthwise_conv").run()
    assert not at.exception and "is depthwise" in captions(at)
    at.selectbox(key="flt_conv").set_value("_blocks.3._expand_conv").run()
    assert "one grey tile per input channel (24 of them)" in captions(at) and "channel mixer" in captions(at)
    at.number_input(key="flt_filter").set_value(7).run()
    assert "filter 7 of 144" in captions(at) and qp(at, "filter") == "7"
    assert not at.error


def test_unit_from_the_url_render_cache_and_evidence(cache_dir, bundled):
    at = open_page(view="unit", layer="_blocks.3._swish#1", channel="5", size="32", steps="8", seed="2")
    assert at.selectbox(key="fv_layer").value == "_blocks.3._swish#1" and at.number_input(key="fv_channel").value == 5
    assert at.select_slider(key="fv_size").value == 32 and at.select_slider(key="fv_steps").value == 8
    assert "Not rendered yet" in captions(at)
    crops = [c for c in image_captions(at) if " at unit (" in c]  # the natural evidence, before any run
    assert len(crops) == 8 and all(c.split(":")[0] in FV.sample_images() for c in crops)
    at.button(key="fv_go").click().run()
    assert not at.exception and not at.error
    assert [m.label for m in at.main.metric][:3] == ["start", "end", "best sample photo"]
    assert len(list(cache_dir.glob("*.npz"))) == 1
    result = FV.cached(bundled, FV.FeatureVisSpec("_blocks.3._swish#1", 5, size=32, steps=8, seed=2))
    assert at.main.metric[1].value == f"{result.activation_end:.3g}"
    assert any(", rendered in " in c and "cache" not in c for c in image_captions(at))  # just made, not "cached"
    assert qp(at, "layer") == "_blocks.3._swish#1" and qp(at, "steps") == "8" and qp(at, "seed") == "2"
    # A new session finds it in the cache: no button, the result straight away.
    again = open_page(view="unit", layer="_blocks.3._swish#1", channel="5", size="32", steps="8", seed="2")
    assert not [b for b in again.main.button if b.key == "fv_go"]
    assert any("from the memory cache" in c for c in image_captions(again))


def test_class_objective_and_bad_url_values():
    at = open_page(view="unit", objective="class", steps="7", size="999", channel="1")
    assert at.radio(key="fv_objective").value == "class"
    assert at.selectbox(key="fv_channel").value == 1  # goldfish
    assert at.select_slider(key="fv_steps").value == 256 and at.select_slider(key="fv_size").value == 128
    assert "layer" not in at.query_params or at.radio(key="fv_objective").value == "class"
    assert not at.exception and not at.error
    best = image_captions(at)  # a logit sees the whole photo: the best four, whole
    assert len(best) == 4 and all(c.split(":")[0] in FV.sample_images() and " at unit" not in c for c in best)


def test_gallery_renders_the_first_channels():
    at = open_page(view="gallery", layer="_blocks.1._swish#1", n="2", size="32", steps="8")
    assert "0 of 2 channels are rendered" in captions(at)
    at.button(key="gal_go").click().run()
    assert not at.exception and not at.error
    assert any("channels 0 to 1" in c for c in image_captions(at))
    assert "are rendered" not in captions(at)  # both cached now: no button, the grid and its download
    assert qp(at, "view") == "gallery" and qp(at, "n") == "2"
