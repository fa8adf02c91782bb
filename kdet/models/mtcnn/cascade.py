"""The MTCNN cascade as static-shape TensorFlow: pyramid -> PNet -> RNet -> ONet.

Every step works on a padded, score-sorted candidate set with a validity
mask, so a batch of same-size images runs as one XLA-compiled graph. The
pyramid scales are Python constants computed from the static image size.

Box arithmetic follows the ``mtcnn`` PyPI package 1.0 (the parity oracle),
which itself follows the original MATLAB code:

* PNet cell (row r, col c) of scale s spans ``(2c + 1, 2r + 1) .. (2c + 12, 2r + 12)``
  in the scaled image; regressions scale by 11 (its width) and the box
  is divided by s; calibration happens before NMS.
* RNet / ONet calibration: ``box += reg * (w, h, w, h)`` with
  ``w = x2 - x1 + 1`` (pixel-inclusive width).
* Crops: ``crop_and_resize`` of the normalised image with boxes normalised
  by (W, H) (not W - 1, H - 1) and zero (= grey) outside the image.
* ONet landmarks: ``x = w * l + x1 - 1`` with the ONet *input* box.

Two execution modes share this code (the ``xla`` argument of every stage):

* ``xla=True``: fully static shapes and the XLA-compilable re-implementations
  of ResizeArea / CropAndResize (``image_ops``); the candidate sets keep their
  static budgets. This is what ``jit_compile=True`` and export need.
* ``xla=False`` (plain ``tf.function`` graph): TensorFlow's own ResizeArea and
  CropAndResize kernels (the ones the ``mtcnn`` package calls) and every
  candidate set trimmed, after thresholding, to the largest number of valid
  candidates in the batch (still capped by the static budgets). Trimming drops
  only invalid candidates, which sort last, so both modes give the same
  detections; on CPU it avoids running RNet/ONet and the (N, N) NMS matrices
  on padding, and TensorFlow's oneDNN convolutions are several times faster
  than XLA:CPU's for these small-channel networks (see docs/models/mtcnn.md).
"""

from __future__ import annotations

import tensorflow as tf

from kdet.models.mtcnn.image_ops import area_resize, crop_and_resize
from kdet.models.mtcnn.networks import ONET_SIZE, PNET_CELL, PNET_STRIDE, RNET_SIZE
from kdet.models.mtcnn.nms import sort_candidates, suppress_sorted

#: Pixel normalisation of the original Caffe models: (x - 127.5) / 128.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125


def pyramid_scales(height: int, width: int, min_face_size: float, scale_factor: float,
                   max_pyramid_side: int) -> list[float]:
    """Scales of the image pyramid: ``m * scale_factor**k`` while the short side >= 12.

    Args:
        height, width: input image size in pixels.
        min_face_size: smallest face to find (pixels); ``m = 12 / min_face_size``.
        scale_factor: ratio between pyramid levels (0.709 ~ 1 / sqrt(2)).
        max_pyramid_side: bound on the long side of the largest level; a
            larger first level is scaled down to it (memory stays bounded on
            huge images, at the cost of missing faces smaller than
            ``min_face_size * long_side / (m * max_pyramid_side)``).

    Returns:
        list of float scales, largest first; empty when the image is smaller
        than 12 px.

    Example:
        >>> len(pyramid_scales(561, 561, 20, 0.709, 4096))
        10
    """
    m = PNET_CELL / float(min_face_size)
    m = min(m, max_pyramid_side / float(max(height, width)))
    scales = []
    k = 0
    while True:
        s = m * scale_factor**k
        if int(height * s) < PNET_CELL or int(width * s) < PNET_CELL:
            return scales
        scales.append(s)
        k += 1


def normalize(images):
    """Raw RGB 0..255 -> the networks' input range ((x - 127.5) / 128)."""
    return (tf.cast(images, tf.float32) - PIXEL_MEAN) * PIXEL_SCALE


def square(boxes):
    """Grows xyxy boxes (..., 4) to squares of side max(w, h) around their centre."""
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    w, h = x2 - x1, y2 - y1
    side = tf.maximum(w, h)
    nx1 = x1 + 0.5 * w - 0.5 * side
    ny1 = y1 + 0.5 * h - 0.5 * side
    return tf.stack([nx1, ny1, nx1 + side, ny1 + side], axis=-1)


def calibrate(boxes, reg):
    """Applies RNet/ONet regressions (..., 4) to xyxy boxes (pixel-inclusive sizes)."""
    w = boxes[..., 2] - boxes[..., 0] + 1.0
    h = boxes[..., 3] - boxes[..., 1] + 1.0
    return boxes + reg * tf.stack([w, h, w, h], axis=-1)


def budget(valid, cap: int, xla: bool):
    """How many sorted candidates to keep: ``cap`` (XLA), else min(cap, most valid in any image).

    Candidates are sorted valid-first, so in graph mode the trimmed set holds
    every valid candidate of every image and nothing is lost. At least one
    (then invalid) slot is kept: TensorFlow's Conv2D mishandles empty batches.
    """
    if xla:
        return cap
    most = tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1))
    return tf.minimum(cap, tf.maximum(most, 1))


def _num_candidates(t):
    """Static length of axis 1 when known, else the dynamic one (graph mode)."""
    return t.shape[1] if t.shape[1] is not None else tf.shape(t)[1]


def resize_level(x, size: tuple[int, int], xla: bool):
    """Area resize of (B, H, W, 3) to ``size``: TF's ResizeArea kernel, or its XLA twin."""
    if xla:
        return area_resize(x, size)
    if tuple(size) == (x.shape[1], x.shape[2]):
        return x
    return tf.image.resize(x, size, method="area")


def _pnet_level(pnet, x, scale: float, threshold: float, top_k: int, nms: float, greedy: bool,
                xla: bool):
    """PNet on one pyramid level -> per-level NMS'ed (scores, keep, boxes), each (B, k[, 4])."""
    height, width = x.shape[1], x.shape[2]
    scaled = resize_level(x, (int(height * scale), int(width * scale)), xla)
    reg, prob = pnet(scaled, training=False)
    out_h, out_w = reg.shape[1], reg.shape[2]
    score = tf.reshape(prob[..., 1], (-1, out_h * out_w))
    reg = tf.reshape(reg, (-1, out_h * out_w, 4))
    k = budget(score > threshold, min(out_h * out_w, top_k), xla)
    top, index = tf.math.top_k(score, k=k, sorted=True)
    reg = tf.gather(reg, index, batch_dims=1)
    row = tf.cast(index // out_w, tf.float32)
    col = tf.cast(index % out_w, tf.float32)
    cell = float(PNET_CELL - 1)  # the package's cell width: (2c + 12) - (2c + 1)
    x1 = PNET_STRIDE * col + 1.0
    y1 = PNET_STRIDE * row + 1.0
    corners = tf.stack([x1, y1, x1 + cell, y1 + cell], axis=-1)
    boxes = (corners + reg * cell) / scale
    valid = top > threshold
    keep = suppress_sorted(boxes, valid, nms, "union", greedy)
    return top, keep, boxes


def pnet_stage(pnet, x, scales, *, threshold: float, nms_per_scale: float, nms_cross_scale: float,
               top_k_per_scale: int, max_candidates: int, greedy: bool, xla: bool = True):
    """Proposals of the whole pyramid.

    Args:
        pnet: PNet model.
        x: (B, H, W, 3) normalised images, static H and W.
        scales: pyramid scales (non-empty).
        threshold, nms_per_scale, nms_cross_scale: as in the paper / package.
        top_k_per_scale: best cells per level entering the per-level NMS, and
            best per-level survivors entering the cross-scale NMS.
        max_candidates: proposals passed on to RNet.
        greedy: NMS rule (see ``nms.suppress_sorted``).
        xla: static XLA-compilable mode, or graph mode (see the module docstring).

    Returns:
        (scores (B, K), valid (B, K), square boxes (B, K, 4) xyxy input pixels);
        K = max_candidates (XLA) or at most that (graph mode).
    """
    levels = [_pnet_level(pnet, x, s, threshold, top_k_per_scale, nms_per_scale, greedy, xla)
              for s in scales]
    scores = tf.concat([lv[0] for lv in levels], axis=1)
    keep = tf.concat([lv[1] for lv in levels], axis=1)
    boxes = tf.concat([lv[2] for lv in levels], axis=1)
    scores, keep, boxes = sort_candidates(scores, keep, boxes,
                                          k=budget(keep, top_k_per_scale, xla))
    keep = suppress_sorted(boxes, keep, nms_cross_scale, "union", greedy)
    scores, keep, boxes = sort_candidates(scores, keep, boxes, k=budget(keep, max_candidates, xla))
    return scores, keep, square(boxes)


def crop_patches(x, boxes, size: int, xla: bool = True):
    """(B, K, 4) xyxy pixel boxes -> (B*K, size, size, 3) crops of the normalised images.

    ``xla=False`` uses TensorFlow's CropAndResize kernel (the package's), else
    its XLA-compilable twin.
    """
    height, width = x.shape[1], x.shape[2]
    x1, y1, x2, y2 = tf.unstack(tf.reshape(boxes, (-1, 4)), axis=-1)
    # The package normalises by (W, H), not (W - 1, H - 1): kept for parity.
    norm = tf.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=-1)
    index = tf.repeat(tf.range(tf.shape(boxes)[0]), _num_candidates(boxes))
    if xla:
        return crop_and_resize(x, norm, index, (size, size))
    return tf.image.crop_and_resize(x, norm, index, (size, size))


def rnet_stage(rnet, x, boxes, valid, *, threshold: float, nms: float, max_candidates: int,
               greedy: bool, xla: bool = True):
    """Refines proposals with RNet -> (scores, valid, square boxes), K <= max_candidates."""
    k = _num_candidates(boxes)
    reg, prob = rnet(crop_patches(x, boxes, RNET_SIZE, xla), training=False)
    scores = tf.reshape(prob[:, 1], (-1, k))
    boxes = calibrate(boxes, tf.reshape(reg, (-1, k, 4)))
    valid = valid & (scores > threshold)
    scores, valid, boxes = sort_candidates(scores, valid, boxes, k=budget(valid, k, xla))
    valid = suppress_sorted(boxes, valid, nms, "union", greedy)
    scores, valid, boxes = sort_candidates(scores, valid, boxes,
                                           k=budget(valid, max_candidates, xla))
    return scores, valid, square(boxes)


def onet_stage(onet, x, boxes, valid, *, threshold: float, nms: float, max_detections: int,
               greedy: bool, xla: bool = True):
    """Final ONet stage -> (scores, valid, boxes (B, K, 4), landmarks (B, K, 5, 2)), K <= max_detections."""
    k = _num_candidates(boxes)
    reg, marks, prob = onet(crop_patches(x, boxes, ONET_SIZE, xla), training=False)
    scores = tf.reshape(prob[:, 1], (-1, k))
    marks = tf.reshape(marks, (-1, k, 2, 5))  # (x1..x5, y1..y5)
    size = boxes[..., 2:] - boxes[..., :2] + 1.0                     # (B, K, 2): w, h
    landmarks = tf.transpose(marks, (0, 1, 3, 2)) * size[:, :, None, :] + (
        boxes[:, :, None, :2] - 1.0)
    boxes = calibrate(boxes, tf.reshape(reg, (-1, k, 4)))
    valid = valid & (scores > threshold)
    flat_marks = tf.reshape(landmarks, (-1, k, 10))
    scores, valid, boxes, flat_marks = sort_candidates(scores, valid, boxes, flat_marks,
                                                       k=budget(valid, k, xla))
    valid = suppress_sorted(boxes, valid, nms, "min", greedy)
    scores, valid, boxes, flat_marks = sort_candidates(scores, valid, boxes, flat_marks,
                                                       k=budget(valid, max_detections, xla))
    marks = tf.reshape(flat_marks, (tf.shape(boxes)[0], _num_candidates(boxes), 5, 2))
    return scores, valid, boxes, marks


def pad_candidates(k: int, *tensors):
    """Pads (B, n, ...) tensors with zeros along axis 1 to length k (n <= k, n may be dynamic)."""
    out = []
    for t in tensors:
        n = t.shape[1]
        if n is not None and n >= k:
            out.append(t)
            continue
        amount = k - (n if n is not None else tf.shape(t)[1])
        padded = tf.pad(t, [[0, 0], [0, amount]] + [[0, 0]] * (t.shape.rank - 2))
        out.append(tf.ensure_shape(padded, [t.shape[0], k] + t.shape[2:].as_list()))
    return out


def empty_output(batch, k: int) -> dict:
    """The output dict with no detections (images smaller than 12 px)."""
    return {
        "boxes": tf.zeros((batch, k, 4)),
        "scores": tf.zeros((batch, k)),
        "labels": -tf.ones((batch, k), tf.int32),
        "num_detections": tf.zeros((batch,), tf.int32),
        "landmarks": tf.zeros((batch, k, 5, 2)),
    }


def clip_to_image(boxes, height: int, width: int):
    """Clips xyxy boxes to [0, W - 1] x [0, H - 1] like the package's ``limit_bboxes``."""
    hi = tf.constant([width - 1, height - 1, width - 1, height - 1], tf.float32)
    return tf.minimum(tf.maximum(boxes, 0.0), hi)
