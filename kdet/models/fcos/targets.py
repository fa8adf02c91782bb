"""FCOS's locations, box coding and training targets (centre sampling, scale ranges, centre-ness).

A *location* is one feature-map cell of one pyramid level. As torchvision, a
location is represented by a square "unit box" of side the level's size
(8, 16, ..., 128 on P3..P7) centred on the location's point, so the box coder
and the matcher read the point (its centre) and the size from it:

* box coding (torchvision ``BoxLinearCoder(normalize_by_size=True)``): the
  regression target of a location for box (x1, y1, x2, y2) is ``(cx - x1,
  cy - y1, x2 - cx, y2 - cy) / size`` (Tian et al. 2019, eq. (1), normalised by
  the stride as the official code's ``norm_reg_targets``);
* assignment (torchvision ``FCOS.compute_loss``): a location is positive for a
  ground-truth box when (1) its point is within ``radius * size`` of the box
  centre on both axes (centre sampling, FCOS v2 / the official code's
  ``center_sampling_radius``), (2) it lies strictly inside the box, and (3) the
  largest of its four distances falls in its level's range ``(4 size, 8 size)``
  (Tian et al. 2019, section 3.2: m_i = 0, 64, 128, 256, 512, inf; the factors
  are ``FCOSConfig.scale_range``), the first level's lower bound 0 and the
  last's upper bound infinite; among several boxes the one of smallest area
  wins (section 3.1);
* centre-ness target (eq. (3)): ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kdet.layers.anchor_generator import AnchorGenerator

# Scale ranges of the levels in units of the level's size: torchvision ``lower_bound = anchor_sizes * 4``,
# ``upper_bound = anchor_sizes * 8`` (= the paper's m_i: 64, 128, 256, 512 px on P4..P7).
RANGE_LOWER = 4.0
RANGE_UPPER = 8.0
# torchvision's ambiguity rule: score = match * (1e8 - area), so the smallest matching box wins.
_AREA_OFFSET = 1e8


def location_generator(min_level: int = 3, max_level: int = 7, offset: float = 0.0) -> AnchorGenerator:
    """The locations of levels P{min_level}..P{max_level} as unit boxes (torchvision's FCOS anchors).

    torchvision: ``AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)``: one square
    box of side 2^level per cell, points on the grid corners (``offset`` 0; the paper's cell centres
    are ``offset`` 0.5), spaced by ``canvas // feature size`` per axis.
    """
    strides = [2 ** level for level in range(min_level, max_level + 1)]
    return AnchorGenerator(strides=strides, sizes=strides, scales=(1.0,), aspect_ratios=(1.0,), offset=offset,
                           round_base_anchors=True, stride_from_grid=True, name="location_generator")


def level_ranges(counts: list[int], sizes: list[float], scale_range=(RANGE_LOWER, RANGE_UPPER)) -> np.ndarray:
    """(N, 2) lower / upper bound of each location's largest distance, in pixels (module docstring).

    Args:
        counts: locations per level, finest first.
        sizes: each level's location size (its stride).
        scale_range: (lower, upper) bounds in units of the size (torchvision: 4, 8).
    """
    lower = np.concatenate([np.full(n, scale_range[0] * s, np.float32) for n, s in zip(counts, sizes)])
    upper = np.concatenate([np.full(n, scale_range[1] * s, np.float32) for n, s in zip(counts, sizes)])
    lower[: counts[0]] = 0.0
    upper[len(upper) - counts[-1]:] = np.inf
    return np.stack([lower, upper], axis=-1)


def _centres_and_sizes(locations):
    locations = tf.cast(locations, tf.float32)
    centres = (locations[..., :2] + locations[..., 2:]) / 2.0
    sizes = locations[..., 2:] - locations[..., :2]
    return centres, sizes


def encode_ltrb(locations, boxes):
    """xyxy boxes (..., N, 4) -> (left, top, right, bottom) distances / size of locations (N, 4)."""
    centres, sizes = _centres_and_sizes(locations)
    boxes = tf.cast(boxes, tf.float32)
    ltrb = tf.concat([centres - boxes[..., :2], boxes[..., 2:] - centres], axis=-1)
    return ltrb / tf.concat([sizes, sizes], axis=-1)


def decode_ltrb(distances, locations):
    """(left, top, right, bottom) / size (..., N, 4) of locations (N, 4) -> xyxy boxes (float32)."""
    centres, sizes = _centres_and_sizes(locations)
    distances = tf.cast(distances, tf.float32) * tf.concat([sizes, sizes], axis=-1)
    return tf.concat([centres - distances[..., :2], centres + distances[..., 2:]], axis=-1)


def centerness_target(ltrb):
    """Centre-ness (eq. (3)) of (..., 4) ltrb distances; 0 where a distance is not positive."""
    left_right = tf.stack([ltrb[..., 0], ltrb[..., 2]], axis=-1)
    top_bottom = tf.stack([ltrb[..., 1], ltrb[..., 3]], axis=-1)
    ratio = (tf.math.divide_no_nan(tf.reduce_min(left_right, -1), tf.reduce_max(left_right, -1))
             * tf.math.divide_no_nan(tf.reduce_min(top_bottom, -1), tf.reduce_max(top_bottom, -1)))
    return tf.sqrt(tf.maximum(ratio, 0.0))


def assign_locations(locations, ranges, boxes, labels, radius: float):
    """Matches every location to at most one ground-truth box (module docstring).

    Args:
        locations: (N, 4) xyxy unit boxes of the locations.
        ranges: (N, 2) lower / upper bounds of each location's largest distance.
        boxes: (B, M, 4) xyxy ground truth in network pixels.
        labels: (B, M) int labels, -1 on padding rows.
        radius: centre-sampling radius in units of the location's size.

    Returns:
        (B, N) int32 index of the matched box, -1 for background.
    """
    centres, sizes = _centres_and_sizes(locations)
    boxes = tf.cast(boxes, tf.float32)
    size = sizes[None, :, None, 0]                                      # (1, N, 1)
    gt_centres = (boxes[..., :2] + boxes[..., 2:]) / 2.0                # (B, M, 2)
    offset = tf.reduce_max(tf.abs(centres[None, :, None, :] - gt_centres[:, None, :, :]), axis=-1)
    match = offset < radius * size                                      # (B, N, M)
    x, y = centres[None, :, None, 0], centres[None, :, None, 1]
    distances = tf.stack([x - boxes[:, None, :, 0], y - boxes[:, None, :, 1],
                          boxes[:, None, :, 2] - x, boxes[:, None, :, 3] - y], axis=-1)  # (B, N, M, 4)
    match &= tf.reduce_min(distances, axis=-1) > 0.0
    largest = tf.reduce_max(distances, axis=-1)
    ranges = tf.cast(ranges, tf.float32)
    match &= (largest > ranges[None, :, None, 0]) & (largest < ranges[None, :, None, 1])
    match &= (labels >= 0)[:, None, :]
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    score = tf.cast(match, tf.float32) * (_AREA_OFFSET - areas)[:, None, :]
    best = tf.argmax(score, axis=-1, output_type=tf.int32)
    # torchvision: ``matched_idx[min_values < 1e-5] = -1``.
    return tf.where(tf.reduce_max(score, axis=-1) < 1e-5, -1, best)
