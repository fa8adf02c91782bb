"""kdet.metrics.coco_map(iou_type="segm") against pycocotools' COCOeval(iouType="segm") on RLE masks."""

import contextlib
import io

import numpy as np
import pytest
import tensorflow as tf

from kdet.metrics import COCO_METRIC_NAMES, coco_map
from kdet.metrics._masks import paste_crop
from kdet.ops import paste_masks

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

_UNKNOWN_CATEGORY = 10**6  # see test_coco.py: loadRes refuses an empty result list


def _rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def pycoco_segm_stats(gt_masks, gt_labels, dt_masks, dt_scores, dt_labels):
    """The 12 numbers of pycocotools (segm) for per-image lists of (n, H, W) masks."""
    images, anns, dets, cats = [], [], [], set()
    for i, masks in enumerate(gt_masks):
        height, width = masks.shape[1:]
        images.append({"id": i + 1, "height": height, "width": width})
        for mask, label in zip(masks, np.asarray(gt_labels[i]).tolist()):
            rle = _rle(mask)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label), "segmentation": rle,
                         "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
            cats.add(int(label))
        for mask, score, label in zip(dt_masks[i], np.asarray(dt_scores[i]).tolist(),
                                      np.asarray(dt_labels[i]).tolist()):
            dets.append({"image_id": i + 1, "category_id": int(label), "segmentation": _rle(mask),
                         "score": float(score)})
    dets.append({"image_id": 1, "category_id": _UNKNOWN_CATEGORY, "score": 1.0,
                 "segmentation": _rle(np.ones(gt_masks[0].shape[1:], np.uint8))})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns,
                           "categories": [{"id": c, "name": str(c)} for c in sorted(cats)]}
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_METRIC_NAMES, evaluator.stats.tolist()))


def _random_mask(rng, height, width):
    """Rectangles (often touching the border), ellipses, rings, noisy blobs, large border strips, empty masks."""
    yy, xx = np.mgrid[0:height, 0:width]
    kind = rng.choice(6, p=[0.25, 0.25, 0.15, 0.15, 0.05, 0.15])
    cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
    ry, rx = rng.uniform(2, height / 2), rng.uniform(2, width / 2)
    if kind == 0:  # clipped rectangle: touches the border when it sticks out
        mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    elif kind == 1:
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    elif kind == 2:
        r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = (r2 <= 1) & (r2 >= 0.4)
    elif kind == 3:
        mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.5) & (rng.random((height, width)) < 0.7)
    elif kind == 4:
        mask = np.zeros((height, width), bool)
    else:  # a large strip touching three borders
        mask = xx < rng.uniform(0.3, 1.0) * width
    return mask.astype(np.uint8)


def _jitter(rng, mask):
    """A detection near a ground-truth mask: shifted, grown or shrunk, with flipped pixels."""
    out = np.roll(mask, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    if rng.random() < 0.3:
        out = out | np.roll(out, 1, axis=1)
    if rng.random() < 0.3:
        out = out & np.roll(out, 1, axis=0)
    flip = rng.random(mask.shape) < 0.002
    return np.where(flip, 1 - out, out).astype(np.uint8)


def random_segm_case(rng, num_images, max_gt, max_dt, num_classes, same_size=False):
    gm, gl, dm, ds, dl = [], [], [], [], []
    size = rng.integers(24, 160, 2)  # large enough for all three COCO area ranges (32^2, 96^2)
    for _ in range(num_images):
        height, width = (int(v) for v in (size if same_size else rng.integers(24, 160, 2)))
        ng, nd = int(rng.integers(0, max_gt + 1)), int(rng.integers(0, max_dt + 1))
        g = np.zeros((ng, height, width), np.uint8)
        for k in range(ng):
            g[k] = _random_mask(rng, height, width)
        g_lab = rng.integers(0, num_classes, ng)
        d = np.zeros((nd, height, width), np.uint8)
        d_lab = rng.integers(0, num_classes + 1, nd)
        for k in range(nd):
            if ng and rng.random() < 0.7:
                src = int(rng.integers(0, ng))
                d[k] = _jitter(rng, g[src])
                d_lab[k] = g_lab[src] if rng.random() < 0.8 else d_lab[k]
            else:
                d[k] = _random_mask(rng, height, width)
        scores = np.where(rng.random(nd) < 0.3, rng.integers(0, 4, nd) / 4, rng.random(nd))  # ties too
        gm.append(g), gl.append(g_lab), dm.append(d), ds.append(scores.astype(np.float32)), dl.append(d_lab)
    return gm, gl, dm, ds, dl


def _boxes_of(masks):
    boxes = np.zeros((len(masks), 4), np.float32)
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if xs.size:
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def _as_lists(gm, gl, dm, ds, dl):
    y_true = {"boxes": [_boxes_of(m) for m in gm], "labels": list(gl), "masks": list(gm)}
    y_pred = {"boxes": [_boxes_of(m) for m in dm], "scores": list(ds), "labels": list(dl), "masks": list(dm)}
    return y_true, y_pred


def _assert_equal_stats(ours, theirs):
    for key in COCO_METRIC_NAMES:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (key, ours[key], theirs[key])


@pytest.mark.parametrize("seed", range(6))
def test_matches_pycocotools_segm_on_random_sets(seed):
    rng = np.random.default_rng(seed)
    gm, gl, dm, ds, dl = random_segm_case(rng, num_images=int(rng.integers(3, 9)), max_gt=6, max_dt=12,
                                          num_classes=3)
    gm[0], gl[0] = gm[0][:0], gl[0][:0]                 # an image without ground truth ...
    dm[-1], ds[-1], dl[-1] = dm[-1][:0], ds[-1][:0], dl[-1][:0]  # ... and one without detections
    # A 128 x 150 image with a large object (> 96^2 pixels) touching three borders, detected.
    large = np.zeros((2, 128, 150), np.uint8)
    large[0, :, :100] = 1
    large[1] = _random_mask(rng, 128, 150)
    gm[1], gl[1] = large, np.array([0, 1])
    dm[1], ds[1], dl[1] = np.stack([_jitter(rng, large[0]), _jitter(rng, large[1])]), np.array([0.6, 0.3]), [0, 1]
    theirs = pycoco_segm_stats(gm, gl, dm, ds, dl)
    ours = coco_map(*_as_lists(gm, gl, dm, ds, dl), iou_type="segm")
    _assert_equal_stats(ours, theirs)
    assert ours["AP"] > 0.05 and ours["APl"] != -1 and ours["APs"] != -1  # the sets are not trivial


def test_padded_dense_batches_and_border_touching_masks():
    rng = np.random.default_rng(11)
    gm, gl, dm, ds, dl = random_segm_case(rng, num_images=5, max_gt=4, max_dt=8, num_classes=2, same_size=True)
    height, width = gm[0].shape[1:]
    gm[1] = np.zeros((2, height, width), np.uint8)
    gm[1][0, :, :5] = 1                            # touches the left, top and bottom borders
    gm[1][1, height - 3:, width - 9:] = 1          # the bottom-right corner
    gl[1] = np.array([0, 1])
    dm[1] = np.stack([gm[1][0], gm[1][1], np.roll(gm[1][1], -2, axis=1)])
    ds[1], dl[1] = np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 1, 1])
    theirs = pycoco_segm_stats(gm, gl, dm, ds, dl)

    def pad(arrays, rows, fill):
        return np.stack([np.concatenate([a, np.full((rows - len(a),) + a.shape[1:], fill, a.dtype)]) for a in arrays])

    m, k = max(map(len, gm)), max(map(len, dm))
    y_true = {"boxes": pad([_boxes_of(g) for g in gm], m, 0), "labels": pad(gl, m, -1), "masks": pad(gm, m, 0)}
    y_pred = {"boxes": pad([_boxes_of(d) for d in dm], k, 0), "scores": pad(ds, k, 0), "labels": pad(dl, k, -1),
              "masks": pad(dm, k, 0)}
    _assert_equal_stats(coco_map(y_true, y_pred, iou_type="segm"), theirs)
    # Tensors and ragged tensors give the same numbers.
    as_tensors = {k: tf.constant(v) for k, v in y_pred.items()}
    lengths = [len(g) for g in gm]
    ragged = {k: tf.RaggedTensor.from_tensor(tf.constant(v), lengths=lengths) for k, v in y_true.items()}
    _assert_equal_stats(coco_map(ragged, as_tensors, iou_type="segm"), theirs)


def _grid_case(rng, num_images, height, width):
    """Detections as the detector outputs them: 28 x 28 probability grids in their boxes."""
    gm, gl, dm, ds, dl, grids, boxes = [], [], [], [], [], [], []
    for _ in range(num_images):
        ng, nd = int(rng.integers(1, 5)), int(rng.integers(0, 9))
        g = np.stack([_random_mask(rng, height, width) for _ in range(ng)])
        g_lab = rng.integers(0, 2, ng)
        src = rng.integers(0, ng, nd)
        box = _boxes_of(g[src]) + rng.normal(0, 1.5, (nd, 4)).astype(np.float32)
        box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 0.5)
        # Smooth grids (a blob in the box plus noise): pasted masks look like objects.
        yy, xx = np.mgrid[0:28, 0:28] / 27.0
        grid = np.zeros((nd, 28, 28), np.float32)
        for k in range(nd):
            blob = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / rng.uniform(0.05, 0.3) - 1
            grid[k] = 1 / (1 + np.exp(8 * blob)) + rng.normal(0, 0.1, (28, 28))
        pasted = paste_masks(grid[None], box[None], height, width, threshold=0.5).numpy()[0]
        gm.append(g), gl.append(g_lab), dm.append(pasted), ds.append(rng.random(nd).astype(np.float32))
        dl.append(np.where(rng.random(nd) < 0.8, g_lab[src], 1 - g_lab[src]))
        grids.append(grid), boxes.append(box)
    return (gm, gl, dm, ds, dl), grids, boxes


@pytest.mark.parametrize("seed", [0, 1])
def test_probability_grids_are_pasted_like_paste_masks(seed):
    rng = np.random.default_rng(100 + seed)
    case, grids, boxes = _grid_case(rng, 6, 40, 56)
    gm, gl, dm, ds, dl = case
    theirs = pycoco_segm_stats(*case)  # on masks pasted by kdet.ops.paste_masks and RLE-encoded
    y_true = {"boxes": [_boxes_of(g) for g in gm], "labels": gl, "masks": gm}
    y_pred = {"boxes": boxes, "scores": ds, "labels": dl, "masks": grids}
    ours = coco_map(y_true, y_pred, iou_type="segm")
    _assert_equal_stats(ours, theirs)
    assert ours["AP50"] > 0.05  # not trivial: blobs in jittered boxes of random shapes
    # The metric's NumPy crop paste is the TF op's: same pixels after the threshold.
    for grid, box, pasted in zip(grids, boxes, dm):
        for g, b, p in zip(grid, box, pasted):
            (y0, x0), prob = paste_crop(g, b, 40, 56)
            full = np.zeros((40, 56), bool)
            full[y0:y0 + prob.shape[0], x0:x0 + prob.shape[1]] = prob > 0.5
            np.testing.assert_array_equal(full, p == 1)


def test_box_and_segm_agree_on_rectangle_masks():
    # Masks that are exactly their integer boxes: mask IoU = box IoU, mask area = box area.
    rng = np.random.default_rng(3)
    boxes_t, labels_t, masks_t, boxes_p, scores_p, labels_p, masks_p = [], [], [], [], [], [], []
    for _ in range(4):
        xy = np.sort(rng.integers(0, 47, (5, 2, 2)), axis=2)  # (box, x|y, low|high)
        g = np.stack([xy[:, 0, 0], xy[:, 1, 0], xy[:, 0, 1] + 1, xy[:, 1, 1] + 1], 1)
        d = np.clip(g + rng.integers(-2, 3, (5, 4)), 0, 48)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        for boxes, store in ((g, masks_t), (d, masks_p)):
            m = np.zeros((5, 48, 48), np.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes):
                m[k, y1:y2, x1:x2] = 1
            store.append(m)
        labels = rng.integers(0, 2, 5)
        boxes_t.append(g.astype(np.float32)), labels_t.append(labels)
        boxes_p.append(d.astype(np.float32)), scores_p.append(rng.random(5)), labels_p.append(labels)
    y_true = {"boxes": boxes_t, "labels": labels_t, "masks": masks_t}
    y_pred = {"boxes": boxes_p, "scores": scores_p, "labels": labels_p, "masks": masks_p}
    _assert_equal_stats(coco_map(y_true, y_pred, iou_type="segm"), coco_map(y_true, y_pred))


def test_segm_input_errors_say_what_was_received():
    masks = np.zeros((1, 2, 10, 12), np.uint8)
    y_true = {"boxes": np.zeros((1, 2, 4)), "labels": [[0, -1]], "masks": masks}
    y_pred = {"boxes": np.zeros((1, 2, 4)), "scores": [[0.5, 0.1]], "labels": [[0, 0]], "masks": masks}
    with pytest.raises(ValueError, match="iou_type must be one of"):
        coco_map(y_true, y_pred, iou_type="mask")
    with pytest.raises(ValueError, match=r"y_true has no 'masks'.*\(B, M, H, W\)"):
        coco_map({"boxes": y_true["boxes"], "labels": y_true["labels"]}, y_pred, iou_type="segm")
    with pytest.raises(ValueError, match=r"y_pred has no 'masks'"):
        coco_map(y_true, {k: v for k, v in y_pred.items() if k != "masks"}, iou_type="segm")
    with pytest.raises(ValueError, match=r"y_true\['masks'\]\[0\] must have shape \(2, height, width\).*\(3, 10, 12\)"):
        coco_map({**y_true, "masks": np.zeros((1, 3, 10, 12))}, y_pred, iou_type="segm")
    with pytest.raises(ValueError, match=r"y_pred\['masks'\]\[0\] masks are \(10, 11\) pixels but the ground-truth "
                                         r"masks are \(10, 12\)"):
        coco_map(y_true, {**y_pred, "masks": np.zeros((1, 2, 10, 11), np.uint8)}, iou_type="segm")
    with pytest.raises(ValueError, match=r"float masks of shape \(2, 10, 12\).*uint8 or bool"):
        coco_map(y_true, {**y_pred, "masks": masks.astype(np.float32)}, iou_type="segm")
    with pytest.raises(ValueError, match=r"must have shape \(batch, rows, height, width\).*\(2, 10, 12\)"):
        coco_map(y_true, {**y_pred, "masks": masks[0]}, iou_type="segm")
