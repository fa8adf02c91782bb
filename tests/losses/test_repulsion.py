"""RepulsionLoss: hand values, NumPy reference, packing, degenerate inputs, training, serialisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.losses import RepulsionLoss, pack_repulsion_targets, smooth_ln
from kdet.ops.boxes import convert_format
from tests.losses.keras_checks import assert_config_round_trip, fit_save_load

GT = [[0.0, 0, 10, 10], [5.0, 0, 15, 10], [100.0, 100, 110, 110]]
PRED = [[2.0, 0, 12, 10], [5.0, 0, 15, 10], [0.0, 0, 10, 10], [6.0, 0, 14, 10]]
ASSIGNED = [0, 1, -1, -2]  # background and ignored predictions are not positives


def hand_example():
    return {"boxes": np.array([GT], "f"), "labels": np.array([[0, 0, 0]]),
            "assigned": np.array([ASSIGNED])}, np.array([PRED], "f")


def test_smooth_ln_hand_values():
    np.testing.assert_allclose(smooth_ln([0.0, 0.3, 0.7], 1.0), [0.0, -math.log(0.7), -math.log(0.3)],
                               rtol=1e-6)
    # sigma = 0.5: -ln(1 - x) below, (x - 0.5) / 0.5 - ln(0.5) above; continuous at 0.5.
    np.testing.assert_allclose(smooth_ln([0.3, 0.5, 0.7], 0.5),
                               [-math.log(0.7), -math.log(0.5), 0.4 - math.log(0.5)], rtol=1e-6)
    np.testing.assert_allclose(smooth_ln([0.0, 0.25, 1.0], 0.0), [0.0, 0.25, 1.0], rtol=1e-6)
    # sigma = 1 at x = 1: clamped to -ln(1e-6) instead of inf.
    assert float(smooth_ln(1.0, 1.0)) == pytest.approx(-math.log(1e-6), rel=1e-3)
    with pytest.raises(ValueError, match="sigma must be in"):
        smooth_ln(0.5, 1.5)


def test_hand_computed_values():
    y_true, y_pred = hand_example()
    # RepGT. P0 (target G0) overlaps G1 most (IoU 70/130): IoG = 70/100 -> -ln(0.3).
    # P1 (target G1) overlaps G0 (IoU 50/150): IoG = 50/100 -> -ln(0.5). |P+| = 2.
    rep_gt = (-math.log(0.3) - math.log(0.5)) / 2
    # RepBox: the only pair with different targets is (P0, P1), IoU 70/130, sigma 0 -> linear.
    rep_box = 70 / 130
    got = RepulsionLoss(alpha=1.0, beta=0.0, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(got, [rep_gt], rtol=1e-5)
    got = RepulsionLoss(alpha=0.0, beta=1.0, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(got, [rep_box], rtol=1e-5)
    got = RepulsionLoss(reduction=None)(y_true, y_pred)  # alpha = beta = 0.5
    np.testing.assert_allclose(got, [0.5 * rep_gt + 0.5 * rep_box], rtol=1e-5)
    assert 0.5 * rep_gt + 0.5 * rep_box == pytest.approx(0.7435107, rel=1e-6)
    # sigma_gt = 0.5: IoG 0.7 is above sigma -> (0.7 - 0.5) / 0.5 - ln(0.5).
    got = RepulsionLoss(alpha=1.0, beta=0.0, sigma_gt=0.5, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(got, [(0.4 - math.log(0.5) - math.log(0.5)) / 2], rtol=1e-5)


def test_proposals_choose_the_repulsion_gt():
    gt = np.array([[[0.0, 0, 10, 10], [8.0, 0, 18, 10], [-8.0, 0, 2, 10]]], "f")
    pred = np.array([[[4.0, 0, 14, 10]]], "f")
    y_true = {"boxes": gt, "labels": np.zeros((1, 3)), "assigned": np.zeros((1, 1))}
    loss = RepulsionLoss(alpha=1.0, beta=0.0, reduction=None)
    # Chosen by the prediction: G1 (IoU 60/140), IoG 0.6 -> -ln(0.4).
    np.testing.assert_allclose(loss(y_true, pred), [-math.log(0.4)], rtol=1e-5)
    # Chosen by the proposal (as in the paper): G2, which the prediction does not touch.
    y_true["proposals"] = np.array([[[-4.0, 0, 6, 10]]], "f")
    np.testing.assert_allclose(loss(y_true, pred), [0.0], atol=1e-7)


def numpy_reference(gt, labels, assigned, pred, sigma_gt=1.0, sigma_box=0.0):
    """Loop transcription of the paper's RepGT and RepBox for one image."""
    def area(b):
        return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)

    def inter(a, b):
        return max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)

    def iou(a, b):
        union = area(a) + area(b) - inter(a, b)
        return inter(a, b) / union if union > 0 else 0.0

    def sln(x, s):
        x = min(x, 1 - 1e-6) if x <= s else x
        return -math.log(1 - x) if x <= s else (x - s) / (1 - s) - math.log(1 - s)

    positives = [i for i, a in enumerate(assigned) if a >= 0]
    rep_gt = 0.0
    for i in positives:
        others = [g for g in range(len(gt)) if g != assigned[i] and labels[g] != -1]
        if others:
            g = max(others, key=lambda k: (iou(pred[i], gt[k]), -k))
            rep_gt += sln(inter(pred[i], gt[g]) / area(gt[g]), sigma_gt)
    rep_gt = rep_gt / len(positives) if positives else 0.0
    total, count = 0.0, 0
    for i in positives:
        for j in positives:
            if assigned[i] != assigned[j]:
                value = iou(pred[i], pred[j])
                total += sln(value, sigma_box)
                count += value > 0
    return rep_gt, (total / count if count else 0.0)


@pytest.mark.parametrize("sigma_gt,sigma_box", [(1.0, 0.0), (0.5, 0.3)])
def test_matches_numpy_reference_on_random_crowds(sigma_gt, sigma_box):
    rng = np.random.default_rng(0)
    batch, m, n = 3, 6, 9
    xy = rng.uniform(0, 40, (batch, m, 2))
    gt = np.concatenate([xy, xy + rng.uniform(5, 25, (batch, m, 2))], -1).astype("f")
    labels = rng.integers(-1, 2, (batch, m))
    labels[:, 0] = 0
    assigned = rng.integers(-2, m, (batch, n))
    pred = gt[np.arange(batch)[:, None], np.maximum(assigned, 0)] + rng.normal(0, 4, (batch, n, 4))
    pred = pred.astype("f")
    y_true = {"boxes": gt, "labels": labels, "assigned": assigned}
    for alpha, beta, part in ((1.0, 0.0, 0), (0.0, 1.0, 1)):
        loss = RepulsionLoss(alpha, beta, sigma_gt=sigma_gt, sigma_box=sigma_box, reduction=None)
        expected = [numpy_reference(gt[b], labels[b], assigned[b], pred[b], sigma_gt, sigma_box)[part]
                    for b in range(batch)]
        np.testing.assert_allclose(loss(y_true, pred), expected, rtol=1e-4, atol=1e-6)
        # The packed form gives the same numbers.
        packed = pack_repulsion_targets(gt, labels, assigned)
        assert packed.shape == (batch, n + m, 5)
        np.testing.assert_allclose(loss(packed, pred), expected, rtol=1e-4, atol=1e-6)


def test_bounding_box_formats():
    y_true, y_pred = hand_example()
    expected = RepulsionLoss(reduction=None)(y_true, y_pred).numpy()
    for fmt in ("center_xywh", "yxyx", "xywh"):
        converted = dict(y_true, boxes=convert_format(y_true["boxes"], "xyxy", fmt))
        got = RepulsionLoss(bounding_box_format=fmt, reduction=None)(
            converted, convert_format(y_pred, "xyxy", fmt))
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=fmt)


CASES = {
    "no objects": (np.zeros((2, 0, 4), "f"), np.zeros((2, 0)), np.full((2, 3), -1)),
    "one object": (np.array([[[0.0, 0, 5, 5]]] * 2, "f"), np.zeros((2, 1)), np.zeros((2, 3))),
    "all ignored": (np.array([GT] * 2, "f"), np.zeros((2, 3)), np.full((2, 3), -2)),
    "padding only": (np.array([GT] * 2, "f"), np.full((2, 3), -1), np.full((2, 3), -1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_images_without_repulsion_give_zero_and_finite_gradients(case):
    boxes, labels, assigned = CASES[case]
    pred = tf.Variable(np.array([[[0.0, 0, 4, 4], [1.0, 1, 5, 5], [2.0, 2, 2, 2]]] * 2, "f"))
    with tf.GradientTape() as tape:
        value = RepulsionLoss()({"boxes": boxes, "labels": labels, "assigned": assigned}, pred)
    grad = tape.gradient(value, pred)
    assert float(value) == 0.0
    assert grad is None or np.all(np.isfinite(grad.numpy()))


def test_degenerate_boxes_are_finite_with_finite_gradients():
    # Two identical GTs (IoG = 1 at sigma = 1), identical predictions for different
    # targets (IoU = 1), an empty prediction and an empty ground truth.
    gt = np.array([[[0.0, 0, 10, 10], [0.0, 0, 10, 10], [3.0, 3, 3, 3], [20.0, 20, 30, 30]]], "f")
    for dtype in (tf.float32, tf.float16):
        pred = tf.cast([[[0.0, 0, 10, 10], [0.0, 0, 10, 10], [3.0, 3, 3, 3], [20.0, 20, 20, 20]]], dtype)
        y_true = {"boxes": gt, "labels": np.zeros((1, 4)), "assigned": np.array([[0, 1, 2, 3]])}
        with tf.GradientTape() as tape:
            tape.watch(pred)
            value = RepulsionLoss()(y_true, pred)
        grad = tape.gradient(value, pred)
        assert value.dtype == tf.float32 and np.isfinite(float(value))
        assert np.all(np.isfinite(grad.numpy())), grad.numpy()
    # RepGT of prediction 0 and 1 saturates at -ln(1e-6); RepBox: 1 pair of IoU 1, twice.
    rep_gt = 2 * -math.log(1e-6) / 4
    assert float(RepulsionLoss(reduction=None)(y_true, pred)[0]) == pytest.approx(
        0.5 * rep_gt + 0.5 * 1.0, rel=1e-3)


def test_xla_compiles_and_per_image_weights():
    y_true, y_pred = hand_example()
    packed = pack_repulsion_targets(y_true["boxes"], y_true["labels"], y_true["assigned"])
    loss = RepulsionLoss()
    compiled = tf.function(lambda t, p: loss(t, p), jit_compile=True)
    assert float(compiled(packed, y_pred)) == pytest.approx(float(loss(packed, y_pred)), rel=1e-5)
    two = tf.concat([packed, packed], 0), np.concatenate([y_pred, y_pred])
    assert float(loss(*two, sample_weight=np.array([1.0, 0.0]))) == pytest.approx(
        float(loss(packed, y_pred)) / 2, rel=1e-5)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        RepulsionLoss(alpha=-1)
    with pytest.raises(ValueError, match="sigma_box must be in"):
        RepulsionLoss(sigma_box=2)
    with pytest.raises(ValueError, match="Unknown bounding_box_format"):
        RepulsionLoss(bounding_box_format="cxcy")
    with pytest.raises(ValueError, match=r"missing \['assigned'\]"):
        RepulsionLoss()({"boxes": np.zeros((1, 1, 4)), "labels": np.zeros((1, 1))}, np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"\(B, N \+ M, 5\).*\(1, 3, 4\)"):
        RepulsionLoss()(np.zeros((1, 3, 4)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"\(B, N, 4\); received \(1, 2, 5\)"):
        RepulsionLoss()(np.zeros((1, 3, 5)), np.zeros((1, 2, 5)))


def test_config_round_trip():
    assert_config_round_trip(RepulsionLoss(alpha=0.3, beta=0.7, sigma_gt=0.9, sigma_box=0.1,
                                           bounding_box_format="center_xywh", name="rep"))


def crowd_data(rng, batch=8):
    """Two overlapping people per image; 4 predictions, two per person."""
    gt = np.array([[10.0, 10, 30, 50], [22.0, 10, 42, 50]], "f")
    anchors = gt[[0, 0, 1, 1]]
    packed = pack_repulsion_targets(np.repeat(gt[None], batch, 0), np.zeros((batch, 2)),
                                    np.repeat([[0, 0, 1, 1]], batch, 0)).numpy()
    return rng.normal(size=(batch, 5)).astype("f"), packed, anchors


def test_compile_fit_save_load(tmp_path):
    x, packed, anchors = crowd_data(np.random.default_rng(1))
    fit_save_load(RepulsionLoss(), x, packed, (4, 4), tmp_path, offset=anchors, learning_rate=0.5)


def test_mixed_precision_fit(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    x, packed, anchors = crowd_data(np.random.default_rng(2))
    fit_save_load(RepulsionLoss(), x, packed, (4, 4), tmp_path, offset=anchors, epochs=5,
                  learning_rate=0.5)
