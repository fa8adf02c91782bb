"""Suppression of score-sorted candidates from their pairwise overlap: greedy NMS and a one-step rule.

The building blocks of non-maximum suppression on candidate sets that are
already sorted by score (best first) and carry a validity mask, so every
shape can stay static (XLA) or be trimmed to the valid candidates (graph
mode):

* ``sort_by_score``: sorts candidates, invalid ones last, and keeps the best k;
* ``ranked_conflicts``: the conflict matrix of an overlap matrix
  (``conflicts[i, j]``: candidate i, ranked before j, would suppress j);
* ``greedy_keep`` / ``any_higher_keep``: the keep mask of either rule below;
* ``suppress_sorted``: the keep mask of sorted boxes, with the overlap of
  ``kdet.ops.boxes.iou`` ("iou", or "iomin" for MTCNN's last stage).

Two rules:

* greedy NMS (``greedy_keep``): a candidate is removed only by a *kept*
  candidate ranked before it. ``keep[j] = valid[j] and not any(keep[i] and
  conflicts[i, j])`` defines it position by position; it is the unique fixed
  point of that vectorised update, reached by iterating from ``valid`` (each
  iteration settles at least one more position; the longest suppression chain
  bounds their number, a handful in practice). Exact, not approximate.
* "suppressed by any higher" (``any_higher_keep``): a candidate is removed if
  *any* valid candidate ranked before it conflicts with it, kept or not. One
  step of the same update; this is the rule of the ``mtcnn`` PyPI package 1.0
  (``mtcnn.utils.bboxes.nms``), kept for MTCNN's parity with it.

``kdet.ops.nms.combined_nms`` runs the same greedy fixed point inside its
tiles, with per-class caps.
"""

from __future__ import annotations

import tensorflow as tf

from kdet.ops.boxes import iou

#: Overlaps of ``kdet.ops.boxes.iou`` that suppression accepts.
SUPPRESSION_MODES = ("iou", "iomin")


def sort_by_score(scores, valid, *tensors, k=None):
    """Sorts candidates by descending score, invalid ones last, and keeps the best ``k``.

    Args:
        scores: (B, N) float scores >= 0 (probabilities).
        valid: (B, N) bool mask.
        *tensors: (B, N, ...) tensors gathered in the same order.
        k: how many to keep (default N; clamped to N). A scalar int32 tensor is
            accepted outside XLA (dynamic trimming in graph mode).

    Returns:
        ``(scores (B, k), valid (B, k), *tensors (B, k, ...))``, best first; ties
        keep the lower index first.

    Example:
        >>> s, v = sort_by_score(tf.constant([[0.2, 0.9, 0.5]]), tf.constant([[True, False, True]]))
        >>> s.numpy(), v.numpy()
        (array([[0.5, 0.2, 0.9]], dtype=float32), array([[ True,  True, False]]))
    """
    n = scores.shape[-1]
    if n is None or tf.is_tensor(k):
        size = tf.shape(scores)[-1]
        k = size if k is None else tf.minimum(k, size)
    else:
        k = n if k is None else min(int(k), n)
    # Scores are >= 0, so -1 - score ranks every invalid candidate after every valid one.
    masked = tf.where(valid, scores, -1.0 - tf.ones_like(scores))
    top, order = tf.math.top_k(masked, k=k, sorted=True)
    gathered = [tf.gather(t, order, batch_dims=1) for t in tensors]
    return (tf.gather(scores, order, batch_dims=1), top >= 0.0, *gathered)


def ranked_conflicts(overlap, threshold: float):
    """Conflict matrix of sorted candidates: ``overlap > threshold`` and i ranked before j.

    Args:
        overlap: (B, N, N) pairwise overlap of candidates sorted best first.
        threshold: overlap strictly above which the later candidate is suppressed.

    Returns:
        (B, N, N) float32 0/1; ``[b, i, j]`` is 1 when candidate i may suppress
        candidate j (float, so that suppressors are counted with a matmul).

    Example:
        >>> ranked_conflicts(tf.ones((1, 2, 2)), 0.5).numpy()
        array([[[0., 1.],
                [0., 0.]]], dtype=float32)
    """
    n = overlap.shape[-1] if overlap.shape[-1] is not None else tf.shape(overlap)[-1]
    rank = tf.range(n)
    earlier = rank[:, None] < rank[None, :]  # strictly upper triangle
    return tf.cast((overlap > threshold) & earlier, tf.float32)


def _suppression_step(conflicts, valid, keep):
    """``valid`` minus the candidates in conflict with a member of ``keep``."""
    # A matmul counts the kept suppressors of each candidate faster than a masked
    # reduction over (B, N, N); the counts are small integers, exact in float32.
    hits = tf.linalg.matvec(conflicts, tf.cast(keep, tf.float32), transpose_a=True)
    return valid & (hits == 0.0)


def any_higher_keep(conflicts, valid):
    """Keep mask where any valid, earlier conflicting candidate suppresses (the ``mtcnn`` package's rule).

    Args:
        conflicts: (B, N, N) 0/1 matrix from ``ranked_conflicts``.
        valid: (B, N) bool mask; invalid candidates neither survive nor suppress.

    Returns:
        (B, N) bool keep mask, a subset of ``valid``.
    """
    valid = tf.cast(valid, tf.bool)
    return _suppression_step(conflicts, valid, valid)


def greedy_keep(conflicts, valid):
    """Keep mask of greedy NMS: only kept, earlier candidates suppress.

    Args:
        conflicts: (B, N, N) 0/1 matrix from ``ranked_conflicts`` (strictly upper
            triangular).
        valid: (B, N) bool mask; invalid candidates neither survive nor suppress.

    Returns:
        (B, N) bool keep mask, a subset of ``valid``: the same selection as
        ``tf.image.non_max_suppression`` on the sorted candidates.
    """
    valid = tf.cast(valid, tf.bool)
    n = conflicts.shape[-1] if conflicts.shape[-1] is not None else tf.shape(conflicts)[-1]
    keep = _suppression_step(conflicts, valid, valid)
    # keep[j] depends only on keep[i < j]: iterating from `valid` reaches the unique fixed point.
    _, keep = tf.while_loop(
        lambda prev, cur: tf.reduce_any(prev != cur),
        lambda prev, cur: (cur, _suppression_step(conflicts, valid, cur)),
        (valid, keep), maximum_iterations=n)
    return keep


def suppress_sorted(boxes, valid, threshold: float, mode: str = "iou", greedy: bool = True):
    """Keep mask of NMS over candidates already sorted by descending score.

    Args:
        boxes: (B, N, 4) xyxy boxes, sorted by score (best first) per row.
        valid: (B, N) bool, False for padding / below-threshold candidates.
        threshold: a candidate is suppressed when its overlap with an earlier
            (kept, if ``greedy``) candidate is strictly greater than this.
        mode: "iou", or "iomin" (intersection over the smaller area), as in
            ``kdet.ops.boxes.iou``; areas are ``(x2 - x1) * (y2 - y1)``, without
            the "+1" of pixel-inclusive conventions.
        greedy: greedy NMS (True) or the ``mtcnn`` package's rule (False:
            suppressed by any earlier valid candidate, kept or not).

    Returns:
        (B, N) bool keep mask (a subset of ``valid``).

    Example:
        >>> boxes = tf.constant([[[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]])
        >>> suppress_sorted(boxes, tf.ones((1, 3), bool), 0.5).numpy()
        array([[ True, False,  True]])
    """
    if mode not in SUPPRESSION_MODES:
        raise ValueError(f"mode must be one of {SUPPRESSION_MODES}; received {mode!r}.")
    valid = tf.cast(valid, tf.bool)
    if boxes.shape[-2] == 0:
        return valid
    conflicts = ranked_conflicts(iou(boxes, boxes, mode), threshold)
    return greedy_keep(conflicts, valid) if greedy else any_higher_keep(conflicts, valid)

