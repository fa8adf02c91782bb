"""FocalLoss: hand values, torchvision/Keras oracles, ignore/empty handling, training, serialisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.losses import FocalLoss, focal_loss
from tests.losses.keras_checks import assert_config_round_trip, fit_save_load


def logit(p):
    return math.log(p / (1.0 - p))


def torchvision_focal(targets, logits, alpha=0.25, gamma=2.0):
    """NumPy transcription of torchvision.ops.sigmoid_focal_loss(reduction="none")."""
    p = 1.0 / (1.0 + np.exp(-logits))
    ce = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def test_hand_computed_values():
    # p = 0.9, target 1: alpha * (1 - p)^2 * -log(p).
    pos = 0.25 * 0.1**2 * -math.log(0.9)
    # p = 0.9, target 0: (1 - alpha) * p^2 * -log(1 - p).
    neg = 0.75 * 0.9**2 * -math.log(0.1)
    assert pos == pytest.approx(2.634013e-4, rel=1e-6) and neg == pytest.approx(1.398820, rel=1e-6)
    got = focal_loss([[1.0, 0.0]], [[logit(0.9), logit(0.9)]]).numpy()
    np.testing.assert_allclose(got, [[pos, neg]], rtol=1e-5)
    probs = focal_loss([[1.0, 0.0]], [[0.9, 0.9]], from_logits=False).numpy()
    np.testing.assert_allclose(probs, [[pos, neg]], rtol=1e-5)
    # gamma = 0, no alpha: plain binary cross-entropy -log(0.9).
    bce = focal_loss([[1.0]], [[logit(0.9)]], alpha=None, gamma=0.0).numpy()
    np.testing.assert_allclose(bce, [[-math.log(0.9)]], rtol=1e-6)
    # The class sums over C: one value per anchor, reduced over anchors.
    loss = FocalLoss(reduction="sum")([[[1.0, 0.0]]], [[[logit(0.9), logit(0.9)]]])
    assert float(loss) == pytest.approx(pos + neg, rel=1e-5)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (-1, 1.5), (0.9, 0.5)])
def test_matches_torchvision_formula(alpha, gamma):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, (3, 7, 5)).astype("float32")
    targets = (rng.random((3, 7, 5)) < 0.3).astype("float32")
    got = focal_loss(targets, logits, alpha=None if alpha < 0 else alpha, gamma=gamma).numpy()
    np.testing.assert_allclose(got, torchvision_focal(targets, logits.astype("float64"), alpha, gamma),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("from_logits,label_smoothing", [(True, 0.0), (False, 0.0), (True, 0.1)])
def test_matches_keras_binary_focal_crossentropy(from_logits, label_smoothing):
    rng = np.random.default_rng(2)
    raw = rng.normal(0, 2, (4, 6, 3)).astype("float32")
    y_pred = raw if from_logits else 1 / (1 + np.exp(-raw))
    y_true = (rng.random((4, 6, 3)) < 0.4).astype("float32")
    oracle = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=from_logits,
        label_smoothing=label_smoothing, reduction=None)(y_true, y_pred)
    ours = FocalLoss(from_logits=from_logits, label_smoothing=label_smoothing,
                     reduction=None)(y_true, y_pred)
    # Keras averages over the class axis, FocalLoss sums it.
    np.testing.assert_allclose(ours.numpy() / 3.0, oracle.numpy(), rtol=1e-4, atol=1e-6)


def test_sparse_labels_background_and_ignore():
    logits = np.array([[[2.0, -1.0, 0.5], [0.3, 0.2, -3.0], [1.0, 1.0, 1.0], [-2.0, 4.0, 0.0]]], "f")
    sparse = np.array([[2, -1, -2, 1]], "f")
    one_hot = np.array([[[0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 0]]], "f")
    per_anchor = FocalLoss(reduction=None)(sparse, logits).numpy()
    expected = torchvision_focal(one_hot, logits).sum(-1)
    expected[0, 2] = 0.0  # label -2: ignored anchor
    np.testing.assert_allclose(per_anchor, expected, rtol=1e-5)
    # Negative entries in one-hot targets are ignored the same way.
    one_hot_ignore = one_hot.copy()
    one_hot_ignore[0, 2] = -2
    np.testing.assert_allclose(FocalLoss(reduction=None)(one_hot_ignore, logits), expected, rtol=1e-5)
    # sample_weight 0 ignores an anchor too.
    weights = np.array([[1, 1, 0, 1]], "f")
    summed = FocalLoss(reduction="sum")(one_hot, logits, sample_weight=weights)
    assert float(summed) == pytest.approx(expected.sum(), rel=1e-5)


def test_no_objects_and_extreme_logits_are_finite_with_finite_gradients():
    logits = tf.constant([[[-100.0, 100.0, 0.0], [30.0, -30.0, 17.0]]])
    for gamma in (0.0, 0.5, 2.0):
        for y_true in (np.zeros((1, 2, 3), "f"), np.array([[[0, 1, 0], [1, 0, 1]]], "f"),
                       np.full((1, 2), -1.0, "f")):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                loss = FocalLoss(gamma=gamma)(y_true, logits)
            grad = tape.gradient(loss, logits)
            assert np.isfinite(float(loss)) and np.all(np.isfinite(grad.numpy())), (gamma, y_true)
    # All anchors ignored: zero loss, not NaN.
    assert float(FocalLoss()(np.full((1, 2), -2.0, "f"), logits)) == 0.0


def test_float16_predictions_give_float32_loss():
    logits = np.random.default_rng(3).normal(0, 3, (2, 5, 4)).astype("float16")
    y_true = np.eye(4, dtype="float32")[[[0, 1, 2, 3, 0], [1, 1, 2, 3, 3]]]
    loss = FocalLoss()(y_true, tf.constant(logits))
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    reference = FocalLoss()(y_true, logits.astype("float32"))
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)


@pytest.mark.parametrize("kwargs", [{"alpha": 1.5}, {"gamma": -1.0}, {"gamma": float("nan")},
                                    {"label_smoothing": 2.0}, {"reduction": "average"}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        FocalLoss(**kwargs)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"y_true .*\(2, 3, 4\).*y_pred .*\(2, 3, 5\)"):
        FocalLoss()(np.zeros((2, 3, 4), "f"), np.zeros((2, 3, 5), "f"))


def test_config_round_trip():
    assert_config_round_trip(FocalLoss(alpha=0.4, gamma=1.5, from_logits=False, label_smoothing=0.1,
                                       reduction="sum", name="cls"))
    assert_config_round_trip(FocalLoss(alpha=None))


def test_compile_fit_save_load(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 6)).astype("float32")
    labels = rng.integers(-2, 3, size=(8, 5))  # classes 0..2, background -1, ignored -2
    fit_save_load(FocalLoss(), x, labels.astype("float32"), (5, 3), tmp_path)
    weights = (labels != -2).astype("float32")
    one_hot = np.eye(3, dtype="float32")[np.maximum(labels, 0)] * (labels >= 0)[..., None]
    fit_save_load(FocalLoss(alpha=0.5), x, one_hot, (5, 3), tmp_path, sample_weight=weights)


def test_mixed_precision_fit(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    x = np.random.default_rng(5).normal(size=(8, 6)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(40).reshape(8, 5) % 3]
    history = fit_save_load(FocalLoss(), x, y, (5, 3), tmp_path, epochs=5)
    assert all(np.isfinite(history))
