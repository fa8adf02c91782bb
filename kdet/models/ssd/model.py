"""SSD: Single Shot MultiBox Detector (Liu et al. 2016), and SSDLite on MobileNetV2.

    raw pixels -> mean subtraction -> VGG-16 (conv4_3 L2-normalised, fc7) -> extra layers
    -> per level 3x3 convs: (C + 1) softmax scores (background first) and 4 box deltas per default box
    training:  IoU 0.5 matching + each GT's best default box, softmax with 3:1 hard negatives,
               smooth-L1 on deltas with variances (0.1, 0.1, 0.2, 0.2), both / #positives
    inference: decode -> softmax -> top-k -> CombinedNMS (0.45)

The dense-anchor chain is ``SingleStageDetector``; this module only assembles
the network and the default boxes.
"""

from __future__ import annotations

from typing import Sequence

import keras

from kdet.backbones.mobilenet import mobilenet_v2
from kdet.backbones.tiny import tiny_backbone
from kdet.backbones.vgg import vgg16_ssd
from kdet.layers.anchor_generator import AnchorGenerator, ssd_anchor_shapes
from kdet.layers.image_preprocessing import ImagePreprocessing
from kdet.models.single_stage import SingleStageDetector
from kdet.models.ssd.head import ssd_head
from kdet.models.ssd.presets import (BACKBONE_NAMES, PRESETS, SSD300_ASPECT_RATIOS, SSD_NMS_IOU,
                                     SSD_SCORE_THRESHOLD, SSD_VARIANCES)
from kdet.necks.ssd_extra import L2Normalization, ssd_extra_layers
from kdet.validation import check_image_size


def _sources(backbone, size, preset):
    """Backbone model and the list of its maps SSD predicts on (before the extras)."""
    if backbone == "vgg16":
        model = vgg16_ssd(size)
    elif backbone == "mobilenet_v2":
        model = mobilenet_v2(size)
    elif backbone == "tiny":
        model = tiny_backbone(size)
    elif isinstance(backbone, keras.Model):
        model = backbone
    else:
        raise ValueError(f"Unknown SSD backbone {backbone!r}; expected one of {BACKBONE_NAMES} or a keras.Model "
                         "returning pyramid features {'P3', ...}.")
    return model


def default_box_shapes(image_size, aspect_ratios, min_scale=0.2, max_scale=0.9, scales=None, clip=True):
    """SSD default-box (width, height) per level in pixels of a (height, width) image.

    Scales are relative to each side (as torchvision's ``DefaultBoxGenerator``);
    ``clip`` bounds widths and heights by the image (torchvision ``clip=True``).
    """
    height, width = image_size
    relative = ssd_anchor_shapes(1, min_scale, max_scale, aspect_ratios, scales=scales)
    limit = (lambda v: min(v, 1.0)) if clip else (lambda v: v)
    return [[(limit(w) * width, limit(h) * height) for w, h in level] for level in relative]


@keras.saving.register_keras_serializable(package="kdet")
class SSD(SingleStageDetector):
    """SSD300 / SSD512 with VGG-16, SSDLite with MobileNetV2, or a tiny CPU configuration.

    Args:
        num_classes: object classes (background is added internally).
        backbone: "vgg16", "mobilenet_v2" (SSDLite: separable extras and
            heads), "tiny" or a ``keras.Model`` returning ``{"P3", ...}``.
        image_size: int or (height, width); VGG-16 at 300 or 512 uses the
            paper's extras, steps and scales.
        bounding_box_format, class_names: see ``Detector``.
        min_scale, max_scale: default-box scale range (s_min, s_max).
        anchor_scales: explicit s_1 .. s_{m+1} instead (torchvision's SSD300:
            0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05).
        aspect_ratios: per level the ratios ``a`` (``a`` and ``1/a`` are used).
        steps: per level the default-box step in pixels (centres at
            ``(i + 0.5) * step``); default the paper's at 300/512, else
            round(image / feature size).
        clip_default_boxes: bound default-box sizes by the image.
        head_depth: hidden 3x3 conv + ReLU layers per head level before the
            predicting conv (default: 0, the paper's head; 2 for "tiny").
        head_width: channels of those hidden layers.
        extras: (reduce, out, kernel, stride, pad) per extra block.
        preprocessing: an ``ImagePreprocessing``; default per backbone
            (VGG: 0..255 minus the ImageNet mean).
        negative_threshold: default boxes below this IoU are background
            (default ``positive_threshold``, the paper's single threshold);
            lower values leave an ignore band that hard-negative mining skips.
        box_variances, positive_threshold, negative_ratio, pre_nms_top_k,
        nms_iou_threshold, score_threshold, max_detections: see
            ``SingleStageDetector``.

    Example:
        >>> model = SSD(num_classes=3, backbone="tiny", image_size=128)
        >>> model.anchors.shape
        (1524, 4)

    Reference: Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016.
    """

    def __init__(self, num_classes: int, backbone="vgg16", image_size=None, bounding_box_format: str = "xyxy",
                 class_names: Sequence[str] | None = None, min_scale: float | None = None,
                 max_scale: float | None = None, anchor_scales=None, aspect_ratios=None, steps=None,
                 clip_default_boxes: bool = True, extras=None, preprocessing=None,
                 box_variances=SSD_VARIANCES, positive_threshold: float = 0.5, negative_ratio: float = 3.0,
                 pre_nms_top_k: int | None = 1000, nms_iou_threshold: float = SSD_NMS_IOU,
                 score_threshold: float = SSD_SCORE_THRESHOLD, max_detections: int = 100,
                 negative_threshold: float | None = None, head_depth: int | None = None, head_width: int = 64,
                 **kwargs):
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if isinstance(preprocessing, dict):
            preprocessing = keras.saving.deserialize_keras_object(preprocessing)
        preset = dict(PRESETS[backbone] if isinstance(backbone, str) and backbone in PRESETS else PRESETS["vgg16"])
        size = check_image_size(preset["default_size"] if image_size is None else image_size)
        preset.update(preset["sizes"].get(size[0], {}) if size[0] == size[1] else {})
        extras = [tuple(e) for e in (extras if extras is not None else preset["extras"])]
        self._ssd_arguments = dict(backbone=backbone, min_scale=min_scale, max_scale=max_scale,
                                   anchor_scales=anchor_scales, aspect_ratios=aspect_ratios, steps=steps,
                                   clip_default_boxes=clip_default_boxes, extras=extras,
                                   box_variances=tuple(box_variances), positive_threshold=positive_threshold,
                                   negative_ratio=negative_ratio, pre_nms_top_k=pre_nms_top_k,
                                   nms_iou_threshold=nms_iou_threshold, score_threshold=score_threshold,
                                   max_detections=max_detections, negative_threshold=negative_threshold,
                                   head_depth=head_depth, head_width=head_width)
        negative_threshold = positive_threshold if negative_threshold is None else negative_threshold
        backbone_model = _sources(backbone, size, preset)
        inputs = keras.Input((*size, 3), name="images")
        features = backbone_model(inputs)
        levels = sorted(k for k in features if int(k[1:]) >= 3)
        if backbone == "mobilenet_v2":
            levels = ["P4", "P5"]  # SSDLite: stride 16 expansion and the last layer
        sources = [features[k] for k in levels]
        if backbone == "vgg16":
            sources[0] = L2Normalization(name="conv4_3_l2norm")(sources[0])
        sources += ssd_extra_layers(sources[-1], extras, separable=preset["separable"])
        feature_shapes = [tuple(int(d) for d in s.shape[1:3]) for s in sources]
        aspect_ratios = aspect_ratios or preset.get("aspect_ratios", SSD300_ASPECT_RATIOS)
        if len(aspect_ratios) != len(sources):
            raise ValueError(f"aspect_ratios has {len(aspect_ratios)} levels but the network has {len(sources)} "
                             f"sources of sizes {feature_shapes}.")
        default_range = preset.get("scales", (0.2, 0.9 if backbone != "mobilenet_v2" else 0.95))
        shapes = default_box_shapes(size, aspect_ratios, min_scale or default_range[0],
                                    max_scale or default_range[1], anchor_scales, clip_default_boxes)
        steps = steps or preset.get("steps") or [_step(size, shape) for shape in feature_shapes]
        counts = [len(level) for level in shapes]
        head = dict(separable=preset["separable"], width=head_width,
                    depth=preset.get("head_depth", 0) if head_depth is None else head_depth)
        cls = ssd_head(sources, counts, num_classes + 1, name="ssd_cls", **head)
        box = ssd_head(sources, counts, 4, name="ssd_box", **head)
        network = keras.Model(inputs, {"box": box, "cls": cls}, name="network")
        anchors = AnchorGenerator(strides=steps, anchor_shapes=shapes, offset=0.5, name="anchor_generator")
        if preprocessing is None:
            preprocessing = ImagePreprocessing(size, name="preprocessing", **preset["preprocessing"])
        self._ssd_arguments["preprocessing"] = preprocessing
        super().__init__(num_classes, network, anchors, preprocessing, size, bounding_box_format=bounding_box_format,
                         class_names=class_names, feature_shapes=feature_shapes, classification="softmax",
                         box_variances=box_variances, positive_threshold=positive_threshold,
                         negative_threshold=negative_threshold, allow_low_quality_matches=False,
                         force_match_for_each_gt=True, negative_ratio=negative_ratio, pre_nms_top_k=pre_nms_top_k,
                         nms_iou_threshold=nms_iou_threshold, score_threshold=score_threshold,
                         max_detections=max_detections, **kwargs)
        self._backbone_name = backbone_model.name
        self.feature_shapes = feature_shapes

    def default_box_loss(self):
        """Smooth L1 with beta 1 on the deltas (Liu et al. 2016, eq. (2))."""
        from kdet.losses import SmoothL1Loss

        return SmoothL1Loss(delta=1.0)

    def get_config(self):
        config = super().get_config()
        arguments = dict(self._ssd_arguments)
        for key in ("backbone", "preprocessing"):
            if isinstance(arguments[key], keras.layers.Layer):
                if key == "backbone" and isinstance(arguments[key], str):
                    continue
                arguments[key] = keras.saving.serialize_keras_object(arguments[key])
        config.update(arguments)
        return config


def _step(size, feature_shape) -> int:
    """Default-box step of a level: the image / feature ratio, rounded (Caffe SSD's steps)."""
    step_h, step_w = round(size[0] / feature_shape[0]), round(size[1] / feature_shape[1])
    if step_h != step_w:
        raise ValueError(f"Default boxes need one step per level; image {size} and feature map {feature_shape} "
                         f"give steps {step_h} x {step_w}: pass steps= explicitly or use a square image_size.")
    return step_h
