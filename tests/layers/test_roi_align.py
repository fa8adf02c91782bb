"""MultiLevelRoIAlign: level assignment + per-level pooling, config round trip, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.layers import MultiLevelRoIAlign
from kdet.ops.roi import roi_align, roi_pool


def _pyramid(rng, batch=2, channels=3):
    return [tf.constant(rng.normal(size=(batch, 64 // 2**i, 64 // 2**i, channels)), tf.float32) for i in range(4)]


def _boxes(rng, batch=2, n=10):
    sides = np.exp(rng.uniform(np.log(4), np.log(250), (batch, n, 2)))
    xy = rng.uniform(0, 200, (batch, n, 2))
    return tf.constant(np.concatenate([xy, xy + sides], axis=-1), tf.float32)


@pytest.mark.parametrize("mode", ["align", "pool"])
def test_each_roi_equals_single_level_op_on_its_fpn_level(mode):
    rng = np.random.default_rng(0)
    feats, boxes = _pyramid(rng), _boxes(rng)
    layer = MultiLevelRoIAlign(2, 5, output_size=7, sampling_ratio=2, mode=mode, canonical_scale=56.0)
    got = layer(feats, boxes).numpy()
    b = boxes.numpy()
    side = np.sqrt((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))
    want_level = np.clip(np.floor(4 + np.log2(side / 56.0) + 1e-6), 2, 5).astype(int)
    np.testing.assert_array_equal(layer.levels(boxes).numpy() + 2, want_level)
    assert len(set(want_level.ravel())) >= 3  # the draw spans several levels
    for lvl in range(2, 6):
        if mode == "align":
            ref = roi_align(feats[lvl - 2], boxes, 7, 2.0 ** -lvl, 2).numpy()
        else:
            ref = roi_pool(feats[lvl - 2], boxes, 7, 2.0 ** -lvl).numpy()
        mask = want_level == lvl
        np.testing.assert_allclose(got[mask], ref[mask], atol=1e-5)


def test_config_round_trip_and_output_shape():
    layer = MultiLevelRoIAlign(3, 4, output_size=5, sampling_ratio=1, aligned=True, mode="align",
                               canonical_scale=64.0, canonical_level=3)
    clone = MultiLevelRoIAlign.from_config(layer.get_config())
    rng = np.random.default_rng(1)
    feats, boxes = _pyramid(rng)[1:3], _boxes(rng)
    np.testing.assert_array_equal(layer(feats, boxes).numpy(), clone(feats, boxes).numpy())
    assert layer.compute_output_shape([f.shape for f in feats], boxes.shape) == (2, 10, 5, 5, 3)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)).aligned


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        MultiLevelRoIAlign(mode="warp")
    with pytest.raises(ValueError, match="min_level"):
        MultiLevelRoIAlign(5, 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        MultiLevelRoIAlign(sampling_ratio=0)
    layer = MultiLevelRoIAlign(2, 5)
    with pytest.raises(ValueError, match="Expected 4 feature maps"):
        layer(_pyramid(np.random.default_rng(0))[:3], tf.zeros((2, 1, 4)))
