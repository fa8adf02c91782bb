"""COCO segmentations (polygons, uncompressed and compressed RLE) decoded to binary masks.

The decoders reproduce pycocotools' ``COCO.annToMask`` pixel for pixel (the
C code in ``cocoapi/common/maskApi.c``) in NumPy, so kdet reads COCO masks
without depending on pycocotools (the tests compare against it):

- polygons: ``rleFrPoly``: vertices scaled by 5 and rounded, the boundary
  walked densely, its crossings of the pixel-column centres kept and turned
  into run starts (a pixel is inside when an odd number of boundary points
  precede it in column-major order); several polygons of one object are
  merged (union), as ``annToRLE`` does;
- uncompressed RLE ``{"counts": [int, ...], "size": [h, w]}``: alternating
  runs of 0 and 1 in column-major order, starting with 0;
- compressed RLE ``{"counts": "string", "size": [h, w]}``: ``rleFrString``'s
  LEB128-like code (6 bits per character, ASCII 48..111, counts after the
  second stored as differences to the count two before).

Reference: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014;
https://github.com/cocodataset/cocoapi (common/maskApi.c).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: rleFrPoly upsamples polygon vertices by this factor before walking the boundary.
POLYGON_UPSAMPLE = 5.0


def _c_int(values: np.ndarray) -> np.ndarray:
    """C's ``(int)`` cast of doubles: truncation toward zero."""
    return np.trunc(values).astype(np.int64)


def _dense_boundary(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer points along every edge of the closed, upsampled polygon (rleFrPoly's first loop)."""
    xs, xe, ys, ye = x[:-1], x[1:], y[:-1], y[1:]
    dx, dy = np.abs(xe - xs), np.abs(ys - ye)
    along_x = dx >= dy
    flip = (along_x & (xs > xe)) | (~along_x & (ys > ye))
    xs, xe = np.where(flip, xe, xs), np.where(flip, xs, xe)
    ys, ye = np.where(flip, ye, ys), np.where(flip, ys, ye)
    steps = np.where(along_x, dx, dy)
    # A repeated vertex (dx = dy = 0) gives 0/0 in C; its one point is never used
    # (its neighbours share its column), so any slope does.
    slope = np.where(along_x, (ye - ys) / np.maximum(dx, 1), (xe - xs) / np.maximum(dy, 1))
    edge = np.repeat(np.arange(xs.size), steps + 1)
    d = np.arange(edge.size) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    t = np.where(flip[edge], steps[edge] - d, d)
    offset = _c_int((np.where(along_x[edge], ys[edge], xs[edge]) + slope[edge] * t) + 0.5)
    u = np.where(along_x[edge], t + xs[edge], offset)
    v = np.where(along_x[edge], offset, t + ys[edge])
    return u, v


def polygon_to_mask(polygon, height: int, width: int) -> np.ndarray:
    """One COCO polygon ``[x1, y1, x2, y2, ...]`` (pixels) -> (height, width) uint8 mask, as pycocotools."""
    xy = np.asarray(polygon, np.float64).reshape(-1)
    if xy.size < 6 or xy.size % 2 or not np.all(np.isfinite(xy)):
        raise ValueError(f"a polygon needs at least 3 (x, y) points of finite numbers; received {xy.size} numbers.")
    x = _c_int(POLYGON_UPSAMPLE * xy[0::2] + 0.5)
    y = _c_int(POLYGON_UPSAMPLE * xy[1::2] + 0.5)
    u, v = _dense_boundary(np.append(x, x[0]), np.append(y, y[0]))
    # Boundary points where the walk changes column: the crossing of a pixel-column centre.
    step = np.nonzero(u[1:] != u[:-1])[0] + 1
    xd = (np.where(u[step] < u[step - 1], u[step], u[step] - 1) + 0.5) / POLYGON_UPSAMPLE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = (np.minimum(v[step], v[step - 1]) + 0.5) / POLYGON_UPSAMPLE - 0.5
    yd = np.ceil(np.clip(yd, 0, height))
    positions = xd[keep].astype(np.int64) * height + yd[keep].astype(np.int64)
    # Each boundary point starts a new run: a pixel is inside when an odd number of
    # points sit at or before it in column-major order (the sentinel h * w is dropped).
    toggles = np.bincount(positions, minlength=height * width + 1)[: height * width]
    inside = (np.cumsum(toggles) % 2).astype(np.uint8)
    return inside.reshape(width, height).T.copy()


def counts_from_string(counts: str | bytes) -> list[int]:
    """Decodes a compressed COCO RLE string into run lengths (maskApi.c ``rleFrString``)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("compressed RLE string ends in the middle of a count.")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign extension
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_to_mask(counts, height: int, width: int) -> np.ndarray:
    """Run lengths (0-run first, column-major) -> (height, width) uint8 mask."""
    counts = np.asarray(counts, np.int64).reshape(-1)
    if counts.size and (counts.min() < 0 or counts.sum() != height * width):
        raise ValueError(f"RLE counts must be non-negative and sum to height * width = {height * width}; "
                         f"received a sum of {int(counts.sum())}.")
    if not counts.size and height * width:
        raise ValueError(f"RLE counts are empty; expected runs summing to height * width = {height * width}.")
    values = (np.arange(counts.size) % 2).astype(np.uint8)
    return np.repeat(values, counts).reshape(width, height).T.copy()


def mask_to_rle_counts(mask: np.ndarray) -> list[int]:
    """(H, W) binary mask -> uncompressed COCO RLE counts (column-major, 0-run first)."""
    flat = (np.asarray(mask).T.reshape(-1) > 0).astype(np.int8)
    change = np.nonzero(np.diff(flat))[0] + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat.size and flat[0] else counts


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``segmentation`` -> (height, width) uint8 mask, as ``COCO.annToMask``.

    Args:
        segmentation: a list of polygons ``[[x1, y1, ...], ...]``, or an RLE
            dict ``{"counts": [...] | "string", "size": [height, width]}``.
        height, width: the image size (an RLE's ``size`` must match it).

    Returns:
        (height, width) uint8 mask of 0/1.

    Raises:
        ValueError: malformed segmentation, or an RLE of another size.

    Example:
        >>> decode_segmentation([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6).sum()
        np.int64(6)
    """
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not isinstance(size, (list, tuple)) or [int(s) for s in size] != [height, width]:
            raise ValueError(f"RLE size {size!r} does not match the image size [{height}, {width}].")
        counts = segmentation.get("counts")
        if isinstance(counts, (str, bytes)):
            counts = counts_from_string(counts)
        if not isinstance(counts, (list, tuple)):
            raise ValueError(f"RLE counts must be a list or a string; received {type(counts).__name__}.")
        return rle_to_mask(counts, height, width)
    if isinstance(segmentation, (list, tuple)) and segmentation and all(
            isinstance(p, (list, tuple)) for p in segmentation):
        mask = np.zeros((height, width), np.uint8)
        for polygon in segmentation:
            mask |= polygon_to_mask(polygon, height, width)
        return mask
    raise ValueError(
        "segmentation must be a non-empty list of polygons [[x1, y1, x2, y2, ...], ...] or an RLE dict "
        f"{{'counts': ..., 'size': [h, w]}}; received {str(segmentation)[:80]}."
    )


def segmentation_problem(segmentation: Any, height: int | None = None, width: int | None = None) -> str | None:
    """Why a COCO ``segmentation`` cannot be decoded, or None; cheap (nothing is rasterised).

    Readers call it while parsing, so a malformed entry is reported with its
    file and annotation id instead of failing later inside ``tf.data``.
    ``height``/``width`` (the json's image size, when known) are checked
    against an RLE's ``size``.
    """
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size)):
            return f"RLE size {size!r} is not [height, width]"
        if height is not None and width is not None and list(size) != [height, width]:
            return f"RLE size {list(size)} does not match the image size [{height}, {width}]"
        if isinstance(counts, (str, bytes)):
            return None
        if not isinstance(counts, (list, tuple)) or not all(isinstance(c, int) and c >= 0 for c in counts):
            return "RLE counts must be a string or a list of non-negative integers"
        if sum(counts) != size[0] * size[1]:
            return f"RLE counts sum to {sum(counts)}; expected height * width = {size[0] * size[1]}"
        return None
    if not isinstance(segmentation, (list, tuple)) or not segmentation:
        return f"segmentation {str(segmentation)[:60]} is neither polygons [[x1, y1, ...], ...] nor an RLE dict"
    for polygon in segmentation:
        if not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2 or not all(
                isinstance(v, (int, float)) and np.isfinite(v) for v in polygon):
            return f"polygon {str(polygon)[:60]} is not a list of at least 3 (x, y) points"
    return None
