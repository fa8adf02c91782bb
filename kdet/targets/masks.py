"""Mask R-CNN's mask targets: each positive RoI's ground-truth mask cropped and resized to the RoI."""

from __future__ import annotations

import tensorflow as tf

from kdet.ops.roi import roi_align_indexed

#: Samples per bin and axis of the target crop. torchvision's ``project_masks_on_boxes`` uses RoIAlign's
#: adaptive rule (ceil(RoI side / 28)), which has no static shape; 2 x 2 samples is the mask head's own
#: RoIAlign setting and the same for every RoI.
MASK_TARGET_SAMPLING_RATIO = 2


def mask_targets(gt_masks, gt_index, boxes, size: int = 28, sampling_ratio: int = MASK_TARGET_SAMPLING_RATIO,
                 aligned: bool = False):
    """Crops each RoI's matched ground-truth mask to the RoI and resizes it to ``size x size``.

    torchvision's ``project_masks_on_boxes``: RoIAlign of the GT mask (spatial
    scale 1) over the RoI, so the target is the mask's coverage of each output
    cell, in [0, 1] (He et al. 2017, section 3: "the m x m binary mask ...
    the intersection between an RoI and its associated ground-truth mask").

    Args:
        gt_masks: (B, M, H, W) {0, 1} masks (uint8 or any number type) in the
            pixels the boxes are given in (the input images').
        gt_index: (B, R) int, the GT row of each RoI (``RoITargetSampler``'s ``gt_index``).
        boxes: (B, R, 4) xyxy RoIs in the masks' pixels.
        size: output side (28 in Mask R-CNN).
        sampling_ratio: RoIAlign samples per bin and axis.
        aligned: RoIAlign's half-pixel convention (torchvision v1: False).

    Returns:
        (B, R, size, size) float32 targets.

    Example:
        >>> masks = tf.ones((1, 1, 32, 32), tf.uint8)
        >>> float(mask_targets(masks, [[0]], [[[4., 4., 20., 20.]]], size=4)[0, 0].numpy().min())
        1.0
    """
    masks = tf.convert_to_tensor(gt_masks)
    if masks.shape.rank != 4:
        raise ValueError(f"gt_masks must have shape (batch, max_boxes, height, width); received {masks.shape}.")
    # One empty row at the end: a batch without any GT row (M = 0) still has a row to read
    # (its RoIs are never positive, so the value read does not matter).
    masks = tf.pad(masks, [[0, 0], [0, 1], [0, 0], [0, 0]])
    shape = tf.shape(masks)
    batch, rows = shape[0], shape[1]
    stack = tf.reshape(masks, tf.concat([[-1], shape[2:], [1]], axis=0))   # (B * (M + 1), H, W, 1)
    index = tf.range(batch)[:, None] * rows + tf.cast(gt_index, tf.int32)
    boxes = tf.cast(boxes, tf.float32)
    crops = roi_align_indexed(stack, tf.reshape(boxes, [-1, 4]), tf.reshape(index, [-1]), size, sampling_ratio,
                              aligned)
    return tf.reshape(crops, tf.concat([tf.shape(boxes)[:2], [size, size]], axis=0))
