"""MultiLevelRoIAlign: pools a fixed-size feature for each RoI from its FPN level."""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.ops.roi import CANONICAL_LEVEL, CANONICAL_SCALE, assign_levels, multilevel_roi_align, multilevel_roi_pool
from kdet.validation import check_positive_int

# torchvision's MultiScaleRoIAlign in fasterrcnn_resnet50_fpn: 7x7, sampling_ratio=2, aligned=False.
DEFAULT_OUTPUT_SIZE = 7
DEFAULT_SAMPLING_RATIO = 2


@keras.saving.register_keras_serializable(package="kdet")
class MultiLevelRoIAlign(keras.layers.Layer):
    """RoIAlign (or RoIPool) over a feature pyramid with FPN level assignment.

    Each RoI is assigned to level ``floor(k0 + log2(sqrt(wh) / s0))`` clamped
    to ``[min_level, max_level]`` (Lin et al. 2017, eq. (1)) and pooled from
    that level only, as torchvision's ``MultiScaleRoIAlign``. With a single
    level this is plain RoIAlign / RoIPool (Fast R-CNN).

    Args:
        min_level, max_level: pyramid levels given to ``call`` (stride ``2**level``).
        output_size: P, bins per side (7 in Faster R-CNN).
        sampling_ratio: bilinear samples per bin and axis (mode "align").
        aligned: half-pixel-corrected RoIAlign (Detectron2) instead of the
            original convention (torchvision v1 checkpoints use False).
        mode: "align" (RoIAlign, He et al. 2017) or "pool" (RoIPool, Girshick 2015).
        canonical_scale, canonical_level: ``s0`` and ``k0`` of the level rule.

    Call:
        ``layer(features, boxes)``: features a list of (B, H_l, W_l, C) maps for
        levels ``min_level..max_level`` (finest first); boxes (B, R, 4) xyxy in
        input pixels. Returns (B, R, P, P, C).

    Example:
        >>> layer = MultiLevelRoIAlign(min_level=2, max_level=3, output_size=2)
        >>> feats = [tf.ones((1, 8, 8, 4)), tf.ones((1, 4, 4, 4))]
        >>> layer(feats, tf.constant([[[0., 0, 16, 16]]])).shape
        TensorShape([1, 1, 2, 2, 4])
    """

    def __init__(self, min_level: int = 2, max_level: int = 5, output_size: int = DEFAULT_OUTPUT_SIZE,
                 sampling_ratio: int = DEFAULT_SAMPLING_RATIO, aligned: bool = False, mode: str = "align",
                 canonical_scale: float = CANONICAL_SCALE, canonical_level: int = CANONICAL_LEVEL,
                 clamp_outside: bool = False, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("align", "pool"):
            raise ValueError(f"mode must be 'align' or 'pool'; received {mode!r}.")
        if int(min_level) > int(max_level) or int(min_level) < 0:
            raise ValueError(f"Need 0 <= min_level <= max_level; received {min_level}, {max_level}.")
        if float(canonical_scale) <= 0:
            raise ValueError(f"canonical_scale must be positive; received {canonical_scale}.")
        self.min_level, self.max_level = int(min_level), int(max_level)
        self.output_size = check_positive_int("output_size", output_size)
        self.sampling_ratio = check_positive_int("sampling_ratio", sampling_ratio)
        self.aligned = bool(aligned)
        self.clamp_outside = bool(clamp_outside)
        self.mode = mode
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = int(canonical_level)
        self.built = True

    @property
    def spatial_scales(self) -> list[float]:
        return [2.0 ** -lvl for lvl in range(self.min_level, self.max_level + 1)]

    def levels(self, boxes):
        """(B, R) int32 index of each RoI's level in the feature list."""
        return assign_levels(boxes, self.min_level, self.max_level, self.canonical_scale, self.canonical_level)

    def call(self, features, boxes):
        features = list(features)
        expected = self.max_level - self.min_level + 1
        if len(features) != expected:
            raise ValueError(
                f"Expected {expected} feature maps (levels {self.min_level}..{self.max_level}); "
                f"received {len(features)}."
            )
        boxes = tf.cast(boxes, tf.float32)
        levels = self.levels(tf.stop_gradient(boxes))
        if self.mode == "pool":
            return multilevel_roi_pool(features, boxes, levels, self.spatial_scales, self.output_size)
        return multilevel_roi_align(features, boxes, levels, self.spatial_scales, self.output_size,
                                    self.sampling_ratio, self.aligned, self.clamp_outside)

    def compute_output_shape(self, features_shape, boxes_shape):
        channels = features_shape[0][-1]
        return (boxes_shape[0], boxes_shape[1], self.output_size, self.output_size, channels)

    def get_config(self):
        config = super().get_config()
        config.update(min_level=self.min_level, max_level=self.max_level, output_size=self.output_size,
                      sampling_ratio=self.sampling_ratio, aligned=self.aligned, mode=self.mode,
                      canonical_scale=self.canonical_scale, canonical_level=self.canonical_level,
                      clamp_outside=self.clamp_outside)
        return config
