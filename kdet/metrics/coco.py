"""COCO box and mask mAP, computed in NumPy with exactly the conventions of pycocotools.

``coco_map`` reproduces ``pycocotools.cocoeval.COCOeval(iouType="bbox")``
(evaluate + accumulate + summarize) for boxes whose area is ``w * h`` and
``iscrowd = 0``, without building COCO json or looping in Python over every
image and category; ``iou_type="segm"`` reproduces ``COCOeval(iouType="segm")``
on the RLE-encoded masks, whose area is their pixel count. The pycocotools
conventions kept here, each checked by the oracle tests in
``tests/metrics/test_coco.py`` and ``tests/metrics/test_coco_segm.py``:

- IoU as ``maskUtils.iou`` computes it on xywh doubles (``x2 = x + w``), or
  on masks: intersection / union pixel counts (:mod:`kdet.metrics._masks`).
- Categories are those of the ground truth; detections of other categories
  are ignored. Categories (or area ranges) without ground truth report -1
  and are left out of the means.
- Per image and category, detections are sorted by score (stable
  mergesort, so ties keep their input order) and the first
  ``max_detections[-1]`` kept; AR1/AR10 keep the first 1/10 of each image
  *and category* (not of the image).
- Greedy matching: each detection takes the unmatched ground truth of
  highest IoU >= threshold (the later one on equal IoU), preferring ground
  truths inside the area range; unmatched detections outside the range are
  ignored. Area ranges include both ends ([0, 32^2], [32^2, 96^2], ...).
- 101-point interpolated precision over recall thresholds 0:0.01:1.

Reference: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV
2014; https://github.com/cocodataset/cocoapi (PythonAPI/pycocotools/cocoeval.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kdet.metrics._inputs import FlatBoxes, check_same_images, flatten_boxes
from kdet.metrics._masks import mask_ious

# pycocotools Params.setDetParams: linspace, as upstream, so that the IoU
# thresholds (0.75 included) are the very same doubles.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
# all, small, medium, large (pycocotools areaRng; bounds are inclusive).
COCO_AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], np.float64)
COCO_MAX_DETECTIONS = (1, 10, 100)
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def check_iou_type(iou_type: str) -> str:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}; received {iou_type!r}.")
    return iou_type


def coco_map(y_true: Any, y_pred: Any, bounding_box_format: str = "xyxy",
             max_detections: Sequence[int] = COCO_MAX_DETECTIONS, image_size=None,
             per_class: bool = False, iou_type: str = "bbox") -> dict:
    """COCO box or mask AP/AR: the 12 numbers of pycocotools' ``COCOeval.summarize``.

    Args:
        y_true: ground truth ``{"boxes": (B, M, 4), "labels": (B, M)}``, padded
            with ``label == -1``; ragged tensors or lists of per-image arrays
            are accepted too.
        y_pred: detections ``{"boxes": (B, K, 4), "scores": (B, K), "labels":
            (B, K), "num_detections": (B,)}`` (the detector output dict;
            ``num_detections`` is optional, ``label == -1`` marks padding).
        bounding_box_format: format of both dicts' boxes, in pixels (any
            ``keras.utils.bounding_boxes`` format).
        max_detections: the three per-image-and-category detection caps
            (pycocotools ``maxDets``); AP uses the last one.
        image_size: (height, width) in pixels, needed for ``rel_*`` formats.
        per_class: also return ``"per_class": {label: AP}`` (AP@[.5:.95],
            all areas; -1 where a class has no ground truth).
        iou_type: ``"bbox"`` (box AP) or ``"segm"`` (mask AP, pycocotools'
            ``iouType="segm"``). Mask AP needs ``y_true["masks"]`` (B, M, H, W)
            in image pixels (non-zero inside, row-aligned with the boxes) and
            ``y_pred["masks"]`` either as the detector's float (B, K, M, M)
            probability grids, pasted at ``y_pred["boxes"]`` into the ground
            truth's H x W (torchvision's ``paste_masks_in_image``, as
            :func:`kdet.ops.paste_masks`) and thresholded at ``> 0.5``, or as
            already pasted integer/bool (B, K, H, W) masks (non-zero inside).
            Areas (for APs/APm/APl) are mask pixel counts; ragged tensors and
            per-image lists are accepted as for boxes.

    Returns:
        dict of floats with keys ``AP, AP50, AP75, APs, APm, APl, AR1, AR10,
        AR100, ARs, ARm, ARl`` (the AR keys follow ``max_detections``); -1
        where no ground truth exists for that setting, as in pycocotools.

    Example:
        >>> gt = {"boxes": [[[0., 0, 10, 10]]], "labels": [[0]]}
        >>> dt = {"boxes": [[[0., 0, 10, 10]]], "scores": [[0.9]], "labels": [[0]]}
        >>> round(coco_map(gt, dt)["AP"], 6)  # pycocotools: 0.9999999999999998
        1.0
    """
    max_dets = _check_max_detections(max_detections)
    segm = check_iou_type(iou_type) == "segm"
    gt = flatten_boxes(y_true, "y_true", detections=False, bounding_box_format=bounding_box_format,
                       target="xywh", image_size=image_size, masks=segm)
    sizes = gt.masks.image_sizes if segm else None
    dt = flatten_boxes(y_pred, "y_pred", detections=True, bounding_box_format=bounding_box_format,
                       target="xywh", image_size=image_size, masks=segm, mask_image_sizes=sizes)
    check_same_images(gt, dt)
    return evaluate_flat(gt, dt, max_dets, per_class=per_class, iou_type=iou_type)


def evaluate_flat(gt: FlatBoxes, dt: FlatBoxes, max_detections: Sequence[int] = COCO_MAX_DETECTIONS,
                  per_class: bool = False, iou_type: str = "bbox") -> dict:
    """``coco_map`` on already validated xywh rows (used by the Keras metric)."""
    precision, recall, cat_ids = accumulate(gt, dt, tuple(max_detections), iou_type)
    result = summarize(precision, recall, tuple(max_detections))
    if per_class:
        result["per_class"] = {
            int(c): _mean_valid(precision[:, :, k, 0, -1]) for k, c in enumerate(cat_ids)
        }
    return result


def _check_max_detections(max_detections) -> tuple[int, int, int]:
    try:
        values = tuple(int(m) for m in max_detections)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or any(m <= 0 for m in values) or list(values) != sorted(values):
        raise ValueError(
            f"max_detections must be three increasing positive integers like (1, 10, 100); "
            f"received {max_detections!r}."
        )
    return values


def _coco_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes (..., 4) x (..., 4) exactly as maskApi.c ``bbIou`` (iscrowd=0)."""
    da = d[..., 2] * d[..., 3]
    ga = g[..., 2] * g[..., 3]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    union = da + ga - inter
    ok = (w > 0) & (h > 0)
    return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def _area_outside(area: np.ndarray) -> np.ndarray:
    """(A, N) bool: area outside each (inclusive) COCO area range."""
    return (area[None] < COCO_AREA_RANGES[:, :1]) | (area[None] > COCO_AREA_RANGES[:, 1:])


def _match_bucket(ious, gt_ignore, det_valid):
    """pycocotools' greedy matching for a bucket of (image, category) groups at once.

    Args:
        ious: (n, D, G) IoU of score-sorted detections vs ground truths; -1 on
            padded ground-truth columns.
        gt_ignore: (n, A, G) ground truth ignored (outside the area range).
        det_valid: (n, D) real (not padded) detections.

    Returns:
        matched (n, A, T, D) and matched_ignored (n, A, T, D) booleans.
    """
    n, num_d, num_g = ious.shape
    num_a, num_t = gt_ignore.shape[1], COCO_IOU_THRESHOLDS.shape[0]
    # pycocotools starts from min(t, 1 - 1e-10) and accepts IoU >= that.
    thresholds = np.minimum(COCO_IOU_THRESHOLDS, 1 - 1e-10)[None, None, :, None]
    ignore = gt_ignore[:, :, None, :]
    taken = np.zeros((n, num_a, num_t, num_g), bool)
    matched = np.zeros((n, num_a, num_t, num_d), bool)
    matched_ignored = np.zeros((n, num_a, num_t, num_d), bool)
    columns = np.arange(num_g)
    for r in range(num_d):
        iou_r = ious[:, r][:, None, None, :]
        candidate = ~taken & (iou_r >= thresholds)
        regular = candidate & ~ignore
        # Ground truths inside the area range are visited first; ignored ones
        # only when no regular one matches (the `break` in evaluateImg).
        candidate = np.where(regular.any(-1, keepdims=True), regular, candidate & ignore)
        has = candidate.any(-1) & det_valid[:, r][:, None, None]
        scores = np.where(candidate, iou_r, -1.0)
        # On equal IoU pycocotools keeps the later ground truth (`<` test).
        best = num_g - 1 - np.argmax(scores[..., ::-1], axis=-1)
        hit = (columns == best[..., None]) & has[..., None]
        taken |= hit
        matched[..., r] = has
        matched_ignored[..., r] = (hit & ignore).any(-1)
    return matched, matched_ignored


def _bucket_keys(nd: np.ndarray, ng: np.ndarray) -> np.ndarray:
    """Groups of similar size share one padded array (padding waste <= 4x)."""
    return np.ceil(np.log2(nd)).astype(np.int64) * 64 + np.ceil(np.log2(ng)).astype(np.int64)


def _box_pair_iou(dt_boxes, gt_boxes):
    def pair_iou(d_idx, g_idx, d_valid, g_valid):
        return _coco_iou(dt_boxes[d_idx][:, :, None, :], gt_boxes[g_idx][:, None, :, :])
    return pair_iou


def _mask_pair_iou(dt_masks, dt_rows, gt_masks, gt_rows):
    def pair_iou(d_idx, g_idx, d_valid, g_valid):
        ious = np.zeros(d_idx.shape + g_idx.shape[1:])
        n, i, j = np.nonzero(d_valid[:, :, None] & g_valid[:, None, :])
        ious[n, i, j] = mask_ious(dt_masks, dt_rows[d_idx[n, i]], gt_masks, gt_rows[g_idx[n, j]])
        return ious
    return pair_iou


def _evaluate_matches(gt_key, gt_ignore, dt_key, pair_iou):
    """Matches every detection group against its ground truths.

    ``gt_*`` and ``dt_*`` are sorted by group key; detections within a group
    by descending score. ``pair_iou(d_idx, g_idx, d_valid, g_valid)`` gives the
    (n, D, G) IoUs of padded index blocks. Returns matched and matched_ignored (A, T, Nd).
    """
    num_a, num_t, num_d = gt_ignore.shape[0], COCO_IOU_THRESHOLDS.shape[0], dt_key.shape[0]
    matched = np.zeros((num_a, num_t, num_d), bool)
    matched_ignored = np.zeros((num_a, num_t, num_d), bool)
    keys, d_start, nd = np.unique(dt_key, return_index=True, return_counts=True)
    g_start = np.searchsorted(gt_key, keys, side="left")
    ng = np.searchsorted(gt_key, keys, side="right") - g_start
    both = ng > 0
    keys, d_start, nd, g_start, ng = keys[both], d_start[both], nd[both], g_start[both], ng[both]
    if keys.size == 0:
        return matched, matched_ignored
    buckets = _bucket_keys(nd, ng)
    for bucket in np.unique(buckets):
        sel = buckets == bucket
        d_pad, g_pad = int(nd[sel].max()), int(ng[sel].max())
        d_off, g_off = np.arange(d_pad), np.arange(g_pad)
        d_valid = d_off[None] < nd[sel][:, None]
        g_valid = g_off[None] < ng[sel][:, None]
        d_idx = np.where(d_valid, d_start[sel][:, None] + d_off, 0)
        g_idx = np.where(g_valid, g_start[sel][:, None] + g_off, 0)
        ious = np.where(g_valid[:, None, :], pair_iou(d_idx, g_idx, d_valid, g_valid), -1.0)
        ignore = np.transpose(gt_ignore[:, g_idx], (1, 0, 2))
        m, mi = _match_bucket(ious, ignore, d_valid)
        flat = d_idx[d_valid]
        matched[:, :, flat] = np.transpose(m, (1, 2, 0, 3))[:, :, d_valid]
        matched_ignored[:, :, flat] = np.transpose(mi, (1, 2, 0, 3))[:, :, d_valid]
    return matched, matched_ignored


def _grouped_detections(dt: FlatBoxes, cat_ids: np.ndarray, num_images: int, max_det: int):
    """Detections of ground-truth categories, grouped by (category, image), best score first.

    Ties keep their input order; each group is capped at ``max_det``. Returns
    key, category index, image, boxes, scores, rank in the group and the row in ``dt``.
    """
    keep = np.isin(dt.labels, cat_ids)
    rows = np.nonzero(keep)[0]
    cat = np.searchsorted(cat_ids, dt.labels[keep])
    image, boxes, scores = dt.image[keep], dt.boxes[keep], dt.scores[keep]
    key = cat * num_images + image
    order = np.lexsort((np.arange(key.size), -scores, key))
    key, cat, image, boxes, scores, rows = (x[order] for x in (key, cat, image, boxes, scores, rows))
    rank = np.arange(key.size) - np.searchsorted(key, key, side="left")
    capped = rank < max_det
    return tuple(x[capped] for x in (key, cat, image, boxes, scores, rank, rows))


def accumulate(gt: FlatBoxes, dt: FlatBoxes, max_detections: tuple[int, ...] = COCO_MAX_DETECTIONS,
               iou_type: str = "bbox"):
    """pycocotools ``evaluate`` + ``accumulate`` on xywh rows (or their masks for ``"segm"``).

    Returns:
        precision (T, R, K, A, M), recall (T, K, A, M) (-1 where a category
        has no ground truth in an area range) and the K category ids.
    """
    cat_ids = np.unique(gt.labels)
    num_images = gt.num_images
    num_t, num_r, num_k = len(COCO_IOU_THRESHOLDS), len(COCO_RECALL_THRESHOLDS), len(cat_ids)
    num_a, num_m = len(COCO_AREA_RANGES), len(max_detections)
    precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))
    if num_k == 0:
        return precision, recall, cat_ids

    # Ground truth, grouped by (category, image) in input order.
    g_cat = np.searchsorted(cat_ids, gt.labels)
    g_key = g_cat * num_images + gt.image
    segm = check_iou_type(iou_type) == "segm"
    g_order = np.argsort(g_key, kind="stable")
    g_key, g_boxes = g_key[g_order], gt.boxes[g_order]
    g_area = gt.masks.areas[g_order] if segm else g_boxes[:, 2] * g_boxes[:, 3]
    g_ignore = _area_outside(g_area)                                          # (A, Ng)
    npig = np.stack([np.bincount(g_cat[g_order], weights=~ig, minlength=num_k) for ig in g_ignore], 1)

    d_key, d_cat, d_image, d_boxes, d_scores, rank, d_rows = _grouped_detections(
        dt, cat_ids, num_images, max_detections[-1])

    if segm:
        pair_iou = _mask_pair_iou(dt.masks, d_rows, gt.masks, g_order)
        d_area = dt.masks.areas[d_rows]
    else:
        pair_iou = _box_pair_iou(d_boxes, g_boxes)
        d_area = d_boxes[:, 2] * d_boxes[:, 3]
    matched, matched_ignored = _evaluate_matches(g_key, g_ignore, d_key, pair_iou)
    # Unmatched detections outside the area range are ignored.
    d_ignore = np.where(matched, matched_ignored, _area_outside(d_area)[:, None, :])
    tps = matched & ~d_ignore
    fps = ~matched & ~d_ignore

    # Per category: detections of every image, best score first (stable over
    # image order, then rank), as accumulate's concatenate + mergesort does.
    order = np.lexsort((rank, d_image, -d_scores, d_cat))
    for m, max_det in enumerate(max_detections):
        sel = order[rank[order] < max_det]
        cats = d_cat[sel]
        bounds = np.searchsorted(cats, np.arange(num_k + 1))
        tp_sel, fp_sel = tps[:, :, sel], fps[:, :, sel]
        for k in range(num_k):
            s, e = bounds[k], bounds[k + 1]
            tp_sum = np.cumsum(tp_sel[:, :, s:e], axis=2).astype(float)
            fp_sum = np.cumsum(fp_sel[:, :, s:e], axis=2).astype(float)
            for a in range(num_a):
                if npig[k, a] == 0:
                    continue
                _precision_recall(tp_sum[a], fp_sum[a], npig[k, a], precision[:, :, k, a, m], recall[:, k, a, m])
    return precision, recall, cat_ids


def _precision_recall(tp, fp, npig, precision_out, recall_out):
    """Interpolated precision (T, R) and final recall (T,) of one category and area."""
    num_d = tp.shape[1]
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    recall_out[:] = rc[:, -1] if num_d else 0
    precision_out[:] = 0
    if not num_d:
        return
    # Precision envelope: max precision at any recall >= this one.
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(tp.shape[0]):
        inds = np.searchsorted(rc[t], COCO_RECALL_THRESHOLDS, side="left")
        ok = inds < num_d
        precision_out[t, ok] = pr[t, inds[ok]]


def _mean_valid(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray, max_detections=COCO_MAX_DETECTIONS) -> dict:
    """pycocotools ``summarize`` (_summarizeDets) as a dict of the 12 numbers."""
    t50 = np.where(COCO_IOU_THRESHOLDS == 0.5)[0]
    t75 = np.where(COCO_IOU_THRESHOLDS == 0.75)[0]
    last = len(max_detections) - 1
    out = {
        "AP": _mean_valid(precision[:, :, :, 0, last]),
        "AP50": _mean_valid(precision[t50][:, :, :, 0, last]),
        "AP75": _mean_valid(precision[t75][:, :, :, 0, last]),
        "APs": _mean_valid(precision[:, :, :, 1, last]),
        "APm": _mean_valid(precision[:, :, :, 2, last]),
        "APl": _mean_valid(precision[:, :, :, 3, last]),
    }
    for m, max_det in enumerate(max_detections):
        out[f"AR{max_det}"] = _mean_valid(recall[:, :, 0, m])
    out["ARs"] = _mean_valid(recall[:, :, 1, last])
    out["ARm"] = _mean_valid(recall[:, :, 2, last])
    out["ARl"] = _mean_valid(recall[:, :, 3, last])
    return out
