"""Repulsion loss (Wang et al. 2018, "Repulsion Loss: Detecting Pedestrians in a Crowd").

The paper's box loss is ``L = L_Attr + alpha * L_RepGT + beta * L_RepBox``
(the paper's eq. (1)). ``L_Attr`` is an ordinary box-regression loss (kdet's
``SmoothL1Loss`` or ``IoULoss``); this module provides the two repulsion terms:

* RepGT: for every positive prediction ``B^P`` with designated target
  ``G_Attr^P``, ``G_Rep^P`` is the *other* ground truth of largest IoU with the
  proposal; the loss is ``sum_P Smooth_ln(IoG(B^P, G_Rep^P)) / |P+|`` with
  ``IoG(B, G) = area(B n G) / area(G)``.
* RepBox: over pairs of positive predictions whose targets differ,
  ``sum Smooth_ln(IoU(B_i, B_j)) / (sum 1[IoU(B_i, B_j) > 0] + eps)``.

``Smooth_ln(x) = -ln(1 - x)`` for ``x <= sigma`` and
``(x - sigma) / (1 - sigma) - ln(1 - sigma)`` above.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.ops.boxes import convert_format, iou
from kdet.validation import check_box_format, check_probability

# Wang et al. 2018 train with alpha = beta = 0.5 (the weights of the two terms).
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 0.5
# The paper's ablation of the smooth parameter: RepGT works best with
# sigma = 1 (plain -ln(1 - x)), RepBox with sigma = 0 (linear in IoU).
DEFAULT_SIGMA_GT = 1.0
DEFAULT_SIGMA_BOX = 0.0
# Upper clamp of x inside -ln(1 - x): at sigma = 1 an IoG of exactly 1 (a box
# inside another person's box) would give inf; -ln(1e-6) = 13.8 instead.
_LN_CLAMP = 1e-6


def smooth_ln(x, sigma: float):
    """Smooth ln of Wang et al. 2018: ``-ln(1-x)`` below ``sigma``, linear above.

    Args:
        x: overlap values in [0, 1], any shape.
        sigma: smooth parameter in [0, 1]; 1 gives ``-ln(1 - x)`` everywhere
            (clamped at ``x = 1 - 1e-6`` so the value and gradient stay finite).

    Returns:
        float32 tensor shaped like ``x``, 0 where ``x = 0``.

    Example:
        >>> round(float(smooth_ln(0.5, sigma=0.0)), 4)   # (0.5 - 0) / 1 - ln(1)
        0.5
    """
    sigma = check_probability("sigma", sigma)
    x = tf.cast(x, tf.float32)
    low = -tf.math.log1p(-tf.minimum(x, min(sigma, 1.0 - _LN_CLAMP)))
    if sigma >= 1.0:
        return low
    high = (x - sigma) / (1.0 - sigma) - tf.math.log1p(-sigma)
    return tf.where(x <= sigma, low, high)


def _to_xyxy(boxes, fmt):
    # Relative formats are read on a unit image, as kdet.ops.iou does.
    size = 1.0 if fmt.startswith("rel_") else None
    return convert_format(boxes, fmt, "xyxy", height=size, width=size)


def _intersection_over_gt(boxes, gts):
    """IoG of aligned xyxy boxes (..., 4) x (..., 4) -> (...)."""
    iw = tf.maximum(tf.minimum(boxes[..., 2], gts[..., 2]) - tf.maximum(boxes[..., 0], gts[..., 0]), 0.0)
    ih = tf.maximum(tf.minimum(boxes[..., 3], gts[..., 3]) - tf.maximum(boxes[..., 1], gts[..., 1]), 0.0)
    gt_area = tf.maximum(gts[..., 2] - gts[..., 0], 0.0) * tf.maximum(gts[..., 3] - gts[..., 1], 0.0)
    return tf.math.divide_no_nan(iw * ih, gt_area)


def rep_gt_term(pred_boxes, gt_boxes, gt_valid, assigned, proposals=None,
                sigma: float = DEFAULT_SIGMA_GT):
    """RepGT per image; all boxes xyxy. Returns (B,) float32."""
    batch = tf.shape(gt_boxes)[0]
    # A padded, never-valid GT row keeps argmax defined when an image has M = 0.
    gt_boxes = tf.concat([gt_boxes, tf.zeros([batch, 1, 4])], axis=1)
    gt_valid = tf.concat([gt_valid, tf.zeros([batch, 1], tf.bool)], axis=1)
    select = tf.stop_gradient(pred_boxes if proposals is None else proposals)
    overlaps = iou(select, gt_boxes)  # (B, N, M + 1)
    gt_ids = tf.range(tf.shape(gt_boxes)[1])
    candidate = gt_valid[:, None, :] & (gt_ids[None, None, :] != assigned[..., None])
    rep_index = tf.argmax(tf.where(candidate, overlaps, -1.0), axis=-1, output_type=tf.int32)
    rep_boxes = tf.gather(gt_boxes, rep_index, batch_dims=1)  # (B, N, 4)
    use = (assigned >= 0) & tf.reduce_any(candidate, axis=-1)
    per_box = tf.where(use, smooth_ln(_intersection_over_gt(pred_boxes, rep_boxes), sigma), 0.0)
    num_positive = tf.reduce_sum(tf.cast(assigned >= 0, tf.float32), axis=-1)
    return tf.math.divide_no_nan(tf.reduce_sum(per_box, axis=-1), num_positive)


def rep_box_term(pred_boxes, assigned, sigma: float = DEFAULT_SIGMA_BOX):
    """RepBox per image; boxes xyxy (B, N, 4). Returns (B,) float32.

    Memory is O(N^2): pass the positive predictions (e.g. sampled RoIs), not
    every anchor of a dense detector.
    """
    overlaps = iou(pred_boxes, pred_boxes)  # (B, N, N)
    positive = assigned >= 0
    pairs = positive[:, :, None] & positive[:, None, :] & (assigned[:, :, None] != assigned[:, None, :])
    total = tf.reduce_sum(tf.where(pairs, smooth_ln(overlaps, sigma), 0.0), axis=[1, 2])
    # The paper's "+ eps" only guards 0 / 0: smooth_ln(0) = 0, so an empty
    # denominator always comes with a zero numerator.
    count = tf.reduce_sum(tf.cast(pairs & (overlaps > 0.0), tf.float32), axis=[1, 2])
    return tf.math.divide_no_nan(total, count)


def pack_repulsion_targets(gt_boxes, gt_labels, assigned):
    """Packs repulsion targets into one (B, N + M, 5) tensor for ``model.compile``.

    Keras requires ``y_true`` to have the structure of the model output (one
    tensor), so the three target tensors travel packed:
    rows ``[:N]`` are ``(0, 0, 0, 0, assigned)`` and rows ``[N:]`` are
    ``(x1, y1, x2, y2, label)`` of the ground truth (any box format).

    Args:
        gt_boxes: (B, M, 4) ground-truth boxes.
        gt_labels: (B, M) labels, ``-1`` on padded rows.
        assigned: (B, N) index in ``[0, M)`` of each prediction's target GT,
            negative for background (-1) and ignored (-2) predictions.

    Returns:
        (B, N + M, 5) float32.
    """
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.float32)
    assigned = tf.cast(assigned, tf.float32)
    head = tf.concat([tf.zeros(tf.concat([tf.shape(assigned), [4]], 0)), assigned[..., None]], -1)
    tail = tf.concat([gt_boxes, gt_labels[..., None]], axis=-1)
    return tf.concat([head, tail], axis=1)


def _unpack(y_true, y_pred):
    """Returns gt_boxes (B, M, 4), gt_valid (B, M), assigned (B, N), proposals or None."""
    if isinstance(y_true, dict):
        missing = {"boxes", "labels", "assigned"} - set(y_true)
        if missing:
            raise ValueError(
                "RepulsionLoss y_true dict needs keys 'boxes' (B, M, 4), 'labels' (B, M) and "
                f"'assigned' (B, N) (optional 'proposals' (B, N, 4)); missing {sorted(missing)}."
            )
        boxes, labels = y_true["boxes"], y_true["labels"]
        assigned, proposals = y_true["assigned"], y_true.get("proposals")
    else:
        y_true = tf.convert_to_tensor(y_true)
        if y_true.shape.rank != 3 or y_true.shape[-1] != 5:
            raise ValueError(
                "RepulsionLoss expects y_true packed by pack_repulsion_targets, shape "
                f"(B, N + M, 5), or a dict; received shape {y_true.shape}."
            )
        n = tf.shape(y_pred)[1]
        assigned, boxes, labels, proposals = y_true[:, :n, 4], y_true[:, n:, :4], y_true[:, n:, 4], None
    assigned = tf.cast(tf.round(tf.cast(assigned, tf.float32)), tf.int32)
    valid = tf.cast(tf.round(tf.cast(labels, tf.float32)), tf.int32) != -1
    return tf.cast(boxes, tf.float32), valid, assigned, proposals


@keras.saving.register_keras_serializable(package="kdet")
class RepulsionLoss(keras.losses.Loss):
    """Repulsion terms ``alpha * RepGT + beta * RepBox`` of Wang et al. 2018.

    Add it to the usual attraction (box regression) loss; kdet computes the
    terms on *decoded* predicted boxes, per image.

    Args:
        alpha: weight of RepGT (default 0.5, as in the paper).
        beta: weight of RepBox (default 0.5).
        sigma_gt: Smooth_ln parameter of RepGT (default 1.0, the paper's best).
        sigma_box: Smooth_ln parameter of RepBox (default 0.0, the paper's best).
        bounding_box_format: format of predicted and ground-truth boxes.
        reduction, name, dtype: as in ``keras.losses.Loss``.

    Call arguments:
        y_true: either a dict ``{"boxes": (B, M, 4), "labels": (B, M) (-1 = padding),
            "assigned": (B, N) int (target GT index of each prediction; -1
            background and -2 ignored are not positives), "proposals": (B, N, 4)
            optional}``, or the same packed by :func:`pack_repulsion_targets`
            into (B, N + M, 5) (what ``model.compile`` needs).
        y_pred: (B, N, 4) predicted (decoded) boxes, any float dtype.
        sample_weight: optional (B,) image weights.

    ``G_Rep`` is chosen by IoU with ``proposals`` as in the paper when given,
    otherwise with the (gradient-stopped) predicted boxes. Images with no
    positive prediction or a single object give 0.

    Example:
        >>> loss = RepulsionLoss(reduction="none")
        >>> y = {"boxes": [[[0., 0, 10, 10], [5., 0, 15, 10]]], "labels": [[0, 0]],
        ...      "assigned": [[0]]}
        >>> round(float(loss(y, [[[0., 0, 10, 10]]])[0]), 4)   # 0.5 * -ln(1 - 0.5)
        0.3466
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                 sigma_gt: float = DEFAULT_SIGMA_GT, sigma_box: float = DEFAULT_SIGMA_BOX,
                 bounding_box_format: str = "xyxy", reduction: str | None = "sum_over_batch_size",
                 name: str = "repulsion_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not float(value) >= 0.0:
                raise ValueError(f"{key} must be a number >= 0; received {value!r}.")
        self.alpha, self.beta = float(alpha), float(beta)
        self.sigma_gt = check_probability("sigma_gt", sigma_gt)
        self.sigma_box = check_probability("sigma_box", sigma_box)
        self.bounding_box_format = check_box_format(bounding_box_format)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank != 3 or y_pred.shape[-1] != 4:
            raise ValueError(
                f"RepulsionLoss expects y_pred boxes of shape (B, N, 4); received {y_pred.shape}."
            )
        gt_boxes, gt_valid, assigned, proposals = _unpack(y_true, y_pred)
        fmt = self.bounding_box_format
        pred = _to_xyxy(y_pred, fmt)
        gt_boxes = _to_xyxy(gt_boxes, fmt)
        if proposals is not None:
            proposals = _to_xyxy(proposals, fmt)
        loss = tf.zeros(tf.shape(pred)[:1])
        if self.alpha:
            loss += self.alpha * rep_gt_term(pred, gt_boxes, gt_valid, assigned, proposals,
                                             self.sigma_gt)
        if self.beta:
            loss += self.beta * rep_box_term(pred, assigned, self.sigma_box)
        return loss

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta, sigma_gt=self.sigma_gt,
                      sigma_box=self.sigma_box, bounding_box_format=self.bounding_box_format)
        return config
