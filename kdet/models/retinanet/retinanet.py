"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection").

backbone C3-C5 -> FPN P3-P7 -> shared class / box subnets (4 x conv3x3-ReLU,
256 channels) -> 9 anchors per location -> focal loss + smooth-L1 (training),
per-level top-k + class-aware NMS (inference). Everything but the network
lives in ``SingleStageDetector``.
"""

from __future__ import annotations

from typing import Sequence

import keras

from kdet.layers.anchor_generator import DEFAULT_ASPECT_RATIOS, RETINANET_SIZES, AnchorGenerator
from kdet.models.retinanet.pyramid import (
    ANCHOR_SCALE, NUM_SCALES, anchor_heads, build_backbone, deserialize_backbone, pyramid_anchor_generator,
    serialize_backbone,
)
from kdet.models.single_stage import SingleStageDetector
from kdet.necks.fpn import fpn
from kdet.validation import check_image_size, check_positive_int

# Full-size settings, Lin et al. 2017 section 4 / torchvision retinanet_resnet50_fpn.
FULL = {"image_size": 512, "fpn_width": 256, "head_depth": 4}
# The tiny configuration (backbone="tiny"): narrow and shallow so it trains on CPU in minutes.
TINY = {"image_size": 128, "fpn_width": 48, "head_depth": 2}
# The options forwarded to SingleStageDetector and stored in get_config.
SINGLE_STAGE_OPTIONS = (
    "positive_threshold", "negative_threshold", "allow_low_quality_matches", "force_match_for_each_gt",
    "box_variances", "pre_nms_top_k", "top_k_per_level", "nms_iou_threshold", "score_threshold",
    "max_detections", "soft_nms_sigma",
)
# RetinaNet inference, Lin et al. 2017 section 4: top 1000 per level, score 0.05, NMS 0.5, 100 detections.
RETINANET_INFERENCE = {"pre_nms_top_k": 1000, "top_k_per_level": True, "nms_iou_threshold": 0.5,
                       "score_threshold": 0.05, "max_detections": 100}


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


def _split_options(kwargs: dict, defaults: dict) -> dict:
    options = dict(defaults)
    for key in SINGLE_STAGE_OPTIONS:
        if key in kwargs:
            options[key] = kwargs.pop(key)
    if "box_variances" in options:
        options["box_variances"] = tuple(options["box_variances"])
    return options


@keras.saving.register_keras_serializable(package="kdet")
class RetinaNet(SingleStageDetector):
    """RetinaNet: FPN + focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002).

    Args:
        num_classes: number of object classes.
        backbone: "resnet50" (default), "resnet101", "tiny", "efficientnet_b0".."b7"
            or a ``keras.Model`` returning {"P3", "P4", "P5"} features of
            ``x / 255`` images.
        image_size: network input (int or (h, w)), a multiple of 32; default
            512 (128 for ``backbone="tiny"``). Other input sizes are resized.
        bounding_box_format: format of boxes in and out.
        class_names: optional class names.
        min_level, max_level: pyramid levels (P3-P7).
        fpn_width, head_depth: FPN / subnet channels and subnet depth
            (256 / 4; tiny: 48 / 2).
        extra_from: P6 from the FPN's P5 ("output", torchvision) or from C5
            ("input", the paper).
        anchor_scale, num_scales, aspect_ratios: anchors of side
            ``anchor_scale * stride * 2^(i / num_scales)``, ratios h / w.
        anchor_generator: an ``AnchorGenerator`` replacing the three above
            (e.g. :func:`torchvision_anchor_generator`).
        **kwargs: ``SingleStageDetector`` options (matcher thresholds 0.5 /
            0.4, ``pre_nms_top_k`` 1000 per level, ``score_threshold`` 0.05,
            ``nms_iou_threshold`` 0.5, ``max_detections`` 100, ``soft_nms_sigma``).

    Example:
        >>> model = RetinaNet(3, backbone="tiny", image_size=128)
        >>> model.compile()
        >>> # model.fit(images, {"boxes": boxes, "labels": labels}, epochs=30)
    """

    def __init__(self, num_classes: int, backbone="resnet50", image_size=None, bounding_box_format: str = "xyxy",
                 class_names: Sequence[str] | None = None, min_level: int = 3, max_level: int = 7,
                 fpn_width: int | None = None, head_depth: int | None = None, extra_from: str = "output",
                 anchor_scale: float = ANCHOR_SCALE, num_scales: int = NUM_SCALES,
                 aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS, anchor_generator=None, **kwargs):
        check_positive_int("num_classes", num_classes)
        backbone = deserialize_backbone(backbone)
        preset = TINY if isinstance(backbone, str) and backbone.lower() == "tiny" else FULL
        image_size = check_image_size(preset["image_size"] if image_size is None else image_size,
                                      multiple_of=2 ** min(int(max_level), 5))
        fpn_width = check_positive_int("fpn_width", preset["fpn_width"] if fpn_width is None else fpn_width)
        head_depth = check_positive_int("head_depth", preset["head_depth"] if head_depth is None else head_depth)
        if isinstance(anchor_generator, dict):
            anchor_generator = keras.saving.deserialize_keras_object(anchor_generator)
        anchors = anchor_generator or pyramid_anchor_generator(
            min_level, max_level, anchor_scale, num_scales, aspect_ratios, offset=0.5)
        if len(anchors.strides) != max_level - min_level + 1:
            raise ValueError(f"anchor_generator has {len(anchors.strides)} levels; P{min_level}-P{max_level} "
                             f"needs {max_level - min_level + 1}.")
        options = _split_options(kwargs, RETINANET_INFERENCE)

        backbone_model, preprocessing = build_backbone(backbone, image_size)
        inputs = keras.Input((*image_size, 3), name="images")
        # torchvision pads P6/P7's stride-2 convs by 1 on each side; keep that so its weights port exactly.
        pyramid = fpn(backbone_model(inputs), min_level, max_level, fpn_width, extra_from=extra_from,
                      extra_padding="symmetric")
        levels = [pyramid[f"P{lvl}"] for lvl in range(min_level, max_level + 1)]
        heads = anchor_heads(levels, anchors.num_anchors_per_location, num_classes, head_depth, fpn_width)
        network = keras.Model(inputs, heads, name="network")
        super().__init__(num_classes, network, anchors, preprocessing, image_size,
                         bounding_box_format=bounding_box_format, class_names=class_names, **options, **kwargs)
        self._backbone_name = backbone_model.name
        self._config = dict(
            backbone=serialize_backbone(backbone), min_level=int(min_level), max_level=int(max_level),
            fpn_width=fpn_width, head_depth=head_depth, extra_from=extra_from, anchor_scale=float(anchor_scale),
            num_scales=int(num_scales), aspect_ratios=[float(r) for r in aspect_ratios],
            anchor_generator=None if anchor_generator is None else keras.saving.serialize_keras_object(anchors),
            **options,
        )

    def get_config(self):
        config = super().get_config()
        config.update(self._config)
        return config
