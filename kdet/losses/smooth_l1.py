"""Smooth L1 loss (Girshick 2015, "Fast R-CNN", eq. (3)), with torchvision's ``beta``."""

from __future__ import annotations

import keras
import tensorflow as tf

# Fast R-CNN uses delta = 1 (eq. (3)); torchvision's detection models pass beta = 1/9.
DEFAULT_DELTA = 1.0


def _check_delta(delta) -> float:
    delta = float(delta)
    if not delta >= 0.0:  # also rejects NaN
        raise ValueError(f"delta must be a number >= 0; received {delta}.")
    return delta


def smooth_l1_loss(y_true, y_pred, delta: float = DEFAULT_DELTA):
    """Element-wise smooth L1: ``0.5 x**2 / delta`` if ``|x| < delta`` else ``|x| - 0.5 delta``.

    Same as ``torch.nn.functional.smooth_l1_loss(reduction="none", beta=delta)``;
    ``delta=0`` is plain L1.

    Args:
        y_true: (..., D) targets (e.g. encoded box deltas, D = 4).
        y_pred: (..., D) predictions, any float dtype.
        delta: transition point between the quadratic and the linear part.

    Returns:
        (..., D) float32 loss.

    Example:
        >>> smooth_l1_loss([0.0, 0.0], [0.5, 3.0]).numpy().tolist()
        [0.125, 2.5]
    """
    delta = _check_delta(delta)
    diff = tf.abs(tf.cast(y_pred, tf.float32) - tf.cast(y_true, tf.float32))
    if delta == 0.0:
        return diff
    return tf.where(diff < delta, 0.5 * tf.square(diff) / delta, diff - 0.5 * delta)


@keras.saving.register_keras_serializable(package="kdet")
class SmoothL1Loss(keras.losses.Loss):
    """Smooth L1 box-regression loss, summed over the last axis: one value per anchor.

    Girshick 2015, "Fast R-CNN", eq. (3) (with torchvision's ``beta`` = ``delta``).

    Args:
        delta: quadratic-to-linear transition (default 1.0, Fast R-CNN).
        reduction, name, dtype: as in ``keras.losses.Loss``.

    Call arguments:
        y_true: (B, A, 4) regression targets (e.g. ``kdet.ops.encode_deltas``).
        y_pred: (B, A, 4) predicted deltas, any float dtype.
        sample_weight: (B, A) anchor weights: 0 for background and ignored
            anchors (their targets must still be finite, e.g. zeros).

    Example:
        >>> float(SmoothL1Loss(reduction="sum")([[0.0, 0, 0, 0]], [[0.5, 0, 0, 3]]))
        2.625
    """

    def __init__(self, delta: float = DEFAULT_DELTA, reduction: str | None = "sum_over_batch_size",
                 name: str = "smooth_l1_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.delta = _check_delta(delta)

    def call(self, y_true, y_pred):
        y_true, y_pred = tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)
        if not y_true.shape.is_compatible_with(y_pred.shape):
            raise ValueError(
                f"SmoothL1Loss expects y_true and y_pred of the same shape (..., 4); received "
                f"y_true {y_true.shape} and y_pred {y_pred.shape}."
            )
        return tf.reduce_sum(smooth_l1_loss(y_true, y_pred, self.delta), axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(delta=self.delta)
        return config
