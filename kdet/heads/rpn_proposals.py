"""RPN proposal generation (Faster and Mask R-CNN): per-level top-k, decode, clip, small-box removal, NMS, top-N.

Follows torchvision's ``RegionProposalNetwork.filter_proposals`` step by step
with static shapes: invalid candidates are masked instead of removed and the
output is padded to ``post_nms_top_k`` rows with a validity mask.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from kdet.ops.box_coder import decode_deltas
from kdet.ops.boxes import clip_boxes
from kdet.ops.nms import batched_nms


def generate_proposals(rpn_cls, rpn_box, anchors, level_sizes: Sequence[int], image_size,
                       pre_nms_top_k: int, post_nms_top_k: int, nms_threshold: float = 0.7,
                       min_size: float = 1e-3, score_threshold: float = 0.0) -> dict:
    """Turns RPN outputs into padded proposals.

    Args:
        rpn_cls: (B, A) objectness logits.
        rpn_box: (B, A, 4) deltas (box-coder weights (1, 1, 1, 1)).
        anchors: (A, 4) xyxy anchors in network pixels, level-major.
        level_sizes: anchors per level (sums to A).
        image_size: (height, width) to clip to, or a (B, 2) tensor of each
            image's region of the canvas (torchvision clips to the resized
            image, not to the padded batch).
        pre_nms_top_k: candidates kept per level by objectness before NMS.
        post_nms_top_k: N, proposals kept per image after NMS.
        nms_threshold: IoU of the NMS (0.7, Ren et al. 2015 section 3.3).
        min_size: boxes narrower or lower than this are dropped.
        score_threshold: objectness probability below which boxes are dropped.

    Returns:
        ``{"boxes": (B, N, 4) xyxy, "scores": (B, N) probabilities, "valid": (B, N) bool}``,
        sorted by score; padded rows have valid False.
    """
    if sum(level_sizes) != anchors.shape[0]:
        raise ValueError(f"level_sizes {list(level_sizes)} do not add up to {anchors.shape[0]} anchors.")
    rpn_cls = tf.cast(rpn_cls, tf.float32)
    rpn_box = tf.cast(rpn_box, tf.float32)
    anchors = tf.constant(anchors, tf.float32) if not isinstance(anchors, tf.Tensor) else anchors
    if isinstance(image_size, (tuple, list)):
        height, width = tf.constant(float(image_size[0])), tf.constant(float(image_size[1]))
        per_image = False
    else:
        image_size = tf.cast(image_size, tf.float32)
        height, width = image_size[:, 0], image_size[:, 1]
        per_image = True
    boxes, scores, levels = [], [], []
    start = 0
    for level, size in enumerate(level_sizes):
        k = min(int(pre_nms_top_k), int(size))
        logits, idx = tf.math.top_k(rpn_cls[:, start:start + size], k=k)
        deltas = tf.gather(rpn_box[:, start:start + size], idx, batch_dims=1)
        level_boxes = decode_deltas(deltas, tf.gather(anchors[start:start + size], idx))
        boxes.append(clip_boxes(level_boxes, height, width))
        scores.append(tf.sigmoid(logits))
        levels.append(tf.fill(tf.shape(idx), level))
        start += size
    boxes, scores, levels = (tf.concat(t, axis=1) for t in (boxes, scores, levels))
    wh = boxes[..., 2:] - boxes[..., :2]
    valid = tf.reduce_all(wh >= min_size, axis=-1) & (scores >= score_threshold)
    # Levels never suppress each other (torchvision's batched_nms by level):
    # shift each level to its own disjoint coordinate range.
    extent = tf.maximum(height, width) + 1.0
    extent = extent[:, None, None] if per_image else extent
    offset = tf.cast(levels, tf.float32)[..., None] * extent
    masked = tf.where(valid, scores, -1.0)
    idx, count = batched_nms(boxes + offset, masked, int(post_nms_top_k), nms_threshold, score_threshold=-0.5)
    keep = tf.range(int(post_nms_top_k))[None] < count[:, None]
    out_boxes = tf.where(keep[..., None], tf.gather(boxes, idx, batch_dims=1), 0.0)
    out_scores = tf.where(keep, tf.gather(scores, idx, batch_dims=1), 0.0)
    return {"boxes": out_boxes, "scores": out_scores, "valid": keep}
