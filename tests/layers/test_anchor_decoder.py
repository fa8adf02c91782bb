"""AnchorDecoder: decoding, clipping, YOLO mode, XLA, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.layers import AnchorDecoder
from kdet.ops import encode_deltas, encode_yolo


def test_inverts_the_encoder():
    rng = np.random.default_rng(0)
    anchors = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(60, 100, (20, 2))], 1).astype("float32")
    boxes = anchors + rng.normal(0, 5, anchors.shape).astype("float32")
    variances = (0.1, 0.1, 0.2, 0.2)
    deltas = encode_deltas(boxes, anchors, variances)[None]
    out = AnchorDecoder(variances=variances, clip=False)(deltas, anchors)
    np.testing.assert_allclose(out[0], boxes, atol=1e-3)


def test_clips_to_image_and_bounds_huge_deltas():
    out = AnchorDecoder()(np.array([[[0, 0, 100.0, 100.0]]]), np.array([[0.0, 0, 10, 10]]), image_shape=(20, 30))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 0], [0, 0, 30, 20])


def test_yolo_mode():
    anchors = np.array([[20 - 5, 20 - 6.5, 20 + 5, 20 + 6.5]], "float32")  # cell (2, 2) at stride 8
    box = np.array([[14.0, 16.0, 22.0, 22.0]], "float32")  # centre (18, 19): in cell (2, 2)
    target = encode_yolo(box, [[2, 2]], [[10.0, 13.0]], 8.0).numpy()  # sigmoid-space xy
    raw = np.concatenate([np.log(target[:, :2] / (1 - target[:, :2])), target[:, 2:]], 1)[None]
    out = AnchorDecoder(encoding="yolo", clip=False)(raw, anchors, strides=np.array([8.0]))
    np.testing.assert_allclose(out[0], box, atol=1e-4)


def test_xla_and_float16_inputs():
    layer = AnchorDecoder(variances=(0.1, 0.1, 0.2, 0.2))
    anchors = tf.constant([[0.0, 0, 10, 10], [5, 5, 20, 30]])
    fn = tf.function(lambda d: layer(d, anchors, image_shape=(32, 32)), jit_compile=True)
    out = fn(tf.zeros((3, 2, 4), tf.float16))
    assert out.dtype == tf.float32 and out.shape == (3, 2, 4)
    np.testing.assert_allclose(out[1], anchors)


def test_config_round_trip_and_errors():
    layer = AnchorDecoder(variances=(0.1, 0.1, 0.2, 0.2), encoding="yolo", clip=False)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert clone.get_config()["variances"] == (0.1, 0.1, 0.2, 0.2) and clone.encoding == "yolo"
    with pytest.raises(ValueError, match="variances"):
        AnchorDecoder(variances=(0.1, 0.1))
    with pytest.raises(ValueError, match="encoding"):
        AnchorDecoder(encoding="polar")
    with pytest.raises(ValueError, match="strides"):
        AnchorDecoder(encoding="yolo")(np.zeros((1, 1, 4)), np.zeros((1, 4)))
