"""Filter weights as tiles: kinds, per-filter normalization, nearest-neighbour upscaling, norms, CLI."""
import json

import numpy as np
import pytest
import torch

from cnnviz import cli, models
from cnnviz import filters as Fi


@pytest.fixture(scope="module")
def resnet():
    return models.load("torchvision:resnet18@random")


def test_conv_layers_are_the_convolutions_in_order(bundled):
    names = Fi.conv_layers(bundled)
    assert names[0] == "_conv_stem" and "_conv_head" in names
    assert "_bn0" not in names and all(isinstance(bundled.layer_modules[n], torch.nn.Conv2d) for n in names)


def test_kinds(bundled, resnet):
    assert Fi.of(bundled, "_conv_stem").kind == "rgb"
    assert Fi.of(bundled, "_blocks.3._depthwise_conv").kind == "depthwise"
    assert Fi.of(bundled, "_blocks.3._expand_conv").kind == "channels"
    assert Fi.of(resnet, "conv1").weights.shape == (64, 3, 7, 7) and Fi.of(resnet, "conv1").kind == "rgb"
    assert Fi.of(resnet, "layer1.0.conv1").kind == "channels"


def test_norms_and_order(bundled):
    f = Fi.of(bundled, "_conv_stem")
    w = bundled.net._conv_stem.weight.detach().double()
    np.testing.assert_allclose(f.norms, w.flatten(1).norm(dim=1).numpy(), rtol=1e-6)
    order = f.order("norm")
    assert sorted(order) == list(range(32)) and np.all(np.diff(f.norms[order]) <= 0)
    assert list(f.order("index")) == list(range(32))


def test_rgb_tiles_are_normalized_per_filter_and_upscaled_without_blur(bundled):
    f = Fi.of(bundled, "_conv_stem")
    order = f.order("norm")
    rgb, grid = Fi.rgb_tiles(f, order, tile_px=48)
    s = grid.tile_h // 3
    assert s == 16 and grid.tile_w == 48 and list(grid.order) == list(order)
    for k in (0, 5, 31):
        r, q = divmod(k, grid.cols)
        y, x = r * (grid.tile_h + grid.gap), q * (grid.tile_w + grid.gap)
        tile = rgb[y: y + grid.tile_h, x: x + grid.tile_w]
        assert tile.min() == 0 and tile.max() == 255  # each filter spans the full range on its own
        # Every weight is one s x s block of one colour (nearest neighbour).
        small = tile[::s, ::s]
        np.testing.assert_array_equal(np.repeat(np.repeat(small, s, 0), s, 1), tile)
        w = f.weights[order[k]].transpose(1, 2, 0)
        expect = (w - w.min()) / (w.max() - w.min()) * 255
        assert np.abs(small.astype(float) - expect).max() <= 0.5 + 1e-6


def test_depthwise_one_tile_per_channel(bundled):
    f = Fi.of(bundled, "_blocks.3._depthwise_conv")
    rgb, grid = Fi.depthwise_tiles(f, f.order("norm"))
    assert len(grid.order) == 144 and grid.tile_h == grid.tile_w and grid.tile_h % 5 == 0
    assert rgb.shape[0] >= grid.rows * grid.tile_h and rgb.dtype == np.uint8


def test_deeper_filter_one_grey_tile_per_input_channel(bundled, resnet):
    f = Fi.of(resnet, "layer1.0.conv1")
    rgb, grid = Fi.tiles(f, index=3)
    assert len(grid.order) == 64 and grid.tile_h % 3 == 0
    tile = rgb[: grid.tile_h, : grid.tile_w]
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()  # grey
    with pytest.raises(Fi.FilterError, match="0 to 63"):
        Fi.filter_tiles(f, 64)


def test_not_a_conv_layer(bundled):
    with pytest.raises(Fi.FilterError, match="not a convolution layer"):
        Fi.of(bundled, "_bn0")


def test_cli_filters(capsys, tmp_path):
    out = tmp_path / "tiles.png"
    assert cli.main(["filters", "--layer", "_conv_stem", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"layer", "shape", "norms"}
    assert res["shape"] == [32, 3, 3, 3] and len(res["norms"]) == 32 and out.stat().st_size > 1000
    assert cli.main(["filters", "--layer", "_bn0"]) == 2
    err = capsys.readouterr().err
    assert "not a convolution layer" in err and "Traceback" not in err


def test_run_is_the_pictures_of_the_pure_functions(bundled, resnet):
    from cnnviz import jobs

    for model, layer, kind in ((bundled, "_conv_stem", "rgb"), (bundled, "_blocks.3._depthwise_conv", "depthwise"),
                               (resnet, "layer1.0.conv1", "channels")):
        f = Fi.of(model, layer)
        r = jobs.run(model, None, Fi.FiltersSpec(layer, "norm"))
        assert r.kind == kind and r.shape == f.weights.shape and Fi.FiltersSpec(layer).passes(model) == 0
        want, grid = Fi.tiles(f, f.order("norm"), int(f.order("norm")[0]))
        np.testing.assert_array_equal(r.tiles, want)
        assert list(r.grid.order) == list(grid.order) and len(r.texts) == len(grid.order)
        assert r.index == int(f.order("norm")[0])
        assert r.to_dict() == {"layer": layer, "shape": list(f.weights.shape), "norms": [float(v) for v in f.norms]}
    r = Fi.run(resnet, None, Fi.FiltersSpec("layer1.0.conv1", "index", 3))
    np.testing.assert_array_equal(r.tiles, Fi.filter_tiles(Fi.of(resnet, "layer1.0.conv1"), 3)[0])
    assert r.texts[0].startswith("input channel 0<br>sum ")
    with pytest.raises(Fi.FilterError, match="0 to 63"):
        Fi.FiltersSpec("layer1.0.conv1", index=64).check(resnet)
    with pytest.raises(Fi.FilterError, match="Unknown order"):
        Fi.FiltersSpec("conv1", "size").check(resnet)


def test_a_wrong_name_is_a_not_found_with_the_closest_convolutions(bundled):
    from cnnviz.contract import NotFound

    with pytest.raises(NotFound) as e:
        Fi.FiltersSpec("_conv_stm").check(bundled)
    assert e.value.candidates[0] == "_conv_stem" and "Closest: _conv_stem" in str(e.value)
    assert isinstance(e.value, Fi.FilterError) and "not a convolution layer" in str(e.value)
    with pytest.raises(Fi.NotAConvolution, match="The first is _conv_stem"):
        Fi.of(bundled, "zzzzzzzzzzzzzzzzzzzzzz")
