"""Label encoder: ground truth -> per-anchor class and box targets plus weights."""

from __future__ import annotations

import tensorflow as tf

from kdet.ops.box_coder import encode_deltas
from kdet.ops.boxes import iou
from kdet.targets.box_matcher import BACKGROUND, IGNORE, POSITIVE, match_boxes


class AnchorLabelEncoder:
    """Encodes padded ground truth into dense per-anchor training targets.

    Works on batches inside ``compute_loss`` (XLA-safe, static shapes) and on
    single images inside ``tf.data`` (ground truth of rank 2 and 1).

    Args:
        positive_threshold, negative_threshold: IoU thresholds of the matcher.
        allow_low_quality_matches: torchvision's best-IoU rule.
        force_match_for_each_gt: SSD's best-anchor-per-GT rule.
        variances: box-coder divisors for the delta targets.

    Call:
        ``encoder(anchors, gt_boxes, gt_labels)``: anchors (A, 4) xyxy;
        gt_boxes (B, M, 4) xyxy in the anchors' pixel frame; gt_labels (B, M)
        int, -1 padding.

    Returns:
        dict with ``labels`` (B, A) int32 (class id, -1 background, -2
        ignored), ``box_targets`` (B, A, 4) encoded deltas, ``matched_boxes``
        (B, A, 4) xyxy, ``positive`` (B, A) float32, ``num_positive`` (B,)
        float32.

    Example:
        >>> enc = AnchorLabelEncoder()
        >>> out = enc([[0., 0, 10, 10], [20., 20, 30, 30]], [[[0., 0, 10, 10]]], [[2]])
        >>> out["labels"].numpy().tolist()
        [[2, -1]]
    """

    def __init__(self, positive_threshold: float = 0.5, negative_threshold: float = 0.4,
                 allow_low_quality_matches: bool = True, force_match_for_each_gt: bool = False,
                 variances=(1.0, 1.0, 1.0, 1.0)):
        self.positive_threshold = positive_threshold
        self.negative_threshold = negative_threshold
        self.allow_low_quality_matches = allow_low_quality_matches
        self.force_match_for_each_gt = force_match_for_each_gt
        self.variances = tuple(variances)

    def __call__(self, anchors, gt_boxes, gt_labels):
        anchors = tf.cast(anchors, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_labels = tf.cast(gt_labels, tf.int32)
        unbatched = gt_boxes.shape.rank == 2
        if unbatched:
            gt_boxes, gt_labels = gt_boxes[None], gt_labels[None]
        gt_valid = gt_labels >= 0
        similarity = iou(anchors[None], gt_boxes)  # (B, A, M)
        matched, state = match_boxes(
            similarity, gt_valid, self.positive_threshold, self.negative_threshold,
            self.allow_low_quality_matches, self.force_match_for_each_gt,
        )
        # Images without objects: gather from a dummy row so shapes stay static.
        safe_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
        safe_labels = tf.pad(gt_labels, [[0, 0], [0, 1]], constant_values=-1)
        matched_boxes = tf.gather(safe_boxes, matched, batch_dims=1)
        matched_labels = tf.gather(safe_labels, matched, batch_dims=1)
        positive = state == POSITIVE
        labels = tf.where(positive, matched_labels, tf.where(state == IGNORE, IGNORE, BACKGROUND))
        box_targets = encode_deltas(matched_boxes, anchors[None], self.variances)
        box_targets = tf.where(positive[..., None], box_targets, 0.0)
        out = {
            "labels": labels,
            "box_targets": box_targets,
            "matched_boxes": matched_boxes,
            "positive": tf.cast(positive, tf.float32),
            "num_positive": tf.reduce_sum(tf.cast(positive, tf.float32), axis=1),
        }
        if unbatched:
            out = {k: v[0] for k, v in out.items()}
        return out
