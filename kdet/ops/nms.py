"""Non-maximum suppression that compiles with XLA and converts to LiteRT builtins.

``tf.image.combined_non_max_suppression`` is a CPU-only kernel: it does not
compile with ``jit_compile=True`` and needs Flex ops in LiteRT. This module
re-implements its semantics with static-shape TensorFlow ops only (top-k,
gathers, comparisons, cumsum, while loops), so one graph runs eagerly, under
XLA and in a builtin-only ``.tflite`` file.

How hard NMS works here:

1. Pre-selection. Every (box, class) pair with ``score > score_threshold`` is
   a candidate. Candidates are visited in one global order (score
   descending, then flat index ``box * C + class`` ascending) in rounds of
   ``_ROUND_SIZE``; a two-stage top-k (best rows by their best class score,
   then best pairs among those rows) returns the next round exactly.
2. Tiles. A round is processed in tiles of ``_TILE`` candidates. A tile is
   suppressed by the boxes already selected (a buffer of ``max_total_size``
   rows), then by itself: greedy NMS inside a tile is the unique fixed point
   of ``keep[j] = alive[j] and not any(keep[i] and iou[i, j] > t, i < j)``,
   reached by iterating that vectorised update (every iteration settles at
   least one more position; a handful usually suffice).
3. Exactness. Whether a candidate survives depends only on higher-ranked
   candidates of its class, so the first ``max_total_size`` selections in
   global order are exactly TensorFlow's output: rounds go on until they are
   found or candidates run out (``pre_nms_top_k`` caps this, for speed).

Classes do not interact because suppression is masked by label equality,
which is the class-offset trick without touching coordinates. IoU mirrors
TensorFlow's kernel operation for operation, so thresholds flip at the same
values. Ties in score are broken by the lower flat index (TensorFlow's own
combined kernel uses an unstable heap, so tied results may differ in order).

Reference: Bodla et al., "Soft-NMS -- Improving Object Detection With One
Line of Code", ICCV 2017 (Gaussian decay with TensorFlow's
``exp(-0.5 * iou**2 / sigma)`` convention).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from kdet.validation import check_positive_int, check_probability

# Candidates pre-selected per round and processed per tile. Tuned on CPU with
# benchmarks/nms.py; any positive values give the same results.
_ROUND_SIZE = 1024
_TILE = 128


def _iou_matrix(a, b, area_a, area_b):
    """IoU of canonical xyxy boxes a (B, S, 4) and b (B, T, 4) -> (B, S, T).

    Same operations as TensorFlow's ``IOU`` in non_max_suppression_op.cc: a box
    with non-positive area has IoU 0 with everything.
    """
    a = a[:, :, None, :]
    b = b[:, None, :, :]
    ih = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    iw = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter = ih * iw
    area_a = area_a[:, :, None]
    area_b = area_b[:, None, :]
    positive = (area_a > 0.0) & (area_b > 0.0)
    union = tf.where(positive, area_a + area_b - inter, 1.0)
    return tf.where(positive, inter / union, 0.0)


def _canonical(boxes):
    """Orders each box's corners (x1 <= x2, y1 <= y2); returns (boxes, area)."""
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    xmin, xmax = tf.minimum(x1, x2), tf.maximum(x1, x2)
    ymin, ymax = tf.minimum(y1, y2), tf.maximum(y1, y2)
    return tf.stack([xmin, ymin, xmax, ymax], axis=-1), (ymax - ymin) * (xmax - xmin)


def _preselect(scores, boxes, per_class, after, k, score_threshold, tile):
    """The next ``k`` candidates in global order, after the pairs already visited.

    scores (B, N, C); boxes (B, N, 4) shared, or (B, N * C, 4) if ``per_class``;
    ``after`` = (last_score, last_flat) (B,) each: pairs at or before it are
    skipped. Returns a dict of (B, K) tensors padded with -inf scores to a
    multiple of ``tile`` (at least one padding row), and the real count k'.
    The two-stage top-k is exact: each of the top-k pairs lies in one of the
    top-k rows ranked by best remaining score (ties: lower row first).
    """
    batch, num_rows, num_classes = tf.shape(scores)[0], tf.shape(scores)[1], scores.shape[-1]
    last_score, last_flat = after

    def mask_visited():
        flat_ids = tf.reshape(tf.range(num_rows * num_classes), [1, -1, num_classes])
        later = (scores < last_score[:, None, None]) | (
            (scores == last_score[:, None, None]) & (flat_ids > last_flat[:, None, None]))
        return tf.where(later, scores, -np.inf)

    # The first round needs no pass over all B*N*C scores (the costly part):
    # sub-threshold pairs are masked after the small gathers instead.
    masked = tf.cond(tf.reduce_all(last_score == np.inf), lambda: scores, mask_visited)
    k_rows = tf.minimum(k, num_rows)
    if num_classes == 1:
        values, rows = tf.math.top_k(masked[..., 0], k=k_rows)
        classes = tf.zeros_like(rows)
    else:
        _, rows = tf.math.top_k(tf.reduce_max(masked, axis=-1), k=k_rows)
        rows = tf.sort(rows, axis=-1)  # flat-index order so stage-2 ties match
        row_scores = tf.reshape(tf.gather(masked, rows, batch_dims=1), [batch, -1])
        row_scores = tf.where(row_scores > score_threshold, row_scores, -np.inf)
        values, pos = tf.math.top_k(row_scores, k=tf.minimum(k, k_rows * num_classes))
        classes = pos % num_classes
        rows = tf.gather(rows, pos // num_classes, batch_dims=1)
    values = tf.where(values > score_threshold, values, -np.inf)
    flat = rows * num_classes + classes
    orig = tf.gather(boxes, flat if per_class else rows, batch_dims=1)
    canon, area = _canonical(orig)
    count = tf.shape(values)[1]
    pad = tile - count % tile
    cand = {"scores": values, "classes": classes, "flat": flat, "rows": rows,
            "orig": orig, "boxes": canon, "area": area}
    for name, value in cand.items():
        fill = tf.cast(-np.inf if name == "scores" else 0, value.dtype)
        pads = [[0, 0], [0, pad]] + [[0, 0]] * (len(value.shape) - 2)
        cand[name] = tf.pad(value, pads, constant_values=fill)
    return cand, count


def _empty_buffer(batch, size):
    """Selected-detection buffer: (B, size) rows plus per-image counts."""
    return {"orig": tf.zeros([batch, size, 4]), "boxes": tf.zeros([batch, size, 4]),
            "area": tf.zeros([batch, size]), "scores": tf.zeros([batch, size]),
            "classes": tf.fill([batch, size], -1), "flat": tf.zeros([batch, size], tf.int32),
            "rows": tf.zeros([batch, size], tf.int32), "count": tf.zeros([batch], tf.int32)}


def _append(buf, cand, new, size):
    """Writes candidates flagged ``new`` (B, S), in order, after buf['count']."""
    pos = buf["count"][:, None] + tf.cumsum(tf.cast(new, tf.int32), axis=1, exclusive=True)
    slots = tf.range(size)[None, :, None]
    match = (new & (pos < size))[:, None, :] & (pos[:, None, :] == slots)  # (B, size, S)
    filled = tf.reduce_any(match, axis=2)
    src = tf.argmax(tf.cast(match, tf.int32), axis=2, output_type=tf.int32)
    out = {}
    for name, value in buf.items():
        if name == "count":
            continue
        taken = tf.gather(cand[name], src, batch_dims=1)
        mask = filled[:, :, None] if len(value.shape) == 3 else filled
        out[name] = tf.where(mask, taken, value)
    out["count"] = tf.minimum(buf["count"] + tf.reduce_sum(tf.cast(new, tf.int32), axis=1), size)
    return out


def _hard_tile(buf, cand, iou_threshold, cap, size, agnostic):
    """Greedy hard NMS of one tile of candidates (dict of (B, S)) given the buffer."""
    tile = cand["scores"].shape[1]
    classes = cand["classes"]
    hit = _iou_matrix(cand["boxes"], buf["boxes"], cand["area"], buf["area"]) > iou_threshold
    same_buf = classes[:, :, None] == buf["classes"][:, None, :]  # padding rows are -1
    if not agnostic:
        hit &= same_buf  # padded buffer rows have area 0, hence never hit
    alive = (cand["scores"] > -np.inf) & ~tf.reduce_any(hit, axis=2)
    earlier = tf.constant(np.triu(np.ones((tile, tile), bool), 1))[None]  # i < j
    same = classes[:, :, None] == classes[:, None, :]
    suppress = (_iou_matrix(cand["boxes"], cand["boxes"], cand["area"], cand["area"])
                > iou_threshold) & earlier
    if not agnostic:
        suppress &= same
    prior = tf.reduce_sum(tf.cast(same_buf, tf.int32), axis=2) if cap < size else None
    same_earlier = same & earlier

    suppress = tf.cast(suppress, tf.float32)  # a matmul counts suppressors fastest

    def update(keep):
        hits = tf.matmul(tf.cast(keep, tf.float32)[:, None, :], suppress)[:, 0, :]
        new = alive & (hits == 0.0)
        if prior is not None:  # per-class cap binds: earlier kept pairs count
            rank = prior + tf.reduce_sum(tf.cast(same_earlier & keep[:, :, None], tf.int32), 1)
            new &= rank < cap
        return new

    first = update(alive)
    keep, _ = tf.while_loop(
        lambda keep, prev: tf.reduce_any(keep != prev),
        lambda keep, prev: (update(keep), keep),
        (update(first), first))
    return _append(buf, cand, keep, size)


def _tile_slice(value, i):
    """Tile ``i`` of a (B, K, ...) tensor; tf.slice, as XLA's dynamic strided slice is slow."""
    begin = [0, i * _TILE] + [0] * (len(value.shape) - 2)
    out = tf.slice(value, begin, [-1, _TILE] + [-1] * (len(value.shape) - 2))
    out.set_shape([None, _TILE] + value.shape[2:])
    return out


def _hard_nms(scores, boxes, per_class, score_threshold, iou_threshold, cap, size, agnostic,
              top_k):
    """Exact multi-class greedy NMS in rounds of pre-selected candidates."""
    batch = tf.shape(scores)[0]
    round_size = top_k or _ROUND_SIZE
    max_rounds = 1 if top_k else np.iinfo(np.int32).max

    def round_body(r, buf, last_score, last_flat, exhausted):
        cand, count = _preselect(scores, boxes, per_class, (last_score, last_flat),
                                 round_size, score_threshold, _TILE)
        num_tiles = tf.shape(cand["scores"])[1] // _TILE
        heads = tf.concat([cand["scores"][:, ::_TILE], tf.fill([batch, 1], -np.inf)], 1)

        def tile_cond(i, buf):
            head = tf.gather(heads, i, axis=1)
            return (i < num_tiles) & tf.reduce_any((buf["count"] < size) & (head > -np.inf))

        def tile_body(i, buf):
            part = {k: _tile_slice(v, i) for k, v in cand.items()}
            return i + 1, _hard_tile(buf, part, iou_threshold, cap, size, agnostic)

        _, buf = tf.while_loop(tile_cond, tile_body, (tf.constant(0), buf))
        last = tf.maximum(count - 1, 0)
        last_score = tf.gather(cand["scores"], last, axis=1)
        last_flat = tf.gather(cand["flat"], last, axis=1)
        exhausted = exhausted | (count < round_size) | (last_score == -np.inf)
        return r + 1, buf, last_score, last_flat, exhausted

    def round_cond(r, buf, last_score, last_flat, exhausted):
        return (r < max_rounds) & tf.reduce_any(~exhausted & (buf["count"] < size))

    init = (tf.constant(0), _empty_buffer(batch, size), tf.fill([batch], np.inf),
            tf.fill([batch], -1), tf.zeros([batch], bool))
    return tf.while_loop(round_cond, round_body, init)[1]


def _soft_loop(cand, score_threshold, sigma, cap, size, num_classes, agnostic):
    """Greedy Gaussian soft-NMS over candidates (B, K): one selection per step."""
    batch, k = tf.shape(cand["scores"])[0], tf.shape(cand["scores"])[1]
    scale = -0.5 / sigma  # TensorFlow: weight = exp(scale * iou * iou)
    classes = cand["classes"]

    def body(t, cur, counts, buf):
        best = tf.reduce_max(cur, axis=1)
        ok = best > score_threshold
        j = tf.argmax(cur, axis=1, output_type=tf.int32)
        pick = {name: tf.gather(cand[name], j, batch_dims=1) for name in buf if name != "count"}
        iou = _iou_matrix(pick["boxes"][:, None], cand["boxes"], pick["area"][:, None],
                          cand["area"])[:, 0]
        same = classes == pick["classes"][:, None]
        decay = ok[:, None] if agnostic else ok[:, None] & same
        cur = tf.where(decay, cur * tf.exp(scale * iou * iou), cur)
        class_hot = tf.one_hot(pick["classes"], num_classes, dtype=tf.int32) * tf.cast(ok, tf.int32)[:, None]
        counts += class_hot
        full = tf.gather(counts, pick["classes"], batch_dims=1) >= cap
        cur = tf.where((tf.range(k)[None] == j[:, None]) | (same & full[:, None]), -np.inf, cur)
        cur = tf.where(cur > score_threshold, cur, -np.inf)
        pick["scores"] = best  # the decayed score, as TensorFlow returns it
        slot = (tf.range(size)[None] == t) & ok[:, None]
        out = {"count": buf["count"] + tf.cast(ok, tf.int32)}
        for name, value in pick.items():
            mask = slot[:, :, None] if len(value.shape) == 2 else slot
            out[name] = tf.where(mask, value[:, None], buf[name])
        return t + 1, cur, counts, out

    def cond(t, cur, counts, buf):
        return (t < size) & tf.reduce_any(tf.reduce_max(cur, axis=1) > score_threshold)

    init = (tf.constant(0), tf.where(cand["scores"] > score_threshold, cand["scores"], -np.inf),
            tf.zeros([batch, num_classes], tf.int32), _empty_buffer(batch, size))
    return tf.while_loop(cond, body, init)[3]


def _all_candidates(scores, boxes, per_class):
    """Every (box, class) pair as an unsorted candidate dict (B, N * C + 1)."""
    batch, num_classes = tf.shape(scores)[0], scores.shape[-1]
    flat_scores = tf.reshape(scores, [batch, -1])
    flat = tf.broadcast_to(tf.range(tf.shape(flat_scores)[1])[None], tf.shape(flat_scores))
    orig = boxes if per_class else tf.repeat(boxes, num_classes, axis=1)
    canon, area = _canonical(orig)
    cand = {"scores": flat_scores, "classes": flat % num_classes, "flat": flat,
            "rows": flat // num_classes, "orig": orig, "boxes": canon, "area": area}
    for name, value in cand.items():  # one padding row keeps N = 0 gatherable
        fill = tf.cast(-np.inf if name == "scores" else 0, value.dtype)
        cand[name] = tf.pad(value, [[0, 0], [0, 1]] + [[0, 0]] * (len(value.shape) - 2),
                            constant_values=fill)
    return cand


def _soft_nms(scores, boxes, per_class, score_threshold, sigma, cap, size, agnostic, top_k):
    """Soft-NMS on the top candidates, redone on all pairs if that could differ.

    Selected (decayed) scores never increase and a candidate's score only
    decays, so the pre-selected run is exact when it selected ``size`` boxes
    whose last score is >= the best score left out, or when nothing was left
    out; otherwise (rare) the whole candidate set is processed.
    """
    k = top_k or _ROUND_SIZE
    batch, num_classes = tf.shape(scores)[0], scores.shape[-1]
    start = (tf.fill([batch], np.inf), tf.fill([batch], -1))
    cand, count = _preselect(scores, boxes, per_class, start, k, score_threshold, 1)
    buf = _soft_loop(cand, score_threshold, sigma, cap, size, num_classes, agnostic)
    if top_k:
        return buf
    left_out = tf.gather(cand["scores"], tf.maximum(count - 1, 0), axis=1)
    exhausted = (count < k) | (left_out == -np.inf)
    last = tf.gather(buf["scores"], tf.maximum(buf["count"] - 1, 0), batch_dims=1)
    exact = exhausted | ((buf["count"] == size) & (last >= left_out))
    return tf.cond(
        tf.reduce_all(exact), lambda: buf,
        lambda: _soft_loop(_all_candidates(scores, boxes, per_class), score_threshold,
                           sigma, cap, size, num_classes, agnostic))


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
            buf = _soft_nms(scores, boxes, per_class, score_threshold, sigma, cap, size,
                            bool(class_agnostic), top_k)
        else:
            buf = _hard_nms(scores, boxes, per_class, score_threshold, iou_threshold, cap, size,
                            bool(class_agnostic), top_k)
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
        buf = _hard_nms(scores[..., None], boxes, False, score_threshold, iou_threshold, size,
                        size, False, None)
    return buf["rows"], buf["count"]
