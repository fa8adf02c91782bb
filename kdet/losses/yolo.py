"""YOLOv3's box loss on raw outputs: logistic xy offsets and log-space width/height."""

from __future__ import annotations

import keras
import tensorflow as tf


def yolo_box_loss(y_true, y_pred):
    """Element-wise YOLOv3 box loss of raw outputs against YOLO targets.

    ``x, y``: binary cross-entropy between ``sigmoid(t_x)`` and the target
    offset of the centre inside its cell (in [0, 1]), minus the target's
    entropy so that a perfect fit scores 0; ``w, h``: half squared
    error of ``t_w`` against ``log(w / anchor_w)`` (Redmon and Farhadi 2018,
    section 2.1: "sum of squared error loss" on the coordinates; the logistic
    xy term is the common re-implementation, e.g. qqwweee/keras-yolo3, whose
    gradient ``sigmoid(t) - target`` is the same as Darknet's delta).

    Args:
        y_true: (..., 4) targets ``(sx, sy, tw, th)`` from ``kdet.ops.encode_yolo``.
        y_pred: (..., 4) raw head outputs ``(tx, ty, tw, th)``, any float dtype.

    Returns:
        (..., 4) float32 per-coordinate losses (sum them per anchor).

    Example:
        >>> loss = yolo_box_loss([[0.5, 0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]])  # exact fit
        >>> [round(float(v), 4) for v in loss[0]]
        [0.0, 0.0, 0.0, 0.0]
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    target_xy = tf.clip_by_value(y_true[..., :2], 0.0, 1.0)
    xy = tf.nn.sigmoid_cross_entropy_with_logits(labels=target_xy, logits=y_pred[..., :2])
    # Minus the targets' own entropy (constant, no gradient): the loss is 0 at a perfect fit.
    xy -= -(tf.math.xlogy(target_xy, target_xy) + tf.math.xlogy(1.0 - target_xy, 1.0 - target_xy))
    wh = 0.5 * tf.square(y_pred[..., 2:] - y_true[..., 2:])
    return tf.concat([xy, wh], axis=-1)


@keras.saving.register_keras_serializable(package="kdet")
class YOLOBoxLoss(keras.losses.Loss):
    """YOLOv3's box loss as a ``keras.losses.Loss`` (see :func:`yolo_box_loss`).

    Call arguments:
        y_true: (B, A, 4) YOLO targets; y_pred: (B, A, 4) raw outputs;
        sample_weight: (B, A), e.g. positives times the ``2 - w * h`` scale.

    Example:
        >>> float(YOLOBoxLoss()([[0.5, 0.5, 0.0, 0.0]], [[2.0, 0.0, 0.0, 0.0]])) > 0
        True
    """

    def __init__(self, reduction: str | None = "sum_over_batch_size", name: str = "yolo_box_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true, y_pred = tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank is not None and (y_pred.shape[-1] not in (None, 4)
                                              or not y_true.shape.is_compatible_with(y_pred.shape)):
            raise ValueError(f"YOLOBoxLoss expects y_true and y_pred of shape (..., 4); received "
                             f"{y_true.shape} and {y_pred.shape}.")
        return yolo_box_loss(y_true, y_pred)
