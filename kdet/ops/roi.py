"""RoI feature extraction: RoIAlign and RoIPool, single- and multi-level, as pure TensorFlow.

Both follow torchvision's kernels (``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``
and ``roi_pool_kernel.cpp``) number for number, so converted torchvision
checkpoints see the same features:

* RoIAlign (He et al. 2017, "Mask R-CNN", section 3): each of the
  ``P x P`` bins averages ``sampling_ratio**2`` bilinear samples placed at the
  bin's sub-cell centres. ``aligned=False`` is the original (torchvision v1)
  convention: boxes are scaled without the half-pixel shift and their size is
  floored at one feature cell; ``aligned=True`` shifts by -0.5 (Detectron2).
  Samples outside ``[-1, size]`` read 0; samples in ``[-1, 0]`` and
  ``[size - 1, size]`` read the border value.
* RoIPool (Girshick 2015, "Fast R-CNN", section 2.1): box corners rounded to
  the feature grid, the box split into ``P x P`` integer bins and each bin
  max-pooled (empty bins give 0).

Implementation: the features of every level and image are flattened into one
``(sum_l B * H_l * W_l, C)`` table and every sample is a ``tf.gather`` row, so
each RoI reads only its own level (no per-level recomputation), shapes stay
static and the graph compiles with XLA and converts to LiteRT builtins.
RoIAlign's bilinear weights separate into a y and an x factor, which is used
to build the four corner gathers of the whole ``(R, P*s, P*s)`` sample grid at
once. RoIPool iterates over bin offsets with a ``tf.while_loop`` whose trip
count is the largest bin in the batch, so it is exact for any box while
holding only ``(R, P, P, C)`` in memory.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

# Level assignment of FPN RoIs (Lin et al. 2017, eq. (1)): an RoI of
# ImageNet size 224 goes to P4; torchvision's LevelMapper adds eps=1e-6.
CANONICAL_SCALE = 224.0
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6


def _as_pair(output_size) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or min(int(s) for s in size) <= 0:
        raise ValueError(f"output_size must be a positive int or (height, width); received {output_size!r}.")
    return int(size[0]), int(size[1])


def _check_inputs(features: Sequence, boxes, spatial_scales: Sequence[float]):
    if not features:
        raise ValueError("features must be a non-empty list of (batch, height, width, channels) maps.")
    if len(spatial_scales) != len(features):
        raise ValueError(f"Got {len(features)} feature maps but {len(spatial_scales)} spatial_scales.")
    channels = {f.shape[-1] for f in features}
    for f in features:
        if f.shape.rank != 4:
            raise ValueError(f"Feature maps must have shape (batch, height, width, channels); received {f.shape}.")
    if len(channels) != 1:
        raise ValueError(f"All feature maps must have the same channels; received {sorted(channels)}.")
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (batch, num_rois, 4) xyxy; received {boxes.shape}.")


def _flatten_levels(features: Sequence, spatial_scales: Sequence[float]):
    """One gather table for all levels + per-level (H, W, offset, scale) vectors."""
    tables, heights, widths, offsets = [], [], [], []
    offset = tf.constant(0, tf.int32)
    for f in features:
        shape = tf.shape(f)
        heights.append(shape[1])
        widths.append(shape[2])
        offsets.append(offset)
        offset += shape[0] * shape[1] * shape[2]
        tables.append(tf.reshape(f, [-1, f.shape[-1]]))
    return (tf.concat(tables, axis=0), tf.stack(heights), tf.stack(widths), tf.stack(offsets),
            tf.constant([float(s) for s in spatial_scales], tf.float32))


def _roi_geometry(boxes, levels, heights, widths, offsets, scales):
    """Per-RoI level metadata (B, R): height, width (int32), base row in the table, scale."""
    batch = tf.shape(boxes)[0]
    h = tf.gather(heights, levels)
    w = tf.gather(widths, levels)
    image = tf.range(batch)[:, None]
    base = tf.gather(offsets, levels) + image * h * w
    return h, w, base, tf.gather(scales, levels)


def _axis_samples(start, length, size, bins: int, sampling_ratio: int, clamp_outside: bool = False):
    """Bilinear taps along one axis (torchvision's ``bilinear_interpolate``, separated per axis).

    start, length: (B, R) RoI start and extent in feature cells; size (B, R) int32.
    Returns (B * R, bins, 2 s) int32 (low, high) indices of the samples and their weights,
    zero for samples outside ``[-1, size]`` (torchvision's C++ kernel) unless
    ``clamp_outside``, which reads the border row/column instead (the clamped
    sampling that the torchvision fixture of ``fasterrcnn_resnet50_fpn`` shows).
    """
    steps = tf.range(bins * sampling_ratio, dtype=tf.float32)
    bin_size = length / bins
    # Sample k sits at ph*bin + (iy + 0.5) * bin / s, with k = ph * s + iy.
    coord = start[..., None] + (steps + 0.5) * (bin_size[..., None] / sampling_ratio)
    size = size[..., None]
    valid = tf.cast((coord >= -1.0) & (coord <= tf.cast(size, tf.float32)), tf.float32)
    if clamp_outside:
        valid = tf.ones_like(valid)
    coord = tf.maximum(coord, 0.0)
    low = tf.cast(tf.floor(coord), tf.int32)
    at_end = low >= size - 1
    low = tf.where(at_end, size - 1, low)
    high = tf.where(at_end, low, low + 1)
    coord = tf.where(at_end, tf.cast(low, tf.float32), coord)
    frac = coord - tf.cast(low, tf.float32)
    # Flatten (B, R) to N RoIs and each bin's (sample, corner) taps to 2s.
    shape = [-1, bins, 2 * sampling_ratio]
    index = tf.reshape(tf.stack([low, high], axis=-1), shape)
    weight = tf.reshape(tf.stack([(1.0 - frac) * valid, frac * valid], axis=-1), shape)
    return index, weight


def _average_bins(table, base, width, ys, wys, xs, wxs, sampling_ratio: int):
    """Each bin's average of its bilinear samples, read from a flattened (rows, C) table.

    base, width: (N,) first table row and row length of each RoI's map; ys / xs and
    their weights: (N, bins, 2 s) from ``_axis_samples``. Returns (N, P_h, P_w, C) float32.
    """
    s = sampling_ratio
    ph, pw = ys.shape[1], xs.shape[1]
    # All 4 s^2 (sample, corner) taps of a bin side by side: (N, ph, pw, 2s, 2s).
    row = ys * width[:, None, None] + base[:, None, None]
    index = row[:, :, None, :, None] + xs[:, None, :, None, :]
    weight = wys[:, :, None, :, None] * wxs[:, None, :, None, :] / float(s * s)
    taps = [-1, ph, pw, 4 * s * s]
    values = tf.cast(tf.gather(table, tf.reshape(index, taps)), tf.float32)
    # The bin average as one weighted sum per bin (a batched matmul; reducing the
    # samples as separate strided axes is several times slower on CPU).
    return tf.einsum("...k,...kc->...c", tf.reshape(weight, taps), values)


def multilevel_roi_align(features: Sequence, boxes, levels, spatial_scales: Sequence[float], output_size=7,
                         sampling_ratio: int = 2, aligned: bool = False, clamp_outside: bool = False):
    """RoIAlign where each RoI reads the pyramid level given by ``levels``.

    Args:
        features: list of L maps (B, H_l, W_l, C), same C.
        boxes: (B, R, 4) xyxy RoIs in input-image pixels.
        levels: (B, R) int, index into ``features`` of each RoI's level.
        spatial_scales: L floats, feature cells per input pixel (1 / stride).
        output_size: P or (P_h, P_w) bins.
        sampling_ratio: samples per bin along each axis (> 0; torchvision's
            adaptive ``ceil(roi / P)`` has no static shape and is not offered).
        aligned: half-pixel-corrected boxes (Detectron2) instead of the
            original convention (torchvision v1 ``fasterrcnn_resnet50_fpn``).
        clamp_outside: samples beyond the feature map read its border instead
            of counting as zero.

    Returns:
        (B, R, P_h, P_w, C) pooled features in the features' dtype.

    Example:
        >>> f = tf.reshape(tf.range(16, dtype=tf.float32), (1, 4, 4, 1))
        >>> out = multilevel_roi_align([f], tf.constant([[[0., 0, 2, 2]]]), tf.zeros((1, 1), tf.int32), [1.0], 1)
        >>> float(out[0, 0, 0, 0, 0])
        5.0
    """
    ph, pw = _as_pair(output_size)
    if int(sampling_ratio) <= 0:
        raise ValueError(f"sampling_ratio must be a positive int (static sample grid); received {sampling_ratio}.")
    s = int(sampling_ratio)
    boxes = tf.convert_to_tensor(boxes)
    _check_inputs(features, boxes, spatial_scales)
    dtype = features[0].dtype
    table, heights, widths, offsets, scales = _flatten_levels(features, spatial_scales)
    levels = tf.cast(levels, tf.int32)
    h, w, base, scale = _roi_geometry(boxes, levels, heights, widths, offsets, scales)
    boxes = tf.cast(boxes, tf.float32) * scale[..., None] - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:  # torchvision: "force malformed ROIs to be 1x1"
        rw, rh = tf.maximum(rw, 1.0), tf.maximum(rh, 1.0)
    ys, wys = _axis_samples(y1, rh, h, ph, s, clamp_outside)  # (N, ph, 2s), N = B * R
    xs, wxs = _axis_samples(x1, rw, w, pw, s, clamp_outside)  # (N, pw, 2s)
    pooled = _average_bins(table, tf.reshape(base, [-1]), tf.reshape(w, [-1]), ys, wys, xs, wxs, s)
    out_shape = tf.concat([tf.shape(boxes)[:2], [ph, pw, features[0].shape[-1]]], axis=0)
    pooled = tf.reshape(pooled, out_shape)
    return tf.cast(pooled, dtype)


def roi_align(features, boxes, output_size=7, spatial_scale: float = 1.0, sampling_ratio: int = 2,
              aligned: bool = False, clamp_outside: bool = False):
    """RoIAlign on one feature map (see :func:`multilevel_roi_align`).

    Args:
        features: (B, H, W, C).
        boxes: (B, R, 4) xyxy in input pixels (multiplied by ``spatial_scale``).

    Returns:
        (B, R, P_h, P_w, C).
    """
    boxes = tf.convert_to_tensor(boxes)
    levels = tf.zeros(tf.shape(boxes)[:2], tf.int32)
    return multilevel_roi_align([features], boxes, levels, [spatial_scale], output_size, sampling_ratio, aligned,
                                clamp_outside)


def roi_align_indexed(images, boxes, image_index, output_size=28, sampling_ratio: int = 2,
                      aligned: bool = False):
    """RoIAlign where each RoI reads its own map of a stack (torchvision ``roi_align`` with an index column).

    torchvision's ``project_masks_on_boxes`` crops each positive RoI's matched
    ground-truth mask this way to make Mask R-CNN's targets; unlike
    :func:`roi_align`, the RoIs of one image may each read a different map.

    Args:
        images: (N, H, W, C) maps of any dtype (e.g. uint8 masks; the gather
            reads that dtype, the average is float32).
        boxes: (R, 4) xyxy in the maps' pixels (spatial scale 1).
        image_index: (R,) int, the map each RoI reads.
        output_size: P or (P_h, P_w) bins.
        sampling_ratio: samples per bin along each axis (static; torchvision's
            adaptive ``ceil(roi / P)`` has no static shape).
        aligned: half-pixel-corrected boxes (Detectron2) instead of torchvision v1's convention.

    Returns:
        (R, P_h, P_w, C) float32.

    Example:
        >>> masks = tf.ones((2, 8, 8, 1), tf.uint8)
        >>> roi_align_indexed(masks, [[0., 0, 4, 4]], [1], 2).shape
        TensorShape([1, 2, 2, 1])
    """
    ph, pw = _as_pair(output_size)
    if int(sampling_ratio) <= 0:
        raise ValueError(f"sampling_ratio must be a positive int (static sample grid); received {sampling_ratio}.")
    s = int(sampling_ratio)
    images = tf.convert_to_tensor(images)
    boxes = tf.cast(boxes, tf.float32)
    if images.shape.rank != 4 or boxes.shape.rank != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"roi_align_indexed takes images (N, H, W, C) and boxes (R, 4); received "
                         f"{images.shape} and {boxes.shape}.")
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    table = tf.reshape(images, [-1, images.shape[-1]])
    x1, y1, x2, y2 = tf.unstack(boxes - (0.5 if aligned else 0.0), axis=-1)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:  # torchvision: "force malformed ROIs to be 1x1"
        rw, rh = tf.maximum(rw, 1.0), tf.maximum(rh, 1.0)
    ys, wys = _axis_samples(y1, rh, tf.fill(tf.shape(y1), height), ph, s)
    xs, wxs = _axis_samples(x1, rw, tf.fill(tf.shape(x1), width), pw, s)
    base = tf.cast(image_index, tf.int32) * height * width
    return _average_bins(table, base, tf.fill(tf.shape(base), width), ys, wys, xs, wxs, s)


def _round_half_away(x):
    """C's ``round`` (halves away from zero); ``tf.round`` rounds halves to even."""
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def _pool_bins(start, end, size, bins: int):
    """RoIPool bin bounds along one axis: (B, R, bins) int32 [lo, hi)."""
    length = tf.maximum(end - start + 1, 1)
    bin_size = tf.cast(length, tf.float32)[..., None] / bins
    p = tf.range(bins, dtype=tf.float32)
    lo = tf.cast(tf.floor(p * bin_size), tf.int32) + start[..., None]
    hi = tf.cast(tf.math.ceil((p + 1.0) * bin_size), tf.int32) + start[..., None]
    size = size[..., None]
    return tf.clip_by_value(lo, 0, size), tf.clip_by_value(hi, 0, size)


def multilevel_roi_pool(features: Sequence, boxes, levels, spatial_scales: Sequence[float], output_size=7):
    """RoIPool (max pooling over integer bins) where each RoI reads its own level.

    Args:
        features: list of L maps (B, H_l, W_l, C).
        boxes: (B, R, 4) xyxy in input pixels.
        levels: (B, R) int level index of each RoI.
        spatial_scales: L floats (1 / stride).
        output_size: P or (P_h, P_w).

    Returns:
        (B, R, P_h, P_w, C); empty bins are 0.
    """
    ph, pw = _as_pair(output_size)
    boxes = tf.convert_to_tensor(boxes)
    _check_inputs(features, boxes, spatial_scales)
    dtype = features[0].dtype
    table, heights, widths, offsets, scales = _flatten_levels(features, spatial_scales)
    h, w, base, scale = _roi_geometry(boxes, tf.cast(levels, tf.int32), heights, widths, offsets, scales)
    corners = tf.cast(_round_half_away(tf.cast(boxes, tf.float32) * scale[..., None]), tf.int32)
    x1, y1, x2, y2 = tf.unstack(corners, axis=-1)
    ylo, yhi = _pool_bins(y1, y2, h, ph)
    xlo, xhi = _pool_bins(x1, x2, w, pw)
    ylo, yhi = ylo[..., :, None], yhi[..., :, None]  # (B, R, ph, 1)
    xlo, xhi = xlo[..., None, :], xhi[..., None, :]  # (B, R, 1, pw)
    max_h = tf.maximum(tf.reduce_max(yhi - ylo), 1)
    max_w = tf.maximum(tf.reduce_max(xhi - xlo), 1)
    table = tf.cast(table, tf.float32)
    shape = tf.concat([tf.shape(boxes)[:2], [ph, pw, table.shape[-1]]], axis=0)
    lowest = tf.fill(shape, tf.float32.min)

    def body(t, best):
        y = ylo + t // max_w
        x = xlo + t % max_w
        inside = (y < yhi) & (x < xhi)
        index = base[..., None, None] + tf.where(inside, y * w[..., None, None] + x, 0)
        values = tf.gather(table, index)
        return t + 1, tf.where(inside[..., None], tf.maximum(best, values), best)

    _, best = tf.while_loop(lambda t, best: t < max_h * max_w, body, (tf.constant(0), lowest))
    empty = (yhi <= ylo) | (xhi <= xlo)
    return tf.cast(tf.where(empty[..., None], 0.0, best), dtype)


def roi_pool(features, boxes, output_size=7, spatial_scale: float = 1.0):
    """RoIPool on one feature map (see :func:`multilevel_roi_pool`): (B, H, W, C) + (B, R, 4) -> (B, R, P, P, C)."""
    boxes = tf.convert_to_tensor(boxes)
    levels = tf.zeros(tf.shape(boxes)[:2], tf.int32)
    return multilevel_roi_pool([features], boxes, levels, [spatial_scale], output_size)


def assign_levels(boxes, min_level: int, max_level: int, canonical_scale: float = CANONICAL_SCALE,
                  canonical_level: int = CANONICAL_LEVEL):
    """FPN level of each RoI, ``floor(k0 + log2(sqrt(wh) / s0))`` clamped (Lin et al. 2017, eq. (1)).

    Args:
        boxes: (..., 4) xyxy in input pixels.
        min_level, max_level: pyramid levels available (e.g. 2 and 5).
        canonical_scale, canonical_level: ``s0`` and ``k0`` (224 and 4).

    Returns:
        (...) int32 index ``level - min_level`` (0-based into the level list).

    Example:
        >>> assign_levels(tf.constant([[0., 0, 224, 224], [0, 0, 10, 10]]), 2, 5).numpy().tolist()
        [2, 0]
    """
    if min_level > max_level:
        raise ValueError(f"min_level ({min_level}) must be <= max_level ({max_level}).")
    boxes = tf.cast(boxes, tf.float32)
    area = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    # log2(0) = -inf floors to -inf and clamps to min_level, like torchvision.
    level = tf.floor(canonical_level + tf.math.log(tf.sqrt(area) / canonical_scale) / math.log(2.0) + LEVEL_EPS)
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    return tf.cast(level, tf.int32) - min_level
