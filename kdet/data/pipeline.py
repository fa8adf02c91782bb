"""tf.data pipelines for detection: resize, pad to a fixed number of boxes, batch, prefetch.

Every reader of ``kdet.data`` yields single examples ``(image, {"boxes", "labels"})``
with an (H, W, 3) uint8 image of any size, boxes (n, 4) float32 ``xyxy``
absolute pixels and labels (n,) int32 in ``0..C-1``; instance-segmentation
data adds ``"masks"`` (n, H, W) uint8, row-aligned with the boxes, which every
step below moves with them (nearest-neighbour resizing, the same padding and
truncation, zero masks on padded rows). :func:`prepare` turns such a stream
into training or evaluation batches:

    decode -> [shuffle] -> resize (stretch | letterbox) -> pad boxes to
    ``max_boxes`` (truncation reported) -> batch -> [augment] -> prefetch

Images whose boxes do not fit in ``max_boxes`` keep their first ``max_boxes``
boxes, and every truncation is logged on the ``kdet.data`` logger and counted
in :func:`truncation_stats` (``on_truncate="raise"`` makes it an error), so no
box disappears unnoticed. Shuffling and augmentation take a ``seed``: the same
seed gives the same batches.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import numpy as np
import tensorflow as tf

from kdet.validation import check_image_size, check_positive_int

logger = logging.getLogger("kdet.data")

#: Default number of box rows per image after padding (COCO images hold at most 93 boxes).
DEFAULT_MAX_BOXES = 100
RESIZE_MODES = ("stretch", "letterbox")
_TRUNCATE_MODES = ("warn", "raise")

_stats_lock = threading.Lock()
_TRUNCATION = {"examples": 0, "boxes": 0}


def truncation_stats(reset: bool = False) -> dict:
    """Returns how many examples / boxes :func:`pad_targets` truncated so far in this process.

    Args:
        reset: set the counters back to zero after reading them.

    Returns:
        ``{"examples": int, "boxes": int}``.
    """
    with _stats_lock:
        stats = dict(_TRUNCATION)
        if reset:
            _TRUNCATION.update(examples=0, boxes=0)
    return stats


def _report_truncation(num_boxes, max_boxes):
    num_boxes, max_boxes = int(num_boxes), int(max_boxes)
    with _stats_lock:
        _TRUNCATION["examples"] += 1
        _TRUNCATION["boxes"] += num_boxes - max_boxes
        total = dict(_TRUNCATION)
    logger.warning(
        "kdet.data: an image has %d boxes but max_boxes=%d; kept the first %d "
        "(%d boxes in %d images truncated so far). Raise max_boxes to keep them all.",
        num_boxes, max_boxes, max_boxes, total["boxes"], total["examples"],
    )
    return np.int32(0)


def pad_targets(targets: dict, max_boxes: int = DEFAULT_MAX_BOXES, on_truncate: str = "warn") -> dict:
    """Pads one example's boxes/labels (and masks) to exactly ``max_boxes`` rows (labels -1 on padding).

    Args:
        targets: ``{"boxes": (n, 4), "labels": (n,)[, "masks": (n, H, W)]}``
            of one image (dense or ragged).
        max_boxes: rows after padding.
        on_truncate: ``"warn"`` logs (and counts, see :func:`truncation_stats`)
            each image with more than ``max_boxes`` boxes and keeps the first
            ``max_boxes``; ``"raise"`` fails with ``InvalidArgumentError``.

    Returns:
        ``{"boxes": (max_boxes, 4) float32, "labels": (max_boxes,) int32}``,
        plus ``"masks": (max_boxes, H, W) uint8`` (zeros on padding) when given.

    Example:
        >>> out = pad_targets({"boxes": [[0., 0, 4, 4]], "labels": [2]}, max_boxes=3)
        >>> out["labels"].numpy().tolist()
        [2, -1, -1]
    """
    max_boxes = check_positive_int("max_boxes", max_boxes)
    if on_truncate not in _TRUNCATE_MODES:
        raise ValueError(f"on_truncate must be one of {_TRUNCATE_MODES}; received {on_truncate!r}.")
    boxes = tf.reshape(tf.cast(targets["boxes"], tf.float32), (-1, 4))
    labels = tf.reshape(tf.cast(targets["labels"], tf.int32), (-1,))
    n = tf.shape(labels)[0]
    if on_truncate == "raise":
        tf.debugging.assert_less_equal(
            n, max_boxes, message=f"an image has more boxes than max_boxes={max_boxes} (on_truncate='raise')"
        )
    else:
        tf.cond(n > max_boxes,
                lambda: tf.py_function(_report_truncation, [n, max_boxes], tf.int32),
                lambda: tf.constant(0, tf.int32))
    boxes, labels = boxes[:max_boxes], labels[:max_boxes]
    pad = max_boxes - tf.shape(labels)[0]
    boxes = tf.pad(boxes, [[0, pad], [0, 0]])
    labels = tf.pad(labels, [[0, pad]], constant_values=-1)
    out = {"boxes": tf.ensure_shape(boxes, (max_boxes, 4)), "labels": tf.ensure_shape(labels, (max_boxes,))}
    if "masks" in targets:
        masks = tf.cast(_dense(targets["masks"]), tf.uint8)[:max_boxes]
        masks = tf.pad(masks, [[0, pad], [0, 0], [0, 0]])
        out["masks"] = tf.ensure_shape(masks, (max_boxes, None, None))
    return out


def _dense(value):
    return value.to_tensor() if isinstance(value, tf.RaggedTensor) else tf.convert_to_tensor(value)


def mask_on_value(fill_value: float) -> float:
    """The value mask pixels carry through Keras' image layers: never the fill value of uncovered areas."""
    return 1.0 if float(fill_value) != 1.0 else 2.0


def masks_to_channels(masks, on_value: float = 1.0):
    """(..., n, H, W) {0, 1} masks -> (..., H, W, n + 1) float32 "image" for Keras' image layers.

    Mask pixels carry ``on_value``; one spare zero channel is appended because
    TensorFlow's resize ops refuse images with zero channels (no objects).
    """
    masks = _dense(masks)
    rank = masks.shape.rank
    perm = list(range(rank - 3)) + [rank - 2, rank - 1, rank - 3]
    channels = tf.transpose(tf.cast(masks > 0, tf.float32) * on_value, perm)
    spare = tf.zeros(tf.concat([tf.shape(channels)[:-1], [1]], axis=0), tf.float32)
    return tf.concat([channels, spare], axis=-1)


def masks_from_channels(channels, on_value: float = 1.0):
    """Inverse of :func:`masks_to_channels` after a nearest-neighbour transform: (..., n, H, W) uint8.

    Pixels filled by the layer (uncovered areas) hold its fill value, which is
    never ``on_value`` (:func:`mask_on_value`), so they come back as 0.
    """
    rank = channels.shape.rank
    perm = list(range(rank - 3)) + [rank - 1, rank - 3, rank - 2]
    return tf.transpose(tf.cast(tf.equal(channels[..., :-1], on_value), tf.uint8), perm)


def sanitize_boxes(boxes, labels, height, width, min_size: float = 1.0, masks=None):
    """Clips xyxy boxes to the image, drops degenerate ones with their labels, compacts the rows.

    Works on one image ``(M, 4)`` / ``(M,)`` or a batch ``(B, M, 4)`` / ``(B, M)``.
    A box is kept if its label is >= 0 and, after clipping to
    ``[0, width] x [0, height]``, both sides are at least ``min_size`` pixels.
    Kept rows move to the front (in their original order); dropped rows become
    padding (label -1, box zeros, and an empty mask when ``masks`` is given).

    Args:
        masks: optional ``(M, H, W)`` / ``(B, M, H, W)`` masks of the rows.

    Returns:
        ``(boxes, labels)`` with the input shapes, or ``(boxes, labels,
        masks)`` when ``masks`` is given.
    """
    boxes = tf.cast(boxes, tf.float32)
    labels = tf.cast(labels, tf.int32)
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    x1 = tf.clip_by_value(boxes[..., 0], 0.0, width)
    y1 = tf.clip_by_value(boxes[..., 1], 0.0, height)
    x2 = tf.clip_by_value(boxes[..., 2], 0.0, width)
    y2 = tf.clip_by_value(boxes[..., 3], 0.0, height)
    boxes = tf.stack([x1, y1, x2, y2], axis=-1)
    keep = (labels >= 0) & (x2 - x1 >= min_size) & (y2 - y1 >= min_size)
    keep &= tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    # A stable sort on "dropped" moves the kept rows to the front in their order.
    order = tf.argsort(tf.cast(~keep, tf.int32), axis=-1, stable=True)
    batch_dims = len(labels.shape) - 1
    boxes = tf.gather(tf.where(keep[..., None], boxes, 0.0), order, batch_dims=batch_dims)
    labels = tf.gather(tf.where(keep, labels, -1), order, batch_dims=batch_dims)
    if masks is None:
        return boxes, labels
    masks = tf.cast(_dense(masks), tf.uint8)
    masks = tf.gather(masks * tf.cast(keep, tf.uint8)[..., None, None], order, batch_dims=batch_dims)
    return boxes, labels, masks


def resize(image, targets: dict, image_size, mode: str = "letterbox", fill_value: float = 114.0):
    """Resizes one image and its xyxy boxes to ``image_size`` with Keras' ``Resizing`` layer.

    Args:
        image: (H, W, 3) image.
        targets: ``{"boxes": (n, 4) xyxy pixels, "labels": (n,)[, "masks": (n, H, W)]}``.
        image_size: int or (height, width).
        mode: ``"stretch"`` (each axis scaled independently) or ``"letterbox"``
            (aspect kept, the short side padded equally on both sides with
            ``fill_value``: Keras' ``pad_to_aspect_ratio``; YOLO pads with 114).

    Returns:
        ``(image float32 (h, w, 3), targets)`` with boxes in the new pixels;
        masks go through the same Keras layer with nearest-neighbour
        interpolation (Keras' ``segmentation_masks``), zero on the padding.
    """
    import keras

    height, width = check_image_size(image_size)
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}; received {mode!r}.")
    layer = keras.layers.Resizing(height, width, pad_to_aspect_ratio=mode == "letterbox",
                                  fill_value=fill_value, bounding_box_format="xyxy", dtype="float32")
    boxes = tf.reshape(tf.cast(targets["boxes"], tf.float32), (-1, 4))
    labels = tf.cast(targets["labels"], tf.int32)
    data = {"images": tf.cast(image, tf.float32), "bounding_boxes": {"boxes": boxes, "labels": labels}}
    on_value = mask_on_value(fill_value)
    if "masks" in targets:
        data["segmentation_masks"] = masks_to_channels(targets["masks"], on_value)
    out = layer(data)
    if "masks" not in targets:
        new_boxes, new_labels = sanitize_boxes(out["bounding_boxes"]["boxes"], labels, height, width, min_size=0.0)
        return out["images"], {"boxes": new_boxes, "labels": new_labels}
    masks = masks_from_channels(out["segmentation_masks"], on_value)
    new_boxes, new_labels, masks = sanitize_boxes(out["bounding_boxes"]["boxes"], labels, height, width,
                                                  min_size=0.0, masks=masks)
    return out["images"], {"boxes": new_boxes, "labels": new_labels, "masks": masks}


def _pad_and_maybe_resize(image_size, mode, max_boxes, on_truncate, fill_value):
    def fn(image, targets):
        image = tf.ensure_shape(image, (None, None, 3))
        if image_size is not None:
            image, targets = resize(image, targets, image_size, mode, fill_value)
        else:
            image = tf.cast(image, tf.float32)
        return image, pad_targets(targets, max_boxes, on_truncate)

    return fn


def prepare(dataset: tf.data.Dataset, *, image_size=None, batch_size: int | None = 8,
            max_boxes: int = DEFAULT_MAX_BOXES, resize_mode: str = "letterbox",
            augmenter: Callable | None = None, shuffle_buffer: int | None = None, seed: int = 0,
            repeat: bool = False, drop_remainder: bool = False, prefetch: bool = True,
            on_truncate: str = "warn", fill_value: float = 114.0) -> tf.data.Dataset:
    """Turns a stream of single examples into padded, optionally augmented batches.

    Args:
        dataset: yields ``(image (H, W, 3), {"boxes": (n, 4) xyxy pixels, "labels": (n,)})``
            (``"masks": (n, H, W)`` too for instance segmentation).
        image_size: int or (height, width) to resize every image to; None keeps
            the sizes (then images of one batch are zero-padded at the bottom
            and right to the largest of the batch, which leaves boxes exact).
        batch_size: examples per batch; None returns unbatched, padded examples.
        max_boxes: box rows per image after padding (truncation reported).
        resize_mode: ``"letterbox"`` (keep aspect, pad) or ``"stretch"``.
        augmenter: a callable on batches ``(images, targets) -> (images, targets)``,
            e.g. :class:`kdet.data.Augmenter` (needs ``batch_size``).
        shuffle_buffer: shuffle examples with this buffer (None: keep order).
        seed: seed of the shuffle (and of nothing else: augmenters take their own).
        repeat: repeat forever (for ``steps_per_epoch`` training).
        drop_remainder: drop the last incomplete batch.
        prefetch: prefetch with ``tf.data.AUTOTUNE``.
        on_truncate: see :func:`pad_targets`.
        fill_value: letterbox padding value.

    Returns:
        ``tf.data.Dataset`` of ``(images float32 (B, h, w, 3) in 0..255,
        {"boxes": (B, max_boxes, 4) float32, "labels": (B, max_boxes) int32})``,
        plus ``"masks": (B, max_boxes, h, w) uint8`` when the examples hold masks
        (memory grows as ``B * max_boxes * h * w`` bytes: keep ``max_boxes`` modest).

    Example:
        >>> ds = prepare(kdet.data.synthetic("train", 4, 64), image_size=96, batch_size=2, max_boxes=5)
        >>> [tuple(t.shape) for t in next(iter(ds))[1].values()]
        [(2, 5, 4), (2, 5)]
    """
    if image_size is not None:
        image_size = check_image_size(image_size)
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}; received {resize_mode!r}.")
    if augmenter is not None and batch_size is None:
        raise ValueError("augmenter works on batches; pass batch_size as well.")
    options = tf.data.Options()
    options.deterministic = True
    dataset = dataset.with_options(options)
    if shuffle_buffer:
        dataset = dataset.shuffle(check_positive_int("shuffle_buffer", shuffle_buffer), seed=seed,
                                  reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(_pad_and_maybe_resize(image_size, resize_mode, max_boxes, on_truncate, fill_value),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
        if image_size is None:
            padding = {"boxes": 0.0, "labels": -1}
            if "masks" in dataset.element_spec[1]:
                padding["masks"] = tf.constant(0, tf.uint8)
            dataset = dataset.padded_batch(batch_size, padding_values=(0.0, padding), drop_remainder=drop_remainder)
        else:
            dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augmenter is not None:
        dataset = dataset.map(augmenter)  # serial: the augmenter's random state advances in order
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset
