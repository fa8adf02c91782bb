"""Turns ground-truth and detection dicts into flat NumPy rows for the metrics.

The metrics accept what kdet produces and what users hold: padded batches
(``label == -1`` on padding, optional ``num_detections``), ``tf.RaggedTensor``
batches, or Python lists of per-image arrays. Everything is validated once
here and reduced to the valid rows of every image, in image-major order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kdet.metrics._masks import MaskCrops, flatten_masks
from kdet.validation import check_box_format


@dataclasses.dataclass
class FlatBoxes:
    """The valid rows of a batch, image-major (original row order kept).

    Attributes:
        num_images: number of images in the batch (images may have no rows).
        image: (N,) int64 index of the image of each row.
        boxes: (N, 4) float64 boxes in the requested target format.
        labels: (N,) int64 class labels (>= 0).
        scores: (N,) float64 scores, or None for ground truth.
        difficult: (N,) bool VOC "difficult" flags, or None.
        masks: the rows' binary masks (:class:`kdet.metrics._masks.MaskCrops`), or None.
    """

    num_images: int
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    difficult: np.ndarray | None = None
    masks: MaskCrops | None = None

    @staticmethod
    def concatenate(parts: list["FlatBoxes"]) -> "FlatBoxes":
        """Joins batches into one; image indices are shifted batch after batch."""
        offsets = np.cumsum([0] + [p.num_images for p in parts])
        def cat(attr, inner):
            values = [getattr(p, attr) for p in parts]
            if any(v is None for v in values):
                return None
            return np.concatenate(values) if values else np.zeros((0,) + inner)
        image = [p.image + o for p, o in zip(parts, offsets)]
        return FlatBoxes(
            num_images=int(offsets[-1]),
            image=np.concatenate(image) if image else np.zeros(0, np.int64),
            boxes=cat("boxes", (4,)),
            labels=cat("labels", ()).astype(np.int64),
            scores=cat("scores", ()),
            difficult=cat("difficult", ()),
            masks=None if any(p.masks is None for p in parts) or not parts
            else MaskCrops.concatenate([p.masks for p in parts]),
        )


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _flatten(value: Any, name: str, inner: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A batched field -> (rows (N, *inner), rows per image (B,))."""
    import tensorflow as tf

    if isinstance(value, tf.RaggedTensor):
        if value.ragged_rank != 1:
            value = tf.RaggedTensor.from_tensor(value.to_tensor(), lengths=value.row_lengths())
        counts = value.row_lengths().numpy()
        flat = _to_numpy(value.values)
    elif isinstance(value, (list, tuple)) and not _is_dense_nested(value, inner):
        arrays = [_to_numpy(v) for v in value]
        for i, a in enumerate(arrays):
            if a.size and a.shape[1:] != inner:
                raise ValueError(
                    f"{name}[{i}] must have shape (n, {', '.join(map(str, inner))}) per image; "
                    f"received {a.shape}." if inner else
                    f"{name}[{i}] must have shape (n,) per image; received {a.shape}."
                )
        counts = np.array([a.shape[0] if a.size else 0 for a in arrays], np.int64)
        flat = (np.concatenate([a.reshape((-1,) + inner) for a in arrays]) if arrays
                else np.zeros((0,) + inner))
    else:
        arr = _to_numpy(value)
        if arr.ndim != 2 + len(inner) or arr.shape[2:] != inner:
            want = "(batch, max_rows" + "".join(f", {d}" for d in inner) + ")"
            raise ValueError(
                f"{name} must be batched with shape {want} (or a ragged tensor / list of per-image "
                f"arrays); received shape {arr.shape}. Wrap a single image as x[None]."
            )
        counts = np.full(arr.shape[0], arr.shape[1], np.int64)
        flat = arr.reshape((-1,) + inner)
    return flat, counts


def _is_dense_nested(value, inner) -> bool:
    """True for a nested Python list that is a rectangular (B, M, *inner) batch."""
    try:
        arr = np.asarray(value)
    except ValueError:
        return False
    return arr.dtype != object and arr.ndim == 2 + len(inner) and arr.shape[0] > 0 and arr.shape[1] > 0


def _check_dict(y: Any, keys: tuple[str, ...], name: str, expected: str) -> None:
    if not isinstance(y, dict) or any(k not in y for k in keys):
        got = sorted(map(str, y)) if isinstance(y, dict) else type(y).__name__
        raise ValueError(f"{name} must be a dict with keys {expected}; received {got}.")


def _labels(flat: np.ndarray, name: str) -> np.ndarray:
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        if not np.issubdtype(flat.dtype, np.number) or not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)):
            raise ValueError(f"{name} must hold integer class labels (-1 for padding); received {flat.dtype} values.")
    labels = flat.astype(np.int64)
    if np.any(labels < -1):
        raise ValueError(
            f"{name} must be >= 0 (or -1 for padding); received {sorted(set(labels[labels < -1].tolist()))[:5]}."
        )
    return labels


def convert_rows(boxes: np.ndarray, bounding_box_format: str, target: str, image_size, name: str) -> np.ndarray:
    """Converts valid rows (N, 4) to ``target`` through kdet.ops (Keras' converters)."""
    from kdet.ops.boxes import convert_format

    fmt = check_box_format(bounding_box_format)
    height = width = None
    if fmt.startswith("rel_"):
        if image_size is None:
            raise ValueError(
                f"{name} are in the relative format {fmt!r}; pass image_size=(height, width) so "
                "areas and IoUs are measured in pixels."
            )
        height, width = (float(s) for s in image_size)
    if boxes.shape[0] == 0:
        return np.zeros((0, 4))
    out = convert_format(boxes.astype(np.float32), fmt, target, height=height, width=width)
    return np.asarray(out, dtype=np.float32).astype(np.float64)


def flatten_boxes(y: Any, name: str, *, detections: bool, bounding_box_format: str = "xyxy",
                  target: str = "xyxy", image_size=None, difficult=None, masks: bool = False,
                  mask_image_sizes=None) -> FlatBoxes:
    """Validates a GT or detection dict and returns its valid rows.

    Args:
        y: GT ``{"boxes": (B, M, 4), "labels": (B, M)}`` or detections
            ``{"boxes", "scores", "labels"[, "num_detections"]}``; padded,
            ragged or lists of per-image arrays.
        name: the argument name used in error messages.
        detections: whether ``y`` holds detections (needs scores).
        bounding_box_format: format of ``y["boxes"]``.
        target: format of the returned boxes ("xyxy" or "xywh").
        image_size: (height, width), needed for ``rel_*`` formats.
        difficult: optional (B, M) VOC difficult flags aligned with the GT rows.
        masks: also flatten ``y["masks"]`` (see :mod:`kdet.metrics._masks`).
        mask_image_sizes: (B, 2) image sizes to paste predicted mask grids at
            (the ground truth's) and to check pasted masks against.
    """
    keys = ("boxes", "scores", "labels") if detections else ("boxes", "labels")
    expected = ("'boxes' (B, K, 4), 'scores' (B, K), 'labels' (B, K) and optionally 'num_detections' (B,)"
                if detections else "'boxes' (B, M, 4) and 'labels' (B, M)")
    _check_dict(y, keys, name, expected)
    boxes, counts = _flatten(y["boxes"], f"{name}['boxes']", (4,))
    labels_flat, label_counts = _flatten(y["labels"], f"{name}['labels']", ())
    if not np.array_equal(counts, label_counts):
        raise ValueError(
            f"{name}['labels'] must have one label per box; received {label_counts.tolist()[:8]} labels "
            f"for {counts.tolist()[:8]} boxes per image."
        )
    labels = _labels(labels_flat, f"{name}['labels']")
    num_images = counts.shape[0]
    valid = labels >= 0
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    position = np.arange(labels.shape[0]) - starts
    image = np.repeat(np.arange(num_images, dtype=np.int64), counts)
    scores = None
    if detections:
        scores, score_counts = _flatten(y["scores"], f"{name}['scores']", ())
        if not np.array_equal(counts, score_counts):
            raise ValueError(f"{name}['scores'] must have one score per box; received shapes that disagree.")
        if y.get("num_detections") is not None:
            num = _to_numpy(y["num_detections"]).reshape(-1)
            if num.shape[0] != num_images or np.any(num < 0) or np.any(num > counts):
                raise ValueError(
                    f"{name}['num_detections'] must have shape ({num_images},) with values in "
                    f"[0, rows per image]; received {num.tolist()[:8]}."
                )
            valid &= position < np.repeat(num, counts)
        scores = scores.astype(np.float64)
        if not np.all(np.isfinite(scores[valid])):
            raise ValueError(f"{name}['scores'] contains NaN or inf in valid (non-padded) rows.")
        scores = scores[valid]
    if not np.all(np.isfinite(boxes[valid])):
        raise ValueError(f"{name}['boxes'] contains NaN or inf in valid (non-padded) rows.")
    flags = None
    if difficult is not None:
        flags, flag_counts = _flatten(difficult, "difficult", ())
        if not np.array_equal(counts, flag_counts):
            raise ValueError("difficult must have one flag per ground-truth box (same shape as y_true['labels']).")
        flags = flags.astype(bool)[valid]
    out = convert_rows(boxes[valid], bounding_box_format, target, image_size, f"{name}['boxes']")
    _check_not_degenerate(out, target, f"{name}['boxes']")
    mask_rows = None
    if masks:
        if y.get("masks") is None:
            raise ValueError(f"{name} has no 'masks'; mask AP (iou_type='segm') needs {name}['masks'] "
                             + ("(B, K, M, M) probabilities or (B, K, H, W) pasted masks." if detections
                                else "(B, M, H, W) in image pixels, row-aligned with the boxes."))
        xyxy = convert_rows(boxes[valid], bounding_box_format, "xyxy", image_size, f"{name}['boxes']")
        mask_rows = flatten_masks(y["masks"], f"{name}['masks']", counts, valid, detections=detections,
                                  boxes_xyxy=xyxy.astype(np.float32), image_sizes=mask_image_sizes)
    return FlatBoxes(num_images, image[valid], out, labels[valid], scores, flags, mask_rows)


def _check_not_degenerate(boxes: np.ndarray, fmt: str, name: str) -> None:
    if fmt == "xywh":
        bad = (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    else:
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} degenerate box(es) with negative width or height (shown "
            f"in {fmt}: {boxes[bad][0].tolist()}); check bounding_box_format."
        )


def check_same_images(gt: FlatBoxes, dt: FlatBoxes) -> None:
    """Raises if y_true and y_pred describe different numbers of images."""
    if gt.num_images != dt.num_images:
        raise ValueError(
            f"y_true has {gt.num_images} images but y_pred has {dt.num_images}; "
            "they must describe the same batch."
        )
    if gt.num_images == 0:
        raise ValueError("y_true and y_pred are empty batches (0 images); expected at least one image.")
