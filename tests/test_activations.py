import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cnnviz import activations as A
from cnnviz.cli import main


def independent(model, image, names):
    """Outputs from plain forward hooks, written here without cnnviz.hooks."""
    mods = dict(model.net.named_modules())
    seen = {}
    handles = []
    for n in names:
        base, _, k = n.partition("#")
        k = int(k or 0)
        calls = {"n": 0}

        def hook(m, i, o, n=n, k=k, calls=calls):
            if calls["n"] == k:
                seen[n] = o.detach().clone()[0].numpy()
            calls["n"] += 1
        handles.append(mods[base].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.net(model.preprocess(image))
    finally:
        for h in handles:
            h.remove()
    return seen


def test_values_equal_an_independent_hook(bundled, cat):
    names = ["_conv_stem", "_swish", "_blocks.4._bn0", "_blocks.9._swish#1", "_swish#1"]
    ours = A.compute(bundled, cat, names)
    ref = independent(bundled, cat, names)
    for n in names:
        assert np.array_equal(ours[n], ref[n]), n


def test_all_layers_in_one_pass(bundled, cat):
    acts = A.compute(bundled, cat)
    assert list(acts) == A.spatial_layers(bundled)
    assert acts["_swish#1"].shape == (1280, 7, 7) and acts["_swish#1"].dtype == np.float32
    assert 50 < A.nbytes(acts) / 2**20 < 100  # the page caches this per image: ~75 MB


def test_channel_stats_and_orders():
    a = np.zeros((3, 2, 2), np.float32)
    a[0] = [[1, 0], [0, 0]]  # mean .25, max 1, zeros .75
    a[1] = [[2, 2], [2, 2]]  # mean 2, max 2, zeros 0
    a[2] = [[0, 0], [0, 5]]  # mean 1.25, max 5, zeros .75
    s = A.ChannelStats.of(a)
    assert s.mean.tolist() == [0.25, 2.0, 1.25] and s.zeros.tolist() == [0.75, 0.0, 0.75]
    assert s.order("mean").tolist() == [1, 2, 0]
    assert s.order("max").tolist() == [2, 1, 0]
    assert s.order("sparsity").tolist() == [0, 2, 1]  # ties by index


def test_mosaic_layout_and_scaling():
    a = np.stack([np.full((4, 4), v, np.float32) for v in (0.0, 1.0, 2.0, 4.0, 8.0)])
    rgb, grid = A.mosaic(a, np.arange(5), "global")
    assert grid.cols * grid.rows >= 5 and rgb.shape == (grid.rows * 5 - 1, grid.cols * 5 - 1, 3)
    y, x = (int(v) for v in grid.centre(4))
    assert tuple(rgb[y, x]) == (255, 255, 255)  # the strongest channel is white
    y, x = (int(v) for v in grid.centre(0))
    assert tuple(rgb[y, x]) == (0, 0, 0)
    assert tuple(rgb[4, 0]) == A.GAP_RGB  # separator row
    ramp = np.stack([np.linspace(0, s, 16, dtype=np.float32).reshape(4, 4) for s in (1, 100)])
    per, g = A.mosaic(ramp, np.arange(2), "channel")
    y0, x0 = int(g.centre(0)[0]) + 2, int(g.centre(0)[1]) + 2  # bottom-right of tile 0
    assert per[y0, x0, 0] == 255  # each tile stretched to its own max
    glob, _ = A.mosaic(ramp, np.arange(2), "global")
    assert glob[y0, x0, 0] < 5  # on the shared scale the weak channel is near black


def test_mosaic_shrinks_large_layers_within_budget():
    a = np.random.default_rng(0).random((96, 112, 112), dtype=np.float32)
    rgb, grid = A.mosaic(a, max_pixels=400_000)
    assert rgb.shape[0] * rgb.shape[1] <= 400_000 and grid.tile_h == 56


def test_compare_mirror_ranks_by_mean_change(bundled, cat):
    a = A.compute(bundled, cat, ["_blocks.10._swish"])["_blocks.10._swish"]
    b = A.compute(bundled, ImageOps.mirror(cat), ["_blocks.10._swish"])["_blocks.10._swish"]
    rows = A.compare(a, b)
    diffs = [abs(r["diff"]) for r in rows]
    assert diffs == sorted(diffs, reverse=True) and len(rows) == a.shape[0]
    assert rows[0]["diff"] == pytest.approx(b[rows[0]["index"]].mean() - a[rows[0]["index"]].mean(), rel=1e-5)


def test_unknown_layer_suggests_close_names(bundled):
    with pytest.raises(A.LayerNotFound, match="_blocks.3._expand_conv"):
        A.check_layer(bundled, "_blocks.3.expand_conv")
    with pytest.raises(A.LayerNotFound):
        A.check_layer(bundled, "_fc")  # exists, but has no maps


def test_cli_json_matches_backend(capsys, bundled, samples, cat, tmp_path):
    out_png, out_npy = tmp_path / "m.png", tmp_path / "a.npy"
    assert main(["activations", str(samples["cat"]), "--layer", "_blocks.3._expand_conv", "--json",
                 "--out", str(out_png), "--npy", str(out_npy)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "layer", "shape", "channels", "top", "seconds"}
    acts = A.compute(bundled, cat, ["_blocks.3._expand_conv"])["_blocks.3._expand_conv"]
    assert out["shape"] == [144, 56, 56] and len(out["channels"]) == 144
    assert np.array_equal(np.load(out_npy), acts)
    means = np.array([c["mean"] for c in out["channels"]])
    assert out["top"] == np.argsort(-means, kind="stable")[:16].tolist()
    assert out["channels"][7]["zeros"] == float((acts[7] == 0).mean())
    assert Image.open(out_png).size[0] > 100


def test_cli_unknown_layer_exit_2_with_candidates(capsys, samples):
    assert main(["activations", str(samples["cat"]), "--layer", "_blocks.3.expand"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Closest: _blocks.3._expand_conv" in err[0]


# ---------------------------------------------------------------- the contract

def test_spec_result_holds_the_maps_and_gives_the_cli_json(bundled, cat):
    import pickle

    from cnnviz import jobs

    layer = "_blocks.3._expand_conv"
    res = jobs.run(bundled, cat, A.ActivationsSpec((layer,)))
    d = res.to_dict()
    assert set(d) == {"model", "layer", "shape", "channels", "top", "seconds"} and d["model"] == bundled.id
    acts = A.compute(bundled, cat, [layer])[layer]
    assert np.array_equal(res.maps[layer], acts) and d["shape"] == [144, 56, 56]
    assert d["channels"] == A.ChannelStats.of(acts).rows() and d["top"] == A.ChannelStats.of(acts).order()[:16].tolist()
    assert np.array_equal(A.run(bundled, bundled.to_pixels(cat), A.ActivationsSpec((layer,))).maps[layer], acts)
    copy = pickle.loads(pickle.dumps(res))  # st.cache_data copies results this way
    assert copy.to_dict() == d
    with pytest.raises(A.LayerNotFound):
        jobs.run(bundled, cat, A.ActivationsSpec(("_fc",)))


def test_a_recording_of_every_layer_derives_stats_depth_and_mosaics_once(bundled, cat):
    rec = A.run(bundled, cat)
    assert rec.layers == A.spatial_layers(bundled) and 50 < rec.nbytes / 2**20 < 100
    summary = rec.depth_summary()
    assert summary == A.depth_summary(rec.maps) and rec.depth_summary() is summary
    stem = rec.maps["_conv_stem"]
    rgb, grid = rec.mosaic("_conv_stem", "max", "channel")
    want, want_grid = A.mosaic(stem, A.ChannelStats.of(stem).order("max"), "channel")
    assert np.array_equal(rgb, want) and grid.order.tolist() == want_grid.order.tolist()
    assert rec.mosaic("_conv_stem", "max", "channel")[0] is rgb
    assert np.array_equal(rec.stats("_conv_stem").mean, A.ChannelStats.of(stem).mean)
    assert np.array_equal(rec.channel_map("_conv_stem"), stem.mean(0))
    assert np.array_equal(rec.channel_map("_conv_stem", 3), stem[3])
    d = rec.to_dict()
    assert set(d) == {"model", "layers", "seconds"} and [l["layer"] for l in d["layers"]] == rec.layers


def test_layers_spec_gives_the_layer_list(bundled):
    d = A.run(bundled, None, A.LayersSpec()).to_dict()
    assert set(d) == {"model", "input_size", "layers", "seconds"} and d["input_size"] == [224, 224]
    assert [l["name"] for l in d["layers"]] == [l.name for l in bundled.layers]
    assert d["layers"][0] == {"name": "_conv_stem", "type": "Conv2dDynamicSamePadding", "shape": [32, 112, 112],
                              "params": 864, "block": False}


def test_blocks_group_layers_in_execution_order(bundled):
    blocks = A.blocks(A.spatial_layers(bundled))
    assert list(blocks)[:2] == [A.TOP_LEVEL, "_blocks.0"] and blocks["_blocks.4"] == "_blocks.4._expand_conv"
    assert A.block_of("_swish#1") == A.TOP_LEVEL and A.block_of("_blocks.9._swish#1") == "_blocks.9"


def test_one_layer_name_check_for_every_analysis(bundled):
    from cnnviz import receptive as R

    with pytest.raises(A.LayerNotFound, match="Closest: _fc"):
        A.check_layer(bundled, "_fcc", spatial=False)
    assert A.check_layer(bundled, "_fc", spatial=False) == "_fc"
    assert issubclass(R.UnknownLayer, A.LayerNotFound) and issubclass(R.UnknownLayer, R.RFError)


# ---------------------------------------------------------------- issue #14: keep only what a view shows

def _array_bytes(obj, seen=None) -> int:
    """Bytes of every numpy array / tensor reachable from `obj` (dataclass fields, memos,
    dicts, lists, tuples)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_array_bytes(k, seen) + _array_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return sum(_array_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return _array_bytes(vars(obj), seen)
    return 0


def test_a_layer_recording_keeps_that_layers_map_only_and_stays_under_10_mb(bundled, cat):
    from cnnviz import jobs

    widest = max(A.spatial_layers(bundled), key=lambda n: np.prod(next(l.shape for l in bundled.layers if l.name == n)))
    res = jobs.run(bundled, cat, A.ActivationsSpec((widest,)))
    assert list(res.maps) == [widest] and res.maps[widest].shape == (96, 112, 112)
    for sort in A.SORTS:  # every view the page can ask of it
        for scale in A.SCALES:
            res.mosaic(widest, sort, scale)
    res.channel_map(widest)
    res.to_dict()
    held = _array_bytes(res)
    assert res.nbytes <= held <= 10 * 2**20, held / 2**20  # one cached image's worth, all views included


def test_a_layer_recording_stops_the_pass_at_that_layer(bundled, cat):
    seen = []
    handle = bundled.net._fc.register_forward_hook(lambda *a: seen.append(1))
    try:
        stem = A.compute(bundled, cat, ["_conv_stem"])["_conv_stem"]
        assert seen == []  # the head never ran
        A.compute(bundled, cat)
        assert seen == [1]
    finally:
        handle.remove()
    assert np.array_equal(stem, independent(bundled, cat, ["_conv_stem"])["_conv_stem"])
    assert all(not m._forward_hooks for m in bundled.net.modules())


def test_depth_summary_is_reduced_inside_the_hooks(bundled, cat):
    import pickle

    from cnnviz import jobs

    res = jobs.run(bundled, cat, A.DepthSpec())
    want = A.depth_summary(A.compute(bundled, cat))  # from all ~75 MB of maps
    assert res.layers == A.spatial_layers(bundled) == [r["layer"] for r in want]
    for got, ref in zip(res.rows, want):
        assert got["zeros"] == pytest.approx(ref["zeros"], abs=1e-12), got["layer"]
        assert got["mean"] == pytest.approx(ref["mean"], rel=1e-4, abs=1e-6), got["layer"]
        assert (got["channels"], got["height"], got["width"]) == (ref["channels"], ref["height"], ref["width"])
    assert _array_bytes(res) == 0 and len(pickle.dumps(res)) < 100_000  # rows only, no map
    d = res.to_dict()
    assert set(d) == {"model", "layers", "seconds"} and d["layers"] == res.rows
    assert all(not m._forward_hooks for m in bundled.net.modules())
