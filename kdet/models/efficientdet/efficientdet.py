"""EfficientDet D0-D7 (Tan, Pang & Le 2020, "EfficientDet: Scalable and Efficient Object Detection").

EfficientNet backbone -> BiFPN P3-P7 -> shared separable class / box nets with
per-level batch norm and swish -> 9 anchors per location (anchor_scale 4) ->
focal loss (gamma 1.5) + Huber box loss (delta 0.1, weight 50); inference as
RetinaNet (shared ``SingleStageDetector`` decoder, per-level top-k, NMS).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from kdet.backbones.factory import build_backbone, default_normalization
from kdet.config import SCRATCH_RECIPE, TrainingRecipe, keras_field
from kdet.models.retinanet.pyramid import (ANCHOR_SCALE, LEVELS, TINY_LEVELS, PyramidConfig, anchor_heads,
                                           config_anchor_generator, pyramid_levels)
from kdet.models.single_stage import SingleStageDetector
from kdet.necks.bifpn import FUSION_METHODS, bifpn
from kdet.validation import check_image_size, check_positive_int

# Compound scaling, automl efficientdet/hparams_config.py (efficientdet_model_param_dict)
# and Tan et al. 2020, table 1: backbone, input size, BiFPN width / depth, box-class repeats.
EFFICIENTDET_VARIANTS = {
    "d0": {"backbone": "efficientnet_b0", "image_size": 512, "fpn_width": 64, "fpn_depth": 3, "head_depth": 3},
    "d1": {"backbone": "efficientnet_b1", "image_size": 640, "fpn_width": 88, "fpn_depth": 4, "head_depth": 3},
    "d2": {"backbone": "efficientnet_b2", "image_size": 768, "fpn_width": 112, "fpn_depth": 5, "head_depth": 3},
    "d3": {"backbone": "efficientnet_b3", "image_size": 896, "fpn_width": 160, "fpn_depth": 6, "head_depth": 4},
    "d4": {"backbone": "efficientnet_b4", "image_size": 1024, "fpn_width": 224, "fpn_depth": 7, "head_depth": 4},
    "d5": {"backbone": "efficientnet_b5", "image_size": 1280, "fpn_width": 288, "fpn_depth": 7, "head_depth": 4},
    "d6": {"backbone": "efficientnet_b6", "image_size": 1280, "fpn_width": 384, "fpn_depth": 8, "head_depth": 5,
           "weight_method": "sum"},
    "d7": {"backbone": "efficientnet_b6", "image_size": 1536, "fpn_width": 384, "fpn_depth": 8, "head_depth": 5,
           "weight_method": "sum", "anchor_scale": 5.0},
}
# backbone="tiny" overrides: narrow and shallow so it trains on CPU in minutes. BN momentum
# 0.9 so the moving statistics settle within the few hundred steps such a model trains; levels
# P2-P6 for its 128-px canvas (``TINY_LEVELS``).
TINY = {"image_size": 128, "fpn_width": 48, "fpn_depth": 2, "head_depth": 2, "bn_momentum": 0.9, **TINY_LEVELS}
# automl anchors.py: aspect ratios (1, 2, 0.5) as width / height = (1, 0.5, 2) as height / width,
# scale-major order, centres at stride / 2.
AUTOML_ASPECT_RATIOS = (1.0, 0.5, 2.0)
# automl hparams_config.py: alpha 0.25, gamma 1.5, delta 0.1, box_loss_weight 50.
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 1.5
HUBER_DELTA, BOX_LOSS_WEIGHT = 0.1, 50.0
# Head init: automl's fan-in variance scaling (None). normal(0.01) on both factors of a separable
# conv leaves their product near the zero saddle: the tiny class net did not fit its own training
# images (train AP50 0.38, held-out 0.34 at train seed 0 of the learning protocol); with variance
# scaling 0.91 / 0.78, and held-out 0.77 at seed 1 (docs/training.md, "Defaults that learn").
HEAD_KERNEL_STD = None


@keras.saving.register_keras_serializable(package="kdet")
class EfficientDetHuberLoss(keras.losses.Loss):
    """automl's box loss: ``weight * mean over the 4 coordinates of huber(delta)`` per anchor.

    automl divides the summed Huber loss by ``4 * num_positives`` and
    multiplies by ``box_loss_weight``; the detector divides by the number of
    positives, so the per-anchor value here is the weighted coordinate mean.

    Args:
        delta: Huber transition point (0.1).
        weight: box loss weight (50).
    """

    def __init__(self, delta: float = HUBER_DELTA, weight: float = BOX_LOSS_WEIGHT,
                 reduction="sum_over_batch_size", name: str = "efficientdet_huber", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not float(delta) > 0 or not float(weight) >= 0:
            raise ValueError(f"delta must be > 0 and weight >= 0; received delta={delta}, weight={weight}.")
        self.delta, self.weight = float(delta), float(weight)

    def call(self, y_true, y_pred):
        diff = tf.abs(tf.cast(y_pred, tf.float32) - tf.cast(y_true, tf.float32))
        huber = tf.where(diff <= self.delta, 0.5 * tf.square(diff), self.delta * diff - 0.5 * self.delta ** 2)
        return self.weight * tf.reduce_mean(huber, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(delta=self.delta, weight=self.weight)
        return config


# Tan et al. 2020 sec. 5 / automl: SGD 0.08 at 64 images, weight decay 4e-5, cosine.
EFFICIENTDET_RECIPE = TrainingRecipe("sgd", 0.08, 64, 4e-5, 0.9, 1000,
                                     "Tan et al. 2020 sec. 5 / automl: SGD 0.08 at 64 images, wd 4e-5, cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EfficientDetConfig(PyramidConfig):
    """EfficientDet's settings (see ``PyramidConfig`` and ``SingleStageConfig`` for the shared ones).

    Args:
        variant: "d0" .. "d7": sets backbone, image size, BiFPN width / depth,
            head depth and fusion from :data:`EFFICIENTDET_VARIANTS`.
        backbone: None (the variant's), "tiny" (also the small :data:`TINY`
            settings), another backbone name or a ``keras.Model``.
        fpn_depth, weight_method: BiFPN repeats and fusion (None: the variant's).
        bn_momentum: of the BiFPN and head batch norms (0.99; tiny 0.9).
    """

    variant: str = "d0"
    backbone: Any = keras_field(None)
    fpn_depth: int | None = None
    weight_method: str | None = None
    bn_momentum: float | None = None
    anchor_scale: float | None = None
    aspect_ratios: tuple[float, ...] = AUTOML_ASPECT_RATIOS

    def resolve(self):
        variant = str(self.variant).lower()
        if variant not in EFFICIENTDET_VARIANTS:
            raise ValueError(f"Unsupported EfficientDet variant {self.variant!r}; expected one of "
                             f"{sorted(EFFICIENTDET_VARIANTS)}.")
        self._set("variant", variant)
        preset = {"weight_method": "fastattn", "anchor_scale": ANCHOR_SCALE, "bn_momentum": 0.99, **LEVELS,
                  **EFFICIENTDET_VARIANTS[variant]}
        if self.backbone is None:
            self._set("backbone", preset["backbone"])
        if self.is_tiny():
            preset.update(TINY)
        self.fill({k: v for k, v in preset.items() if k != "backbone"})

    def validate(self):
        super().validate()
        check_positive_int("fpn_depth", self.fpn_depth)
        coarsest = 2 ** int(self.max_level)  # the BiFPN resamples exact 2x maps down to P{max_level}
        if self.fixed_canvas:
            check_image_size(self.image_size, multiple_of=coarsest)
        elif self.resize == "min_max" and self.size_divisible % coarsest:
            raise ValueError(f"size_divisible must be a multiple of {coarsest} (the P{self.max_level} stride); "
                             f"received {self.size_divisible}.")
        if self.weight_method not in FUSION_METHODS:
            raise ValueError(f"weight_method must be one of {FUSION_METHODS}; received {self.weight_method!r}.")


@keras.saving.register_keras_serializable(package="kdet")
class EfficientDet(SingleStageDetector):
    """EfficientDet (Tan et al. 2020, https://arxiv.org/abs/1911.09070).

    Args:
        num_classes: number of object classes.
        variant: "d0" .. "d7" (see ``EfficientDetConfig``).
        **settings: every field of ``EfficientDetConfig``: ``backbone``,
            ``image_size`` (a multiple of the coarsest stride: 128, P7; tiny 64, P6), ``resize``
            ("pad" is automl's rule), ``fpn_width``, ``fpn_depth``,
            ``head_depth``, ``weight_method``, levels, anchors (automl: 4, 3,
            (1, 0.5, 2) as h / w), ``bn_momentum``, and the shared settings
            (``soft_nms_sigma`` > 0 for soft-NMS, ``score_threshold``, ...).

    Example:
        >>> model = EfficientDet(3, backbone="tiny", image_size=128)
        >>> model.compile()   # focal (gamma 1.5) + Huber (delta 0.1, weight 50)
    """

    config_class = EfficientDetConfig
    classifier_layers = ("cls_pred",)
    # Depthwise convolutions: TensorFlow's graph kernels run EfficientDet about 10x faster than XLA:CPU.
    xla_on_cpu = False

    def __init__(self, num_classes: int, variant: str = "d0", **settings):
        super().__init__(num_classes=num_classes, variant=variant, **settings)

    def default_pixel_normalization(self) -> dict:
        return default_normalization(self.config.backbone)

    def build_network(self):
        cfg = self.config
        backbone_model, _ = build_backbone(cfg.backbone, self.network_input_shape)
        inputs = keras.Input((*self.network_input_shape, 3), name="images")
        pyramid = bifpn(backbone_model(inputs), cfg.min_level, cfg.max_level, cfg.fpn_width, cfg.fpn_depth,
                        weight_method=cfg.weight_method, bn_momentum=cfg.bn_momentum)
        anchors = config_anchor_generator(cfg, order="scale_major")
        heads = anchor_heads(pyramid_levels(pyramid, cfg), anchors.num_anchors_per_location, self.head_classes,
                             cfg.head_depth, cfg.fpn_width, separable=True, norm="batch", activation="swish",
                             bn_momentum=cfg.bn_momentum, kernel_std=HEAD_KERNEL_STD)
        self._backbone_name = backbone_model.name
        return keras.Model(inputs, heads, name="network"), anchors

    def default_box_loss(self):
        return EfficientDetHuberLoss(HUBER_DELTA, BOX_LOSS_WEIGHT)

    def default_classification_loss(self):
        from kdet.losses import FocalLoss

        return FocalLoss(alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, from_logits=True)

    def training_recipe(self) -> TrainingRecipe:
        return SCRATCH_RECIPE if self.config.is_tiny() else EFFICIENTDET_RECIPE
