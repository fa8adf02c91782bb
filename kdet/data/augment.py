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

Batches are ``(images (B, H, W, 3) float 0..255, {"boxes": (B, M, 4), "labels": (B, M)})``
with boxes in ``bounding_box_format`` pixels (the pipeline produces xyxy).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet.data.pipeline import sanitize_boxes
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
        """Augments one batch; returns ``(images float32, {"boxes", "labels"})`` of the same row count."""
        images = tf.cast(images, tf.float32)
        if images.shape.rank != 4:
            raise ValueError(f"Augmenter works on batches (B, H, W, 3); received shape {images.shape}.")
        labels = tf.cast(targets["labels"], tf.int32)
        max_boxes = labels.shape[-1] if labels.shape[-1] is not None else tf.shape(labels)[-1]
        shape = tf.shape(images)
        boxes = convert_format(tf.cast(targets["boxes"], tf.float32), self.bounding_box_format, "xyxy",
                               height=shape[1], width=shape[2])
        boxes, labels = sanitize_boxes(boxes, labels, shape[1], shape[2], 0.0)
        if self.mosaic:
            images, boxes, labels = self._maybe(self.mosaic, self._apply_mosaic, images, boxes, labels, max_boxes)
        if self.mixup:
            images, boxes, labels = self._maybe(self.mixup, self._apply_mixup, images, boxes, labels, max_boxes)
        for kind, layer in self._geometric:
            images, boxes, labels = self._apply_geometric(kind, layer, images, boxes, labels, max_boxes)
        for layer in self._colour:
            images = layer(images, training=True)
        if self.gamma is not None:
            images = self._apply_gamma(images)
        images = tf.clip_by_value(images, 0.0, 255.0)
        shape = tf.shape(images)
        boxes = convert_format(boxes, "xyxy", self.bounding_box_format, height=shape[1], width=shape[2])
        return images, {"boxes": boxes, "labels": labels}

    def _maybe(self, probability, fn, images, boxes, labels, max_boxes):
        if probability >= 1.0:
            return fn(images, boxes, labels, max_boxes)
        draw = self._rng.uniform(())
        return tf.cond(draw < probability, lambda: fn(images, boxes, labels, max_boxes),
                       lambda: (images, boxes, labels))

    def _finish(self, images, boxes, labels, max_boxes):
        shape = tf.shape(images)
        boxes, labels = sanitize_boxes(boxes, labels, shape[1], shape[2], self.min_box_size)
        return images, boxes, labels

    def _apply_geometric(self, kind, layer, images, boxes, labels, max_boxes):
        if kind == "keras_crop":
            images, boxes = _random_crop(layer, images, boxes, self.image_size)
            return self._finish(images, boxes, labels, max_boxes)
        out = layer(_keras_boxes(images, boxes, labels), training=True)
        images, boxes = out["images"], out["bounding_boxes"]["boxes"]
        return self._finish(images, boxes, labels, max_boxes)

    def _apply_mosaic(self, images, boxes, labels, max_boxes):
        shape = tf.shape(images)
        sy = self.image_size[0] / tf.cast(shape[1], tf.float32)
        sx = self.image_size[1] / tf.cast(shape[2], tf.float32)
        images = tf.image.resize(images, self.image_size)
        boxes = boxes * tf.stack([sx, sy, sx, sy])
        out = self._mosaic_layer({"images": images, "bounding_boxes": {"boxes": boxes, "classes": labels}})
        boxes, labels = _dense_from_keras_cv(out["bounding_boxes"], max_boxes)
        return self._finish(out["images"], boxes, labels, max_boxes)

    def _apply_mixup(self, images, boxes, labels, max_boxes):
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
        boxes = tf.concat([boxes, tf.gather(boxes, permutation)], axis=1)
        labels = tf.concat([labels, tf.gather(labels, permutation)], axis=1)
        boxes, labels = _dense_from_keras_cv({"boxes": boxes, "classes": labels}, max_boxes)
        return self._finish(images, boxes, labels, max_boxes)

    def _apply_gamma(self, images):
        # Log-uniform gamma, one per image: x -> 255 * (x / 255) ** gamma keeps 0 and 255 fixed.
        low, high = self.gamma
        batch = tf.shape(images)[0]
        log_gamma = self._rng.uniform([batch, 1, 1, 1], tf.math.log(low), tf.math.log(high))
        return 255.0 * tf.pow(tf.clip_by_value(images, 0.0, 255.0) / 255.0, tf.exp(log_gamma))


def _random_crop(layer, images, boxes, image_size):
    """Keras ``RandomCrop`` on the images, boxes shifted here, then a resize back to ``image_size``.

    Keras 3.15's ``RandomCrop.transform_bounding_boxes`` subtracts the row offset
    from x and the column offset from y (found by the pixel property test), so
    the layer draws the crop and crops the images, and the boxes move here.
    """
    transformation = layer.get_random_transformation(images, training=True)
    h_start, w_start = (tf.cast(t, tf.float32) for t in transformation)
    images = layer.transform_images(images, transformation, training=True)
    boxes = boxes - tf.stack([w_start, h_start, w_start, h_start])
    shape = tf.shape(images)
    sy = image_size[0] / tf.cast(shape[1], tf.float32)
    sx = image_size[1] / tf.cast(shape[2], tf.float32)
    return tf.image.resize(images, image_size), boxes * tf.stack([sx, sy, sx, sy])


def _dense_from_keras_cv(bounding_boxes: dict, max_boxes):
    """keras-cv box dicts (ragged or dense, float 'classes') -> dense (B, max_boxes) with -1 padding.

    keras-cv drops nothing silently on its own side; here the valid rows are
    moved to the front first, and rows beyond ``max_boxes`` are reported.
    """
    boxes, classes = bounding_boxes["boxes"], bounding_boxes["classes"]
    if isinstance(boxes, tf.RaggedTensor):
        boxes = boxes.to_tensor(default_value=0.0)
        classes = classes.to_tensor(default_value=-1)
    labels = tf.cast(tf.round(tf.cast(classes, tf.float32)), tf.int32)
    labels = tf.where(classes < 0, -1, labels)
    boxes = tf.cast(boxes, tf.float32)
    big = tf.fill(tf.shape(labels)[:1], tf.cast(1e9, tf.float32))  # sanitize without clipping here
    boxes, labels = sanitize_boxes(boxes, labels, big[:, None], big[:, None], 0.0)
    count = tf.reduce_sum(tf.cast(labels >= 0, tf.int32), axis=-1)
    _report_overflow(count, max_boxes)
    boxes = tf.pad(boxes, [[0, 0], [0, tf.maximum(0, max_boxes - tf.shape(boxes)[1])], [0, 0]])[:, :max_boxes]
    labels = tf.pad(labels, [[0, 0], [0, tf.maximum(0, max_boxes - tf.shape(labels)[1])]],
                    constant_values=-1)[:, :max_boxes]
    if isinstance(max_boxes, int):
        boxes = tf.ensure_shape(boxes, (None, max_boxes, 4))
        labels = tf.ensure_shape(labels, (None, max_boxes))
    return boxes, labels


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
