"""EfficientDet D0-D7 (Tan, Pang & Le 2020, "EfficientDet: Scalable and Efficient Object Detection").

EfficientNet backbone -> BiFPN P3-P7 -> shared separable class / box nets with
per-level batch norm and swish -> 9 anchors per location (anchor_scale 4) ->
focal loss (gamma 1.5) + Huber box loss (delta 0.1, weight 50); inference as
RetinaNet (shared ``SingleStageDetector`` decoder, per-level top-k, NMS).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet.models.retinanet.pyramid import (
    ANCHOR_SCALE, NUM_SCALES, anchor_heads, build_backbone, check_level_image_size, deserialize_backbone,
    pyramid_anchor_generator, serialize_backbone,
)
from kdet.models.retinanet.retinanet import RETINANET_INFERENCE, _split_options
from kdet.models.single_stage import SingleStageDetector
from kdet.necks.bifpn import FUSION_METHODS, bifpn
from kdet.validation import check_positive_int

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
# 0.9 so the moving statistics settle within the few hundred steps such a model trains.
TINY = {"image_size": 128, "fpn_width": 48, "fpn_depth": 2, "head_depth": 2, "bn_momentum": 0.9}
# automl anchors.py: aspect ratios (1, 2, 0.5) as width / height = (1, 0.5, 2) as height / width,
# scale-major order, centres at stride / 2.
AUTOML_ASPECT_RATIOS = (1.0, 0.5, 2.0)
# automl hparams_config.py: alpha 0.25, gamma 1.5, delta 0.1, box_loss_weight 50.
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 1.5
HUBER_DELTA, BOX_LOSS_WEIGHT = 0.1, 50.0
# Head init: normal(0.01) as RetinaNet. automl's variance scaling overfits 8 images faster but
# generalised worse on held-out synthetic data here (AP50 0.39 vs 0.61 after 30 epochs on 200).
HEAD_KERNEL_STD = 0.01


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


@keras.saving.register_keras_serializable(package="kdet")
class EfficientDet(SingleStageDetector):
    """EfficientDet (Tan et al. 2020, https://arxiv.org/abs/1911.09070).

    Args:
        num_classes: number of object classes.
        variant: "d0" .. "d7": sets backbone, image size, BiFPN width / depth,
            head depth and fusion from :data:`EFFICIENTDET_VARIANTS`.
        backbone: override the variant's backbone: "tiny", "efficientnet_b0".."b7",
            "resnet50", or a ``keras.Model`` returning {"P3", "P4", "P5"}.
            "tiny" also applies the small :data:`TINY` settings.
        image_size: network input, a multiple of 128 (the P7 stride).
        fpn_width, fpn_depth, head_depth, weight_method: override the variant.
        min_level, max_level: pyramid levels (P3-P7).
        anchor_scale, num_scales, aspect_ratios: anchors (automl: 4, 3, (1, 0.5, 2) as h / w).
        anchor_generator: an ``AnchorGenerator`` replacing the anchor settings.
        bn_momentum: of the BiFPN and head batch norms (0.99; tiny 0.9).
        **kwargs: ``SingleStageDetector`` options (``soft_nms_sigma`` > 0 for
            soft-NMS, ``score_threshold``, ``max_detections``, ...).

    Example:
        >>> model = EfficientDet(3, backbone="tiny", image_size=128)
        >>> model.compile()   # focal (gamma 1.5) + Huber (delta 0.1, weight 50)
    """

    def __init__(self, num_classes: int, variant: str = "d0", backbone=None, image_size=None,
                 bounding_box_format: str = "xyxy", class_names: Sequence[str] | None = None,
                 fpn_width: int | None = None, fpn_depth: int | None = None, head_depth: int | None = None,
                 weight_method: str | None = None, min_level: int = 3, max_level: int = 7,
                 anchor_scale: float | None = None, num_scales: int = NUM_SCALES,
                 aspect_ratios: Sequence[float] = AUTOML_ASPECT_RATIOS, anchor_generator=None,
                 bn_momentum: float | None = None, **kwargs):
        check_positive_int("num_classes", num_classes)
        variant = str(variant).lower()
        if variant not in EFFICIENTDET_VARIANTS:
            raise ValueError(f"Unsupported EfficientDet variant {variant!r}; expected one of "
                             f"{sorted(EFFICIENTDET_VARIANTS)}.")
        backbone = deserialize_backbone(backbone)
        preset = {"weight_method": "fastattn", "anchor_scale": ANCHOR_SCALE, "bn_momentum": 0.99,
                  **EFFICIENTDET_VARIANTS[variant]}
        if isinstance(backbone, str) and backbone.lower() == "tiny":
            preset.update(TINY)
        given = dict(image_size=image_size, fpn_width=fpn_width, fpn_depth=fpn_depth, head_depth=head_depth,
                     weight_method=weight_method, anchor_scale=anchor_scale, bn_momentum=bn_momentum)
        cfg = {k: preset[k] if v is None else v for k, v in given.items()}
        if cfg["weight_method"] not in FUSION_METHODS:
            raise ValueError(f"weight_method must be one of {FUSION_METHODS}; received {cfg['weight_method']!r}.")
        image_size = check_level_image_size(cfg["image_size"], max_level)
        for key in ("fpn_width", "fpn_depth", "head_depth"):
            check_positive_int(key, cfg[key])
        if isinstance(anchor_generator, dict):
            anchor_generator = keras.saving.deserialize_keras_object(anchor_generator)
        anchors = anchor_generator or pyramid_anchor_generator(
            min_level, max_level, cfg["anchor_scale"], num_scales, aspect_ratios, offset=0.5, order="scale_major")
        options = _split_options(kwargs, RETINANET_INFERENCE)

        backbone_model, preprocessing = build_backbone(preset["backbone"] if backbone is None else backbone,
                                                       image_size)
        inputs = keras.Input((*image_size, 3), name="images")
        pyramid = bifpn(backbone_model(inputs), min_level, max_level, cfg["fpn_width"], cfg["fpn_depth"],
                        weight_method=cfg["weight_method"], bn_momentum=cfg["bn_momentum"])
        levels = [pyramid[f"P{lvl}"] for lvl in range(min_level, max_level + 1)]
        heads = anchor_heads(levels, anchors.num_anchors_per_location, num_classes, cfg["head_depth"],
                             cfg["fpn_width"], separable=True, norm="batch", activation="swish",
                             bn_momentum=cfg["bn_momentum"], kernel_std=HEAD_KERNEL_STD)
        network = keras.Model(inputs, heads, name="network")
        super().__init__(num_classes, network, anchors, preprocessing, image_size,
                         bounding_box_format=bounding_box_format, class_names=class_names, **options, **kwargs)
        self._backbone_name = backbone_model.name
        self.variant = variant
        self._config = dict(
            variant=variant, backbone=serialize_backbone(backbone), min_level=int(min_level),
            max_level=int(max_level), num_scales=int(num_scales), aspect_ratios=[float(r) for r in aspect_ratios],
            anchor_generator=None if anchor_generator is None else keras.saving.serialize_keras_object(anchors),
            **{k: v for k, v in cfg.items() if k != "image_size"}, **options,
        )

    def default_box_loss(self):
        return EfficientDetHuberLoss(HUBER_DELTA, BOX_LOSS_WEIGHT)

    def default_classification_loss(self):
        from kdet.losses import FocalLoss

        return FocalLoss(alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, from_logits=True)

    def get_config(self):
        config = super().get_config()
        config.update(self._config)
        return config
