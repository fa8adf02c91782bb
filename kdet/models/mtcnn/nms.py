"""MTCNN's non-maximum suppression: "union" (IoU) and "min" overlap, XLA-safe.

MTCNN suppresses with two overlap measures: the usual IoU ("union") and
intersection over the smaller area ("min"), the latter for the final ONet
stage so that a small box inside a bigger one is removed (the original
MATLAB ``nms.m``). Both run here on fixed-size, score-sorted candidate sets
with a validity mask, so every shape is static.

Two suppression rules are offered:

* ``greedy=True``: classic greedy NMS (a box is removed only by a *kept*
  box of higher score), computed as the fixed point of one vectorised step
  (few iterations, each an (N, N) masked reduction; exact, not approximate).
* ``greedy=False``: the rule of the ``mtcnn`` PyPI package 1.0
  (``mtcnn.utils.bboxes.nms``): a box is removed if *any* higher-scoring
  box overlaps it, kept or not. One step of the same map.
"""

from __future__ import annotations

import tensorflow as tf

_EPS = 1e-12


def pairwise_overlap(boxes, method: str = "union"):
    """Pairwise overlap of xyxy boxes (..., N, 4) -> (..., N, N).

    Args:
        boxes: (..., N, 4) xyxy boxes.
        method: "union" (IoU) or "min" (intersection / smaller area).

    Returns:
        (..., N, N) float32 overlap matrix. Areas are ``(x2 - x1) * (y2 - y1)``
        without the "+1" of pixel-inclusive conventions, as in the ``mtcnn``
        package.
    """
    if method not in ("union", "min"):
        raise ValueError(f"method must be 'union' or 'min'; received {method!r}.")
    boxes = tf.cast(boxes, tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    area = (x2 - x1) * (y2 - y1)
    iw = tf.maximum(tf.minimum(x2[..., :, None], x2[..., None, :])
                    - tf.maximum(x1[..., :, None], x1[..., None, :]), 0.0)
    ih = tf.maximum(tf.minimum(y2[..., :, None], y2[..., None, :])
                    - tf.maximum(y1[..., :, None], y1[..., None, :]), 0.0)
    inter = iw * ih
    if method == "union":
        denom = area[..., :, None] + area[..., None, :] - inter
    else:
        denom = tf.minimum(area[..., :, None], area[..., None, :])
    # Degenerate boxes: the package divides by zero (nan/inf); treat as "no overlap" unless
    # the intersection is positive, which it cannot be for a zero-area box.
    return tf.where(denom > 0, inter / tf.maximum(denom, _EPS), 0.0)


def suppress_sorted(boxes, valid, iou_threshold: float, method: str = "union",
                    greedy: bool = True):
    """Keep-mask of NMS over candidates already sorted by descending score.

    Args:
        boxes: (B, N, 4) xyxy boxes, sorted by score (best first) per row.
        valid: (B, N) bool, False for padding / below-threshold candidates.
        iou_threshold: a box is suppressed when its overlap with a
            higher-scoring box is strictly greater than this.
        method: "union" or "min" (see ``pairwise_overlap``).
        greedy: classic greedy NMS (True) or the ``mtcnn`` package's rule
            (False: suppressed by any higher-scoring box, kept or not).

    Returns:
        (B, N) bool keep mask (a subset of ``valid``).

    Example:
        >>> boxes = tf.constant([[[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]])
        >>> suppress_sorted(boxes, tf.ones((1, 3), bool), 0.5).numpy()
        array([[ True, False,  True]])
    """
    valid = tf.cast(valid, tf.bool)
    n = boxes.shape[-2]
    if n == 0:
        return valid
    if n is None:  # graph mode (not XLA): a trimmed, dynamic-size candidate set
        n = tf.shape(boxes)[-2]
    overlap = pairwise_overlap(boxes, method)
    # earlier[i, j]: candidate i ranks before j (strictly upper triangle); the
    # suppressor i of j must be valid.
    rank = tf.range(n)
    earlier = rank[:, None] < rank[None, :]
    conflicts = (overlap > iou_threshold) & earlier & valid[..., :, None]

    def step(keep):
        suppressed = tf.reduce_any(conflicts & keep[..., :, None], axis=-2)
        return valid & ~suppressed

    keep = step(valid)
    if not greedy:
        return keep
    # Greedy NMS is the unique fixed point of `step` (keep[j] depends only on keep[i<j]);
    # iterating from `valid` reaches it after (longest suppression chain) steps, few in practice.
    def cond(prev, cur):
        return tf.reduce_any(prev != cur)

    def body(prev, cur):
        return cur, step(cur)

    _, keep = tf.while_loop(cond, body, (valid, keep), maximum_iterations=n)
    return keep


def sort_candidates(scores, valid, *tensors, k: int | None = None):
    """Sorts candidates by score (invalid last) and keeps the best ``k``.

    Args:
        scores: (B, N) float scores.
        valid: (B, N) bool mask.
        *tensors: (B, N, ...) tensors gathered along the same order.
        k: how many to keep (default N; clamped to N); a scalar int32 tensor
            is accepted outside XLA (dynamic trimming in graph mode).

    Returns:
        (scores (B, k), valid (B, k), *tensors (B, k, ...)), sorted best first.
    """
    n = scores.shape[-1]
    if n is None or tf.is_tensor(k):
        size = tf.shape(scores)[-1]
        k = size if k is None else tf.minimum(k, size)
    else:
        k = n if k is None else min(int(k), n)
    masked = tf.where(valid, scores, -1.0 - tf.ones_like(scores))  # scores are probabilities >= 0
    top, order = tf.math.top_k(masked, k=k, sorted=True)
    gathered = [tf.gather(t, order, batch_dims=1) for t in tensors]
    return (tf.gather(scores, order, batch_dims=1), top >= 0.0, *gathered)
