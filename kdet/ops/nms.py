"""Non-maximum suppression that compiles with XLA and converts to LiteRT builtins.

``tf.image.combined_non_max_suppression`` is a CPU-only kernel: it does not
compile with ``jit_compile=True`` and needs Flex ops in LiteRT. This module
re-implements its semantics with static-shape TensorFlow ops only (top-k,
gathers, reductions, while loops; kernels in :mod:`kdet.ops._nms_core`), so
one graph runs eagerly, under XLA and in a builtin-only ``.tflite`` file.

How hard NMS works here:

1. Candidates. Every (box, class) pair with ``score > score_threshold`` is a
   candidate. A trained detector leaves few of them, so the usual path takes
   them all at once, in flat-index order (``box * C + class``) and without
   sorting: one top-k on the negated indices of the rows holding any (or
   every row, for up to ``ALL_ROWS`` boxes), then each row's two best
   classes. A batch without candidates stops before any top-k, and one
   with more candidates than that path holds (dense scores) is visited in
   global order instead (score descending, then flat index) in rounds of
   ``ROUND_SIZE``, from an exact two-stage top-k (best rows by their best
   class score, then best pairs among those rows).
2. Greedy selection, as TensorFlow's kernel does it: the best remaining
   candidate is selected (equal scores: lowest flat index), then the
   candidates of its class that overlap it by IoU ``> iou_threshold`` are
   removed (all of its class once the class holds
   ``max_output_size_per_class``); repeat until no candidate remains or
   ``max_total_size`` are selected. A step is a few reductions over the
   candidates, and there are as many steps as selections.
3. Later rounds first remove the candidates that overlap a box selected
   earlier.

Whether a candidate survives depends only on higher-ranked candidates of its
class, so the first ``max_total_size`` selections in global order are exactly
TensorFlow's output (``pre_nms_top_k`` caps the candidates, for speed).
Classes do not interact because suppression is masked by label equality,
which is the class-offset trick without touching coordinates. TensorFlow's
combined kernel orders tied scores with an unstable heap, so tied results
may differ from it in order, never in content.

IoU is :func:`kdet.ops.boxes.aligned_iou` / :func:`kdet.ops.boxes.iou` (the
library's one IoU) on boxes whose corners were put in order first: its
operations (``iw * ih``, ``(area1 + area2) - inter``, one division, 0 for
empty boxes) give the same bits as ``IOU`` in TensorFlow's
non_max_suppression_op.cc, so thresholds flip at the same values.

Inside a ``tf.function`` (Keras ``predict`` included) the computation runs as
nested XLA-compiled functions (``jit_compile=True``): TensorFlow's graph
executor pays a per-operation cost at every step of the greedy loop, which
made graph mode 5-10x slower than TensorFlow's kernel. Each function
compiles once per input shape (about a second on a 2-core CPU); the rounds
for dense scores compile only when an input needs them. Eager calls run
operation by operation (nothing to compile), and LiteRT conversion inlines
the nested functions into builtin operators.

Reference: Bodla et al., "Soft-NMS -- Improving Object Detection With One
Line of Code", ICCV 2017 (Gaussian decay with TensorFlow's
``exp(-0.5 * iou**2 / sigma)`` convention).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from kdet.ops import _nms_core as core
from kdet.validation import check_positive_int, check_probability

# Buffer fields that combined_nms returns.
_OUTPUTS = ("orig", "scores", "classes", "count")
SINGLE_CALL = True


def _compiled(kernel, keys: tuple, settings: tuple):
    """``kernel(a, b, *settings)`` restricted to ``keys``, as one XLA-compiled function."""
    # The kernels' sizes are part of the key: a function traced with other
    # values (tests change them) must not be reused.
    return _compiled_for(kernel, keys, settings, (core.ROUND_SIZE, core.ALL_ROWS))


@functools.lru_cache(maxsize=None)
def _compiled_for(kernel, keys, settings, sizes):
    del sizes  # only part of the cache key
    return tf.function(lambda a, b: _pick(kernel(a, b, *settings), keys), jit_compile=True,
                       autograph=False)


def _pick(out, keys):
    return {key: out[key] for key in keys}


def _run(kernel, keys, a, b, *settings):
    """Runs an NMS kernel: eagerly op by op, or inside a graph as nested XLA functions.

    Returns the output fields ``keys``. Hard NMS is split in two launches:
    the one-round path, and the ordered rounds, compiled and run only when
    the first reports an image with too many candidates.
    """
    if tf.executing_eagerly():
        return _pick(kernel(a, b, *settings), keys)
    if kernel is not core.hard_nms:
        return _compiled(kernel, keys, settings)(a, b)
    if settings[-1]:  # pre_nms_top_k: one ordered round
        return _compiled(core.hard_rounds, keys, settings)(a, b)
    if SINGLE_CALL:
        return _compiled(core.hard_nms, keys, settings)(a, b)
    out = _compiled(core.hard_few, keys + ("complete",), settings[:-1])(a, b)
    complete = out.pop("complete")
    return tf.cond(complete, lambda: out,
                   lambda: _compiled(core.hard_rounds, keys, settings)(a, b))


def _check_sigma(soft_nms_sigma) -> float:
    try:
        sigma = float(soft_nms_sigma)
    except (TypeError, ValueError):
        raise ValueError(f"soft_nms_sigma must be a number >= 0; received {soft_nms_sigma!r}.") from None
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"soft_nms_sigma must be a finite number >= 0 (0 = hard NMS); "
                         f"received {soft_nms_sigma!r}.")
    return sigma


def _as_float(x, name):
    x = tf.convert_to_tensor(x)
    if not (x.dtype.is_floating or x.dtype.is_integer):
        raise ValueError(f"{name} must be a float tensor; received dtype {x.dtype.name}.")
    return tf.cast(x, tf.float32)


def _check_finite(x, name):
    """Rejects NaN/inf in concrete (eager) inputs; graphs cannot raise ValueError."""
    if tf.executing_eagerly() and hasattr(x, "numpy"):
        bad = ~np.isfinite(x.numpy())
        if bad.any():
            raise ValueError(f"{name} contains {int(bad.sum())} NaN or inf value(s); "
                             f"expected finite numbers.")


def _check_inputs(boxes, scores):
    """Validates (boxes, scores); returns float32 (boxes, scores, per_class)."""
    boxes, scores = _as_float(boxes, "boxes"), _as_float(scores, "scores")
    if scores.shape.rank != 3:
        raise ValueError(f"scores must have shape (batch, num_boxes, num_classes); received "
                         f"shape {scores.shape}.")
    num_classes = scores.shape[-1]
    if num_classes is None or num_classes == 0:
        raise ValueError(f"scores must have a known, non-zero number of classes (last axis); "
                         f"received shape {scores.shape}.")
    if boxes.shape.rank not in (3, 4) or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (batch, num_boxes, 4) or (batch, num_boxes, "
                         f"num_classes, 4) in xyxy format; received shape {boxes.shape}.")
    if boxes.shape.rank == 4 and boxes.shape[2] not in (1, num_classes):
        raise ValueError(f"boxes of shape {boxes.shape} must have 1 or num_classes="
                         f"{num_classes} boxes per anchor (axis 2) to match scores {scores.shape}.")
    if not boxes.shape[:2].is_compatible_with(scores.shape[:2]):
        raise ValueError(f"boxes {boxes.shape} and scores {scores.shape} must agree on (batch, "
                         f"num_boxes).")
    _check_finite(boxes, "boxes")
    _check_finite(scores, "scores")
    per_class = boxes.shape.rank == 4 and boxes.shape[2] == num_classes and num_classes > 1
    if boxes.shape.rank == 4:
        boxes = tf.reshape(boxes, [tf.shape(boxes)[0], -1, 4])
    return boxes, scores, per_class


def combined_nms(boxes, scores, max_output_size_per_class: int, max_total_size: int,
                 iou_threshold: float = 0.5, score_threshold: float = 0.05,
                 soft_nms_sigma: float = 0.0, class_agnostic: bool = False,
                 pre_nms_top_k: int | None = None) -> dict:
    """Batched multi-class NMS returning kdet's padded detection dict.

    For ``soft_nms_sigma=0`` and ``class_agnostic=False`` the result equals
    ``tf.image.combined_non_max_suppression(yxyx_boxes, scores, ...,
    clip_boxes=False)`` (boxes, scores, classes, counts), but this version
    compiles with ``jit_compile=True``, converts to LiteRT builtin ops and
    runs at any batch size. A (box, class) pair is a candidate when its score
    is ``> score_threshold``; it is suppressed by a selected box of the same
    class with IoU ``> iou_threshold``.

    Args:
        boxes: (B, N, 4) boxes shared by all classes, or (B, N, C, 4) one box
            per class, ``xyxy`` (any corner order; non-positive areas never
            overlap).
        scores: (B, N, C) class probabilities.
        max_output_size_per_class: most detections kept per class and image.
        max_total_size: K, detections returned per image (padded).
        iou_threshold: IoU in [0, 1] above which a box is suppressed (ignored
            by soft-NMS, as in TensorFlow).
        score_threshold: scores in [0, 1]; only scores above it are kept.
        soft_nms_sigma: > 0 switches to Gaussian soft-NMS: every selection
            multiplies overlapping same-class scores by ``exp(-0.5 * iou**2 /
            sigma)`` (``tf.image.non_max_suppression_with_scores``); returned
            scores are the decayed ones.
        class_agnostic: if True a selected box suppresses (or decays)
            overlapping boxes of every class; each (box, class) pair still
            counts as one candidate and ``max_output_size_per_class`` still
            caps each label.
        pre_nms_top_k: if set, only the ``pre_nms_top_k`` best (box, class)
            pairs per image are considered (faster, bounded work, not exact);
            ``None`` is exact.

    Returns:
        ``{"boxes": (B, K, 4) float32 xyxy, "scores": (B, K) float32,
        "labels": (B, K) int32, "num_detections": (B,) int32}`` sorted by
        score, valid rows first; padded rows have boxes and scores 0 and
        label -1.

    Example:
        >>> out = combined_nms(tf.constant([[[0., 0, 10, 10], [1, 1, 10, 10]]]),
        ...                    tf.constant([[[0.9], [0.8]]]), 10, 10)
        >>> out["num_detections"].numpy()
        array([1], dtype=int32)
    """
    cap = check_positive_int("max_output_size_per_class", max_output_size_per_class)
    size = check_positive_int("max_total_size", max_total_size)
    iou_threshold = check_probability("iou_threshold", iou_threshold)
    score_threshold = check_probability("score_threshold", score_threshold)
    sigma = _check_sigma(soft_nms_sigma)
    top_k = None if pre_nms_top_k is None else check_positive_int("pre_nms_top_k", pre_nms_top_k)
    boxes, scores, per_class = _check_inputs(boxes, scores)
    with tf.name_scope("combined_nms"):
        if sigma > 0:
            buf = _run(core.soft_nms, _OUTPUTS, scores, boxes, per_class, score_threshold,
                       sigma, cap, size, bool(class_agnostic), top_k)
        else:
            buf = _run(core.hard_nms, _OUTPUTS, scores, boxes, per_class, score_threshold,
                       iou_threshold, cap, size, bool(class_agnostic), top_k)
    return {"boxes": buf["orig"], "scores": buf["scores"], "labels": buf["classes"],
            "num_detections": buf["count"]}


def batched_nms(boxes, scores, max_output_size: int, iou_threshold: float = 0.5,
                score_threshold: float = float("-inf")):
    """Single-class greedy NMS over a batch; XLA-safe and LiteRT-builtin.

    The primitive for RPN proposals, MTCNN stages and any one-class filter.
    Same selection as ``tf.image.non_max_suppression`` applied to each image
    (score ``> score_threshold``, suppression when IoU ``> iou_threshold``,
    ties broken by the lower index), with static output shapes.

    Args:
        boxes: (B, N, 4) ``xyxy`` boxes (any corner order).
        scores: (B, N) scores (any real numbers, e.g. logits).
        max_output_size: M, most boxes kept per image.
        iou_threshold: IoU in [0, 1] above which a lower-scored box is dropped.
        score_threshold: boxes with a score ``<=`` it are dropped (default
            keeps every finite score).

    Returns:
        ``(indices, num_valid)``: indices (B, M) int32 into the N boxes, in
        descending score order; rows past ``num_valid[b]`` are padded with 0
        (so ``tf.gather(boxes, indices, batch_dims=1)`` always works; mask with
        ``tf.range(M) < num_valid[:, None]``). num_valid (B,) int32.

    Example:
        >>> idx, n = batched_nms(tf.constant([[[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]]),
        ...                      tf.constant([[0.9, 0.8, 0.7]]), max_output_size=4)
        >>> idx.numpy(), n.numpy()
        (array([[0, 2, 0, 0]], dtype=int32), array([2], dtype=int32))
    """
    size = check_positive_int("max_output_size", max_output_size)
    iou_threshold = check_probability("iou_threshold", iou_threshold)
    try:
        score_threshold = float(score_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"score_threshold must be a number; received {score_threshold!r}.") from None
    if math.isnan(score_threshold):
        raise ValueError("score_threshold must be a number; received NaN.")
    boxes, scores = _as_float(boxes, "boxes"), _as_float(scores, "scores")
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (batch, num_boxes, 4) in xyxy format; received "
                         f"shape {boxes.shape}.")
    if scores.shape.rank != 2 or not scores.shape.is_compatible_with(boxes.shape[:2]):
        raise ValueError(f"scores must have shape (batch, num_boxes) = {boxes.shape[:2]}; "
                         f"received shape {scores.shape}.")
    _check_finite(boxes, "boxes")
    with tf.name_scope("batched_nms"):
        buf = _run(core.hard_nms, ("rows", "count"), scores[..., None], boxes, False,
                   score_threshold, iou_threshold, size, size, False, None)
    return buf["rows"], buf["count"]


def suppress_by_overlap(overlap, valid, overlap_threshold: float, greedy: bool = True):
    """NMS keep mask from a precomputed overlap matrix of score-sorted candidates.

    For callers with their own overlap measure (e.g. MTCNN's intersection over
    the smaller area) or candidates already sorted: the checked front of
    :mod:`kdet.ops.suppression` (``ranked_conflicts`` + ``greedy_keep`` /
    ``any_higher_keep``), kdet's one greedy suppression over an overlap matrix.
    Candidate i suppresses j when ``overlap[b, i, j] > overlap_threshold``.

    Args:
        overlap: (B, N, N) overlaps of candidates sorted best first (row i:
            candidate i against every candidate).
        valid: (B, N) bool, False for padding or rejected candidates.
        overlap_threshold: a finite number; overlaps strictly above it
            suppress.
        greedy: True for greedy NMS (a candidate is dropped only by an
            earlier *kept* one); False drops a candidate overlapping any
            earlier valid one (one step; the ``mtcnn`` package's rule).

    Returns:
        (B, N) bool keep mask, a subset of ``valid``.

    Example:
        >>> overlap = tf.constant([[[1.0, 0.6, 0.0], [0.6, 1.0, 0.6], [0.0, 0.6, 1.0]]])
        >>> suppress_by_overlap(overlap, tf.ones((1, 3), bool), 0.5).numpy()
        array([[ True, False,  True]])
    """
    try:
        threshold = float(overlap_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"overlap_threshold must be a number; received "
                         f"{overlap_threshold!r}.") from None
    if not math.isfinite(threshold):
        raise ValueError(f"overlap_threshold must be finite; received {overlap_threshold!r}.")
    overlap = _as_float(overlap, "overlap")
    valid = tf.cast(valid, tf.bool)
    if (overlap.shape.rank != 3 or valid.shape.rank != 2
            or not overlap.shape[1:].is_compatible_with([valid.shape[1], valid.shape[1]])
            or not overlap.shape[:1].is_compatible_with(valid.shape[:1])):
        raise ValueError(f"overlap must have shape (batch, N, N) and valid (batch, N); received "
                         f"{overlap.shape} and {valid.shape}.")
    from kdet.ops.suppression import any_higher_keep, greedy_keep, ranked_conflicts

    with tf.name_scope("suppress_by_overlap"):
        conflicts = ranked_conflicts(overlap, threshold)
        return greedy_keep(conflicts, valid) if greedy else any_higher_keep(conflicts, valid)
