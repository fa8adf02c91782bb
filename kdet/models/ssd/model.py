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

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from kdet.backbones.factory import build_backbone, canonical_name, default_normalization
from kdet.config import SCRATCH_RECIPE, TrainingRecipe, keras_field
from kdet.layers.anchor_generator import AnchorGenerator, ssd_anchor_shapes
from kdet.models.single_stage import SingleStageConfig, SingleStageDetector
from kdet.models.ssd.head import ssd_head
from kdet.models.ssd.presets import (BACKBONE_NAMES, HEAD_BLOCKS, PRESETS, SSD300_ASPECT_RATIOS, SSD_NMS_IOU,
                                     SSD_SCORE_THRESHOLD, SSD_VARIANCES, SSDLITE_SOURCES)
from kdet.necks.ssd_extra import L2Normalization, ssd_extra_layers
from kdet.validation import check_positive_int

# Liu et al. 2016 sec. 3: SGD 1e-3 at 32 images, weight decay 5e-4.
SSD_RECIPE = TrainingRecipe("sgd", 1e-3, 32, 5e-4, 0.9, 500, "Liu et al. 2016 sec. 3: SGD 1e-3 at 32, wd 5e-4")


def default_box_shapes(image_size, aspect_ratios, min_scale=0.2, max_scale=0.9, scales=None, clip=True):
    """SSD default-box (width, height) per level in pixels of a (height, width) image.

    Scales are relative to each side (as torchvision's ``DefaultBoxGenerator``);
    ``clip`` bounds widths and heights by the image (torchvision ``clip=True``).
    """
    height, width = image_size
    relative = ssd_anchor_shapes(1, min_scale, max_scale, aspect_ratios, scales=scales)
    limit = (lambda v: min(v, 1.0)) if clip else (lambda v: v)
    return [[(limit(w) * width, limit(h) * height) for w, h in level] for level in relative]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SSDConfig(SingleStageConfig):
    """SSD's settings (see ``SingleStageConfig`` for the shared ones).

    Args:
        backbone: "vgg16", "mobilenet_v2" / "mobilenet_v3_large" (SSDLite:
            separable extras and heads on the stride-16 expansion and the last
            layer), "tiny" or a ``keras.Model`` returning ``{"P3", ...}``.
        min_scale, max_scale: default-box scale range (None: the preset's).
        anchor_scales: explicit s_1 .. s_{m+1} instead (torchvision's SSD300:
            0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05).
        aspect_ratios: per level the ratios ``a`` (``a`` and ``1/a`` are used).
        steps: per level the default-box step in pixels (centres at
            ``(i + 0.5) * step``); None: the paper's at 300/512, else
            image / feature size per axis (Caffe's ``PriorBox`` and
            torchvision's ``DefaultBoxGenerator`` without steps).
        clip_default_boxes: bound default-box sizes by the image.
        extras: (reduce, out, kernel, stride, pad) per extra block.
        head_depth: hidden 3x3 conv + ReLU layers per head level before the
            predicting conv (None: 0, the paper's head; 2 for "tiny").
        head_width: channels of those hidden layers.
        head_block: the predicting layer of each level: "conv" (3x3), "separable"
            or "depthwise_bn" (SSDLite: depthwise 3x3 + BN + ReLU6, then 1x1);
            None: the preset's.
        reduced_tail: MobileNetV3's last stage at half width (None: the
            preset's, True for torchvision's SSDLite); MobileNetV3 only.
        candidates_per_class: before NMS, each class keeps only its best
            this many default boxes (torchvision's ``topk_candidates``: 400 in
            SSD300, 300 in SSDLite); None keeps every box above the score threshold.
        negative_threshold: default boxes below this IoU are background
            (None: ``positive_threshold``, the paper's single threshold).
    """

    backbone: Any = keras_field("vgg16")
    min_scale: float | None = None
    max_scale: float | None = None
    anchor_scales: tuple[float, ...] | None = None
    aspect_ratios: tuple[tuple[float, ...], ...] | None = None
    steps: tuple[float, ...] | None = None
    clip_default_boxes: bool = True
    extras: tuple[tuple[int, ...], ...] | None = None
    head_depth: int | None = None
    head_width: int = 64
    head_block: str | None = None
    reduced_tail: bool | None = None
    candidates_per_class: int | None = None
    box_variances: tuple[float, ...] = SSD_VARIANCES
    negative_threshold: float | None = None
    allow_low_quality_matches: bool = False
    force_match_for_each_gt: bool = True
    nms_iou_threshold: float = SSD_NMS_IOU
    score_threshold: float = SSD_SCORE_THRESHOLD

    def preset(self) -> dict:
        name = canonical_name(self.backbone)
        preset = dict(PRESETS[name] if name in PRESETS else PRESETS["vgg16"])
        return preset

    def resolve(self):
        preset = self.preset()
        if self.image_size is None:
            self._set("image_size", preset["default_size"])
        size = self.image_size if not isinstance(self.image_size, int) else (self.image_size,) * 2
        if size[0] == size[1]:
            preset.update(preset["sizes"].get(int(size[0]), {}))
        scales = preset.get("scales", (0.2, 0.9))
        self.fill_none(extras=preset["extras"], aspect_ratios=preset.get("aspect_ratios", SSD300_ASPECT_RATIOS),
                       min_scale=scales[0], max_scale=scales[1], steps=preset.get("steps"),
                       head_depth=preset.get("head_depth", 0), negative_threshold=self.positive_threshold,
                       head_block=preset.get("head_block", "conv"))
        if self.reduced_tail is None and "reduced_tail" in preset:
            self._set("reduced_tail", preset["reduced_tail"])

    def fill_none(self, **values):
        for key, value in values.items():
            if getattr(self, key) is None and value is not None:
                self._set(key, value)

    def validate(self):
        super().validate()
        if not self.fixed_canvas:
            raise ValueError(f"SSD predicts on a fixed canvas: resize must be 'stretch', 'letterbox' or 'pad'; "
                             f"received {self.resize!r}.")
        check_positive_int("head_depth", self.head_depth, allow_zero=True)
        check_positive_int("head_width", self.head_width)
        self._set("extras", tuple(tuple(int(v) for v in e) for e in self.extras))
        self._set("aspect_ratios", tuple(tuple(float(a) for a in level) for level in self.aspect_ratios))
        if self.candidates_per_class is not None:
            check_positive_int("candidates_per_class", self.candidates_per_class)
        if self.head_block not in HEAD_BLOCKS:
            raise ValueError(f"head_block must be one of {HEAD_BLOCKS}; received {self.head_block!r}.")
        if self.reduced_tail is not None and canonical_name(self.backbone) != "mobilenet_v3_large":
            raise ValueError(f"reduced_tail applies to backbone='mobilenet_v3_large' only; received backbone "
                             f"{self.backbone!r} with reduced_tail={self.reduced_tail!r}.")
        if self.steps is not None:
            self._set("steps", tuple(float(v) if float(v) != int(v) else int(v) for v in self.steps))


@keras.saving.register_keras_serializable(package="kdet")
class SSD(SingleStageDetector):
    """SSD300 / SSD512 with VGG-16, SSDLite with MobileNetV2, or a tiny CPU configuration.

    Args:
        num_classes: object classes (background is added internally).
        backbone: see ``SSDConfig``.
        **settings: every field of ``SSDConfig``: ``image_size`` (VGG-16 at
            300 or 512 uses the paper's extras, steps and scales), default
            boxes, head, matcher (0.5, each GT's best default box), hard
            negatives (3:1), ``pixel_*`` normalisation (default per backbone;
            VGG: 0..255 minus the ImageNet mean), inference (NMS 0.45, score
            0.01, 100 detections).

    Example:
        >>> model = SSD(num_classes=3, backbone="tiny", image_size=128)
        >>> model.anchors.shape
        (1524, 4)

    Reference: Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016.
    """

    config_class = SSDConfig
    classification = "softmax"

    def __init__(self, num_classes: int, backbone="vgg16", **settings):
        super().__init__(num_classes=num_classes, backbone=backbone, **settings)

    @property
    def classifier_layers(self) -> tuple[str, ...]:
        return tuple(f"ssd_cls_l{level}" for level in range(len(self.config.aspect_ratios)))

    def default_pixel_normalization(self) -> dict:
        name = canonical_name(self.config.backbone)
        if name in PRESETS:
            return dict(PRESETS[name]["preprocessing"])
        return default_normalization(self.config.backbone)

    def build_network(self):
        cfg = self.config
        name = canonical_name(cfg.backbone)
        preset = cfg.preset()
        size = cfg.image_size
        options = dict(preset.get("backbone_options", {}))
        if cfg.reduced_tail is not None:
            options["reduced_tail"] = cfg.reduced_tail
        backbone_model, _ = build_backbone(cfg.backbone, size, allowed=BACKBONE_NAMES, **options)
        inputs = keras.Input((*size, 3), name="images")
        features = backbone_model(inputs)
        levels = sorted(k for k in features if int(k[1:]) >= 3)
        if name in ("mobilenet_v2", "mobilenet_v3_large"):
            levels = list(SSDLITE_SOURCES)  # SSDLite: stride 16 expansion and the last layer
        sources = [features[k] for k in levels]
        if name == "vgg16":
            sources[0] = L2Normalization(name="conv4_3_l2norm")(sources[0])
        sources += ssd_extra_layers(sources[-1], cfg.extras, separable=preset["separable"])
        feature_shapes = [tuple(int(d) for d in s.shape[1:3]) for s in sources]
        if len(cfg.aspect_ratios) != len(sources):
            raise ValueError(f"aspect_ratios has {len(cfg.aspect_ratios)} levels but the network has {len(sources)} "
                             f"sources of sizes {feature_shapes}.")
        shapes = default_box_shapes(size, cfg.aspect_ratios, cfg.min_scale, cfg.max_scale, cfg.anchor_scales,
                                    cfg.clip_default_boxes)
        counts = [len(level) for level in shapes]
        head = dict(block=cfg.head_block, width=cfg.head_width, depth=cfg.head_depth)
        cls = ssd_head(sources, counts, self.head_classes, name="ssd_cls", **head)
        box = ssd_head(sources, counts, 4, name="ssd_box", **head)
        self._backbone_name = backbone_model.name
        self.feature_shapes = feature_shapes
        # Without steps: spaced by canvas / feature size per axis (nominal strides only label the levels).
        steps = cfg.steps or [max(1, round(size[0] / shape[0])) for shape in feature_shapes]
        anchors = AnchorGenerator(strides=steps, anchor_shapes=shapes, offset=0.5,
                                  stride_from_grid=False if cfg.steps else "exact", name="anchor_generator")
        return keras.Model(inputs, {"box": box, "cls": cls}, name="network"), anchors

    def network_feature_shapes(self):
        return self.feature_shapes

    def class_scores(self, cls_logits):
        """Per-class probabilities; with ``candidates_per_class`` each class's scores below its k-th best are 0."""
        scores = super().class_scores(cls_logits)
        k = self.config.candidates_per_class
        if k is None or k >= scores.shape[1]:
            return scores
        kth = tf.math.top_k(tf.transpose(scores, [0, 2, 1]), k=k).values[..., -1]  # (B, C)
        return tf.where(scores >= kth[:, None, :], scores, 0.0)

    def default_box_loss(self):
        """Smooth L1 with beta 1 on the deltas (Liu et al. 2016, eq. (2))."""
        from kdet.losses import SmoothL1Loss

        return SmoothL1Loss(delta=1.0)

    def training_recipe(self) -> TrainingRecipe:
        return SCRATCH_RECIPE if canonical_name(self.config.backbone) == "tiny" else SSD_RECIPE

