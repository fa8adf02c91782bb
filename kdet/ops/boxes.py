"""Box geometry: format conversion, area, clipping and the IoU family.

All functions are pure TensorFlow, XLA-safe, and broadcast over leading
dimensions. Format conversion delegates to ``keras.utils.bounding_boxes``;
internally kdet works in ``xyxy`` absolute pixels.
"""

from __future__ import annotations

import math

import tensorflow as tf
from keras.utils import bounding_boxes as keras_boxes

from kdet.validation import check_box_format

IOU_MODES = ("iou", "giou", "diou", "ciou")
#: Modes of ``iou`` / ``aligned_iou``: the IoU family plus "iomin", intersection over the
#: smaller area (MTCNN's "Min" overlap, from the original MATLAB ``nms.m``), which is an
#: overlap for suppression rather than a regression loss (hence not in IOU_MODES).
OVERLAP_MODES = IOU_MODES + ("iomin",)
# Smallest width/height (pixels, or unit-image units for rel_* formats) seen by
# CIoU's aspect-ratio term; see _iou_terms.
_ASPECT_FLOOR = 1e-3


def convert_format(boxes, source: str, target: str, height=None, width=None):
    """Converts boxes between Keras bounding-box formats (a validated wrapper).

    Args:
        boxes: (..., 4) tensor.
        source, target: formats of ``keras.utils.bounding_boxes``.
        height, width: image size, needed for ``rel_*`` formats.

    Returns:
        (..., 4) float32 tensor in ``target`` format.
    """
    source, target = check_box_format(source), check_box_format(target)
    # tf.cast, not convert_to_tensor(dtype=...): the latter refuses float16/float64
    # tensors (mixed-precision heads), which must be accepted and promoted.
    boxes = tf.cast(boxes, tf.float32)
    if source == target:
        return boxes
    if (source.startswith("rel_") or target.startswith("rel_")) and (height is None or width is None):
        raise ValueError(
            f"Converting {source!r} -> {target!r} needs the image height and width; received "
            f"height={height}, width={width}."
        )
    if source.startswith("rel_") and target.startswith("rel_"):
        # Keras refuses rel -> rel; go through absolute xyxy.
        boxes = keras_boxes.convert_format(boxes, source, "xyxy", height=height, width=width)
        source = "xyxy"
    return keras_boxes.convert_format(boxes, source, target, height=height, width=width)


def to_xyxy(boxes, bounding_box_format: str, height=None, width=None):
    """Converts ``boxes`` from ``bounding_box_format`` to xyxy."""
    return convert_format(boxes, bounding_box_format, "xyxy", height=height, width=width)


def from_xyxy(boxes, bounding_box_format: str, height=None, width=None):
    """Converts xyxy ``boxes`` to ``bounding_box_format``."""
    return convert_format(boxes, "xyxy", bounding_box_format, height=height, width=width)


def area(boxes):
    """Area of xyxy boxes (..., 4) -> (...); degenerate boxes have area 0."""
    boxes = tf.convert_to_tensor(boxes)
    w = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def clip_boxes(boxes, height, width):
    """Clips xyxy boxes (..., 4) to the image [0, width] x [0, height].

    ``height`` / ``width`` are scalars, or (B,) per image for boxes (B, ..., 4).
    """
    boxes = tf.convert_to_tensor(boxes)
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    if height.shape.rank:  # per image: (B,) -> (B, 1, ..., 1) against (B, ...) coordinates
        extra = [1] * (boxes.shape.rank - 2)
        height = tf.reshape(height, [-1, *extra])
        width = tf.reshape(width, [-1, *extra])
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return tf.stack(
        [tf.clip_by_value(x1, 0.0, width), tf.clip_by_value(y1, 0.0, height),
         tf.clip_by_value(x2, 0.0, width), tf.clip_by_value(y2, 0.0, height)],
        axis=-1,
    )


def _iou_terms(b1, b2, mode):
    """IoU family on broadcast-compatible xyxy boxes; returns (...)."""
    x11, y11, x12, y12 = tf.unstack(b1, axis=-1)
    x21, y21, x22, y22 = tf.unstack(b2, axis=-1)
    w1, h1 = tf.maximum(x12 - x11, 0.0), tf.maximum(y12 - y11, 0.0)
    w2, h2 = tf.maximum(x22 - x21, 0.0), tf.maximum(y22 - y21, 0.0)
    iw = tf.maximum(tf.minimum(x12, x22) - tf.maximum(x11, x21), 0.0)
    ih = tf.maximum(tf.minimum(y12, y22) - tf.maximum(y11, y21), 0.0)
    inter = iw * ih
    area1, area2 = w1 * h1, w2 * h2
    if mode == "iomin":
        return tf.math.divide_no_nan(inter, tf.minimum(area1, area2))
    union = area1 + area2 - inter
    iou = tf.math.divide_no_nan(inter, union)
    if mode == "iou":
        return iou
    # Smallest enclosing box.
    cw = tf.maximum(x12, x22) - tf.minimum(x11, x21)
    ch = tf.maximum(y12, y22) - tf.minimum(y11, y21)
    if mode == "giou":  # Rezatofighi et al. 2019, eq. (1)
        enclose = cw * ch
        return iou - tf.math.divide_no_nan(enclose - union, enclose)
    # DIoU / CIoU: Zheng et al. 2020, eqs. (6) and (9).
    diag2 = cw**2 + ch**2
    centre2 = ((x11 + x12 - x21 - x22) ** 2 + (y11 + y12 - y21 - y22) ** 2) / 4.0
    diou = iou - tf.math.divide_no_nan(centre2, diag2)
    if mode == "diou":
        return diou
    # Floor w and h in the aspect term: d atan(w / h) / dw = h / (w^2 + h^2) is then
    # at most 1 / (2 * floor), where w / (h + 1e-9) gave ~1e9 (inf once cast to a
    # float16 head) for an empty predicted box.
    v = (4.0 / math.pi**2) * tf.square(
        tf.atan(tf.maximum(w2, _ASPECT_FLOOR) / tf.maximum(h2, _ASPECT_FLOOR))
        - tf.atan(tf.maximum(w1, _ASPECT_FLOOR) / tf.maximum(h1, _ASPECT_FLOOR))
    )
    alpha = tf.stop_gradient(tf.math.divide_no_nan(v, 1.0 - iou + v))
    return diou - alpha * v


def _prepare(boxes1, boxes2, mode, bounding_box_format):
    if mode not in OVERLAP_MODES:
        raise ValueError(f"mode must be one of {OVERLAP_MODES}; received {mode!r}.")
    fmt = check_box_format(bounding_box_format)
    if fmt.startswith("rel_"):
        # Relative formats: IoU is scale-invariant only for iou/giou/diou/iomin; use a
        # unit image, which keeps every mode consistent for rel_xyxy-type boxes.
        b1 = convert_format(boxes1, fmt, "xyxy", height=1.0, width=1.0)
        b2 = convert_format(boxes2, fmt, "xyxy", height=1.0, width=1.0)
    else:
        b1, b2 = to_xyxy(boxes1, fmt), to_xyxy(boxes2, fmt)
    if b1.shape.rank is not None and (b1.shape.rank < 1 or b1.shape[-1] != 4):
        raise ValueError(f"boxes1 must have a last dimension of 4; received shape {b1.shape}.")
    if b2.shape.rank is not None and (b2.shape.rank < 1 or b2.shape[-1] != 4):
        raise ValueError(f"boxes2 must have a last dimension of 4; received shape {b2.shape}.")
    return b1, b2


def iou(boxes1, boxes2, mode: str = "iou", bounding_box_format: str = "xyxy"):
    """Pairwise IoU, GIoU, DIoU, CIoU or intersection over the smaller area.

    Args:
        boxes1: (..., N, 4) boxes in ``bounding_box_format``.
        boxes2: (..., M, 4) boxes; leading dims broadcast with ``boxes1``.
        mode: "iou" | "giou" (Rezatofighi 2019) | "diou" | "ciou" (Zheng 2020) |
            "iomin" (intersection / min(area1, area2), MTCNN's "Min" overlap:
            1 when one box contains the other).
        bounding_box_format: any ``keras.utils.bounding_boxes`` format.

    Returns:
        (..., N, M) float32. Boxes of zero area give IoU 0 (never NaN).

    Example:
        >>> float(iou([[0., 0, 2, 2]], [[1., 0, 3, 2]])[0, 0])  # doctest: +ELLIPSIS
        0.333...
    """
    b1, b2 = _prepare(boxes1, boxes2, mode, bounding_box_format)
    return _iou_terms(b1[..., :, None, :], b2[..., None, :, :], mode)


def aligned_iou(boxes1, boxes2, mode: str = "iou", bounding_box_format: str = "xyxy"):
    """Element-wise overlap (any ``OVERLAP_MODES`` mode) of matching boxes: (..., 4) x (..., 4) -> (...)."""
    b1, b2 = _prepare(boxes1, boxes2, mode, bounding_box_format)
    return _iou_terms(b1, b2, mode)


def iou_numpy(boxes1, boxes2, pixel_inclusive: bool = False):
    """IoU of xyxy boxes on the host (NumPy), broadcast over leading dims: (..., 4) x (..., 4) -> (...).

    The NumPy twin of :func:`aligned_iou` for code that runs outside the graph
    (data generation, crop labelling, the VOC metric). ``pixel_inclusive``
    adds the PASCAL VOC devkit's +1 to widths and heights. A pair whose union
    is empty has IoU 0.
    """
    import numpy as np

    a, b = np.asarray(boxes1, np.float64), np.asarray(boxes2, np.float64)
    one = 1.0 if pixel_inclusive else 0.0
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one, 0.0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one, 0.0)
    inter = iw * ih
    union = ((a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
             + (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one) - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)

