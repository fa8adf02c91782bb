"""BiFPN: topology vs automl's, fusion numerics vs NumPy, shapes, automl-compatible structure."""

import keras
import numpy as np
import pytest

from kdet.necks.bifpn import WeightedFusion, bifpn, bifpn_topology

# automl efficientdet/keras/fpn_configs.py, bifpn_config(3, 7, None), written out by hand.
AUTOML_P3_P7 = [(6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
                (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11))]


def test_topology_matches_automl():
    assert [(n["level"], n["inputs"]) for n in bifpn_topology(3, 7)] == AUTOML_P3_P7


@pytest.mark.parametrize("method", ["fastattn", "attn", "sum"])
def test_weighted_fusion_matches_numpy(method):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 4, 4, 3)).astype("float32") for _ in range(3)]
    layer = WeightedFusion(method)
    layer.build([x.shape for x in xs])
    w = np.array([0.5, -1.0, 2.0], "float32")
    if method != "sum":
        layer.fusion_weights.assign(w)
    if method == "fastattn":  # Tan et al. 2020, eq. (3)
        r = np.maximum(w, 0)
        expected = sum(r[i] * xs[i] for i in range(3)) / (r.sum() + 1e-4)
    elif method == "attn":
        e = np.exp(w) / np.exp(w).sum()
        expected = sum(e[i] * xs[i] for i in range(3))
    else:
        expected = sum(xs)
    np.testing.assert_allclose(layer(xs).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert WeightedFusion.from_config(layer.get_config()).method == method


def test_bifpn_shapes_and_automl_structure():
    feats = {"P3": keras.Input((16, 16, 40), name="P3"), "P4": keras.Input((8, 8, 112), name="P4"), "P5": keras.Input((4, 4, 320), name="P5")}
    out = bifpn(feats, width=64, depth=3)
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "P3": (16, 16, 64), "P4": (8, 8, 64), "P5": (4, 4, 64), "P6": (2, 2, 64), "P7": (1, 1, 64)}
    model = keras.Model(feats, out)
    names = [layer.name for layer in model.layers]
    # One fusion per node per cell, with automl's number of inputs (WSM, WSM_1[, WSM_2]).
    fusions = [model.get_layer(n) for n in names if n.endswith("_fuse")]
    assert len(fusions) == 3 * 8
    assert [f.fusion_weights.shape[0] for f in fusions[:8]] == [2, 2, 2, 2, 3, 3, 3, 2]
    # Channel resampling (1x1 conv + BN) only on backbone inputs of the first cell, as automl's
    # resample_0_{2,1,0,1,2}_{6..10} plus resample_p6.
    convs = sorted(n for n in names if n.endswith("_conv") and "_in" in n)
    assert convs == ["bifpn_cell0_node1_in2_conv", "bifpn_cell0_node2_in1_conv", "bifpn_cell0_node3_in0_conv",
                     "bifpn_cell0_node4_in1_conv", "bifpn_cell0_node5_in2_conv"]
    assert "bifpn_p6_resample_conv" in names and "bifpn_p7_resample_conv" not in names


def test_bifpn_output_follows_inputs():
    rng = np.random.default_rng(1)
    feats = {f"P{l}": keras.Input((128 // 2**l, 128 // 2**l, 8), name=f"P{l}") for l in (3, 4, 5)}
    model = keras.Model(feats, bifpn(feats, width=8, depth=1))
    x = {k: rng.normal(size=(2, *v.shape[1:])).astype("float32") for k, v in feats.items()}
    out = model.predict(x, verbose=0)
    assert all(np.isfinite(v).all() for v in out.values())
    x2 = dict(x, P3=x["P3"] * 0)
    assert not np.allclose(model.predict(x2, verbose=0)["P7"], out["P7"])  # P3 reaches P7 bottom-up


@pytest.mark.parametrize("kwargs, match", [
    ({"weight_method": "max"}, "weight_method"), ({"depth": 0}, "depth"), ({"min_level": 2}, "P2"),
    ({"max_level": 8}, "divisible by 8"),
])
def test_bad_arguments(kwargs, match):
    feats = {f"P{l}": keras.Input((128 // 2**l, 128 // 2**l, 8), name=f"P{l}") for l in (3, 4, 5)}
    with pytest.raises(ValueError, match=match):
        bifpn(feats, **kwargs)
