"""Pascal VOC average precision and per-class precision/recall curves.

Matching follows the official devkit (``VOCevaldet.m``) and its Python port
``voc_eval.py`` of py-faster-rcnn: detections of a class are visited in
descending score order (stable, so ties keep their input order, as
MATLAB's ``sort``); each takes the ground truth of highest IoU in its image
(first one on ties), *whether or not it is already matched*, and is a true
positive if IoU > threshold (strictly), that ground truth is not
"difficult" and not yet matched; a duplicate is a false positive; a match
to a difficult ground truth counts as neither.

Coordinates: kdet boxes are continuous, so areas are ``(x2 - x1) * (y2 - y1)``
by default. The devkit treats VOC's integer pixel coordinates as inclusive
and adds 1 to widths and heights; pass ``pixel_inclusive=True`` to reproduce
its numbers exactly.

References: Everingham et al., "The PASCAL Visual Object Classes (VOC)
Challenge", IJCV 2010 (11-point AP of VOC2007, all-point AP from VOC2010);
https://github.com/rbgirshick/py-faster-rcnn/blob/master/lib/datasets/voc_eval.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdet.metrics._inputs import FlatBoxes, check_same_images, flatten_boxes
from kdet.ops.boxes import iou_numpy
from kdet.validation import check_probability

VOC_IOU_THRESHOLD = 0.5  # VOC devkit: overlap > 0.5
# VOC2007 11-point recall levels, as voc_eval.py builds them (np.arange keeps
# its float values such as 0.30000000000000004 identical to the reference).
VOC07_RECALL_LEVELS = np.arange(0.0, 1.1, 0.1)


def _parse(y_true, y_pred, bounding_box_format, difficult, image_size):
    if difficult is None and isinstance(y_true, dict) and "difficult" in y_true:
        difficult = y_true["difficult"]
    gt = flatten_boxes(y_true, "y_true", detections=False, bounding_box_format=bounding_box_format,
                       target="xyxy", image_size=image_size, difficult=difficult)
    dt = flatten_boxes(y_pred, "y_pred", detections=True, bounding_box_format=bounding_box_format,
                       target="xyxy", image_size=image_size)
    check_same_images(gt, dt)
    if gt.difficult is None:
        gt.difficult = np.zeros(gt.labels.shape[0], bool)
    return gt, dt


def _match(gt: FlatBoxes, dt: FlatBoxes, iou_threshold: float, pixel_inclusive: bool):
    """Devkit matching of every class at once.

    Returns the detection order (class, then descending score) as indices
    into ``dt``, and true/false-positive flags in that order.
    """
    n_img = gt.num_images
    g_key = gt.labels * n_img + gt.image
    g_order = np.argsort(g_key, kind="stable")
    g_key_sorted = g_key[g_order]
    order = np.lexsort((np.arange(dt.labels.size), -dt.scores, dt.labels))
    d_key = (dt.labels * n_img + dt.image)[order]
    g_start = np.searchsorted(g_key_sorted, d_key, side="left")
    n_gt = np.searchsorted(g_key_sorted, d_key, side="right") - g_start
    # Every (detection, ground truth of its image and class) pair, det-major.
    pair_det = np.repeat(np.arange(d_key.size), n_gt)
    pair_start = np.cumsum(n_gt) - n_gt
    local = np.arange(pair_det.size) - pair_start[pair_det]
    pair_gt = g_order[g_start[pair_det] + local]
    overlap = iou_numpy(dt.boxes[order][pair_det], gt.boxes[pair_gt], pixel_inclusive)
    has_gt = n_gt > 0
    best = np.full(d_key.size, -np.inf)
    best_gt = np.zeros(d_key.size, np.int64)
    if pair_det.size:
        best[has_gt] = np.maximum.reduceat(overlap, pair_start[has_gt])
        # np.argmax semantics: the first ground truth with the best overlap.
        first = np.where(overlap == best[pair_det], local, np.iinfo(np.int64).max)
        best_local = np.minimum.reduceat(first, pair_start[has_gt])
        best_gt[has_gt] = g_order[g_start[has_gt] + best_local]
    hit = best > iou_threshold
    hit_difficult = hit & gt.difficult[best_gt]
    candidate = np.flatnonzero(hit & ~hit_difficult)
    # Within the visiting order, only the first detection on a ground truth
    # is a true positive; later ones are duplicates (false positives).
    _, first_hit = np.unique(best_gt[candidate], return_index=True)
    tp = np.zeros(d_key.size, bool)
    tp[candidate[first_hit]] = True
    fp = ~tp & ~hit_difficult
    return order, tp, fp


def _class_curves(gt, dt, iou_threshold, pixel_inclusive) -> dict:
    classes, npos = np.unique(gt.labels[~gt.difficult], return_counts=True)
    order, tp, fp = _match(gt, dt, iou_threshold, pixel_inclusive)
    labels = dt.labels[order]
    curves = {}
    for c, n in zip(classes, npos):
        sel = labels == c
        tp_sum = np.cumsum(tp[sel]).astype(np.float64)
        fp_sum = np.cumsum(fp[sel]).astype(np.float64)
        curves[int(c)] = {
            "recall": tp_sum / float(n),
            "precision": tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps),
            "scores": dt.scores[order][sel],
        }
    return curves


def average_precision(recall: np.ndarray, precision: np.ndarray, eleven_point: bool = True) -> float:
    """AP from a precision/recall curve (voc_eval.py's ``voc_ap``).

    Args:
        recall, precision: (n,) curves over detections sorted by score.
        eleven_point: VOC2007 11-point interpolation; otherwise the
            all-point area under the monotone envelope (VOC2010+).
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if eleven_point:
        ap = 0.0
        for t in VOC07_RECALL_LEVELS:
            above = recall >= t
            ap += (np.max(precision[above]) if above.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def pr_curve(y_true: Any, y_pred: Any, iou_threshold: float = VOC_IOU_THRESHOLD,
             bounding_box_format: str = "xyxy", difficult=None, pixel_inclusive: bool = False,
             image_size=None) -> dict:
    """Per-class precision/recall curves under VOC matching.

    Args: as ``voc_ap``.

    Returns:
        ``{label: {"precision": (n,), "recall": (n,), "scores": (n,)}}`` for
        every class with at least one non-difficult ground truth, the
        arrays ordered by descending detection score.

    Example:
        >>> gt = {"boxes": [[[0., 0, 10, 10]]], "labels": [[0]]}
        >>> dt = {"boxes": [[[0., 0, 10, 10], [20., 20, 30, 30]]], "scores": [[0.9, 0.8]],
        ...       "labels": [[0, 0]]}
        >>> pr_curve(gt, dt)[0]["precision"].tolist()
        [1.0, 0.5]
    """
    iou_threshold = check_probability("iou_threshold", iou_threshold)
    gt, dt = _parse(y_true, y_pred, bounding_box_format, difficult, image_size)
    return _class_curves(gt, dt, iou_threshold, pixel_inclusive)


def voc_ap(y_true: Any, y_pred: Any, iou_threshold: float = VOC_IOU_THRESHOLD, eleven_point: bool = True,
           bounding_box_format: str = "xyxy", difficult=None, pixel_inclusive: bool = False,
           image_size=None) -> dict:
    """Pascal VOC mean average precision.

    Args:
        y_true: ground truth ``{"boxes": (B, M, 4), "labels": (B, M)[,
            "difficult": (B, M)]}`` padded with ``label == -1`` (ragged
            tensors and lists of per-image arrays are accepted).
        y_pred: detections ``{"boxes", "scores", "labels"[, "num_detections"]}``.
        iou_threshold: a detection matches when IoU > this (strictly).
        eleven_point: VOC2007 11-point AP (True) or all-point AP (False).
        bounding_box_format: format of the boxes of both dicts.
        difficult: (B, M) bool flags aligned with ``y_true["labels"]``
            (default ``y_true["difficult"]`` or none); difficult objects are
            neither required nor penalised.
        pixel_inclusive: add 1 to widths/heights as the devkit does for
            integer pixel coordinates (default: continuous coordinates).
        image_size: (height, width), needed for ``rel_*`` formats.

    Returns:
        ``{"mAP": float, "per_class": {label: AP}}`` over the classes with at
        least one non-difficult ground truth; mAP is -1 when there is none.

    Example:
        >>> gt = {"boxes": [[[0., 0, 10, 10]]], "labels": [[0]]}
        >>> dt = {"boxes": [[[1., 0, 10, 10]]], "scores": [[0.9]], "labels": [[0]]}
        >>> round(voc_ap(gt, dt)["mAP"], 6)
        1.0
    """
    iou_threshold = check_probability("iou_threshold", iou_threshold)
    gt, dt = _parse(y_true, y_pred, bounding_box_format, difficult, image_size)
    curves = _class_curves(gt, dt, iou_threshold, pixel_inclusive)
    per_class = {c: average_precision(v["recall"], v["precision"], eleven_point) for c, v in curves.items()}
    m_ap = float(np.mean(list(per_class.values()))) if per_class else -1.0
    return {"mAP": m_ap, "per_class": per_class}
