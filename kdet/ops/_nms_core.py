"""Kernels of kdet.ops.nms: candidate selection, greedy hard NMS and soft-NMS.

Everything here is plain TensorFlow on static shapes (top-k, gathers,
reductions, while loops), so it runs eagerly, under XLA and in LiteRT. The
public entry points, their validation and the reasoning behind the design
are in :mod:`kdet.ops.nms`. Candidates are dicts of (B, K) tensors: scores,
classes, flat (``row * C + class``), rows, orig (the input boxes) and boxes
(corners in order); buffers hold the selected ones in (B, size) slots.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from kdet.ops.boxes import aligned_iou, iou

# Most candidates pre-selected per round. Tuned on CPU with benchmarks/nms.py
# (a trained detector's few hundred candidates fit in one round); any positive
# value gives the same results.
ROUND_SIZE = 512
# Up to this many boxes, the single-round path takes every row as it is (no
# top-k to sort): a greedy step over 1024 rows costs less than sorting 512.
ALL_ROWS = 1024
# Fields of a candidate kept for each selected detection.
_FIELDS = ("orig", "boxes", "scores", "classes", "rows")


def _canonical(boxes):
    """Orders each box's corners (x1 <= x2, y1 <= y2), as TensorFlow's kernel does."""
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return tf.stack([tf.minimum(x1, x2), tf.minimum(y1, y2), tf.maximum(x1, x2),
                     tf.maximum(y1, y2)], axis=-1)


def _while(cond, body, loop_vars):
    """tf.while_loop whose variables keep their static shapes (gathers lose the batch size)."""
    def fixed_body(*args):
        out = body(*args)
        tf.nest.map_structure(lambda new, old: new.set_shape(old.shape), out, args)
        return out

    return tf.while_loop(cond, fixed_body, loop_vars)


def _pad_one(cand):
    """Appends one padding candidate (score -inf), so that any round has a row to gather."""
    out = {}
    for name, value in cand.items():
        fill = tf.cast(-np.inf if name == "scores" else 0, value.dtype)
        out[name] = tf.pad(value, [[0, 0], [0, 1]] + [[0, 0]] * (len(value.shape) - 2),
                           constant_values=fill)
    return out


def _candidate_dict(values, rows, classes, boxes, per_class, num_classes):
    """Candidate fields (B, K + 1) from scores, rows and classes (B, K)."""
    flat = rows * num_classes + classes
    orig = tf.gather(boxes, flat if per_class else rows, batch_dims=1)
    return _pad_one({"scores": values, "classes": classes, "flat": flat, "rows": rows,
                     "orig": orig, "boxes": _canonical(orig)})


def _first_max(x, axis):
    """(max, first index of the max) along ``axis``, as two plain reductions.

    XLA's CPU argmax is a variadic reduction that costs about 3x more.
    """
    top = tf.reduce_max(x, axis=axis)
    size = tf.shape(x)[axis]
    index = tf.reshape(tf.range(size), [-1] + [1] * (len(x.shape) - 1 - axis))
    first = tf.reduce_min(tf.where(x == tf.expand_dims(top, axis), index, size), axis=axis)
    return top, first


def _preselect(scores, best, boxes, per_class, k, score_threshold):
    """The first ``k`` candidates of ``scores`` (B, N, C) in global order.

    ``best`` (B, N) is each row's best score; boxes (B, N, 4) shared, or
    (B, N * C, 4) if ``per_class``. Pairs already visited, or not above the
    threshold, may be -inf in both. Returns a dict of (B, K + 1) tensors
    (sub-threshold and padding rows score -inf) sorted by score then flat
    index, the last pair taken (score, flat) (B,) each, and whether that was
    every candidate left (B,). The two-stage top-k is exact: each of the
    top-k pairs lies in one of the top-k rows ranked by best score (ties:
    lower row first).
    """
    batch, num_rows, num_classes = tf.shape(scores)[0], tf.shape(scores)[1], scores.shape[-1]
    k_rows = tf.minimum(k, num_rows)
    if num_classes == 1:
        values, rows = tf.math.top_k(best, k=k_rows)
        classes = tf.zeros_like(rows)
    else:
        _, rows = tf.math.top_k(best, k=k_rows)
        rows = tf.sort(rows, axis=-1)  # flat-index order so stage-2 ties match
        row_scores = tf.reshape(tf.gather(scores, rows, batch_dims=1), [batch, -1])
        row_scores = tf.where(row_scores > score_threshold, row_scores, -np.inf)
        values, pos = tf.math.top_k(row_scores, k=tf.minimum(k, k_rows * num_classes))
        classes = pos % num_classes
        rows = tf.gather(rows, pos // num_classes, batch_dims=1)
    values = tf.where(values > score_threshold, values, -np.inf)
    cand = _candidate_dict(values, rows, classes, boxes, per_class, num_classes)
    # The last pair by reductions over whole rows, not a gather at K - 1: XLA
    # turns a sort read only by a [0, k) slice into its fast TopK, and an
    # element read at K - 1 makes it keep the full sort (25x slower on CPU).
    last_score = tf.reduce_min(values, axis=1)
    flat = rows * num_classes + classes
    last_flat = tf.reduce_max(tf.where(values == last_score[:, None], flat, -1), axis=1)
    exhausted = (tf.shape(values)[1] < k) | (last_score == -np.inf)
    return cand, (last_score, last_flat), exhausted


def _few_candidates(scores, best, boxes, per_class, k, score_threshold):
    """Every candidate in flat-index order, without sorting, when few rows hold them.

    ``best`` (B, N) is each row's best score, -inf unless above the
    threshold. Rows (at most ``k`` of them) come from one top-k on their
    negated index, so they come out ascending; a row's candidates are its two
    best classes. Returns (candidates (B, 2k + 1), complete (B,)): complete is
    False where an image has more than ``k`` candidate rows or a row with
    more than two candidates (then the ordered rounds take over).
    """
    batch, num_rows, num_classes = tf.shape(scores)[0], scores.shape[1], scores.shape[-1]
    if num_rows is not None and num_rows <= max(k, ALL_ROWS):
        rows = tf.broadcast_to(tf.range(num_rows)[None], [batch, num_rows])
        complete = tf.fill([batch], True)
    else:
        index = tf.cast(tf.range(tf.shape(scores)[1]), tf.float32)[None]
        keys, rows = tf.math.top_k(tf.where(best > -np.inf, -index, -np.inf),
                                   k=tf.minimum(k, tf.shape(scores)[1]))
        # Every candidate row taken: fewer than k of them, or fewer rows than k.
        complete = (tf.reduce_min(keys, axis=1) == -np.inf) | (tf.shape(keys)[1] < k)
    if num_classes == 1:
        return _candidate_dict(tf.gather(best, rows, batch_dims=1), rows, tf.zeros_like(rows),
                               boxes, per_class, 1), complete
    found = tf.gather(scores, rows, batch_dims=1)
    found = tf.where(found > score_threshold, found, -np.inf)  # (B, R, C)
    ids = tf.range(num_classes)
    picks = []
    for _ in range(2):
        picks.append(_first_max(found, axis=2))
        found = tf.where(ids == tf.expand_dims(picks[-1][1], 2), -np.inf, found)
    complete &= tf.reduce_all(tf.reduce_max(found, axis=2) == -np.inf, axis=1)
    (v1, c1), (v2, c2) = picks
    swap = c2 < c1  # lower class first: flat-index order inside a row
    values = tf.stack([tf.where(swap, v2, v1), tf.where(swap, v1, v2)], axis=2)
    classes = tf.stack([tf.minimum(c1, c2), tf.maximum(c1, c2)], axis=2)
    pair_rows = tf.stack([rows, rows], axis=2)
    flat_shape = [batch, -1]
    return _candidate_dict(tf.reshape(values, flat_shape), tf.reshape(pair_rows, flat_shape),
                           tf.reshape(classes, flat_shape), boxes, per_class,
                           num_classes), complete


def _empty_buffer(batch, size):
    """Selected-detection buffer: (B, size) rows plus per-image counts."""
    return {"orig": tf.zeros([batch, size, 4]), "boxes": tf.zeros([batch, size, 4]),
            "scores": tf.zeros([batch, size]), "classes": tf.fill([batch, size], -1),
            "rows": tf.zeros([batch, size], tf.int32), "count": tf.zeros([batch], tf.int32)}


def greedy(live, suppressed_by, classes, count, counts, cap, size):
    """Greedy selection among candidates (B, K) whose order breaks ties.

    ``live`` (B, K) holds the candidates' scores, -inf for those already
    out; positions must be in flat-index order, or sorted by score then flat
    index, so that the first of equal maxima is the lower flat index. Each
    step selects every image's best live candidate j and removes j and
    ``suppressed_by(j)`` (B, K) bool; with ``counts`` (B, C) selections per
    class (None if the cap cannot bind), a class that reaches ``cap`` loses
    its other candidates. An image stops at ``size`` selections, ``count``
    (B,) of them made before. Returns (sel, count, counts): ``sel`` (B, size)
    is the candidate written to each buffer slot filled here, -1 elsewhere.
    """
    batch = tf.shape(live)[0]
    pos = tf.range(tf.shape(live)[1])[None]
    slots = tf.range(size)[None]
    use_cap = counts is not None
    if not use_cap:  # while_loop needs a tensor
        counts = tf.zeros([batch, 1], tf.int32)

    def body(live, sel, count, counts, going):
        top, j = _first_max(live, axis=1)
        ok = (top > -np.inf) & (count < size)
        drop = suppressed_by(j) | (pos == j[:, None])
        if use_cap:
            cls = tf.gather(classes, j, batch_dims=1)
            counts += tf.one_hot(cls, tf.shape(counts)[1], dtype=tf.int32) * tf.cast(
                ok, tf.int32)[:, None]
            full = tf.gather(counts, cls, batch_dims=1) >= cap
            drop |= full[:, None] & (classes == cls[:, None])
        live = tf.where(drop & ok[:, None], -np.inf, live)
        sel = tf.where((slots == count[:, None]) & ok[:, None], j[:, None], sel)
        # The loop ends after a step that selects nothing: one cheap extra step
        # instead of a pass over every candidate in the condition.
        return live, sel, count + tf.cast(ok, tf.int32), counts, tf.reduce_any(ok)

    sel = tf.fill([batch, size], -1)
    _, sel, count, counts, _ = _while(lambda *args: args[-1], body,
                                      (live, sel, count, counts, tf.constant(True)))
    return sel, count, counts if use_cap else None


def _select_round(cand, buf, counts, iou_threshold, cap, agnostic, later):
    """Greedy hard NMS of one round of candidates; returns (buffer, counts) after it."""
    size = buf["scores"].shape[1]
    classes = cand["classes"]
    live = cand["scores"]
    if later:  # candidates overlapping a box selected in an earlier round are out
        hit = iou(cand["boxes"], buf["boxes"]) > iou_threshold  # (B, K, size)
        hit &= (tf.range(size)[None] < buf["count"][:, None])[:, None, :]
        if not agnostic:
            hit &= classes[:, :, None] == buf["classes"][:, None, :]
        out = tf.reduce_any(hit, axis=2)
        if counts is not None:
            out |= tf.gather(counts, classes, batch_dims=1) >= cap
        live = tf.where(out, -np.inf, live)

    # Box and class side by side: one gather per greedy step (classes < 2**24
    # are exact in float32).
    # (expand_dims, not [..., None]: LiteRT has no builtin for that strided slice here.)
    packed = tf.concat([cand["boxes"], tf.expand_dims(tf.cast(classes, tf.float32), 2)], axis=2)

    def suppressed_by(j):
        picked = tf.gather(packed, j, batch_dims=1)
        drop = aligned_iou(picked[:, None, :4], cand["boxes"]) > iou_threshold
        if not agnostic:
            drop &= classes == tf.cast(picked[:, 4], tf.int32)[:, None]
        return drop

    sel, count, counts = greedy(live, suppressed_by, classes, buf["count"], counts, cap, size)
    new, src = sel >= 0, tf.maximum(sel, 0)
    out = {"count": count}
    for name in _FIELDS:
        taken = tf.gather(cand[name], src, batch_dims=1)
        out[name] = tf.where(new[:, :, None] if len(taken.shape) == 3 else new, taken, buf[name])
    return out, counts


def _row_best(scores, score_threshold):
    """Each row's best class score (B, N), -inf unless above the threshold.

    Sub-threshold rows at -inf also make XLA's top-k keep only candidates.
    """
    best = scores[..., 0] if scores.shape[-1] == 1 else tf.reduce_max(scores, axis=-1)
    return tf.where(best > score_threshold, best, -np.inf)


def hard_few(scores, boxes, per_class, score_threshold, iou_threshold, cap, size, agnostic):
    """Hard NMS in one round when every candidate fits in it (trained detectors).

    Returns the buffer with ``complete`` (scalar bool) added: False means some
    image had too many candidates, and ``hard_rounds`` must run instead.
    A batch without any candidate skips the top-k (the first early exit).
    """
    batch, num_classes = tf.shape(scores)[0], scores.shape[-1]
    best = _row_best(scores, score_threshold)
    # Per-class counts matter only if a class can fill up before the whole buffer.
    counts = tf.zeros([batch, num_classes], tf.int32) if cap < size else None

    def one_round():
        cand, complete = _few_candidates(scores, best, boxes, per_class, ROUND_SIZE,
                                         score_threshold)
        buf = _select_round(cand, _empty_buffer(batch, size), counts, iou_threshold, cap,
                            agnostic, later=False)[0]
        return {**buf, "complete": tf.reduce_all(complete)}

    return tf.cond(tf.reduce_any(best > -np.inf), one_round,
                   lambda: {**_empty_buffer(batch, size), "complete": tf.constant(True)})


def hard_rounds(scores, boxes, per_class, score_threshold, iou_threshold, cap, size, agnostic,
                 top_k):
    """Hard NMS over candidates in global order, in rounds until the output is settled.

    With ``top_k``, a single round of the ``top_k`` best pairs (not exact).
    """
    batch, num_classes = tf.shape(scores)[0], scores.shape[-1]
    k = top_k or ROUND_SIZE
    select = functools.partial(_select_round, iou_threshold=iou_threshold, cap=cap,
                               agnostic=agnostic)
    counts = tf.zeros([batch, num_classes], tf.int32) if cap < size else None
    cand, after, exhausted = _preselect(scores, _row_best(scores, score_threshold), boxes,
                                        per_class, k, score_threshold)
    buf, counts = select(cand, _empty_buffer(batch, size), counts, later=False)
    if top_k:
        return buf
    return _later_rounds(scores, boxes, per_class, score_threshold, k, select, buf, counts,
                         after, exhausted)


def hard_nms(scores, boxes, *settings):
    """Exact multi-class greedy NMS: one round if every candidate fits, else rounds."""
    if settings[-1]:  # pre_nms_top_k
        return hard_rounds(scores, boxes, *settings)
    buf = hard_few(scores, boxes, *settings[:-1])
    return tf.cond(buf.pop("complete"), lambda: buf,
                   lambda: hard_rounds(scores, boxes, *settings))


def _later_rounds(scores, boxes, per_class, score_threshold, k, select, buf, counts, after,
                  exhausted):
    """Rounds after the first, while candidates after ``after`` = (score, flat) may matter."""
    num_rows, num_classes = tf.shape(scores)[1], scores.shape[-1]
    size = buf["scores"].shape[1]
    use_cap = counts is not None
    flat_ids = tf.reshape(tf.range(num_rows * num_classes), [1, -1, num_classes])

    def body(buf, counts, last_score, last_flat, exhausted):
        later = (scores < last_score[:, None, None]) | (
            (scores == last_score[:, None, None]) & (flat_ids > last_flat[:, None, None]))
        masked = tf.where(later, scores, -np.inf)
        best = masked[..., 0] if num_classes == 1 else tf.reduce_max(masked, axis=-1)
        cand, (last_score, last_flat), done = _preselect(masked, best, boxes, per_class, k,
                                                         score_threshold)
        buf, new_counts = select(cand, buf, counts if use_cap else None, later=True)
        exhausted |= done
        return buf, new_counts if use_cap else counts, last_score, last_flat, exhausted

    def cond(buf, counts, last_score, last_flat, exhausted):
        return tf.reduce_any(~exhausted & (buf["count"] < size))

    counts = counts if use_cap else tf.zeros([1], tf.int32)
    return _while(cond, body, (buf, counts, *after, exhausted))[0]


def _soft_loop(cand, score_threshold, sigma, cap, size, num_classes, agnostic):
    """Greedy Gaussian soft-NMS over candidates (B, K): one selection per step."""
    batch, k = tf.shape(cand["scores"])[0], tf.shape(cand["scores"])[1]
    scale = -0.5 / sigma  # TensorFlow: weight = exp(scale * iou * iou)
    classes = cand["classes"]

    def body(t, cur, counts, buf):
        best = tf.reduce_max(cur, axis=1)
        ok = best > score_threshold
        j = tf.argmax(cur, axis=1, output_type=tf.int32)
        pick = {name: tf.gather(cand[name], j, batch_dims=1) for name in _FIELDS}
        overlap = aligned_iou(pick["boxes"][:, None], cand["boxes"])
        same = classes == pick["classes"][:, None]
        decay = ok[:, None] if agnostic else ok[:, None] & same
        cur = tf.where(decay, cur * tf.exp(scale * overlap * overlap), cur)
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
    return _while(cond, body, init)[3]


def _all_candidates(scores, boxes, per_class):
    """Every (box, class) pair as an unsorted candidate dict (B, N * C + 1)."""
    batch, num_classes = tf.shape(scores)[0], scores.shape[-1]
    flat_scores = tf.reshape(scores, [batch, -1])
    flat = tf.broadcast_to(tf.range(tf.shape(flat_scores)[1])[None], tf.shape(flat_scores))
    orig = boxes if per_class else tf.repeat(boxes, num_classes, axis=1)
    return _pad_one({"scores": flat_scores, "classes": flat % num_classes, "flat": flat,
                     "rows": flat // num_classes, "orig": orig, "boxes": _canonical(orig)})


def soft_nms(scores, boxes, per_class, score_threshold, sigma, cap, size, agnostic, top_k):
    """Soft-NMS on the top candidates, redone on all pairs if that could differ.

    Selected (decayed) scores never increase and a candidate's score only
    decays, so the pre-selected run is exact when it selected ``size`` boxes
    whose last score is >= the best score left out, or when nothing was left
    out; otherwise (rare) the whole candidate set is processed.
    """
    k = top_k or ROUND_SIZE
    num_classes = scores.shape[-1]
    cand, (left_out, _), exhausted = _preselect(scores, _row_best(scores, score_threshold), boxes,
                                                per_class, k, score_threshold)
    buf = _soft_loop(cand, score_threshold, sigma, cap, size, num_classes, agnostic)
    if top_k:
        return buf
    last = tf.gather(buf["scores"], tf.maximum(buf["count"] - 1, 0), batch_dims=1)
    exact = exhausted | ((buf["count"] == size) & (last >= left_out))
    return tf.cond(
        tf.reduce_all(exact), lambda: buf,
        lambda: _soft_loop(_all_candidates(scores, boxes, per_class), score_threshold,
                           sigma, cap, size, num_classes, agnostic))
