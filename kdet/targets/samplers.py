"""Balanced, seeded samplers of the two Faster R-CNN training stages (RPN anchors and RoIs).

Both stages label candidates with the IoU matcher (``match_boxes``) and then
draw a fixed-size minibatch with at most ``positive_fraction`` positives,
filling the rest with negatives (Ren et al. 2015, section 3.1.3: 256 anchors
at up to 1:1; Girshick 2015, section 2.3: 128 RoIs per image at 25%
foreground, 512 in torchvision). Everything has static shapes: the sample is
a (B, S) index tensor with a validity mask, so it runs inside a compiled
train step. Randomness comes from ``keras.random`` with a seed (an int or a
``keras.random.SeedGenerator``), so a fixed seed gives the same samples.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.ops.box_coder import encode_deltas
from kdet.ops.boxes import iou
from kdet.targets.box_matcher import BACKGROUND, IGNORE, POSITIVE, match_boxes
from kdet.validation import check_positive_int, check_probability

# Ren et al. 2015, section 3.1.2 and torchvision's RPN defaults.
RPN_POSITIVE_IOU = 0.7
RPN_NEGATIVE_IOU = 0.3
RPN_BATCH_PER_IMAGE = 256
RPN_POSITIVE_FRACTION = 0.5
# Girshick 2015, section 2.3 (foreground IoU >= 0.5) and torchvision's RoIHeads defaults.
ROI_FOREGROUND_IOU = 0.5
ROI_BACKGROUND_IOU = 0.5
ROI_BATCH_PER_IMAGE = 512
ROI_POSITIVE_FRACTION = 0.25
# torchvision's RoI box coder weights (10, 10, 5, 5) as kdet variances.
ROI_BOX_VARIANCES = (0.1, 0.1, 0.2, 0.2)


def balanced_sample(states, num_samples: int, positive_fraction: float, seed=None) -> dict:
    """Draws up to ``num_samples`` candidates per image, at most ``positive_fraction`` positive.

    Args:
        states: (B, N) int32 match states (1 positive, -1 background, -2 ignored).
        num_samples: S, samples per image (fewer when N < S).
        positive_fraction: upper bound of the positive share; negatives fill the rest.
        seed: int, ``keras.random.SeedGenerator`` or None.

    Returns:
        dict of (B, S') tensors, S' = min(S, N): ``indices`` int32 into N
        (positives first, then negatives, then padding), ``valid`` bool,
        ``positive`` bool.

    Example:
        >>> out = balanced_sample(tf.constant([[1, -1, -1, -2]]), 2, 0.5, seed=0)
        >>> out["positive"].numpy().tolist(), out["valid"].numpy().tolist()
        ([[True, False]], [[True, True]])
    """
    num_samples = check_positive_int("num_samples", num_samples)
    positive_fraction = check_probability("positive_fraction", positive_fraction)
    states = tf.convert_to_tensor(states, tf.int32)
    count = states.shape[1] if states.shape[1] is not None else None
    if count is None:
        raise ValueError("balanced_sample needs a static number of candidates (states.shape[1]).")
    k = min(num_samples, count)
    random = keras.random.uniform(tf.shape(states), seed=seed)
    positive, negative = states == POSITIVE, states == BACKGROUND
    # Random order among each group; top_k of the keys puts the group first.
    _, pos_idx = tf.math.top_k(tf.where(positive, random, -1.0), k=k)
    _, neg_idx = tf.math.top_k(tf.where(negative, random, -1.0), k=k)
    num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), int(num_samples * positive_fraction))
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), k - num_pos)
    slot = tf.range(k)[None]
    # Target position of each candidate slot: chosen positives, then chosen negatives, then the rest.
    pos_rank = tf.where(slot < num_pos[:, None], slot, 2 * k + slot)
    neg_rank = tf.where(slot < num_neg[:, None], num_pos[:, None] + slot, 3 * k + slot)
    order = tf.argsort(tf.concat([pos_rank, neg_rank], axis=1), axis=1)[:, :k]
    indices = tf.gather(tf.concat([pos_idx, neg_idx], axis=1), order, batch_dims=1)
    valid = slot < (num_pos + num_neg)[:, None]
    return {"indices": indices, "valid": valid, "positive": slot < num_pos[:, None]}


class RPNTargetSampler:
    """RPN targets: match anchors to GT, sample a balanced minibatch, encode box deltas.

    Args:
        positive_threshold, negative_threshold: IoU bounds (0.7 / 0.3), with
            each GT's best anchors also positive (Ren et al. 2015, section 3.1.2).
        num_samples, positive_fraction: minibatch per image (256 at 1:1).
        variances: box-coder divisors (torchvision's RPN uses weights (1, 1, 1, 1)).
        seed: int or ``keras.random.SeedGenerator``.

    Call:
        ``sampler(anchors (A, 4), gt_boxes (B, M, 4), gt_labels (B, M))`` (xyxy,
        labels -1 padded) -> dict of (B, S) ``indices``, ``valid``,
        ``positive`` and (B, S, 4) ``box_targets`` (zero where not positive).
    """

    def __init__(self, positive_threshold: float = RPN_POSITIVE_IOU, negative_threshold: float = RPN_NEGATIVE_IOU,
                 num_samples: int = RPN_BATCH_PER_IMAGE, positive_fraction: float = RPN_POSITIVE_FRACTION,
                 variances=(1.0, 1.0, 1.0, 1.0), seed=None):
        self.positive_threshold, self.negative_threshold = positive_threshold, negative_threshold
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.positive_fraction = check_probability("positive_fraction", positive_fraction)
        self.variances = tuple(variances)
        self.seed = seed

    def __call__(self, anchors, gt_boxes, gt_labels) -> dict:
        anchors = tf.cast(anchors, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        similarity = iou(anchors[None], gt_boxes)  # (B, A, M)
        matched, states = match_boxes(similarity, gt_labels >= 0, self.positive_threshold,
                                      self.negative_threshold, allow_low_quality_matches=True)
        sample = balanced_sample(states, self.num_samples, self.positive_fraction, self.seed)
        idx = sample["indices"]
        safe_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])  # images without objects
        matched_boxes = tf.gather(safe_boxes, tf.gather(matched, idx, batch_dims=1), batch_dims=1)
        targets = encode_deltas(matched_boxes, tf.gather(anchors, idx), self.variances)
        sample["box_targets"] = tf.where(sample["positive"][..., None], targets, 0.0)
        return sample


class RoITargetSampler:
    """RoI-head targets: add GT to proposals, match, sample, label and encode per class.

    Args:
        foreground_threshold: IoU >= this is foreground (0.5).
        background_threshold: IoU < this is background (0.5, torchvision; the
            Fast R-CNN paper also drops IoU < 0.1, which torchvision does not).
        num_samples, positive_fraction: RoIs per image and foreground share.
        variances: box-coder divisors, (0.1, 0.1, 0.2, 0.2) = weights (10, 10, 5, 5).
        add_ground_truth: append GT boxes to the proposals (Faster R-CNN practice).
        seed: int or ``keras.random.SeedGenerator``.

    Call:
        ``sampler(proposals (B, N, 4), proposal_valid (B, N), gt_boxes (B, M, 4),
        gt_labels (B, M))`` -> dict of (B, S) ``boxes`` (sampled RoIs, xyxy),
        ``labels`` (class id, -1 background), ``valid``, ``positive``,
        ``gt_index`` (the matched GT row, meaningful where positive; Mask
        R-CNN reads the GT mask of that row) and (B, S, 4) ``box_targets``.
    """

    def __init__(self, foreground_threshold: float = ROI_FOREGROUND_IOU,
                 background_threshold: float = ROI_BACKGROUND_IOU, num_samples: int = ROI_BATCH_PER_IMAGE,
                 positive_fraction: float = ROI_POSITIVE_FRACTION, variances=ROI_BOX_VARIANCES,
                 add_ground_truth: bool = True, seed=None):
        self.foreground_threshold, self.background_threshold = foreground_threshold, background_threshold
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.positive_fraction = check_probability("positive_fraction", positive_fraction)
        self.variances = tuple(variances)
        self.add_ground_truth = bool(add_ground_truth)
        self.seed = seed

    def __call__(self, proposals, proposal_valid, gt_boxes, gt_labels) -> dict:
        proposals = tf.cast(proposals, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_labels = tf.cast(gt_labels, tf.int32)
        proposal_valid = tf.cast(proposal_valid, tf.bool)
        if self.add_ground_truth:
            proposals = tf.concat([proposals, gt_boxes], axis=1)
            proposal_valid = tf.concat([proposal_valid, gt_labels >= 0], axis=1)
        similarity = iou(proposals, gt_boxes)  # (B, N, M)
        matched, states = match_boxes(similarity, gt_labels >= 0, self.foreground_threshold,
                                      self.background_threshold, allow_low_quality_matches=False)
        # Padded proposals (and padded GT rows) are never sampled.
        states = tf.where(proposal_valid, states, IGNORE)
        sample = balanced_sample(states, self.num_samples, self.positive_fraction, self.seed)
        idx = sample["indices"]
        boxes = tf.gather(proposals, idx, batch_dims=1)
        gt_index = tf.gather(matched, idx, batch_dims=1)
        safe_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
        safe_labels = tf.pad(gt_labels, [[0, 0], [0, 1]], constant_values=-1)
        matched_boxes = tf.gather(safe_boxes, gt_index, batch_dims=1)
        labels = tf.where(sample["positive"], tf.gather(safe_labels, gt_index, batch_dims=1), BACKGROUND)
        targets = encode_deltas(matched_boxes, boxes, self.variances)
        sample.update(boxes=boxes, labels=labels, box_targets=tf.where(sample["positive"][..., None], targets, 0.0),
                      gt_index=gt_index)
        return sample
