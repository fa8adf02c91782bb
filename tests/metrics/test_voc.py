"""kdet.metrics.voc_ap / pr_curve: hand-computed cases and a voc_eval.py reference."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.metrics import average_precision, pr_curve, voc_ap


def reference_voc_eval(gt_boxes, gt_labels, gt_difficult, dt_boxes, dt_scores, dt_labels, cls,
                       ovthresh=0.5, use_07_metric=True, plus_one=True):
    """py-faster-rcnn's voc_eval.py, loop for loop, on per-image lists.

    One change: the detections are sorted with a stable sort (the devkit's
    MATLAB ``sort`` is stable; numpy's default quicksort is not).
    """
    one = 1.0 if plus_one else 0.0
    class_recs, npos = {}, 0
    for i in range(len(gt_boxes)):
        sel = np.asarray(gt_labels[i]) == cls
        bbox = np.asarray(gt_boxes[i], np.float64).reshape(-1, 4)[sel]
        difficult = np.asarray(gt_difficult[i], bool)[sel]
        det = [False] * len(bbox)
        npos = npos + sum(~difficult)
        class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": det}
    image_ids, confidence, bbs = [], [], []
    for i in range(len(dt_boxes)):
        for b, s, lab in zip(np.asarray(dt_boxes[i], np.float64).reshape(-1, 4), dt_scores[i], dt_labels[i]):
            if lab == cls:
                image_ids.append(i), confidence.append(float(s)), bbs.append(b)
    confidence, BB = np.array(confidence), np.array(bbs).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="mergesort")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + one, 0.0)
            ih = np.maximum(iymax - iymin + one, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + one) * (bb[3] - bb[1] + one)
                   + (BBGT[:, 2] - BBGT[:, 0] + one) * (BBGT[:, 3] - BBGT[:, 1] + one) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap, rec, prec


def _case(rng, num_images=5, num_classes=3, integer=True):
    gb, gl, gd, db, ds, dl = [], [], [], [], [], []
    for _ in range(num_images):
        ng, nd = int(rng.integers(0, 8)), int(rng.integers(0, 15))
        xy = rng.integers(0, 200, (ng, 2)) if integer else rng.uniform(0, 200, (ng, 2))
        g = np.concatenate([xy, xy + rng.integers(5, 80, (ng, 2))], 1).astype(np.float32)
        g_lab = rng.integers(0, num_classes, ng)
        src = rng.integers(0, max(ng, 1), nd)
        jitter = rng.integers(-6, 7, (nd, 4)) if integer else rng.normal(0, 5, (nd, 4))
        d = (g[src] + jitter if ng else rng.integers(0, 200, (nd, 4))).astype(np.float32)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2])
        d_lab = np.where(rng.random(nd) < 0.8, g_lab[src] if ng else 0, rng.integers(0, num_classes, nd))
        scores = (rng.integers(0, 6, nd) / 5.0 if integer else rng.random(nd)).astype(np.float32)
        gb.append(g), gl.append(g_lab), gd.append(rng.random(ng) < 0.15)
        db.append(d), ds.append(scores), dl.append(d_lab)
    return gb, gl, gd, db, ds, dl


@pytest.mark.parametrize("eleven_point", [True, False])
@pytest.mark.parametrize("pixel_inclusive", [True, False])
def test_matches_reference_voc_eval(eleven_point, pixel_inclusive):
    rng = np.random.default_rng(int(eleven_point) * 2 + int(pixel_inclusive))
    checked = 0
    for trial in range(25):
        gb, gl, gd, db, ds, dl = _case(rng, integer=trial % 2 == 0)
        thr = [0.5, 0.3, 0.7][trial % 3]
        got = voc_ap({"boxes": gb, "labels": gl}, {"boxes": db, "scores": ds, "labels": dl},
                     iou_threshold=thr, eleven_point=eleven_point, difficult=gd, pixel_inclusive=pixel_inclusive)
        classes = sorted({int(c) for lab, dif in zip(gl, gd) for c in np.asarray(lab)[~dif]})
        assert sorted(got["per_class"]) == classes
        for c in classes:
            want = reference_voc_eval(gb, gl, gd, db, ds, dl, c, thr, eleven_point, pixel_inclusive)[0]
            assert got["per_class"][c] == pytest.approx(want, abs=1e-12)
            checked += want > 0
        if classes:
            assert got["mAP"] == pytest.approx(np.mean(list(got["per_class"].values())))
    assert checked > 20


def _one_class(gt, dets, scores, **kwargs):
    return voc_ap({"boxes": [np.float32(gt)], "labels": [np.zeros(len(gt), int)]},
                  {"boxes": [np.float32(dets)], "scores": [np.float32(scores)],
                   "labels": [np.zeros(len(dets), int)]}, **kwargs)


def test_hand_computed_eleven_point_and_all_point():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    # TP (0.9), FP (0.8), TP (0.7): recall .5 .5 1, precision 1 .5 2/3.
    dets = [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]
    # 11-point: recall levels 0..0.5 (6 of them) -> 1; 0.6..1 (5) -> 2/3.
    assert _one_class(gt, dets, [0.9, 0.8, 0.7])["mAP"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    # All-point: 0.5 * 1 + 0.5 * 2/3.
    assert _one_class(gt, dets, [0.9, 0.8, 0.7], eleven_point=False)["mAP"] == pytest.approx(5 / 6)
    # A duplicate detection of a matched object is a false positive.
    dup = _one_class(gt, [[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], eleven_point=False)
    assert dup["mAP"] == pytest.approx(0.5)
    # Only detections of a class count: an unmatched class-1 detection changes nothing.
    assert voc_ap({"boxes": [np.float32(gt)], "labels": [np.array([0, 0])]},
                  {"boxes": [np.float32(dets + [[0, 0, 10, 10]])], "scores": [np.float32([0.9, 0.8, 0.7, 1.0])],
                   "labels": [np.array([0, 0, 0, 1])]})["per_class"] == {0: pytest.approx((6 + 10 / 3) / 11)}


def test_difficult_objects_are_neither_required_nor_penalised():
    gt = {"boxes": [np.float32([[0, 0, 10, 10], [20, 20, 30, 30]])], "labels": [np.array([0, 0])],
          "difficult": [np.array([False, True])]}
    miss = {"boxes": [np.float32([[0, 0, 10, 10]])], "scores": [np.float32([0.9])], "labels": [np.array([0])]}
    hit_difficult = {"boxes": [np.float32([[20, 20, 30, 30], [0, 0, 10, 10]])],
                     "scores": [np.float32([0.95, 0.9])], "labels": [np.array([0, 0])]}
    assert voc_ap(gt, miss)["mAP"] == pytest.approx(1.0)
    assert voc_ap(gt, hit_difficult)["mAP"] == pytest.approx(1.0)
    # Without the flags the second object is required.
    plain = {k: gt[k] for k in ("boxes", "labels")}
    assert voc_ap(plain, miss, eleven_point=False)["mAP"] == pytest.approx(0.5)
    # A class whose only objects are difficult has no AP.
    only_difficult = {**gt, "difficult": [np.array([True, True])]}
    assert voc_ap(only_difficult, miss) == {"mAP": -1.0, "per_class": {}}


def test_pixel_inclusive_reproduces_the_devkit_plus_one():
    # GT [0,0,10,10] vs [5,0,15,10]: continuous IoU 50/150 = 1/3; the devkit's
    # inclusive pixels give 66/176 = 0.375.
    gt, det = [[0, 0, 10, 10]], [[5, 0, 15, 10]]
    assert _one_class(gt, det, [0.9], iou_threshold=0.35)["mAP"] == 0.0
    assert _one_class(gt, det, [0.9], iou_threshold=0.35, pixel_inclusive=True)["mAP"] == pytest.approx(1.0)
    # The threshold is strict, as in the devkit (ovmax > 0.5 is required).
    assert _one_class([[0, 0, 10, 10]], [[0, 0, 10, 5]], [0.9], iou_threshold=0.5)["mAP"] == 0.0


def test_pr_curve_and_input_forms():
    rng = np.random.default_rng(11)
    gb, gl, gd, db, ds, dl = _case(rng, num_images=4)
    curves = pr_curve({"boxes": gb, "labels": gl}, {"boxes": db, "scores": ds, "labels": dl})
    for c, curve in curves.items():
        _, rec, prec = reference_voc_eval(gb, gl, [np.zeros(len(g), bool) for g in gb], db, ds, dl, c,
                                          0.5, True, False)
        np.testing.assert_allclose(curve["recall"], rec)
        np.testing.assert_allclose(curve["precision"], prec)
        assert np.all(np.diff(curve["scores"]) <= 0)
        assert average_precision(curve["recall"], curve["precision"]) == pytest.approx(
            voc_ap({"boxes": gb, "labels": gl}, {"boxes": db, "scores": ds, "labels": dl})["per_class"][c])
    # Padded tensors (with num_detections) and yxyx boxes give the same numbers.
    m, k = max(map(len, gb)), max(map(len, db))
    y_true = {"boxes": np.zeros((4, m, 4), np.float32), "labels": -np.ones((4, m), np.int32)}
    y_pred = {"boxes": np.zeros((4, k, 4), np.float32), "scores": np.zeros((4, k), np.float32),
              "labels": np.zeros((4, k), np.int32), "num_detections": np.array([len(d) for d in db])}
    for i in range(4):
        y_true["boxes"][i, :len(gb[i])], y_true["labels"][i, :len(gl[i])] = gb[i], gl[i]
        y_pred["boxes"][i, :len(db[i])], y_pred["scores"][i, :len(db[i])] = db[i], ds[i]
        y_pred["labels"][i, :len(db[i])] = dl[i]
    want = voc_ap({"boxes": gb, "labels": gl}, {"boxes": db, "scores": ds, "labels": dl})
    assert voc_ap({k: tf.constant(v) for k, v in y_true.items()}, y_pred) == want
    swap = {**y_true, "boxes": y_true["boxes"][..., [1, 0, 3, 2]]}
    swap_pred = {**y_pred, "boxes": y_pred["boxes"][..., [1, 0, 3, 2]]}
    assert voc_ap(swap, swap_pred, bounding_box_format="yxyx") == want


def test_invalid_inputs():
    y_true = {"boxes": np.float32([[[0, 0, 10, 10]]]), "labels": np.int32([[0]])}
    y_pred = {"boxes": np.float32([[[0, 0, 10, 10]]]), "scores": np.float32([[0.5]]), "labels": np.int32([[0]])}
    with pytest.raises(ValueError, match="iou_threshold"):
        voc_ap(y_true, y_pred, iou_threshold=1.5)
    with pytest.raises(ValueError, match="NaN"):
        voc_ap(y_true, {**y_pred, "boxes": np.float32([[[0, 0, np.nan, 10]]])})
    with pytest.raises(ValueError, match="difficult"):
        voc_ap(y_true, y_pred, difficult=np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="keys"):
        pr_curve(y_true, {"boxes": y_pred["boxes"]})
