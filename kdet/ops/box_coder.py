"""Box coders: boxes <-> regression targets relative to anchors.

Two conventions:

* Delta coding (R-CNN, SSD, RetinaNet, EfficientDet; Girshick et al. 2014,
  eq. (1)-(4)): ``t = ((cx - acx) / aw, (cy - acy) / ah, log(w / aw), log(h / ah))``
  divided by ``variances``. torchvision's ``weights=(10, 10, 5, 5)`` equal
  ``variances=(0.1, 0.1, 0.2, 0.2)``.
* YOLO coding (Redmon and Farhadi 2018, section 2.1): ``bx = (sigmoid(tx) + cx) * stride``,
  ``bw = pw * exp(tw)``, centre offsets in grid cells and log-scale sizes.

Boxes and anchors are xyxy absolute pixels; everything is XLA-safe.
"""

from __future__ import annotations

import math

import tensorflow as tf

# Clamp for log-scale deltas before exp (torchvision's BoxCoder: log(1000 / 16)).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _centre_size(boxes):
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    w, h = x2 - x1, y2 - y1
    return x1 + 0.5 * w, y1 + 0.5 * h, w, h


def _check_last_dim(name, tensor, size, at_least=False):
    """Raises a ValueError naming ``name`` unless its last dimension is ``size``."""
    last = tensor.shape[-1] if tensor.shape.rank else 0
    if tensor.shape.rank is not None and last is not None and (
        last < size if at_least else last != size
    ):
        need = f"at least {size}" if at_least else str(size)
        raise ValueError(f"{name} must have a last dimension of {need}; received shape {tensor.shape}.")
    return tensor


def _check_variances(variances):
    variances = tuple(float(v) for v in variances)
    if len(variances) != 4 or min(variances) <= 0:
        raise ValueError(f"variances must be 4 positive numbers; received {variances}.")
    return variances


def encode_deltas(boxes, anchors, variances=(1.0, 1.0, 1.0, 1.0)):
    """Encodes xyxy ``boxes`` against xyxy ``anchors`` as (dx, dy, dw, dh) deltas.

    Args:
        boxes: (..., 4) xyxy target boxes.
        anchors: (..., 4) xyxy anchors, broadcastable to ``boxes``.
        variances: divisors of the four deltas (SSD uses (0.1, 0.1, 0.2, 0.2)).

    Returns:
        (..., 4) float32 deltas. Degenerate boxes give finite values.

    Example:
        >>> encode_deltas([[2., 2, 6, 6]], [[0., 0, 4, 4]]).numpy().round(3).tolist()
        [[0.5, 0.5, 0.0, 0.0]]
    """
    vx, vy, vw, vh = _check_variances(variances)
    boxes = _check_last_dim("boxes", tf.cast(boxes, tf.float32), 4)
    anchors = _check_last_dim("anchors", tf.cast(anchors, tf.float32), 4)
    bx, by, bw, bh = _centre_size(boxes)
    ax, ay, aw, ah = _centre_size(anchors)
    aw = tf.maximum(aw, 1e-6)
    ah = tf.maximum(ah, 1e-6)
    dx = (bx - ax) / aw / vx
    dy = (by - ay) / ah / vy
    dw = tf.math.log(tf.maximum(bw, 1e-6) / aw) / vw
    dh = tf.math.log(tf.maximum(bh, 1e-6) / ah) / vh
    return tf.stack([dx, dy, dw, dh], axis=-1)


def decode_deltas(deltas, anchors, variances=(1.0, 1.0, 1.0, 1.0), scale_clamp=DEFAULT_SCALE_CLAMP):
    """Inverse of :func:`encode_deltas`: (..., 4) deltas + anchors -> xyxy boxes.

    ``scale_clamp`` bounds the log-size deltas before ``exp`` so untrained
    heads cannot overflow to inf.
    """
    vx, vy, vw, vh = _check_variances(variances)
    deltas = _check_last_dim("deltas", tf.cast(deltas, tf.float32), 4)
    anchors = _check_last_dim("anchors", tf.cast(anchors, tf.float32), 4)
    ax, ay, aw, ah = _centre_size(anchors)
    dx, dy, dw, dh = tf.unstack(deltas, axis=-1)
    dw = tf.minimum(dw * vw, scale_clamp)
    dh = tf.minimum(dh * vh, scale_clamp)
    cx = dx * vx * aw + ax
    cy = dy * vy * ah + ay
    w = tf.exp(dw) * aw
    h = tf.exp(dh) * ah
    return tf.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def encode_yolo(boxes, grid_xy, anchor_wh, stride, eps=1e-6, xy_scale=1.0):
    """Encodes xyxy boxes as YOLO targets (sigmoid-space xy offsets, log wh).

    Args:
        boxes: (..., 4) xyxy pixels.
        grid_xy: (..., 2) integer cell indices (column, row) of the responsible cell.
        anchor_wh: (..., 2) anchor width/height in pixels.
        stride: feature stride in pixels.
        xy_scale: Darknet's ``scale_x_y`` (see :func:`decode_yolo`).

    Returns:
        (..., 4): ``(sx, sy, tw, th)`` where ``sx = (cx / stride - col + (s - 1) / 2) / s``
        is the target of ``sigmoid(tx)`` (in [0, 1] for a centre the decoder
        can reach) and ``tw = log(w / pw)``.
    """
    boxes = _check_last_dim("boxes", tf.cast(boxes, tf.float32), 4)
    cx, cy, w, h = _centre_size(boxes)
    grid_xy = _check_last_dim("grid_xy", tf.cast(grid_xy, tf.float32), 2)
    anchor_wh = _check_last_dim("anchor_wh", tf.cast(anchor_wh, tf.float32), 2)
    stride = tf.cast(stride, tf.float32)
    shift = (xy_scale - 1.0) / 2.0
    sx = (cx / stride - grid_xy[..., 0] + shift) / xy_scale
    sy = (cy / stride - grid_xy[..., 1] + shift) / xy_scale
    tw = tf.math.log(tf.maximum(w, eps) / anchor_wh[..., 0])
    th = tf.math.log(tf.maximum(h, eps) / anchor_wh[..., 1])
    return tf.stack([sx, sy, tw, th], axis=-1)


def decode_yolo(raw, grid_xy, anchor_wh, stride, scale_clamp=DEFAULT_SCALE_CLAMP, xy_scale=1.0):
    """Decodes raw YOLO outputs (tx, ty, tw, th) into xyxy pixel boxes.

    ``bx = (sigmoid(tx) + col) * stride``, ``bw = pw * exp(tw)``
    (Redmon and Farhadi 2018, Figure 2). ``xy_scale`` s is Darknet's
    ``scale_x_y`` (YOLOv4 cfgs, src/yolo_layer.c): ``bx = (s * sigmoid(tx) -
    (s - 1) / 2 + col) * stride``, so that with s = 2 the centre can reach
    the neighbouring cells (YOLOv5's ``2 * sigmoid - 0.5``).
    """
    raw = _check_last_dim("raw", tf.cast(raw, tf.float32), 4, at_least=True)
    grid_xy = _check_last_dim("grid_xy", tf.cast(grid_xy, tf.float32), 2)
    anchor_wh = _check_last_dim("anchor_wh", tf.cast(anchor_wh, tf.float32), 2)
    stride = tf.cast(stride, tf.float32)
    shift = (xy_scale - 1.0) / 2.0
    cx = (xy_scale * tf.sigmoid(raw[..., 0]) - shift + grid_xy[..., 0]) * stride
    cy = (xy_scale * tf.sigmoid(raw[..., 1]) - shift + grid_xy[..., 1]) * stride
    w = tf.exp(tf.minimum(raw[..., 2], scale_clamp)) * anchor_wh[..., 0]
    h = tf.exp(tf.minimum(raw[..., 3], scale_clamp)) * anchor_wh[..., 1]
    return tf.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
