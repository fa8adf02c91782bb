"""Instance masks for the COCO segm metric: validation, pasting, compact storage, IoU.

A batch's masks can be large (B x K x H x W) and a whole evaluation far
larger, so the valid rows are kept as *crops*: each mask's non-zero bounding
rectangle (its origin and a bool array), which costs memory in proportion to
the object, not the image. Mask IoU and area are then exactly pycocotools'
on RLE-encoded masks (``maskUtils.iou`` / ``maskUtils.area``, iscrowd = 0):
intersection and union pixel counts, IoU 0 when the masks do not meet.

Predicted masks come in one of two forms, told apart by their dtype:

- floating point: per-detection grids ``(B, K, M, M)`` of probabilities in the
  detection's box (a detector's ``"masks"`` output). They are pasted into the
  image with torchvision's ``paste_masks_in_image`` rules (the NumPy twin of
  :func:`kdet.ops.paste_masks`, here producing crops) at the size of the
  ground-truth masks, and thresholded at ``probability > 0.5`` (torchvision's
  COCO evaluation);
- integer or bool: masks already pasted into image pixels ``(B, K, H, W)``,
  non-zero inside.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: Pasted probabilities above this are inside the mask (torchvision references/detection/coco_eval.py).
MASK_THRESHOLD = 0.5
_F32 = np.float32


@dataclasses.dataclass
class MaskCrops:
    """Binary masks of the valid rows of a batch, each stored as its non-zero bounding crop.

    Attributes:
        origins: (N, 2) int64 (y, x) of each crop's top-left pixel.
        crops: N bool arrays (empty (0, 0) for an empty mask).
        areas: (N,) float64 pixel counts (pycocotools ``maskUtils.area``).
        image_sizes: (num_images, 2) int64 (height, width) of each image.
    """

    origins: np.ndarray
    crops: list
    areas: np.ndarray
    image_sizes: np.ndarray

    @staticmethod
    def concatenate(parts: list["MaskCrops"]) -> "MaskCrops":
        return MaskCrops(
            origins=np.concatenate([p.origins for p in parts]) if parts else np.zeros((0, 2), np.int64),
            crops=[c for p in parts for c in p.crops],
            areas=np.concatenate([p.areas for p in parts]) if parts else np.zeros(0),
            image_sizes=np.concatenate([p.image_sizes for p in parts]) if parts else np.zeros((0, 2), np.int64),
        )


def _crop(mask: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if rows.size == 0:
        return (0, 0), np.zeros((0, 0), bool)
    return (int(rows[0]), int(cols[0])), mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _per_image(value: Any, name: str, counts: np.ndarray) -> list[np.ndarray]:
    """A batched masks field -> one array (rows, ...) per image, checked against the rows per image."""
    import tensorflow as tf

    if isinstance(value, tf.RaggedTensor):
        arrays = [np.asarray(v) for v in value.to_list()] if value.ragged_rank > 1 else \
            [r.numpy() for r in value]
    elif isinstance(value, (list, tuple)):
        arrays = [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in value]
    else:
        arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if arr.ndim != 4:
            raise ValueError(f"{name} must have shape (batch, rows, height, width) (or a list of per-image "
                             f"(rows, height, width) arrays); received shape {arr.shape}.")
        arrays = list(arr)
    if len(arrays) != counts.shape[0]:
        raise ValueError(f"{name} holds {len(arrays)} images; expected {counts.shape[0]}, as the boxes.")
    for i, (a, n) in enumerate(zip(arrays, counts)):
        if a.ndim != 3 or a.shape[0] != n:
            raise ValueError(f"{name}[{i}] must have shape ({n}, height, width): one mask per box row; "
                             f"received {a.shape}.")
    return arrays


def _interpolation_weights(start: int, stop: int, low: int, high: int, grid: int) -> np.ndarray:
    """(high - low, grid) bilinear weights of image pixels low..high-1 (PyTorch align_corners=False, float32)."""
    length = max(stop - start + 1, 1)
    local = np.arange(low, high) - start
    src = np.maximum(_F32(grid) / _F32(length) * (local.astype(_F32) + _F32(0.5)) - _F32(0.5), _F32(0))
    lo = np.minimum(src.astype(np.int64), grid - 1)
    hi = np.minimum(lo + 1, grid - 1)
    frac = np.clip(src - lo.astype(_F32), 0, 1).astype(_F32)
    weights = np.zeros((local.size, grid), _F32)
    np.add.at(weights, (np.arange(local.size), lo), _F32(1) - frac)
    np.add.at(weights, (np.arange(local.size), hi), frac)
    return weights


def paste_crop(grid: np.ndarray, box: np.ndarray, height: int, width: int,
               padding: int = 1) -> tuple[tuple[int, int], np.ndarray]:
    """One (M, M) probability grid pasted at an xyxy box: ((y, x), probabilities) of its visible crop.

    The same rules and float32 arithmetic as :func:`kdet.ops.paste_masks`
    (torchvision ``paste_masks_in_image``), restricted to the pixels the
    expanded integer box covers inside the image.
    """
    m = grid.shape[-1]
    size = m + 2 * padding
    padded = np.pad(grid.astype(_F32), padding)
    x1, y1, x2, y2 = np.asarray(box, _F32)
    scale = _F32(float(size) / m)
    w_half, h_half = (x2 - x1) * _F32(0.5) * scale, (y2 - y1) * _F32(0.5) * scale
    x_c, y_c = (x2 + x1) * _F32(0.5), (y2 + y1) * _F32(0.5)
    bx0, by0, bx1, by1 = (int(np.trunc(v)) for v in (x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half))
    xa, xb = max(bx0, 0), min(bx1 + 1, width)
    ya, yb = max(by0, 0), min(by1 + 1, height)
    if xb <= xa or yb <= ya:
        return (0, 0), np.zeros((0, 0), _F32)
    columns = padded @ _interpolation_weights(bx0, bx1, xa, xb, size).T
    return (ya, xa), _interpolation_weights(by0, by1, ya, yb, size) @ columns


def flatten_masks(value: Any, name: str, counts: np.ndarray, valid: np.ndarray, *, detections: bool,
                  boxes_xyxy=None, image_sizes=None) -> MaskCrops:
    """Validates a batch's masks and keeps the valid rows as crops.

    Args:
        value: ``(B, rows, H, W)`` binary masks, ``(B, rows, M, M)`` float grids
            (with ``boxes_xyxy``), a ragged tensor or a list of per-image arrays.
        name: argument name for error messages.
        detections: whether these are predictions (float grids are pasted);
            ground-truth masks are binary whatever their dtype (non-zero inside).
        counts: (B,) rows per image (of the boxes).
        valid: (N,) which of the flattened rows are valid.
        boxes_xyxy: (n_valid, 4) float32 boxes of the valid rows, to paste grids.
        image_sizes: (B, 2) sizes to paste grids at / to check binary masks against.
    """
    arrays = _per_image(value, name, counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    grids = detections and any(np.issubdtype(a.dtype, np.floating) for a in arrays)
    sizes = np.array([a.shape[1:] for a in arrays], np.int64).reshape(-1, 2)
    if grids:
        if image_sizes is None or boxes_xyxy is None:
            raise ValueError(f"{name} holds float mask grids (probabilities in each box); they are pasted at the "
                             "ground-truth masks' size, which needs y_true['masks'] (or image_size=).")
        sizes = np.asarray(image_sizes, np.int64)
        bad = [a.shape for a in arrays if a.shape[1] != a.shape[2]]
        if bad:
            raise ValueError(f"{name} holds float masks of shape {bad[0]}: float masks are (rows, M, M) "
                             "probability grids in each box; pass masks already pasted into the image as "
                             "uint8 or bool (B, K, H, W).")
    elif image_sizes is not None and not np.array_equal(sizes, image_sizes):
        bad = int(np.nonzero((sizes != image_sizes).any(1))[0][0])
        raise ValueError(f"{name}[{bad}] masks are {tuple(sizes[bad].tolist())} pixels but the ground-truth masks "
                         f"are {tuple(np.asarray(image_sizes)[bad].tolist())}; expected the same image size.")
    origins, crops = [], []
    row = 0
    for i, a in enumerate(arrays):
        for k in np.nonzero(valid[offsets[i]:offsets[i + 1]])[0]:
            if grids:
                (py, px), probabilities = paste_crop(a[k], boxes_xyxy[row], int(sizes[i, 0]), int(sizes[i, 1]))
                (cy, cx), crop = _crop(probabilities > MASK_THRESHOLD)
                origin = (py + cy, px + cx) if crop.size else (0, 0)
            else:
                origin, crop = _crop(a[k] != 0)
            origins.append(origin)
            crops.append(crop)
            row += 1
    return MaskCrops(np.array(origins, np.int64).reshape(-1, 2), crops,
                     np.array([c.sum() for c in crops], np.float64), sizes)


def mask_ious(dt: MaskCrops, d_rows: np.ndarray, gt: MaskCrops, g_rows: np.ndarray) -> np.ndarray:
    """IoU of paired rows ``dt[d_rows[i]]`` / ``gt[g_rows[i]]`` as pycocotools ``maskUtils.iou`` (iscrowd 0).

    Pairs whose crops do not overlap are 0 without touching pixels; the others
    count intersection pixels on the overlap of the two crops.
    """
    d_rows, g_rows = np.asarray(d_rows, np.int64), np.asarray(g_rows, np.int64)
    d_shape = np.array([dt.crops[r].shape for r in d_rows], np.int64).reshape(-1, 2)
    g_shape = np.array([gt.crops[r].shape for r in g_rows], np.int64).reshape(-1, 2)
    d0, g0 = dt.origins[d_rows], gt.origins[g_rows]
    lo = np.maximum(d0, g0)
    hi = np.minimum(d0 + d_shape, g0 + g_shape)
    ious = np.zeros(d_rows.shape[0])
    for i in np.nonzero((hi > lo).all(1))[0]:
        (y0, x0), (y1, x1) = lo[i], hi[i]
        (dy, dx), (gy, gx) = d0[i], g0[i]
        inter = np.count_nonzero(dt.crops[d_rows[i]][y0 - dy:y1 - dy, x0 - dx:x1 - dx]
                                 & gt.crops[g_rows[i]][y0 - gy:y1 - gy, x0 - gx:x1 - gx])
        if inter:
            ious[i] = inter / (dt.areas[d_rows[i]] + gt.areas[g_rows[i]] - inter)
    return ious
