"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection").

backbone C3-C5 -> FPN P3-P7 -> shared class / box subnets (4 x conv3x3-ReLU,
256 channels) -> 9 anchors per location -> focal loss + smooth-L1 (training),
per-level top-k + class-aware NMS (inference). Everything but the network
lives in ``SingleStageDetector``; the settings are ``RetinaNetConfig``.
"""

from __future__ import annotations

import dataclasses

import keras

from kdet.backbones.factory import build_backbone, default_normalization
from kdet.config import SCRATCH_RECIPE, TrainingRecipe
from kdet.heads.dense import GROUPS
from kdet.layers.anchor_generator import DEFAULT_ASPECT_RATIOS, RETINANET_SIZES, AnchorGenerator
from kdet.models.retinanet.pyramid import (LEVELS, TINY_LEVELS, PyramidConfig, anchor_heads,
                                           config_anchor_generator, pyramid_levels)
from kdet.models.single_stage import SingleStageDetector
from kdet.necks.fpn import fpn

# Full-size settings, Lin et al. 2017 section 4 / torchvision retinanet_resnet50_fpn.
FULL = {"image_size": 512, "fpn_width": 256, "head_depth": 4, **LEVELS}
# The tiny configuration (backbone="tiny"): narrow and shallow so it trains on CPU in minutes.
TINY = {"image_size": 128, "fpn_width": 48, "head_depth": 2, **TINY_LEVELS}
# Lin et al. 2017 sec. 4.1 / Detectron: SGD 0.01 at 16 images, weight decay 1e-4, warm-up.
RETINANET_RECIPE = TrainingRecipe("sgd", 0.01, 16, 1e-4, 0.9, 500,
                                  "Lin et al. 2017 sec. 4.1 / Detectron: SGD 0.01 at 16 images, wd 1e-4, warm-up")
HEAD_NORMS = (None, "group", "batch")
# Box losses by name (Detector.resolve_box_loss): deltas or decoded boxes.
BOX_LOSS_TYPES = ("smooth_l1", "huber", "iou", "giou", "diou", "ciou")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetinaNetConfig(PyramidConfig):
    """RetinaNet's settings (see ``PyramidConfig`` and ``SingleStageConfig`` for the shared ones).

    Args:
        extra_from: P6 from the FPN's P5 ("output", torchvision v1) or from
            C5 ("input", the paper and torchvision's v2).
        head_norm: None (the paper), "group" (GroupNorm(32) after each bias-free
            subnet conv, one per conv shared across levels: torchvision's v2
            heads; needs ``fpn_width`` divisible by 32) or "batch".
        box_loss_type: the box loss ``compile()`` uses when given none, one of
            ``BOX_LOSS_TYPES``: "smooth_l1" on deltas (the paper, beta 1/9) or
            an IoU loss on decoded boxes ("giou": torchvision's v2 recipe,
            ``regression_head._loss_type = "giou"``).
    """

    extra_from: str = "output"
    head_norm: str | None = None
    box_loss_type: str = "smooth_l1"

    def resolve(self):
        self.fill(TINY if self.is_tiny() else FULL)

    def validate(self):
        super().validate()
        if self.extra_from not in ("input", "output"):
            raise ValueError(f"extra_from must be 'input' or 'output'; received {self.extra_from!r}.")
        if self.head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {HEAD_NORMS}; received {self.head_norm!r}.")
        if self.head_norm == "group" and self.fpn_width % GROUPS:
            raise ValueError(f"head_norm='group' splits fpn_width into {GROUPS} groups; received fpn_width="
                             f"{self.fpn_width}, not a multiple of {GROUPS}.")
        if self.box_loss_type not in BOX_LOSS_TYPES:
            raise ValueError(f"box_loss_type must be one of {BOX_LOSS_TYPES}; received {self.box_loss_type!r}.")


def torchvision_anchor_generator() -> AnchorGenerator:
    """torchvision's ``retinanet_resnet50_fpn`` anchors: sizes ``(x, int(x 2^(1/3)), int(x 2^(2/3)))``.

    Centred on the grid corners (offset 0), base anchors rounded, ratio-major
    order, spaced by ``image // feature size`` (so P7 of a 320-px image uses
    106 px): pass it as ``RetinaNet(..., anchor_generator=torchvision_anchor_generator())``
    to run converted torchvision weights.
    """
    shapes = []
    for size in RETINANET_SIZES:
        sizes = (size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3)))  # truncation as upstream
        shapes.append([(s / r ** 0.5, s * r ** 0.5) for r in DEFAULT_ASPECT_RATIOS for s in sizes])
    return AnchorGenerator(strides=(8, 16, 32, 64, 128), anchor_shapes=shapes, offset=0.0,
                           round_base_anchors=True, stride_from_grid=True, name="anchor_generator")


@keras.saving.register_keras_serializable(package="kdet")
class RetinaNet(SingleStageDetector):
    """RetinaNet: FPN + focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002).

    Args:
        num_classes: number of object classes.
        backbone: "resnet50" (default), "resnet101", "tiny", "efficientnet_b0".."b7"
            or a ``keras.Model`` returning {"P3", "P4", "P5"} features of
            ``x / 255`` images.
        **settings: every field of ``RetinaNetConfig``: ``image_size`` (a
            multiple of 32; default 512, 128 for "tiny"), ``resize``,
            ``precision``, ``bounding_box_format``, ``class_names``,
            ``min_level``/``max_level`` (3 / 7; tiny: 2 / 6), ``fpn_width``/``head_depth`` (256 / 4;
            tiny: 48 / 2), ``extra_from``, ``head_norm``, ``box_loss_type``, anchors
            (``anchor_scale``, ``num_scales``, ``aspect_ratios`` or an
            ``anchor_generator`` such as :func:`torchvision_anchor_generator`),
            matcher thresholds (0.5 / 0.4), ``pre_nms_top_k`` (1000 per
            level), ``score_threshold`` (0.05), ``nms_iou_threshold`` (0.5),
            ``max_detections`` (100), ``soft_nms_sigma``.

    Example:
        >>> model = RetinaNet(3, backbone="tiny", image_size=128)
        >>> model.compile()
        >>> # model.fit(images, {"boxes": boxes, "labels": labels}, epochs=30)
    """

    config_class = RetinaNetConfig
    classifier_layers = ("cls_pred",)

    def __init__(self, num_classes: int, backbone="resnet50", **settings):
        super().__init__(num_classes=num_classes, backbone=backbone, **settings)

    def default_pixel_normalization(self) -> dict:
        return default_normalization(self.config.backbone)

    def build_network(self):
        cfg = self.config
        backbone_model, _ = build_backbone(cfg.backbone, self.network_input_shape)
        inputs = keras.Input((*self.network_input_shape, 3), name="images")
        # torchvision pads P6/P7's stride-2 convs by 1 on each side; keep that so its weights port exactly.
        pyramid = fpn(backbone_model(inputs), cfg.min_level, cfg.max_level, cfg.fpn_width, extra_from=cfg.extra_from,
                      extra_padding="symmetric")
        anchors = config_anchor_generator(cfg, order="ratio_major")
        heads = anchor_heads(pyramid_levels(pyramid, cfg), anchors.num_anchors_per_location, self.head_classes,
                             cfg.head_depth, cfg.fpn_width, norm=cfg.head_norm)
        self._backbone_name = backbone_model.name
        return keras.Model(inputs, heads, name="network"), anchors

    def default_box_loss(self):
        """The loss named by ``box_loss_type`` (smooth-L1 with beta 1/9 by default)."""
        return self.resolve_box_loss(self.config.box_loss_type)

    def training_recipe(self) -> TrainingRecipe:
        return SCRATCH_RECIPE if self.config.is_tiny() else RETINANET_RECIPE
