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
  For CPU time, the graph mode also runs the networks on cache-sized runs of
  images or crops (``run_in_chunks``) and computes PNet's softmax only for the
  cells that can pass its threshold (``face_cells``); the scores stay
  bit-identical (tests/models/test_mtcnn.py checks both).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import tensorflow as tf

from kdet.models.mtcnn.image_ops import area_resize, crop_and_resize
from kdet.models.mtcnn.networks import ONET_SIZE, PNET_CELL, PNET_STRIDE, RNET_SIZE, logits_model
from kdet.ops.suppression import sort_by_score, suppress_sorted

#: Pixel normalisation of the original Caffe models: (x - 127.5) / 128.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125
#: Input pixels per network call in graph mode (see ``run_in_chunks``): 128 RNet crops,
#: 32 ONet crops, one 271x271 PNet level (largest activations 3-7 MB). Measured on a
#: 2-core CPU with benchmarks/mtcnn.py: CPU time is flat from about half to twice this.
RUN_PIXELS = 73728
#: Logit units below the threshold's logit down to which ``face_cells`` still scores a cell.
PREFILTER_SLACK = 1.0


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
    """PNet on one pyramid level -> per-level NMS'ed (scores, keep, boxes), each (B, k[, 4]).

    ``pnet``: the PNet model (XLA mode), or its ``PNetHead`` (graph mode).
    """
    height, width = x.shape[1], x.shape[2]
    scaled = resize_level(x, (int(height * scale), int(width * scale)), xla)
    if xla:
        reg, prob = pnet(scaled, training=False)
    else:
        reg, prob = pnet_outputs(pnet.net, scaled)
    reg, prob = tf.cast(reg, tf.float32), tf.cast(prob, tf.float32)  # a bfloat16 / float16 network's outputs
    out_h, out_w = reg.shape[1], reg.shape[2]
    cells, k = out_h * out_w, min(out_h * out_w, top_k)
    if xla or pnet.prob is None:
        score = tf.reshape(prob[..., 1], (-1, cells))
        top, index = tf.math.top_k(score, k=budget(score > threshold, k, xla))
    else:  # graph mode: `prob` holds PNet's logits, see face_cells
        top, index = face_cells(pnet.prob, tf.reshape(prob, (-1, cells, 2)), threshold, k)
    reg = tf.gather(tf.reshape(reg, (-1, cells, 4)), index, batch_dims=1)
    row = tf.cast(index // out_w, tf.float32)
    col = tf.cast(index % out_w, tf.float32)
    cell = float(PNET_CELL - 1)  # the package's cell width: (2c + 12) - (2c + 1)
    x1 = PNET_STRIDE * col + 1.0
    y1 = PNET_STRIDE * row + 1.0
    corners = tf.stack([x1, y1, x1 + cell, y1 + cell], axis=-1)
    boxes = (corners + reg * cell) / scale
    valid = top > threshold
    keep = suppress_sorted(boxes, valid, nms, "iou", greedy)
    return top, keep, boxes


class PNetHead(NamedTuple):
    """PNet for ``face_cells``: ``net`` -> [box_reg, logits] and its softmax ``prob``.

    ``prob`` is None for a PNet without a final Softmax layer named "prob": then
    ``net`` is the PNet itself, returning [box_reg, face probabilities].
    """

    net: keras.Model
    prob: keras.layers.Layer | None


def split_pnet(pnet: keras.Model) -> PNetHead:
    """``PNetHead`` of ``pnet``, split before its last layer if that is ``build_pnet``'s Softmax "prob"."""
    prob = next((layer for layer in pnet.layers if layer.name == "prob"), None)
    if not isinstance(prob, keras.layers.Softmax) or prob.output is not pnet.outputs[-1]:
        return PNetHead(pnet, None)
    return PNetHead(logits_model(pnet), prob)


def face_cells(prob, logits, threshold: float, k: int):
    """Graph mode's best PNet cells: ``top_k(prob(logits)[..., 1])`` on the cells above ``threshold``.

    Same scores, order and ties (to the lower index) as ranking every cell, but the
    softmax (PNet's own "prob" layer, hence bit-identical scores) runs only on cells
    whose logit margin ``l1 - l0`` comes near the threshold's logit. On CPU a
    two-class softmax costs more than that test, and in real images nearly every
    cell is far below the threshold.

    Args:
        prob: PNet's Softmax layer.
        logits: (B, N, 2) cell logits (background, face).
        threshold: face-probability threshold in (0, 1).
        k: most cells to return.

    Returns:
        ``(scores (B, k'), index (B, k'))``, best first, with ``k' = budget(...)``:
        every cell above the threshold in the image with the most, then placeholders
        (at or below the threshold: invalid).
    """
    n = logits.shape[1]
    # softmax(l)[1] > t implies l1 - l0 > logit(t) up to the float error of either side
    # (~1e-6 relative); a 0.1% lower threshold and PREFILTER_SLACK logit units cover it.
    t = threshold * (1.0 - 1e-3)
    maybe = logits[..., 1] - logits[..., 0] > math.log(t / (1.0 - t)) - PREFILTER_SLACK
    # The candidate cells in index order, so that top_k below breaks ties as on all cells.
    position = tf.cast(tf.range(n), tf.float32)
    _, cells = tf.math.top_k(tf.where(maybe, -position, -float(n)), k=budget(maybe, n, False))
    scores = prob(tf.gather(logits, cells, batch_dims=1))[..., 1]
    top, order = tf.math.top_k(scores, k=budget(scores > threshold, k, False))
    return top, tf.gather(cells, order, batch_dims=1)


def pnet_outputs(pnet, images) -> list:
    """Graph-mode PNet on one pyramid level (B, h, w, 3), ``RUN_PIXELS`` input pixels a run.

    Small levels run at once; see ``run_in_chunks`` for why large ones do not.
    """
    per_run = max(1, RUN_PIXELS // (images.shape[1] * images.shape[2]))
    if images.shape[0] is not None and images.shape[0] <= per_run:
        return pnet(images, training=False)
    return run_in_chunks(lambda part: pnet(part, training=False), (images,), per_run,
                         _output_specs(pnet, images.shape[1:]))


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
        greedy: NMS rule (see ``kdet.ops.suppression``).
        xla: static XLA-compilable mode, or graph mode (see the module docstring).

    Returns:
        (scores (B, K), valid (B, K), square boxes (B, K, 4) xyxy input pixels);
        K = max_candidates (XLA) or at most that (graph mode).
    """
    net = pnet if xla else split_pnet(pnet)
    levels = [_pnet_level(net, x, s, threshold, top_k_per_scale, nms_per_scale, greedy, xla)
              for s in scales]
    scores = tf.concat([lv[0] for lv in levels], axis=1)
    keep = tf.concat([lv[1] for lv in levels], axis=1)
    boxes = tf.concat([lv[2] for lv in levels], axis=1)
    scores, keep, boxes = sort_by_score(scores, keep, boxes, k=budget(keep, top_k_per_scale, xla))
    keep = suppress_sorted(boxes, keep, nms_cross_scale, "iou", greedy)
    scores, keep, boxes = sort_by_score(scores, keep, boxes, k=budget(keep, max_candidates, xla))
    return scores, keep, square(boxes)


def _crop_boxes(x, boxes):
    """(B, K, 4) xyxy pixel boxes -> (B*K, 4) normalised [y1, x1, y2, x2] and (B*K,) image index."""
    height, width = x.shape[1], x.shape[2]
    x1, y1, x2, y2 = tf.unstack(tf.reshape(boxes, (-1, 4)), axis=-1)
    # The package normalises by (W, H), not (W - 1, H - 1): kept for parity.
    norm = tf.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=-1)
    index = tf.repeat(tf.range(tf.shape(boxes)[0]), _num_candidates(boxes))
    return norm, index


def crop_patches(x, boxes, size: int, xla: bool = True):
    """(B, K, 4) xyxy pixel boxes -> (B*K, size, size, 3) crops of the normalised images (at once).

    ``xla=False`` uses TensorFlow's CropAndResize kernel (the package's), else
    its XLA-compilable twin.
    """
    norm, index = _crop_boxes(x, boxes)
    if xla:
        return crop_and_resize(x, norm, index, (size, size))
    return tf.image.crop_and_resize(x, norm, index, (size, size))


def crop_network(net, x, boxes, size: int, xla: bool = True) -> list:
    """Runs ``net`` (RNet / ONet) on the crops of (B, K, 4) boxes -> its outputs, each (B*K, ...).

    Graph mode crops and runs ``RUN_PIXELS // size**2`` boxes at a time (see ``run_in_chunks``);
    XLA mode makes one static-shape call.
    """
    if xla:
        outputs = net(crop_patches(x, boxes, size, xla=True), training=False)
    else:
        def crop_and_run(norm, index):
            return net(tf.image.crop_and_resize(x, norm, index, (size, size)), training=False)

        outputs = run_in_chunks(crop_and_run, _crop_boxes(x, boxes), max(1, RUN_PIXELS // size**2),
                                _output_specs(net, (size, size, 3)))
    return [tf.cast(o, tf.float32) for o in outputs]  # a bfloat16 / float16 network's outputs


def _output_specs(net: keras.Model, input_shape) -> list:
    """``tf.TensorSpec`` of each output of ``net`` for inputs (None, *input_shape)."""
    shapes = net.compute_output_shape((None, *input_shape))
    return [tf.TensorSpec(shape, t.dtype) for shape, t in zip(shapes, net.outputs)]


def run_in_chunks(fn, inputs, per_run: int, output_specs) -> list:
    """``fn`` on consecutive runs of ``per_run`` rows of ``inputs``, outputs concatenated.

    Why: one call of an MTCNN network on a whole batch streams every activation
    through main memory several times (RNet on the 1704 crops of 8 images of
    561x561 has a 92 MB first activation), and on CPU the PReLU, pooling and
    softmax passes over such tensors cost as much as the convolutions. Runs small
    enough for the caches cut the CPU time of the graph-mode cascade; they change
    no result, each row going through the same kernels alone.

    Args:
        fn: maps same-row slices of ``inputs`` to a list of tensors.
        inputs: tuple of tensors sharing their (possibly dynamic) first dimension.
        per_run: rows per call.
        output_specs: ``tf.TensorSpec`` of ``fn``'s outputs (first dimension None).

    Returns:
        list of ``fn``'s outputs over all rows, in row order.

    Example:
        >>> run_in_chunks(lambda t: [2.0 * t], (tf.ones((5, 2)),), 2,
        ...               [tf.TensorSpec((None, 2))])[0].shape
        TensorShape([5, 2])
    """
    steps = (tf.shape(inputs[0])[0] + per_run - 1) // per_run
    arrays = [tf.TensorArray(spec.dtype, size=steps, infer_shape=False, element_shape=spec.shape)
              for spec in output_specs]

    def body(i, *arrays):
        outs = fn(*(t[i * per_run:(i + 1) * per_run] for t in inputs))
        return (i + 1, *(a.write(i, o) for a, o in zip(arrays, outs)))

    # parallel_iterations=1: runs go one after the other, which is what keeps them in cache.
    done = tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), *arrays),
                         parallel_iterations=1)
    return [a.concat() for a in done[1:]]


def rnet_stage(rnet, x, boxes, valid, *, threshold: float, nms: float, max_candidates: int,
               greedy: bool, xla: bool = True):
    """Refines proposals with RNet -> (scores, valid, square boxes), K <= max_candidates."""
    k = _num_candidates(boxes)
    reg, prob = crop_network(rnet, x, boxes, RNET_SIZE, xla)
    scores = tf.reshape(prob[:, 1], (-1, k))
    boxes = calibrate(boxes, tf.reshape(reg, (-1, k, 4)))
    valid = valid & (scores > threshold)
    scores, valid, boxes = sort_by_score(scores, valid, boxes, k=budget(valid, k, xla))
    valid = suppress_sorted(boxes, valid, nms, "iou", greedy)
    scores, valid, boxes = sort_by_score(scores, valid, boxes, k=budget(valid, max_candidates, xla))
    return scores, valid, square(boxes)


def onet_stage(onet, x, boxes, valid, *, threshold: float, nms: float, max_detections: int,
               greedy: bool, xla: bool = True):
    """Final ONet stage -> (scores, valid, boxes (B, K, 4), landmarks (B, K, 5, 2)), K <= max_detections."""
    k = _num_candidates(boxes)
    reg, marks, prob = crop_network(onet, x, boxes, ONET_SIZE, xla)
    scores = tf.reshape(prob[:, 1], (-1, k))
    marks = tf.reshape(marks, (-1, k, 2, 5))  # (x1..x5, y1..y5)
    size = boxes[..., 2:] - boxes[..., :2] + 1.0                     # (B, K, 2): w, h
    landmarks = tf.transpose(marks, (0, 1, 3, 2)) * size[:, :, None, :] + (
        boxes[:, :, None, :2] - 1.0)
    boxes = calibrate(boxes, tf.reshape(reg, (-1, k, 4)))
    valid = valid & (scores > threshold)
    flat_marks = tf.reshape(landmarks, (-1, k, 10))
    scores, valid, boxes, flat_marks = sort_by_score(scores, valid, boxes, flat_marks,
                                                     k=budget(valid, k, xla))
    valid = suppress_sorted(boxes, valid, nms, "iomin", greedy)
    scores, valid, boxes, flat_marks = sort_by_score(scores, valid, boxes, flat_marks,
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
