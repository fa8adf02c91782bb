"""SmoothL1Loss: hand values, Keras Huber oracle, ignore handling, training, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.losses import SmoothL1Loss, smooth_l1_loss
from tests.losses.keras_checks import assert_config_round_trip, fit_save_load


def test_hand_computed_values():
    # delta = 1: |x| = 0.5 -> 0.5 * 0.25 = 0.125; |x| = 3 -> 3 - 0.5 = 2.5; x = 0 -> 0.
    got = smooth_l1_loss([0.0, 0.0, 1.0], [0.5, -3.0, 1.0]).numpy()
    np.testing.assert_allclose(got, [0.125, 2.5, 0.0])
    # delta = 1/9 (torchvision detection): |x| = 0.1 -> 0.5 * 0.01 * 9 = 0.045; |x| = 1 -> 1 - 1/18.
    got = smooth_l1_loss([0.0, 0.0], [0.1, 1.0], delta=1 / 9).numpy()
    np.testing.assert_allclose(got, [0.045, 1 - 1 / 18], rtol=1e-6)
    # delta = 0: L1.
    np.testing.assert_allclose(smooth_l1_loss([1.0], [-2.5], delta=0.0).numpy(), [3.5])
    # Continuity at |x| = delta: both branches give delta / 2.
    np.testing.assert_allclose(smooth_l1_loss([0.0], [2.0], delta=2.0).numpy(), [1.0])


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_equals_huber_divided_by_delta(delta):
    # Huber(x, d) = 0.5 x^2 if |x| <= d else d (|x| - d / 2) = d * smooth_l1(x, beta=d).
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(0, 3, (2, 2, 6, 4)).astype("float32")
    huber = keras.losses.Huber(delta=delta, reduction=None)(y_true, y_pred).numpy()  # mean over 4
    ours = SmoothL1Loss(delta=delta, reduction=None)(y_true, y_pred).numpy()  # sum over 4
    np.testing.assert_allclose(ours, huber * 4 / delta, rtol=1e-5, atol=1e-6)


def test_ignored_anchors_and_empty_images():
    y_true = np.array([[[0.1, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]], "f")
    y_pred = np.array([[[0.1, 0.2, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0]]], "f")
    weights = np.array([[1.0, 0.0]], "f")  # second anchor is background/ignored
    assert float(SmoothL1Loss(reduction="sum")(y_true, y_pred, sample_weight=weights)) == pytest.approx(1.5)
    # "mean_with_sample_weight" normalises by the number of positive anchors (1 here).
    loss = SmoothL1Loss(reduction="mean_with_sample_weight")
    assert float(loss(y_true, y_pred, sample_weight=weights)) == pytest.approx(1.5)
    # An image without objects: every weight 0 -> 0, and zero (not NaN) gradients.
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss(y_true, pred, sample_weight=np.zeros((1, 2), "f"))
    assert float(value) == 0.0
    assert np.all(tape.gradient(value, pred).numpy() == 0.0)


def test_gradient_is_clipped_beyond_delta():
    pred = tf.Variable([[0.5, -4.0, 0.0, 100.0]])
    with tf.GradientTape() as tape:
        value = SmoothL1Loss(reduction="sum")(tf.zeros((1, 4)), pred)
    np.testing.assert_allclose(tape.gradient(value, pred).numpy(), [[0.5, -1.0, 0.0, 1.0]])


def test_float16_predictions_give_float32_loss():
    y_pred = tf.constant(np.linspace(-3, 3, 8).reshape(1, 2, 4), tf.float16)
    loss = SmoothL1Loss()(np.zeros((1, 2, 4), "f"), y_pred)
    assert loss.dtype == tf.float32
    expected = smooth_l1_loss(np.zeros(8), np.linspace(-3, 3, 8)).numpy().sum() / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-3)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="delta must be a number >= 0; received -1.0"):
        SmoothL1Loss(delta=-1)
    with pytest.raises(ValueError, match=r"same shape .*\(1, 3, 4\).*\(1, 3, 5\)"):
        SmoothL1Loss()(np.zeros((1, 3, 4), "f"), np.zeros((1, 3, 5), "f"))


def test_config_round_trip():
    assert_config_round_trip(SmoothL1Loss(delta=1 / 9, reduction="sum", name="box"))


def test_compile_fit_save_load(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.normal(size=(8, 6, 4)).astype("float32")
    weights = (rng.random((8, 6)) < 0.5).astype("float32")
    fit_save_load(SmoothL1Loss(delta=0.5), x, y, (6, 4), tmp_path, sample_weight=weights)


def test_mixed_precision_fit(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 5)).astype("float32")
    fit_save_load(SmoothL1Loss(), x, rng.normal(size=(8, 6, 4)).astype("float32"), (6, 4),
                  tmp_path, epochs=5)
