"""A deterministic synthetic detection dataset: coloured shapes with exact boxes and masks.

Each image holds 1..``max_objects`` non-overlapping shapes on a noisy background. The class is
the shape (rectangle, ellipse, triangle, cross, diamond, ring), never the
colour, so a detector has to learn geometry. Boxes are the tight bounds of the
drawn pixels, so they are exact; with ``masks=True`` each object also comes
with its instance mask: exactly the pixels painted in its colour. The default
data for demos, examples and learning tests.

``difficulty="hard"`` (:data:`DIFFICULTIES`) makes a harder variant for checking
that training defaults generalise beyond the standard set: 5 classes, more and
smaller objects (up to 8 per image, 8-30 % of the side), lower contrast against
the background, and unlabelled distractor strokes under the objects. Every
setting of a difficulty can still be given explicitly.
"""

from __future__ import annotations

import numpy as np

from kdet.ops.boxes import iou_numpy
from kdet.validation import check_image_size, check_positive_int

SHAPES = ("rectangle", "ellipse", "triangle", "cross", "diamond", "ring")
# Seeds of the splits are offset so that train/validation/test never share images.
_SPLIT_OFFSETS = {"train": 0, "validation": 1_000_003, "test": 2_000_003}
# The settings of each difficulty (arguments of ``synthetic_arrays`` left as None take these).
# "standard": the data of the architecture issues' learning bar (objects 15-50 % of the side, at
# least 80 of 255 away from the background in some channel, no distractors). "hard": the harder
# data of the training issue (5 classes, objects 8-30 % of the side, up to 8 per image, contrast
# 40-100 of 255, 4 distractor strokes per image).
DIFFICULTIES = {
    "standard": dict(num_classes=3, max_objects=3, min_size=0.15, max_size=0.5, contrast=(80.0, 255.0),
                     distractors=0),
    "hard": dict(num_classes=5, max_objects=8, min_size=0.08, max_size=0.3, contrast=(40.0, 100.0),
                 distractors=4),
}
# Distractor strokes: polylines of 2-4 points, 1-3 px wide, in a random colour.
_STROKE_POINTS = (2, 4)
_STROKE_WIDTH = (1.0, 3.0)


def _shape_mask(kind: str, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of ``kind`` filling an h x w box."""
    yy, xx = np.mgrid[0:h, 0:w]
    u = (xx + 0.5) / w * 2 - 1  # -1..1 across the box
    v = (yy + 0.5) / h * 2 - 1
    if kind == "rectangle":
        return np.ones((h, w), bool)
    if kind == "ellipse":
        return u**2 + v**2 <= 1.0
    if kind == "triangle":  # apex at the top centre, base at the bottom
        return np.abs(u) <= (v + 1) / 2
    if kind == "cross":
        return (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if kind == "ring":
        r2 = u**2 + v**2
        return (r2 <= 1.0) & (r2 >= 0.45)
    raise ValueError(f"Unknown shape {kind!r}; expected one of {SHAPES}.")


def _object_colour(rng, bg, contrast) -> np.ndarray:
    """A colour whose largest channel difference to the background lies in ``contrast`` (low, high)."""
    low, high = contrast
    colour = rng.uniform(0, 255, size=3)
    while not low <= np.abs(colour - bg).max() <= high:  # keep objects visible (and, if asked, faint)
        colour = rng.uniform(0, 255, size=3)
    return colour


def _draw_strokes(rng, image, count):
    """Paints ``count`` unlabelled polylines (distractors) onto ``image`` in place."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(count):
        points = rng.uniform((0, 0), (width, height), size=(int(rng.integers(*_STROKE_POINTS, endpoint=True)), 2))
        radius = rng.uniform(*_STROKE_WIDTH) / 2
        colour = rng.uniform(0, 255, size=3)
        painted = np.zeros((height, width), bool)
        for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
            # Distance of each pixel centre to the segment, through its projection clamped to the ends.
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((xx + 0.5 - x0) * dx + (yy + 0.5 - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
            painted |= np.hypot(xx + 0.5 - x0 - t * dx, yy + 0.5 - y0 - t * dy) <= radius
        image[painted] = colour


def _draw_image(rng, height, width, num_classes, max_objects, min_size, max_size, contrast=(80.0, 255.0),
                distractors=0):
    bg = rng.uniform(0, 255, size=3)
    image = np.clip(bg + rng.normal(0, 12, size=(height, width, 3)), 0, 255)
    if distractors:  # under the objects, so that every object keeps its exact box and mask
        _draw_strokes(rng, image, distractors)
    boxes, labels, masks = [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = rng.uniform(min_size, max_size) * min(height, width)
            aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))  # h / w
            h = int(np.clip(round(side * np.sqrt(aspect)), 6, height))
            w = int(np.clip(round(side / np.sqrt(aspect)), 6, width))
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if all(iou_numpy(box, b) == 0.0 for b in boxes):  # no occlusion: boxes stay exact
                break
        else:
            continue
        label = int(rng.integers(0, num_classes))
        mask = _shape_mask(SHAPES[label], h, w)
        colour = _object_colour(rng, bg, contrast)
        region = image[y0:y0 + h, x0:x0 + w]
        region[mask] = colour
        ys, xs = np.nonzero(mask)  # exact tight box of the drawn pixels
        boxes.append(np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float32))
        labels.append(label)
        masks.append((y0, x0, mask))
    return image.astype(np.uint8), boxes, labels, masks


def _settings(difficulty: str, given: dict) -> dict:
    """The difficulty's settings with the explicitly given (not None) ones replacing them, validated."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}; received {difficulty!r}.")
    out = {**DIFFICULTIES[difficulty], **{k: v for k, v in given.items() if v is not None}}
    if not 1 <= out["num_classes"] <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}]; received {out['num_classes']}.")
    check_positive_int("max_objects", out["max_objects"])
    if not 0 < out["min_size"] <= out["max_size"] <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1; received {out['min_size']}, {out['max_size']}.")
    low, high = (float(v) for v in out["contrast"])
    if not 0 <= low <= high <= 255 or high < 1:
        raise ValueError(f"contrast must be a (low, high) range within 0..255 with high >= 1; received "
                         f"{out['contrast']!r}.")
    out["contrast"] = (low, high)
    check_positive_int("distractors", out["distractors"], allow_zero=True)
    return out


def synthetic_arrays(num_images: int = 8, image_size=128, num_classes: int | None = None,
                     max_objects: int | None = None, seed: int = 0, split: str = "train",
                     min_size: float | None = None, max_size: float | None = None, masks: bool = False,
                     difficulty: str = "standard", contrast: tuple[float, float] | None = None,
                     distractors: int | None = None):
    """Generates the synthetic dataset as NumPy arrays, ready for ``model.fit(x, y)``.

    Args:
        num_images: number of images.
        image_size: int or (height, width).
        num_classes: number of shape classes (1..6), labels ``0..num_classes-1``.
        max_objects: at most this many objects per image (at least one).
        seed: the random seed; the same seed and split give the same images.
        split: "train", "validation" or "test" (disjoint seeds).
        min_size, max_size: object side as a fraction of the short image side.
        masks: also return ``"masks"``: (N, max_objects, H, W) uint8, 1 on
            exactly the pixels of each object's shape (zeros on padded rows).
            The images, boxes and labels are the same with or without masks.
        difficulty: "standard" or "hard": the defaults of every setting left
            None (:data:`DIFFICULTIES`). "standard": 3 classes, up to 3
            objects of 15-50 % of the side; "hard": 5 classes, up to 8 objects
            of 8-30 %, lower contrast, 4 distractor strokes.
        contrast: (low, high) range of each object colour's largest channel
            difference to the background colour (0..255).
        distractors: unlabelled strokes drawn under the objects of each image.

    Returns:
        ``(images, {"boxes", "labels"[, "masks"]})``: images (N, H, W, 3)
        uint8; boxes (N, max_objects, 4) float32 xyxy pixels, the tight bounds
        of each mask; labels (N, max_objects) int32 padded with -1.

    Example:
        >>> x, y = synthetic_arrays(2, 64, seed=1)
        >>> x.shape, y["boxes"].shape
        ((2, 64, 64, 3), (2, 3, 4))
        >>> x, y = synthetic_arrays(2, 64, seed=1, difficulty="hard")
        >>> y["boxes"].shape
        (2, 8, 4)
    """
    num_images = check_positive_int("num_images", num_images)
    height, width = check_image_size(image_size)
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_OFFSETS)}; received {split!r}.")
    cfg = _settings(difficulty, dict(num_classes=num_classes, max_objects=max_objects, min_size=min_size,
                                     max_size=max_size, contrast=contrast, distractors=distractors))
    max_objects = cfg["max_objects"]
    rng = np.random.default_rng(seed + _SPLIT_OFFSETS[split])
    images = np.zeros((num_images, height, width, 3), np.uint8)
    boxes = np.zeros((num_images, max_objects, 4), np.float32)
    labels = np.full((num_images, max_objects), -1, np.int32)
    instance_masks = np.zeros((num_images, max_objects, height, width), np.uint8) if masks else None
    for i in range(num_images):
        image, b, lab, shapes = _draw_image(rng, height, width, **cfg)
        images[i] = image
        if b:
            boxes[i, : len(b)] = np.stack(b)
            labels[i, : len(lab)] = lab
        if masks:
            for j, (y0, x0, shape) in enumerate(shapes):
                instance_masks[i, j, y0:y0 + shape.shape[0], x0:x0 + shape.shape[1]] = shape
    targets = {"boxes": boxes, "labels": labels}
    if masks:
        targets["masks"] = instance_masks
    return images, targets


def synthetic(split: str = "train", num_images: int = 64, image_size=128, seed: int = 0,
              num_classes: int | None = None, max_objects: int | None = None, batch_size: int | None = None,
              masks: bool = False, difficulty: str = "standard"):
    """The synthetic dataset as a ``tf.data.Dataset`` of ``(image, {"boxes", "labels"[, "masks"]})``.

    Same arguments as :func:`synthetic_arrays`; with ``batch_size`` the
    dataset is batched (padded rows keep label -1).
    """
    import tensorflow as tf

    images, targets = synthetic_arrays(num_images, image_size, num_classes, max_objects, seed, split,
                                       masks=masks, difficulty=difficulty)
    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    if batch_size is not None:
        ds = ds.batch(check_positive_int("batch_size", batch_size))
    return ds
