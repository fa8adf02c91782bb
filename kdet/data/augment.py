"""Box-exact data augmentation for detection batches.

:class:`Augmenter` chains Keras' own box-aware preprocessing layers
(``RandomFlip``, ``RandomTranslation``, ``RandomRotation``, ``RandomZoom``,
``RandomCrop`` with ``bounding_box_format=...``; colour layers
``RandomBrightness``, ``RandomContrast``, ``RandomSaturation``, ``RandomHue``)
and keras-cv's ``Mosaic``, which Keras lacks (keras-cv is optional:
``pip install "kdet[mosaic]"``). Scale jitter (keras-cv's
``JitteredResize``) uses Keras ``RandomZoom`` and MixUp is written here:
keras-cv 0.9's versions do not repeat their draws for a fixed seed under
Keras 3 and Keras' ``MixUp`` mislabels boxes. Gamma is a two-line pixel map.

After every geometric step boxes are clipped to the image and those that became
degenerate (a side under ``min_box_size`` pixels) are dropped together with
their labels (:func:`kdet.data.pipeline.sanitize_boxes`), so the padded
``{"boxes", "labels"}`` dict always describes what the pixels show. Boxes that
do not fit in the padded rows after Mosaic / MixUp are counted and logged like
any truncation (``kdet.data.truncation_stats``).

Instance masks (``"masks"`` (B, M, H, W) uint8, row-aligned with the boxes)
move with the boxes: through the same Keras layer call as Keras
``segmentation_masks`` (nearest-neighbour, the same random draw), the same
crop, Mosaic tiles (:func:`_mosaic_masks`) and MixUp concatenation, and they
are dropped, compacted and truncated with their rows. Areas uncovered by a
transform are outside every mask.

Batches are ``(images (B, H, W, 3) float 0..255, {"boxes": (B, M, 4), "labels": (B, M)[,
"masks": (B, M, H, W)]})`` with boxes in ``bounding_box_format`` pixels (the pipeline
produces xyxy).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet.data.pipeline import mask_on_value, masks_from_channels, masks_to_channels, sanitize_boxes
from kdet.errors import MissingExtraError
from kdet.ops.boxes import convert_format
from kdet.validation import check_box_format, check_image_size, check_probability

# Colour jitter defaults in the spirit of YOLOv3/SSD photometric distortion
# (Liu et al. 2016, SSD, "photometric distortions"; ultralytics hyp hsv_h=0.015).
DEFAULT_BRIGHTNESS = 0.15
DEFAULT_CONTRAST = 0.15
DEFAULT_SATURATION = (0.35, 0.65)  # Keras: 0.5 is identity
DEFAULT_HUE = 0.015
DEFAULT_GAMMA = (0.8, 1.25)
# Beta(alpha, alpha) of the MixUp ratio; keras-cv's default alpha.
MIXUP_ALPHA = 0.2


def _keras_cv_mosaic(seed: int, probability: float):
    """keras-cv's ``Mosaic`` layer; keras-cv is imported here only, when Mosaic is asked for.

    Raises:
        kdet.MissingExtraError: keras-cv is not installed (kdet's ``mosaic`` extra).
    """
    try:
        import keras_cv
    except ImportError as error:
        raise MissingExtraError(f"Augmenter(mosaic={probability})", "keras-cv", "mosaic") from error
    return keras_cv.layers.Mosaic(bounding_box_format="xyxy", seed=seed)


def _keras_boxes(images, boxes, labels):
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


class Augmenter:
    """Randomly augments batches of images and padded boxes, keeping boxes on their pixels.

    Args:
        image_size: (height, width) of the output; needed by ``crop`` and
            ``mosaic``. Default: the input size.
        bounding_box_format: format of the boxes in and out (any Keras format).
        flip: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` or None.
        brightness, contrast: Keras ``RandomBrightness`` / ``RandomContrast``
            factors (0 or None: off).
        saturation: Keras ``RandomSaturation`` factor (0.5 = identity) or None.
        hue: Keras ``RandomHue`` factor or None.
        gamma: (low, high) range of a per-image gamma curve, or None.
        scale: (low, high) range of the content scale (scale jitter, as keras-cv
            ``JitteredResize``; done with Keras ``RandomZoom``, which keeps the
            aspect ratio and the output size), or None.
        crop: fraction of the side kept by Keras ``RandomCrop`` followed by a
            resize back to ``image_size`` (e.g. 0.8), or None.
        translate: Keras ``RandomTranslation`` factor (fraction of the side).
        rotate: Keras ``RandomRotation`` factor (fraction of a full turn).
        zoom: Keras ``RandomZoom`` factor.
        mosaic: probability of keras-cv ``Mosaic`` for a batch (Bochkovskiy et al. 2020).
        mixup: probability of MixUp for a batch (Zhang et al. 2018): images
            blended with ratio ~ Beta(0.2, 0.2), boxes of both kept.
        min_box_size: boxes with a side shorter than this (pixels) after a
            geometric step are dropped with their labels.
        fill_value: pixel value of areas uncovered by geometric steps.
        seed: seed of every random layer: the same seed gives the same augmentations.

    Example:
        >>> aug = Augmenter(flip="horizontal", seed=1)
        >>> x, y = kdet.data.synthetic_arrays(2, 64)
        >>> images, targets = aug(tf.cast(x, tf.float32), y)
        >>> tuple(images.shape), tuple(targets["boxes"].shape)
        ((2, 64, 64, 3), (2, 3, 4))
    """

    def __init__(self, image_size=None, bounding_box_format: str = "xyxy", flip: str | None = "horizontal",
                 brightness: float | None = DEFAULT_BRIGHTNESS, contrast: float | None = DEFAULT_CONTRAST,
                 saturation=DEFAULT_SATURATION, hue: float | None = DEFAULT_HUE,
                 gamma: Sequence[float] | None = DEFAULT_GAMMA, scale: Sequence[float] | None = None,
                 crop: float | None = None, translate: float = 0.0, rotate: float = 0.0, zoom: float = 0.0,
                 mosaic: float = 0.0, mixup: float = 0.0, min_box_size: float = 2.0,
                 fill_value: float = 114.0, seed: int = 0):
        self.image_size = None if image_size is None else check_image_size(image_size)
        self.bounding_box_format = check_box_format(bounding_box_format)
        self.mosaic = check_probability("mosaic", mosaic)
        self.mixup = check_probability("mixup", mixup)
        if (crop is not None or self.mosaic) and self.image_size is None:
            raise ValueError("scale, crop and mosaic need image_size=(height, width) of the output.")
        if gamma is not None and not (len(gamma) == 2 and 0 < gamma[0] <= gamma[1]):
            raise ValueError(f"gamma must be a (low, high) range with 0 < low <= high; received {gamma!r}.")
        if crop is not None and not 0 < crop <= 1:
            raise ValueError(f"crop must be a fraction in (0, 1]; received {crop!r}.")
        self.min_box_size = float(min_box_size)
        self.gamma = None if gamma is None else (float(gamma[0]), float(gamma[1]))
        self.seed = int(seed)
        self._rng = tf.random.Generator.from_seed(self.seed)
        self._geometric = self._build_geometric(flip, scale, crop, translate, rotate, zoom, fill_value)
        self._colour = self._build_colour(brightness, contrast, saturation, hue)
        if self.mosaic:
            self._mosaic_layer = _keras_cv_mosaic(seed=self.seed + 101, probability=self.mosaic)

    # ------------------------------------------------------------ building
    def _seed(self, k: int) -> int:
        return self.seed * 1000 + k

    def _build_geometric(self, flip, scale, crop, translate, rotate, zoom, fill_value):
        steps = []
        fill = dict(fill_mode="constant", fill_value=fill_value, bounding_box_format="xyxy")
        if flip:
            steps.append(("keras", keras.layers.RandomFlip(flip, bounding_box_format="xyxy", seed=self._seed(1))))
        if crop is not None and crop < 1:
            h, w = self.image_size
            steps.append(("keras_crop", keras.layers.RandomCrop(max(1, round(h * crop)), max(1, round(w * crop)),
                                                                   bounding_box_format="xyxy", seed=self._seed(2))))
        if translate:
            steps.append(("keras", keras.layers.RandomTranslation(translate, translate, seed=self._seed(3), **fill)))
        if rotate:
            steps.append(("keras", keras.layers.RandomRotation(rotate, seed=self._seed(4), **fill)))
        if zoom:
            steps.append(("keras", keras.layers.RandomZoom(zoom, zoom, seed=self._seed(5), **fill)))
        if scale is not None:
            # Scale jitter (the "jittered resize" of Ghiasi et al. 2021 / keras-cv JitteredResize)
            # with Keras' box-aware RandomZoom: keras-cv 0.9's JitteredResize does not repeat
            # its draws for a fixed seed under Keras 3 (measured), RandomZoom does.
            # Keras zooms by (1 + factor), so content scale s in [low, high] is factor 1/s - 1.
            low, high = float(scale[0]), float(scale[1])
            if not 0 < low <= high:
                raise ValueError(f"scale must be a (low, high) range with 0 < low <= high; received {scale!r}.")
            steps.append(("keras", keras.layers.RandomZoom((1 / high - 1, 1 / low - 1), None,
                                                           seed=self._seed(6), **fill)))
        return steps

    def _build_colour(self, brightness, contrast, saturation, hue):
        layers = []
        if brightness:
            layers.append(keras.layers.RandomBrightness(brightness, value_range=(0, 255), seed=self._seed(11)))
        if contrast:
            layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=self._seed(12)))
        if saturation is not None:
            layers.append(keras.layers.RandomSaturation(saturation, value_range=(0, 255), seed=self._seed(13)))
        if hue:
            layers.append(keras.layers.RandomHue(hue, value_range=(0, 255), seed=self._seed(14)))
        return layers

    # ------------------------------------------------------------ applying
    def __call__(self, images, targets: dict):
        """Augments one batch; returns ``(images float32, {"boxes", "labels"[, "masks"]})``, same row count."""
        images = tf.cast(images, tf.float32)
        if images.shape.rank != 4:
            raise ValueError(f"Augmenter works on batches (B, H, W, 3); received shape {images.shape}.")
        labels = tf.cast(targets["labels"], tf.int32)
        max_boxes = labels.shape[-1] if labels.shape[-1] is not None else tf.shape(labels)[-1]
        shape = tf.shape(images)
        boxes = convert_format(tf.cast(targets["boxes"], tf.float32), self.bounding_box_format, "xyxy",
                               height=shape[1], width=shape[2])
        t = _sanitize({"boxes": boxes, "labels": labels, **_masks_of(targets)}, shape[1], shape[2], 0.0)
        if self.mosaic:
            images, t = self._maybe(self.mosaic, self._apply_mosaic, images, t, max_boxes)
        if self.mixup:
            images, t = self._maybe(self.mixup, self._apply_mixup, images, t, max_boxes)
        for kind, layer in self._geometric:
            images, t = self._apply_geometric(kind, layer, images, t)
        for layer in self._colour:
            # Keras layers compute in the global policy's dtype (float16 under mixed precision).
            images = tf.cast(layer(images, training=True), tf.float32)
        if self.gamma is not None:
            images = self._apply_gamma(images)
        images = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)
        shape = tf.shape(images)
        t["boxes"] = convert_format(t["boxes"], "xyxy", self.bounding_box_format, height=shape[1], width=shape[2])
        return images, t

    def _maybe(self, probability, fn, images, t, max_boxes):
        if probability >= 1.0:
            return fn(images, t, max_boxes)
        draw = self._rng.uniform(())
        return tf.cond(draw < probability, lambda: fn(images, t, max_boxes), lambda: (images, t))

    def _finish(self, images, t):
        shape = tf.shape(images)
        return images, _sanitize(t, shape[1], shape[2], self.min_box_size)

    def _apply_geometric(self, kind, layer, images, t):
        if kind == "keras_crop":
            images, t = _random_crop(layer, images, t, self.image_size)
            return self._finish(images, t)
        data = _keras_boxes(images, t["boxes"], t["labels"])
        # Masks ride along as Keras "segmentation_masks" (nearest interpolation, same transformation).
        on_value = mask_on_value(getattr(layer, "fill_value", 0.0))
        if "masks" in t:
            data["segmentation_masks"] = masks_to_channels(t["masks"], on_value)
        out = layer(data, training=True)
        t = {"boxes": out["bounding_boxes"]["boxes"], "labels": t["labels"]}
        if "segmentation_masks" in out:
            t["masks"] = masks_from_channels(out["segmentation_masks"], on_value)
        return self._finish(out["images"], t)

    def _apply_mosaic(self, images, t, max_boxes):
        # keras-cv's Mosaic steps called one by one (what its call() does for images and
        # boxes), so that the masks can follow the very same draw (_mosaic_masks).
        shape = tf.shape(images)
        sy = self.image_size[0] / tf.cast(shape[1], tf.float32)
        sx = self.image_size[1] / tf.cast(shape[2], tf.float32)
        images = tf.image.resize(images, self.image_size)
        boxes = t["boxes"] * tf.stack([sx, sy, sx, sy])
        layer = self._mosaic_layer
        transformations = layer.get_random_transformation_batch(tf.shape(images)[0])
        mosaic = layer.augment_images(images, transformations)
        out = layer.augment_bounding_boxes({"boxes": boxes, "classes": t["labels"]}, transformations, images=mosaic)
        if "masks" in t:
            masks = tf.image.resize(tf.transpose(t["masks"], [0, 2, 3, 1]), self.image_size, method="nearest")
            out["masks"] = _mosaic_masks(tf.transpose(masks, [0, 3, 1, 2]), transformations, self.image_size)
        return self._finish(mosaic, _dense_from_keras_cv(out, max_boxes))

    def _apply_mixup(self, images, t, max_boxes):
        # MixUp for detection (Zhang et al. 2018; boxes of both images kept, as keras-cv does).
        # Written here on our seeded generator: keras-cv 0.9's MixUp does not repeat its draws
        # for a fixed seed under Keras 3, and Keras 3.15's MixUp concatenates box labels along
        # the batch axis (measured).
        batch = tf.shape(images)[0]
        permutation = tf.argsort(self._rng.uniform([batch]))
        seeds = self._rng.make_seeds(2)
        a = tf.random.stateless_gamma([batch], seeds[:, 0], alpha=MIXUP_ALPHA)
        b = tf.random.stateless_gamma([batch], seeds[:, 1], alpha=MIXUP_ALPHA)
        lam = tf.reshape(a / (a + b), (-1, 1, 1, 1))
        images = lam * images + (1.0 - lam) * tf.gather(images, permutation)
        both = {("classes" if k == "labels" else k): tf.concat([v, tf.gather(v, permutation)], axis=1)
                for k, v in t.items()}
        return self._finish(images, _dense_from_keras_cv(both, max_boxes))

    def _apply_gamma(self, images):
        # Log-uniform gamma, one per image: x -> 255 * (x / 255) ** gamma keeps 0 and 255 fixed.
        low, high = self.gamma
        batch = tf.shape(images)[0]
        log_gamma = self._rng.uniform([batch, 1, 1, 1], tf.math.log(low), tf.math.log(high))
        return 255.0 * tf.pow(tf.clip_by_value(images, 0.0, 255.0) / 255.0, tf.exp(log_gamma))


def _masks_of(targets: dict) -> dict:
    """``{"masks": (B, M, H, W) uint8}`` if the targets hold masks, else ``{}``."""
    if targets.get("masks") is None:
        return {}
    masks = targets["masks"]
    if isinstance(masks, tf.RaggedTensor):
        masks = masks.to_tensor()
    return {"masks": tf.cast(tf.convert_to_tensor(masks) > 0, tf.uint8)}


def _sanitize(t: dict, height, width, min_size: float) -> dict:
    """:func:`sanitize_boxes` on a targets dict (masks, when present, follow their rows)."""
    out = sanitize_boxes(t["boxes"], t["labels"], height, width, min_size, masks=t.get("masks"))
    return dict(zip(("boxes", "labels", "masks"), out))


def _random_crop(layer, images, t, image_size):
    """Keras ``RandomCrop`` on the images, boxes shifted here, then a resize back to ``image_size``.

    Keras 3.15's ``RandomCrop.transform_bounding_boxes`` subtracts the row offset
    from x and the column offset from y (found by the pixel property test), so
    the layer draws the crop and crops the images, and the boxes move here.
    Masks are cropped by the same layer and resized back with nearest neighbours.
    """
    transformation = layer.get_random_transformation(images, training=True)
    h_start, w_start = (tf.cast(v, tf.float32) for v in transformation)
    images = layer.transform_images(images, transformation, training=True)
    boxes = t["boxes"] - tf.stack([w_start, h_start, w_start, h_start])
    shape = tf.shape(images)
    sy = image_size[0] / tf.cast(shape[1], tf.float32)
    sx = image_size[1] / tf.cast(shape[2], tf.float32)
    out = {"boxes": boxes * tf.stack([sx, sy, sx, sy]), "labels": t["labels"]}
    if "masks" in t:
        channels = layer.transform_images(masks_to_channels(t["masks"]), transformation, training=True)
        out["masks"] = masks_from_channels(tf.image.resize(channels, image_size, method="nearest"))
    return tf.image.resize(images, image_size), out


def _mosaic_masks(masks, transformations, image_size):
    """Instance masks through keras-cv's Mosaic draw: (B, M, H, W) -> (B, 4 M, H, W) uint8.

    keras-cv tiles four images into a (2H, 2W) canvas (tile t = image
    ``permutation_order[:, t]``, row-major) and resamples the crop box
    ``[(H - cy) / (2H - 1), (W - cx) / (2W - 1)]`` + ``[H, W] / (2H - 1, 2W - 1)``
    (normalised, ``tf.image.crop_and_resize``) back to (H, W). Here each output
    pixel takes the nearest canvas pixel of the same sampling grid, so row
    block ``t`` holds tile ``t``'s masks where that tile shows and zeros
    elsewhere, matching keras-cv's box order (tile-major).
    """
    height, width = image_size
    centres = tf.cast(transformations["mosaic_centers"], tf.float32)
    permutation = transformations["permutation_order"]

    def nearest(centre, size):  # (B,) relative centres -> (B, size) canvas indices
        # crop_and_resize samples y1 * (2 size - 1) + i * (y2 - y1) * (2 size - 1) / (size - 1)
        # with y1 = (size - centre * size) / (2 size - 1) and y2 - y1 = size / (2 size - 1).
        grid = (size - centre * size)[:, None] + tf.range(size, dtype=tf.float32)[None] * (size / max(size - 1, 1))
        return tf.clip_by_value(tf.cast(tf.round(grid), tf.int32), 0, 2 * size - 1)

    rows, cols = nearest(centres[:, 1], height), nearest(centres[:, 0], width)
    blocks = []
    for tile in range(4):
        tile_y, tile_x = divmod(tile, 2)
        source = tf.gather(masks, permutation[:, tile])                          # (B, M, H, W)
        source = tf.gather(source, rows % height, axis=2, batch_dims=1)
        source = tf.gather(source, cols % width, axis=3, batch_dims=1)
        shows = (tf.cast(rows // height == tile_y, tf.uint8)[:, :, None]
                 * tf.cast(cols // width == tile_x, tf.uint8)[:, None, :])       # (B, H, W)
        blocks.append(source * shows[:, None])
    return tf.concat(blocks, axis=1)


def _dense_from_keras_cv(bounding_boxes: dict, max_boxes) -> dict:
    """keras-cv box dicts (ragged or dense, float 'classes') -> dense (B, max_boxes) targets, -1 padding.

    keras-cv drops nothing silently on its own side; here the valid rows are
    moved to the front first, and rows beyond ``max_boxes`` are reported.
    ``"masks"`` (B, N, H, W), when present, follow their rows.
    """
    boxes, classes = bounding_boxes["boxes"], bounding_boxes["classes"]
    if isinstance(boxes, tf.RaggedTensor):
        boxes = boxes.to_tensor(default_value=0.0)
        classes = classes.to_tensor(default_value=-1)
    labels = tf.cast(tf.round(tf.cast(classes, tf.float32)), tf.int32)
    labels = tf.where(classes < 0, -1, labels)
    big = tf.fill(tf.shape(labels)[:1], tf.cast(1e9, tf.float32))  # sanitize without clipping here
    t = _sanitize({"boxes": tf.cast(boxes, tf.float32), "labels": labels, **_masks_of(bounding_boxes)},
                  big[:, None], big[:, None], 0.0)
    count = tf.reduce_sum(tf.cast(t["labels"] >= 0, tf.int32), axis=-1)
    _report_overflow(count, max_boxes)
    extra = tf.maximum(0, max_boxes - tf.shape(t["labels"])[1])
    out = {"boxes": tf.pad(t["boxes"], [[0, 0], [0, extra], [0, 0]])[:, :max_boxes],
           "labels": tf.pad(t["labels"], [[0, 0], [0, extra]], constant_values=-1)[:, :max_boxes]}
    if "masks" in t:
        out["masks"] = tf.pad(t["masks"], [[0, 0], [0, extra], [0, 0], [0, 0]])[:, :max_boxes]
    if isinstance(max_boxes, int):
        out["boxes"] = tf.ensure_shape(out["boxes"], (None, max_boxes, 4))
        out["labels"] = tf.ensure_shape(out["labels"], (None, max_boxes))
    return out


def _report_overflow(count, max_boxes):
    from kdet.data.pipeline import _report_truncation

    def report(counts, limit):
        for n in counts.numpy():
            if n > int(limit):
                _report_truncation(n, limit)
        return tf.constant(0, tf.int32)

    tf.cond(tf.reduce_any(count > max_boxes),
            lambda: tf.py_function(report, [count, max_boxes], tf.int32),
            lambda: tf.constant(0, tf.int32))
