"""Sigmoid focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

``FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)`` (paper eq. (5)), applied
independently to every class logit (sigmoid, not softmax), as in RetinaNet and
torchvision's ``sigmoid_focal_loss``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.validation import check_probability

# RetinaNet's defaults (Lin et al. 2017, section 5.1: "alpha = 0.25, gamma = 2 works best").
DEFAULT_ALPHA = 0.25
DEFAULT_GAMMA = 2.0
# Anchors the matchers mark "ignore" (DESIGN.md: background -1, ignored -2).
IGNORE_LABEL = -2
# Clip for probabilities when from_logits=False (keras.backend.epsilon()).
_PROB_EPS = 1e-7


def _check_gamma(gamma) -> float:
    gamma = float(gamma)
    if not gamma >= 0.0:  # also rejects NaN
        raise ValueError(f"gamma must be a number >= 0; received {gamma}.")
    return gamma


def focal_loss(y_true, y_pred, alpha: float = DEFAULT_ALPHA, gamma: float = DEFAULT_GAMMA,
               from_logits: bool = True, label_smoothing: float = 0.0):
    """Element-wise sigmoid focal loss.

    Args:
        y_true: (..., C) one-hot or multi-hot targets in [0, 1]. Entries that are
            negative (e.g. ``-2``, the "ignore" label of kdet's matchers) give 0.
        y_pred: (..., C) logits (``from_logits=True``) or probabilities.
        alpha: weight of the positive class, ``1 - alpha`` weights negatives.
            ``alpha=None`` (or ``-1``) disables the balancing, as torchvision does.
        gamma: focusing parameter; 0 gives (alpha-balanced) binary cross-entropy.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: targets become ``y * (1 - s) + 0.5 * s`` (as in
            ``keras.losses.BinaryFocalCrossentropy``).

    Returns:
        (..., C) float32 loss, finite for any finite input (logits are handled
        with the numerically stable sigmoid cross-entropy).

    Example:
        >>> import math
        >>> fl = focal_loss([[1.0]], [[math.log(9.0)]])   # p = 0.9, target 1
        >>> round(float(fl[0, 0]), 6) == round(0.25 * 0.1**2 * -math.log(0.9), 6)
        True
    """
    gamma = _check_gamma(gamma)
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    valid = tf.cast(y_true >= 0.0, tf.float32)
    y = tf.clip_by_value(y_true, 0.0, 1.0)
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        prob = tf.sigmoid(y_pred)
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=y_pred)
    else:
        prob = tf.clip_by_value(y_pred, _PROB_EPS, 1.0 - _PROB_EPS)
        ce = -(y * tf.math.log(prob) + (1.0 - y) * tf.math.log(1.0 - prob))
    p_t = y * prob + (1.0 - y) * (1.0 - prob)
    if gamma == 0.0:
        modulating = tf.ones_like(p_t)
    else:
        # The floor keeps d/dx x**gamma finite at x = 0 when gamma < 1; it changes
        # the value by at most 1e-12 ** gamma * ce.
        modulating = tf.pow(tf.maximum(1.0 - p_t, 1e-12), gamma)
    loss = modulating * ce
    if alpha is not None and alpha >= 0:
        loss = (y * alpha + (1.0 - y) * (1.0 - alpha)) * loss
    return loss * valid


def _densify_targets(y_true, y_pred):
    """Sparse class ids (..., ) -> (..., C) one-hot; -1 -> all zeros; -2 -> all -2."""
    labels = tf.cast(tf.round(y_true), tf.int32)
    num_classes = tf.shape(y_pred)[-1]
    one_hot = tf.one_hot(tf.maximum(labels, 0), num_classes, dtype=tf.float32)
    one_hot = tf.where((labels >= 0)[..., None], one_hot, 0.0)
    return tf.where((labels == IGNORE_LABEL)[..., None], float(IGNORE_LABEL), one_hot)


@keras.saving.register_keras_serializable(package="kdet")
class FocalLoss(keras.losses.Loss):
    """Sigmoid focal loss, summed over classes: one value per anchor.

    Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. (5).

    Args:
        alpha: positive-class weight (default 0.25, RetinaNet); ``None`` disables it.
        gamma: focusing parameter (default 2.0, RetinaNet).
        from_logits: whether ``y_pred`` holds logits (default True).
        label_smoothing: binary label smoothing in [0, 1].
        reduction, name, dtype: as in ``keras.losses.Loss``.

    Call arguments:
        y_true: (B, A, C) one-/multi-hot targets, or (B, A) sparse class ids with
            ``-1`` = background (all-zero target) and ``-2`` = ignored anchor.
            In one-hot targets any negative entry is ignored.
        y_pred: (B, A, C) logits (or probabilities), any float dtype.
        sample_weight: optional (B, A) anchor weights (0 ignores an anchor).

    Returns:
        The reduced float32 loss. Per anchor, the loss is the sum over classes
        of :func:`focal_loss`. RetinaNet divides the sum by the number of
        positive anchors: use ``reduction="sum"`` and divide, or pass
        ``sample_weight = 1 / num_positives``.

    Example:
        >>> loss = FocalLoss()
        >>> float(loss([[[0.0, 1.0]]], [[[-3.0, 3.0]]])) > 0
        True
    """

    def __init__(self, alpha: float | None = DEFAULT_ALPHA, gamma: float = DEFAULT_GAMMA,
                 from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str = "focal_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if alpha is not None and float(alpha) != -1.0:
            alpha = check_probability("alpha", alpha)
        self.alpha = None if alpha is None or float(alpha) == -1.0 else float(alpha)
        self.gamma = _check_gamma(gamma)
        self.from_logits = bool(from_logits)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        rank_t, rank_p = y_true.shape.rank, y_pred.shape.rank
        if rank_t is not None and rank_p is not None and rank_t == rank_p - 1:
            y_true = _densify_targets(y_true, y_pred)
        elif rank_t != rank_p or (y_true.shape[-1] is not None and y_pred.shape[-1] is not None
                                  and y_true.shape[-1] != y_pred.shape[-1]):
            raise ValueError(
                "FocalLoss expects y_true of shape (..., C) matching y_pred (..., C), or sparse "
                f"class ids (...); received y_true {y_true.shape} and y_pred {y_pred.shape}."
            )
        loss = focal_loss(y_true, y_pred, alpha=self.alpha, gamma=self.gamma,
                          from_logits=self.from_logits, label_smoothing=self.label_smoothing)
        return tf.reduce_sum(loss, axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(alpha=self.alpha, gamma=self.gamma, from_logits=self.from_logits,
                      label_smoothing=self.label_smoothing)
        return config
