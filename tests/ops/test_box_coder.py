"""kdet.ops.box_coder: hand values, Keras oracle, round trips (hypothesis), clamps, XLA, errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from kdet.ops.box_coder import (DEFAULT_SCALE_CLAMP, decode_deltas, decode_yolo, encode_deltas,
                                encode_yolo)

SSD_VARIANCES = (0.1, 0.1, 0.2, 0.2)


def test_hand_computed_deltas():
    anchors = [[0.0, 0, 4, 4], [0.0, 0, 4, 4]]
    boxes = [[2.0, 2, 6, 6], [0.0, 0, 8, 4]]
    # Centre shift of half the anchor, same size; then twice as wide, centre (4, 2).
    np.testing.assert_allclose(encode_deltas(boxes, anchors), [[0.5, 0.5, 0, 0], [0.5, 0, math.log(2), 0]],
                               atol=1e-6)
    # Variances divide each delta.
    np.testing.assert_allclose(encode_deltas(boxes, anchors, SSD_VARIANCES),
                               [[5, 5, 0, 0], [5, 0, math.log(2) / 0.2, 0]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(decode_deltas([[5, 0, math.log(2) / 0.2, 0]], anchors[:1], SSD_VARIANCES),
                               [[0.0, 0, 8, 4]], atol=1e-5)


def test_matches_keras_encode_box_to_deltas():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (2, 30, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(4, 40, (2, 30, 2))], -1).astype("f")
    boxes = anchors + rng.normal(0, 3, anchors.shape).astype("f")
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 1)
    oracle = keras.utils.bounding_boxes.encode_box_to_deltas(
        anchors, boxes, anchor_format="xyxy", box_format="xyxy", encoding_format="center_xywh",
        variance=list(SSD_VARIANCES))
    np.testing.assert_allclose(encode_deltas(boxes, anchors, SSD_VARIANCES), oracle, rtol=1e-4, atol=1e-4)
    decoded = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors, oracle, anchor_format="xyxy", box_format="xyxy", encoded_format="center_xywh",
        variance=list(SSD_VARIANCES))
    np.testing.assert_allclose(decode_deltas(oracle, anchors, SSD_VARIANCES), decoded, atol=1e-3)


coord = st.floats(-200, 200, width=32)
size = st.floats(1, 300, width=32)
variance = st.floats(0.0625, 2.0, width=32)
log_ratio = st.floats(-4.0, 4.0)


@settings(max_examples=60, deadline=None)
@given(bx=coord, by=coord, bw=size, bh=size, ax=coord, ay=coord, log_aw=log_ratio, log_ah=log_ratio,
       v=st.tuples(variance, variance, variance, variance))
def test_delta_round_trip(bx, by, bw, bh, ax, ay, log_aw, log_ah, v):
    # Anchor sizes within the scale clamp (62.5x) of the box: beyond it decoding clamps.
    aw, ah = bw * math.exp(log_aw), bh * math.exp(log_ah)
    boxes = np.array([[bx, by, bx + bw, by + bh]], "f")
    anchors = np.array([[ax, ay, ax + aw, ay + ah]], "f")
    decoded = decode_deltas(encode_deltas(boxes, anchors, v), anchors, v)
    np.testing.assert_allclose(decoded, boxes, rtol=1e-4, atol=1e-3 * max(bw, bh, 1.0))


def test_scale_clamp_prevents_inf():
    anchors = tf.constant([[0.0, 0, 10, 20]])
    huge = tf.constant([[1e3, -1e3, 1e4, 88.0]])
    boxes = decode_deltas(huge, anchors)
    assert np.all(np.isfinite(boxes.numpy()))
    width, height = boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]
    # exp(log(1000 / 16)) = 62.5 times the anchor size at most.
    assert float(width) == pytest.approx(10 * 62.5, rel=1e-4)
    assert float(height) == pytest.approx(20 * 62.5, rel=1e-4)
    assert DEFAULT_SCALE_CLAMP == pytest.approx(math.log(62.5))
    yolo = decode_yolo([[0.0, 0.0, 1e4, 1e4]], [[0, 0]], [[10.0, 10.0]], 8)
    assert np.all(np.isfinite(yolo.numpy()))


def test_degenerate_boxes_encode_to_finite_values():
    deltas = encode_deltas([[5.0, 5, 5, 5], [0.0, 0, 0, 0]], [[0.0, 0, 0, 0], [0.0, 0, 4, 4]])
    assert np.all(np.isfinite(deltas.numpy()))
    assert np.all(np.isfinite(encode_yolo([[3.0, 3, 3, 3]], [[0, 0]], [[4.0, 4.0]], 8).numpy()))


def test_hand_computed_yolo():
    # Box centre (56, 72), size 32 x 64, stride 32, cell (1, 2), anchor 16 x 32.
    target = encode_yolo([[40.0, 40, 72, 104]], [[1, 2]], [[16.0, 32.0]], 32)
    np.testing.assert_allclose(target, [[0.75, 0.25, math.log(2), math.log(2)]], atol=1e-6)
    raw = [[math.log(0.75 / 0.25), math.log(0.25 / 0.75), math.log(2), math.log(2)]]
    np.testing.assert_allclose(decode_yolo(raw, [[1, 2]], [[16.0, 32.0]], 32), [[40.0, 40, 72, 104]],
                               atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(cx=st.floats(1, 415, width=32), cy=st.floats(1, 415, width=32), w=size, h=size,
       log_pw=log_ratio, log_ph=log_ratio, stride=st.sampled_from([8, 16, 32]))
def test_yolo_round_trip(cx, cy, w, h, log_pw, log_ph, stride):
    pw, ph = w * math.exp(log_pw), h * math.exp(log_ph)
    boxes = np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], "f")
    grid = np.floor(np.array([[cx, cy]]) / stride).astype("int32")
    target = encode_yolo(boxes, grid, [[pw, ph]], stride).numpy()
    assert np.all((target[:, :2] >= -1e-5) & (target[:, :2] <= 1 + 1e-5))
    sxy = np.clip(target[:, :2], 1e-4, 1 - 1e-4)  # sigmoid(tx) cannot reach 0 or 1 exactly
    raw = np.concatenate([np.log(sxy / (1 - sxy)), target[:, 2:]], -1)
    decoded = decode_yolo(raw, grid, [[pw, ph]], stride)
    np.testing.assert_allclose(decoded, boxes, rtol=1e-4, atol=stride * 1e-3)


def test_yolo_accepts_extra_channels_and_broadcasts():
    raw = np.zeros((2, 3, 3, 85), "f")  # (tx, ty, tw, th, obj, 80 classes)
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(3)), -1)
    boxes = decode_yolo(raw, grid, [10.0, 20.0], 8)
    assert boxes.shape == (2, 3, 3, 4)
    np.testing.assert_allclose(boxes[0, 1, 2], [(2.5 * 8) - 5, (1.5 * 8) - 10, 25, 22])


def test_xla_compiles_at_any_batch_size():
    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, 6, 4])] * 2)
    def round_trip(boxes, anchors):
        deltas = encode_deltas(boxes, anchors, SSD_VARIANCES)
        grid = tf.zeros(tf.shape(boxes)[:-1], tf.int32)[..., None] + tf.constant([1, 1])
        yolo = decode_yolo(encode_yolo(boxes, grid, [16.0, 16.0], 32), grid, [16.0, 16.0], 32)
        return decode_deltas(deltas, anchors, SSD_VARIANCES), yolo

    rng = np.random.default_rng(1)
    for batch in (1, 4):
        xy = rng.uniform(0, 50, (batch, 6, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 30, (batch, 6, 2))], -1).astype("f")
        decoded, _ = round_trip(boxes, boxes[:, ::-1])
        np.testing.assert_allclose(decoded, boxes, atol=1e-3)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"variances must be 4 positive numbers; received \(0.1, 0.2\)"):
        encode_deltas([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], variances=(0.1, 0.2))
    with pytest.raises(ValueError, match="variances must be 4 positive"):
        decode_deltas([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], variances=(0.1, 0.1, 0.0, 0.2))
    with pytest.raises(ValueError, match=r"boxes must have a last dimension of 4; received shape \(2, 3\)"):
        encode_deltas(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="deltas must have a last dimension of 4"):
        decode_deltas(np.zeros((2, 5)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="grid_xy must have a last dimension of 2"):
        encode_yolo(np.zeros((2, 4)), np.zeros((2, 3)), np.ones((2, 2)), 8)
    with pytest.raises(ValueError, match="raw must have a last dimension of at least 4"):
        decode_yolo(np.zeros((2, 3)), np.zeros((2, 2)), np.ones((2, 2)), 8)
