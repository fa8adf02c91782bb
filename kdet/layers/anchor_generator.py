"""Multi-level anchor generation (RetinaNet, EfficientDet, Faster R-CNN, SSD, YOLO).

Anchors are generated per pyramid level on the feature grid and concatenated
level by level; within a level the order is (row, column, anchor), the layout
every kdet head flattens to. Conventions that change numbers and differ
between upstream checkpoints are parameters:

* ``offset``: anchor centres at ``(i + offset) * stride``. torchvision uses 0
  (centres on the grid corners), automl / keras-cv use 0.5 (cell centres).
* ``round_base_anchors``: torchvision rounds the zero-centred base anchors to
  integers before shifting them.
* ``aspect_ratios`` are height / width (torchvision's convention):
  ``w = size * scale / sqrt(r)``, ``h = size * scale * sqrt(r)``.
* ``order``: "ratio_major" (torchvision: for each ratio, each scale) or
  "scale_major" (automl: for each scale, each ratio).
* ``stride_from_grid``: torchvision spaces a level's anchors by
  ``image_size // feature_size`` (e.g. 106 px, not 128, for P7 of a 320-px
  image whose P7 map is 3x3); ``"exact"`` by ``image_size / feature_size``
  (106.67 px: SSD default boxes without explicit steps, Caffe's ``PriorBox``
  and torchvision's ``DefaultBoxGenerator``); off, the nominal ``strides``.

For SSD default boxes and YOLO anchor sets, pass explicit per-level
``(width, height)`` lists through ``anchor_shapes`` (see :func:`ssd_anchor_shapes`
and :data:`YOLOV3_COCO_ANCHORS`).
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

# RetinaNet (Lin et al. 2017, section 4): sizes 32..512 on P3..P7, 3 scales, 3 ratios.
RETINANET_SIZES = (32, 64, 128, 256, 512)
RETINANET_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
# YOLOv3 COCO anchors (width, height) in pixels at 416, from the official yolov3.cfg,
# grouped by stride 8, 16, 32 (masks 0,1,2 / 3,4,5 / 6,7,8).
YOLOV3_COCO_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)


def ssd_anchor_shapes(image_size: int, min_scale: float = 0.2, max_scale: float = 0.9,
                      aspect_ratios: Sequence[Sequence[float]] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                      scales: Sequence[float] | None = None,
                      ) -> list[list[tuple[float, float]]]:
    """SSD default-box (width, height) per level (Liu et al. 2016, section 2.2, eq. (4)).

    Scale of level k: ``s_k = min + (max - min) (k - 1) / (m - 1)``; boxes per
    location: ratio 1 at s_k, ratio 1 at ``sqrt(s_k s_{k+1})`` and each ratio
    ``a`` and ``1/a`` (``w = s sqrt(a)``, ``h = s / sqrt(a)``).

    ``scales`` optionally gives s_1 .. s_{m+1} explicitly (overriding
    min/max; torchvision's SSD300 uses 0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05).

    Returns:
        list over levels of lists of (width, height) in pixels of ``image_size``.
    """
    m = len(aspect_ratios)
    if scales is not None:
        scales = [float(s) for s in scales]
        if len(scales) != m + 1:
            raise ValueError(f"scales needs {m + 1} values (one per level plus the last s_(m+1)); "
                             f"received {len(scales)}.")
    else:
        scales = [min_scale + (max_scale - min_scale) * k / (m - 1) for k in range(m)] + [1.0]
    shapes = []
    for k, ratios in enumerate(aspect_ratios):
        s, s_next = scales[k], scales[k + 1]
        level = [(s, s), (math.sqrt(s * s_next),) * 2]
        for a in ratios:
            level += [(s * math.sqrt(a), s / math.sqrt(a)), (s / math.sqrt(a), s * math.sqrt(a))]
        shapes.append([(w * image_size, h * image_size) for w, h in level])
    return shapes


@keras.saving.register_keras_serializable(package="kdet")
class AnchorGenerator(keras.layers.Layer):
    """Generates anchors for a feature pyramid, in xyxy pixels of the model input.

    Args:
        strides: stride of each level in pixels, e.g. (8, 16, 32, 64, 128) (numbers; SSD steps may be fractional).
        sizes: base size of each level (ignored when ``anchor_shapes`` is given).
        scales: scale multipliers applied to every level's size.
        aspect_ratios: height / width ratios.
        offset: anchor centre offset in strides (0 torchvision, 0.5 automl/SSD).
        round_base_anchors: round zero-centred base anchors (torchvision).
        order: "ratio_major" or "scale_major" order of anchors at a location.
        anchor_shapes: optional explicit per-level lists of (width, height)
            (SSD default boxes, YOLO anchors); overrides sizes/scales/ratios.
        stride_from_grid: space anchors by ``input // feature size`` per axis
            (True, torchvision's AnchorGenerator) or ``input / feature size``
            ("exact", SSD default boxes) instead of the nominal strides.

    Call:
        ``layer(images)`` with images (B, H, W, C) -> anchors (A, 4) float32,
        A = sum over levels of ceil(H / s) * ceil(W / s) * anchors_per_location.
        ``layer.generate(height, width)`` returns the same as NumPy.

    Example:
        >>> gen = AnchorGenerator(strides=(16,), sizes=(32,), scales=(1.0,), aspect_ratios=(1.0,))
        >>> gen.generate(32, 32)[:2].tolist()
        [[-8.0, -8.0, 24.0, 24.0], [8.0, -8.0, 40.0, 24.0]]
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 sizes: Sequence[float] = RETINANET_SIZES, scales: Sequence[float] = RETINANET_SCALES,
                 aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS, offset: float = 0.5,
                 round_base_anchors: bool = False, order: str = "ratio_major",
                 anchor_shapes: Sequence[Sequence[Sequence[float]]] | None = None,
                 stride_from_grid: bool | str = False, **kwargs):
        super().__init__(**kwargs)
        # Integers stay integers; SSD steps may be fractional (e.g. 320 / 3).
        self.strides = [int(s) if float(s) == int(s) else float(s) for s in strides]
        if not self.strides or min(self.strides) <= 0:
            raise ValueError(f"strides must be positive numbers; received {strides}.")
        if order not in ("ratio_major", "scale_major"):
            raise ValueError(f"order must be 'ratio_major' or 'scale_major'; received {order!r}.")
        self.sizes = [float(s) for s in sizes]
        self.scales = [float(s) for s in scales]
        self.aspect_ratios = [float(r) for r in aspect_ratios]
        self.offset = float(offset)
        self.round_base_anchors = bool(round_base_anchors)
        self.order = order
        if stride_from_grid not in (False, True, "exact"):
            raise ValueError(f"stride_from_grid must be False, True or 'exact'; received {stride_from_grid!r}.")
        self.stride_from_grid = stride_from_grid
        self.anchor_shapes = (
            None if anchor_shapes is None else [[(float(w), float(h)) for w, h in lvl] for lvl in anchor_shapes]
        )
        if self.anchor_shapes is not None:
            if len(self.anchor_shapes) != len(self.strides):
                raise ValueError(
                    f"anchor_shapes has {len(self.anchor_shapes)} levels but strides has {len(self.strides)}."
                )
            counts = {len(lvl) for lvl in self.anchor_shapes}
        else:
            if len(self.sizes) != len(self.strides):
                raise ValueError(f"sizes has {len(self.sizes)} levels but strides has {len(self.strides)}.")
            if not self.scales or not self.aspect_ratios or min(self.aspect_ratios) <= 0:
                raise ValueError("scales and aspect_ratios must be non-empty and positive.")
            counts = {len(self.scales) * len(self.aspect_ratios)}
        self.anchors_per_location = [len(lvl) for lvl in self.anchor_shapes] if self.anchor_shapes else (
            [counts.pop()] * len(self.strides)
        )
        self.built = True

    @property
    def num_anchors_per_location(self) -> int:
        """Anchors per location (the same at every level for dense heads)."""
        return max(self.anchors_per_location)

    def base_anchors(self, level: int) -> np.ndarray:
        """Zero-centred (A, 4) xyxy anchors of one level (0-based index)."""
        if self.anchor_shapes is not None:
            wh = np.array(self.anchor_shapes[level], np.float64)
        else:
            pairs = (
                [(r, s) for r in self.aspect_ratios for s in self.scales]
                if self.order == "ratio_major"
                else [(r, s) for s in self.scales for r in self.aspect_ratios]
            )
            size = self.sizes[level]
            wh = np.array([(size * s / math.sqrt(r), size * s * math.sqrt(r)) for r, s in pairs])
        base = np.concatenate([-wh / 2, wh / 2], axis=1)
        if self.round_base_anchors:
            base = np.round(base)
        return base.astype(np.float32)

    def feature_shapes(self, height, width):
        """Feature map (h, w) per level: ceil(input / stride)."""
        return [(-(-height // s), -(-width // s)) for s in self.strides]

    def _level(self, level, fh, fw, height=None, width=None):
        stride_y = stride_x = float(self.strides[level])
        if self.stride_from_grid == "exact":
            stride_y = tf.cast(height, tf.float32) / tf.cast(fh, tf.float32)
            stride_x = tf.cast(width, tf.float32) / tf.cast(fw, tf.float32)
        elif self.stride_from_grid:
            stride_y = tf.cast(height // fh, tf.float32)
            stride_x = tf.cast(width // fw, tf.float32)
        xs = (tf.cast(tf.range(fw), tf.float32) + self.offset) * stride_x
        ys = (tf.cast(tf.range(fh), tf.float32) + self.offset) * stride_y
        cy, cx = tf.meshgrid(ys, xs, indexing="ij")
        shifts = tf.stack([cx, cy, cx, cy], axis=-1)[:, :, None, :]  # (fh, fw, 1, 4)
        anchors = shifts + tf.constant(self.base_anchors(level))[None, None]
        return tf.reshape(anchors, (-1, 4))

    def call(self, images, feature_shapes=None):
        shape = tf.shape(images)
        height = images.shape[1] if images.shape[1] is not None else shape[1]
        width = images.shape[2] if images.shape[2] is not None else shape[2]
        if feature_shapes is None:
            feature_shapes = self.feature_shapes(height, width)
        return tf.concat([self._level(i, fh, fw, height, width) for i, (fh, fw) in enumerate(feature_shapes)],
                         axis=0)

    def generate(self, height: int, width: int, feature_shapes=None) -> np.ndarray:
        """NumPy anchors (A, 4) for an input of ``height`` x ``width``."""
        with tf.init_scope():  # eager even when first asked inside a traced function
            dummy = tf.zeros((1, int(height), int(width), 1))
            return self.call(dummy, feature_shapes).numpy()

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None:
            return (None, 4)
        return (sum(fh * fw * a for (fh, fw), a in zip(self.feature_shapes(h, w), self.anchors_per_location)), 4)

    def get_config(self):
        config = super().get_config()
        config.update(
            strides=self.strides, sizes=self.sizes, scales=self.scales, aspect_ratios=self.aspect_ratios,
            offset=self.offset, round_base_anchors=self.round_base_anchors, order=self.order,
            anchor_shapes=self.anchor_shapes, stride_from_grid=self.stride_from_grid,
        )
        return config
