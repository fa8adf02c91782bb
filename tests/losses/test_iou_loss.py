"""IoULoss: hand values per mode, Keras CIoU oracle, formats, NaN-free gradients, training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.losses import IoULoss, iou_loss
from kdet.ops.boxes import IOU_MODES, convert_format
from tests.losses.keras_checks import assert_config_round_trip, fit_save_load

# (target, prediction, expected loss) derived by hand.
V_CIOU = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
HAND = {
    # inter 2, union 6.
    "iou": ([0.0, 0, 2, 2], [1.0, 0, 3, 2], 1 - 1 / 3),
    # IoU 0, union 2, enclosing box 3 x 1: GIoU = 0 - (3 - 2) / 3.
    "giou": ([0.0, 0, 1, 1], [2.0, 0, 3, 1], 1 + 1 / 3),
    # IoU 1/3, centre distance^2 1, enclosing diagonal^2 3^2 + 2^2 = 13.
    "diou": ([0.0, 0, 2, 2], [1.0, 0, 3, 2], 1 - 1 / 3 + 1 / 13),
    # Target 4 x 2, prediction 2 x 2 in its left half: IoU 1/2, d^2 1, c^2 20,
    # v = 4/pi^2 (atan 2 - atan 1)^2, alpha = v / (1 - IoU + v).
    "ciou": ([0.0, 0, 4, 2], [0.0, 0, 2, 2], 1 - 0.5 + 1 / 20 + V_CIOU**2 / (0.5 + V_CIOU)),
}

# Degenerate cases: (target, prediction).
DEGENERATE = [
    ([0.0, 0, 0, 0], [0.0, 0, 0, 0]),          # both empty at the origin
    ([5.0, 5, 5, 5], [5.0, 5, 5, 5]),          # identical points
    ([1.0, 2, 8, 9], [1.0, 2, 8, 9]),          # identical boxes
    ([0.0, 0, 10, 10], [4.0, 4, 4, 4]),        # empty prediction inside the target
    ([0.0, 0, 10, 10], [2.0, 0, 2, 10]),       # zero-width prediction
    ([0.0, 0, 10, 0], [0.0, 0, 10, 5]),        # zero-height target
    ([0.0, 0, 10, 10], [8.0, 8, 2, 2]),        # inverted prediction (x2 < x1)
    ([0.0, 0, 1, 1], [500.0, 500, 501, 900]),  # far apart, very different aspect ratios
    ([0.0, 0, 1e4, 1e4], [1e-3, 0, 1e4, 1e4]),  # nearly identical large boxes
]


@pytest.mark.parametrize("mode", IOU_MODES)
def test_hand_computed_values(mode):
    target, pred, expected = HAND[mode]
    assert float(iou_loss(target, pred, mode)) == pytest.approx(expected, rel=1e-5)
    loss = IoULoss(mode=mode, reduction=None)([target], [pred])
    np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-5)


def random_boxes(rng, shape):
    xy = rng.uniform(0, 50, shape + (2,))
    wh = rng.uniform(1, 30, shape + (2,))
    return np.concatenate([xy, xy + wh], -1).astype("float32")


def test_ciou_matches_keras_compute_ciou():
    rng = np.random.default_rng(0)
    target, pred = random_boxes(rng, (2, 20)), random_boxes(rng, (2, 20))
    oracle = 1 - keras.utils.bounding_boxes.compute_ciou(pred, target, "xyxy")
    np.testing.assert_allclose(IoULoss("ciou", reduction=None)(target, pred), oracle, atol=2e-5)


def test_iou_matches_keras_compute_iou_diagonal():
    rng = np.random.default_rng(1)
    target, pred = random_boxes(rng, (12,)), random_boxes(rng, (12,))
    oracle = 1 - np.diag(keras.utils.bounding_boxes.compute_iou(pred, target, "xyxy"))
    np.testing.assert_allclose(IoULoss("iou", reduction=None)(target, pred), oracle, atol=1e-5)


@pytest.mark.parametrize("fmt", ["yxyx", "xywh", "center_xywh", "center_yxhw"])
@pytest.mark.parametrize("mode", IOU_MODES)
def test_every_absolute_format_gives_the_same_loss(fmt, mode):
    rng = np.random.default_rng(2)
    target, pred = random_boxes(rng, (3, 5)), random_boxes(rng, (3, 5))
    expected = IoULoss(mode, reduction=None)(target, pred).numpy()
    got = IoULoss(mode, bounding_box_format=fmt, reduction=None)(
        convert_format(target, "xyxy", fmt), convert_format(pred, "xyxy", fmt))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["iou", "giou"])  # invariant to per-axis scaling
def test_relative_formats(mode):
    rng = np.random.default_rng(3)
    target, pred = random_boxes(rng, (6,)), random_boxes(rng, (6,))
    expected = IoULoss(mode, reduction=None)(target, pred).numpy()
    for fmt in ("rel_xyxy", "rel_xywh", "rel_center_xywh", "rel_yxyx"):
        rel = [convert_format(b, "xyxy", fmt, height=80, width=120) for b in (target, pred)]
        got = IoULoss(mode, bounding_box_format=fmt, reduction=None)(*rel)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=fmt)


@pytest.mark.parametrize("mode", IOU_MODES)
def test_degenerate_boxes_give_finite_loss_and_gradients(mode):
    target = tf.constant([t for t, _ in DEGENERATE])
    pred = tf.constant([p for _, p in DEGENERATE])
    for dtype in (tf.float32, tf.float16):
        pred_d = tf.cast(pred, dtype)
        with tf.GradientTape() as tape:
            tape.watch(pred_d)
            per_box = IoULoss(mode, reduction=None)(target, pred_d)
            total = tf.reduce_sum(per_box)
        grad = tape.gradient(total, pred_d)
        assert per_box.dtype == tf.float32
        assert np.all(np.isfinite(per_box.numpy())), per_box.numpy()
        assert np.all(np.isfinite(grad.numpy())), grad.numpy()
    # Identical non-empty boxes: loss 0 in every mode.
    assert float(per_box[2]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("mode", IOU_MODES)
def test_ignored_anchors_and_images_without_objects(mode):
    target = np.array([[[0, 0, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0]]], "f")  # zeros = no object
    pred = tf.Variable([[[1, 1, 5, 5], [3, 3, 9, 9], [0, 0, 0, 0]]], dtype=tf.float32)
    weights = np.array([[1, 0, 0]], "f")
    loss = IoULoss(mode, reduction="sum")
    expected = float(iou_loss(target[0, 0], pred[0, 0], mode))
    with tf.GradientTape() as tape:
        value = loss(target, pred, sample_weight=weights)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    grad = tape.gradient(value, pred).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[0, 1:] == 0)
    with tf.GradientTape() as tape:
        value = loss(target, pred, sample_weight=np.zeros((1, 3), "f"))
    assert float(value) == 0.0 and np.all(tape.gradient(value, pred).numpy() == 0)


def test_xla_compiles():
    rng = np.random.default_rng(4)
    target, pred = random_boxes(rng, (2, 7)), random_boxes(rng, (2, 7))
    loss = IoULoss("ciou")
    compiled = tf.function(lambda t, p: loss(t, p), jit_compile=True)
    assert float(compiled(target, pred)) == pytest.approx(float(loss(target, pred)), rel=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        IoULoss(mode="eiou")
    with pytest.raises(ValueError, match="Unknown bounding_box_format 'xyz'"):
        IoULoss(bounding_box_format="xyz")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\).*\(2, 3\)"):
        IoULoss()(np.zeros((2, 3), "f"), np.zeros((2, 3), "f"))


def test_config_round_trip():
    assert_config_round_trip(IoULoss("diou", bounding_box_format="center_xywh", name="box"))


def train_data(rng):
    anchors = random_boxes(rng, (6,))
    x = rng.normal(size=(8, 5)).astype("float32")
    shift = rng.uniform(-3, 3, (8, 6, 4)).astype("float32")
    return x, anchors + shift, anchors


@pytest.mark.parametrize("mode", IOU_MODES)
def test_compile_fit_save_load(mode, tmp_path):
    rng = np.random.default_rng(5)
    x, y, anchors = train_data(rng)
    weights = np.ones((8, 6), "f")
    weights[:, 4:] = 0.0
    y[:, 4:] = 0.0  # background anchors: zero targets, weight 0
    fit_save_load(IoULoss(mode), x, y, (6, 4), tmp_path, sample_weight=weights, offset=anchors)


def test_mixed_precision_fit(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    x, y, anchors = train_data(np.random.default_rng(6))
    fit_save_load(IoULoss("ciou"), x, y, (6, 4), tmp_path, offset=anchors, epochs=5)
