"""IoU box matcher: assigns each anchor (or proposal) to a ground-truth box or to background.

Match states follow kdet's convention: ``POSITIVE`` (1), ``BACKGROUND`` (-1)
and ``IGNORE`` (-2). Between the thresholds an anchor is ignored
(RetinaNet: negative < 0.4 <= ignore < 0.5 <= positive; Lin et al. 2017).
"""

from __future__ import annotations

import tensorflow as tf

from kdet.validation import check_probability

POSITIVE = 1
BACKGROUND = -1
IGNORE = -2


def match_boxes(similarity, gt_valid, positive_threshold: float = 0.5, negative_threshold: float = 0.4,
                allow_low_quality_matches: bool = True, force_match_for_each_gt: bool = False):
    """Matches anchors to ground truth by a similarity (IoU) matrix.

    Args:
        similarity: (B, A, M) IoU between A anchors and M ground-truth boxes.
        gt_valid: (B, M) bool, False on padded ground truth.
        positive_threshold: IoU >= this is positive.
        negative_threshold: IoU < this is background; in between is ignored.
        allow_low_quality_matches: torchvision's rule (Faster R-CNN, RetinaNet):
            every anchor whose IoU equals a GT's best IoU becomes positive
            (keeping its own best match), so no GT is left without anchors.
        force_match_for_each_gt: SSD's rule (Liu et al. 2016, section 2.2):
            each GT's single best anchor is assigned to that GT and positive.

    Returns:
        ``(matched_gt, state)``: (B, A) int32 index of the matched GT (0 where
        none) and (B, A) int32 state in {1, -1, -2}.
    """
    positive_threshold = check_probability("positive_threshold", positive_threshold)
    negative_threshold = check_probability("negative_threshold", negative_threshold)
    if negative_threshold > positive_threshold:
        raise ValueError(
            f"negative_threshold ({negative_threshold}) must be <= positive_threshold ({positive_threshold})."
        )
    similarity = tf.cast(similarity, tf.float32)
    gt_valid = tf.cast(gt_valid, tf.bool)
    # Padded GTs never match (similarity -1); a column of padding keeps M >= 1
    # so images without objects reduce cleanly to "all background".
    similarity = tf.where(gt_valid[:, None, :], similarity, -1.0)
    similarity = tf.pad(similarity, [[0, 0], [0, 0], [0, 1]], constant_values=-1.0)
    gt_valid = tf.pad(gt_valid, [[0, 0], [0, 1]], constant_values=False)
    best_iou = tf.reduce_max(similarity, axis=2)  # (B, A)
    matched = tf.argmax(similarity, axis=2, output_type=tf.int32)
    state = tf.where(best_iou >= positive_threshold, POSITIVE,
                     tf.where(best_iou < negative_threshold, BACKGROUND, IGNORE))
    if allow_low_quality_matches:
        gt_best = tf.reduce_max(similarity, axis=1, keepdims=True)  # (B, 1, M)
        is_best = (similarity == gt_best) & (gt_best > 0.0)
        state = tf.where(tf.reduce_any(is_best, axis=2), POSITIVE, state)
    if force_match_for_each_gt:
        best_anchor = tf.argmax(similarity, axis=1, output_type=tf.int32)  # (B, M)
        onehot = tf.one_hot(best_anchor, tf.shape(similarity)[1], dtype=tf.float32)  # (B, M, A)
        onehot *= tf.cast(gt_valid & (tf.reduce_max(similarity, axis=1) > 0), tf.float32)[..., None]
        forced = tf.reduce_max(onehot, axis=1) > 0  # (B, A)
        forced_gt = tf.argmax(onehot, axis=1, output_type=tf.int32)  # first GT claiming the anchor
        matched = tf.where(forced, forced_gt, matched)
        state = tf.where(forced, POSITIVE, state)
    matched = tf.minimum(matched, tf.maximum(tf.shape(similarity)[2] - 2, 0))
    return matched, tf.cast(state, tf.int32)
