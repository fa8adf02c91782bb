"""Input checks shared by every public kdet function.

Each check raises ``ValueError`` with a message that says what was received
and what was expected, so bad input never fails deep inside a graph.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# The formats of keras.utils.bounding_boxes (Keras 3.8+).
BOX_FORMATS = (
    "xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw",
    "rel_xyxy", "rel_yxyx", "rel_xywh", "rel_center_xywh",
)


def check_box_format(bounding_box_format: str) -> str:
    """Returns the lower-cased format, or raises if Keras does not know it."""
    if not isinstance(bounding_box_format, str) or bounding_box_format.lower() not in BOX_FORMATS:
        raise ValueError(
            f"Unknown bounding_box_format {bounding_box_format!r}; expected one of "
            f"{', '.join(BOX_FORMATS)} (the formats of keras.utils.bounding_boxes)."
        )
    return bounding_box_format.lower()


def check_head_output_ids(ids: Sequence[int], num_classes: int, lowest: int = 0) -> tuple[int, ...]:
    """Checks ``head_output_ids``: one distinct head index >= ``lowest`` per class; returns them as ints.

    Args:
        ids: the head output index of each kdet label.
        num_classes: how many labels the model has.
        lowest: the smallest allowed index (1 where output 0 is the background).
    """
    ids = tuple(int(i) for i in ids)
    if len(ids) != num_classes or min(ids, default=lowest) < lowest or len(set(ids)) != len(ids):
        where = "non-negative" if lowest == 0 else f">= {lowest} ({lowest - 1} is the background)"
        raise ValueError(f"head_output_ids must hold {num_classes} distinct {where} head indices (one per class); "
                         f"received {len(ids)} values.")
    return ids


def check_probability(name: str, value: Any, *, allow_zero: bool = True,
                      allow_one: bool = True) -> float:
    """Checks a threshold in [0, 1] (bounds optionally excluded)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1]; received {value!r}.") from None
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if math.isnan(value) or not (low_ok and high_ok):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{name} must be in {lo}, {hi}; received {value}.")
    return value


def check_positive_number(name: str, value: Any) -> float:
    """Checks a finite number > 0 (a weight, a scale); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
        0 < value < math.inf
    ):
        raise ValueError(f"{name} must be a finite number > 0; received {value!r}.")
    return float(value)


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Checks a strictly positive (or non-negative) Python integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
        value < 0 or (value == 0 and not allow_zero)
    ):
        need = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {need} integer; received {value!r}.")
    return int(value)


def check_image_size(image_size: Any, multiple_of: int = 1) -> tuple[int, int]:
    """Normalises ``image_size`` (int or (height, width)) to a (h, w) tuple."""
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(
            f"image_size must be an int or a (height, width) pair; received {image_size!r}."
        ) from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive; received {image_size!r}.")
    if h % multiple_of or w % multiple_of:
        raise ValueError(
            f"image_size {image_size!r} must be divisible by {multiple_of} (the largest "
            f"feature stride of this architecture); try "
            f"{(math.ceil(h / multiple_of) * multiple_of, math.ceil(w / multiple_of) * multiple_of)}."
        )
    return h, w


def check_input_size(image_size: Any, multiple_of: int = 1) -> tuple:
    """Like ``check_image_size`` but ``None`` (or None entries) stand for a size set per call.

    Backbones and networks take it: a ``(None, None)`` input builds a fully
    convolutional network whose canvas follows the image ("min_max" resizing).
    """
    if image_size is None:
        return (None, None)
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and None in image_size:
        if any(s is not None for s in image_size):
            raise ValueError(f"image_size must be fully known or (None, None); received {image_size!r}.")
        return (None, None)
    return check_image_size(image_size, multiple_of=multiple_of)


def check_images(images: Any, name: str = "images") -> np.ndarray:
    """Checks a NumPy batch of RGB images (B, H, W, 3) in 0..255 and returns it.

    Grayscale (B, H, W) / (B, H, W, 1) and RGBA (B, H, W, 4) batches are
    converted to RGB rather than rejected.
    """
    arr = np.asarray(images)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array; received dtype object.")
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
        arr = arr[..., None]  # a batch of grayscale images
    if arr.ndim != 4:
        raise ValueError(
            f"{name} must be a batch of shape (batch, height, width, 3); received shape "
            f"{arr.shape}. Use model.detect() for a single image."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape}); expected at least one image.")
    channels = arr.shape[-1]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif channels == 4:
        arr = arr[..., :3]
    elif channels != 3:
        raise ValueError(
            f"{name} must have 3 (RGB) channels; received {channels} channels (shape {arr.shape})."
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be uint8 or float pixels in 0..255; received dtype {arr.dtype}.")
    return arr


def check_ground_truth(y: Any, num_classes: int | None = None, *, name: str = "y", image_size=None) -> dict:
    """Checks a ground-truth dict {"boxes": (B, M, 4), "labels": (B, M)[, "masks": (B, M, H, W)]} held in NumPy.

    Padded rows carry ``label == -1`` and are not checked. Instance masks, when
    present, are checked by :func:`check_masks` (one per box row, in the pixels
    of the input images when ``image_size`` = (H, W) of the images is given).
    """
    if not isinstance(y, dict) or "boxes" not in y or "labels" not in y:
        got = sorted(y) if isinstance(y, dict) else type(y).__name__
        raise ValueError(
            f"{name} must be a dict with keys 'boxes' (B, M, 4) and 'labels' (B, M); received {got}."
        )
    boxes = np.asarray(y["boxes"], dtype=np.float32)
    labels = np.asarray(y["labels"])
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}['boxes'] must have shape (batch, max_boxes, 4); received {boxes.shape}.")
    if labels.shape != boxes.shape[:2]:
        raise ValueError(
            f"{name}['labels'] must have shape {boxes.shape[:2]} to match the boxes; "
            f"received {labels.shape}."
        )
    valid = labels != -1
    if not np.all(np.isfinite(boxes[valid])):
        raise ValueError(f"{name}['boxes'] contains NaN or inf in non-padded rows.")
    if num_classes is not None:
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            raise ValueError(
                f"{name}['labels'] must be in [0, {num_classes}) (or -1 for padding); "
                f"received {sorted(set(labels[bad].tolist()))[:10]}."
            )
    out = {"boxes": boxes, "labels": labels.astype(np.int32)}
    if isinstance(y, dict) and y.get("masks") is not None:
        out["masks"] = check_masks(y["masks"], boxes.shape[:2], image_size, name=f"{name}['masks']")
    return out


def check_masks(masks: Any, rows: tuple[int, int], image_size=None, *, name: str = "y['masks']") -> np.ndarray:
    """Checks ground-truth instance masks and returns them as a (B, M, H, W) uint8 array.

    Args:
        masks: (B, M, H, W) array of 0/1 (uint8, bool or any number type), or
            a list of B per-image (M, H, W) arrays (ragged batches, densified).
        rows: (B, M) of the boxes the masks belong to, row for row.
        image_size: (H, W) of the input images, or None not to check it.
        name: the argument name used in messages.

    Raises:
        ValueError: wrong rank, count (not one mask per box row), size (not the
            images' pixels) or values (not 0/1), saying what was received and expected.
    """
    batch, max_boxes = (int(r) for r in rows)
    if isinstance(masks, (list, tuple)):
        arrays = [np.asarray(m) for m in masks]
        shapes = {a.shape for a in arrays}
        if len(arrays) != batch or len(shapes) != 1 or arrays[0].ndim != 3:
            raise ValueError(f"{name} as a list must hold {batch} per-image (max_boxes, height, width) arrays "
                             f"of one shape; received shapes {[a.shape for a in arrays][:4]}.")
        masks = np.stack(arrays)
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise ValueError(f"{name} must have shape (batch, max_boxes, height, width) = ({batch}, {max_boxes}, H, W), "
                         f"one mask per box row in image pixels; received shape {masks.shape}.")
    if masks.shape[:2] != (batch, max_boxes):
        raise ValueError(f"{name} must have one mask per box row: expected shape ({batch}, {max_boxes}, H, W) to "
                         f"match the boxes ({batch}, {max_boxes}, 4); received {masks.shape}.")
    if image_size is not None and tuple(masks.shape[2:]) != tuple(int(s) for s in image_size):
        raise ValueError(f"{name} must be in the pixels of the input images: expected height x width "
                         f"{tuple(int(s) for s in image_size)}; received masks of {tuple(masks.shape[2:])} "
                         f"(shape {masks.shape}).")
    if masks.dtype != bool:
        if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
            raise ValueError(f"{name} must hold 0/1 numbers (uint8); received dtype {masks.dtype}.")
        bad = (masks != 0) & (masks != 1)
        if bad.any():
            raise ValueError(f"{name} must hold 0 or 1 (uint8); received values such as "
                             f"{sorted(set(masks[bad].ravel()[:1000].tolist()))[:5]}; e.g. use (masks > 0).")
    return masks.astype(np.uint8)


def check_degenerate_xyxy(boxes: np.ndarray, labels: np.ndarray, name: str = "boxes") -> None:
    """Raises if a non-padded xyxy box has x2 < x1 or y2 < y1."""
    valid = labels != -1
    b = boxes[valid]
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} degenerate box(es) with x2 < x1 or y2 < y1, e.g. "
            f"{b[bad][0].tolist()}; expected the declared bounding_box_format."
        )


def as_pair(value: Any, name: str) -> Sequence:
    """Returns ``value`` as a list, checking it is a sequence."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list or tuple; received {value!r}.")
    return list(value)
