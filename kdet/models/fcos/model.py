"""FCOS (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection"): anchor-free.

    raw pixels -> ImagePreprocessing -> backbone C3..C5 -> FPN P3..P7 (P6, P7 from P5)
      -> shared towers (4 x conv-GroupNorm-ReLU) -> per location: class logits,
         ltrb distances / stride, centre-ness logit
    training:  centre sampling + scale ranges -> focal loss (classes) + GIoU loss
               (boxes) + BCE (centre-ness), each summed and divided by the positives
    inference: score = sqrt(sigmoid(class) * sigmoid(centre-ness)), per level the
               top 1000 (location, class) pairs above the score threshold, decode,
               clip, class-aware NMS, the best 100

Every convention that changes numbers is torchvision's
(``torchvision/models/detection/fcos.py``), so its ``fcos_resnet50_fpn``
checkpoint gives its detections (``kdet.zoo.torchvision_fcos``); the targets
are in ``kdet.models.fcos.targets``, the head in ``kdet.models.fcos.head``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kdet.backbones.factory import build_backbone, default_normalization
from kdet.config import SCRATCH_RECIPE, NMSConfig, TrainingRecipe, keras_field
from kdet.detector import Detector
from kdet.layers.combined_nms import CombinedNMS
from kdet.models.fcos.head import HEAD_NORMS, fcos_head
from kdet.models.fcos.targets import (RANGE_LOWER, RANGE_UPPER, assign_locations, centerness_target, decode_ltrb,
                                      encode_ltrb, level_ranges, location_generator)
from kdet.models.single_stage import clip_to_valid, operates_on_boxes, per_anchor
from kdet.necks.fpn import fpn
from kdet.validation import check_head_output_ids, check_image_size, check_positive_int

# Full size: torchvision fcos_resnet50_fpn (FPN 256 channels, 4-conv towers, GroupNorm(32)).
FULL = {"image_size": 512, "fpn_width": 256, "head_depth": 4, "norm_groups": 32}
# The tiny configuration (backbone="tiny"): narrow and shallow so it trains on CPU in minutes.
TINY = {"image_size": 128, "fpn_width": 48, "head_depth": 2, "norm_groups": 16}
# torchvision FCOS defaults: center_sampling_radius 1.5, score_thresh 0.2, nms_thresh 0.6,
# detections_per_img 100, topk_candidates 1000 (per level).
CENTER_SAMPLING_RADIUS = 1.5
SCORE_THRESHOLD = 0.2
NMS_IOU_THRESHOLD = 0.6
TOP_K_PER_LEVEL = 1000
# torchvision references/detection (FCOS ResNet-50 FPN): SGD 0.01 at 16 images, momentum 0.9, weight decay
# 1e-4, linear warm-up over the first 1000 iterations.
FCOS_RECIPE = TrainingRecipe("sgd", 0.01, 16, 1e-4, 0.9, 1000,
                             "torchvision references/detection, fcos_resnet50_fpn: SGD 0.01 at 16 images, wd 1e-4")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FCOSConfig(NMSConfig):
    """FCOS's settings (``NMSConfig`` / ``DetectorConfig`` hold the shared ones).

    Args:
        backbone: a name of ``kdet.backbones.factory`` or a ``keras.Model``.
        min_level, max_level: pyramid levels (P3-P7).
        fpn_width, head_depth, norm_groups: FPN / tower channels, convs per
            tower, GroupNorm groups (None: the backbone's preset, 256 / 4 / 32;
            tiny 48 / 2 / 16).
        head_norm: "group" (GroupNorm in the towers: torchvision, FCOS v2) or
            None (the 2019 paper's towers).
        extra_from: P6 from the FPN's P5 ("output": the paper and torchvision)
            or from C5 ("input").
        location_offset: a location's point is ``(i + offset) * stride``:
            torchvision's 0 (grid corners) or the paper's 0.5 (cell centres).
        center_sampling_radius: positives lie within this many strides of a
            box centre (torchvision 1.5).
        scale_range: a level of stride s learns the boxes whose largest
            location-to-side distance lies in (lower * s, upper * s), the finest
            level from 0 and the coarsest to infinity (torchvision and the
            paper: (4, 8), i.e. 0-64-128-256-512-inf px on P3-P7).
        pre_nms_top_k: (location, class) candidates kept per level before NMS
            (torchvision 1000).
        head_output_ids: the head's output index of each kdet label (e.g.
            torchvision's COCO ids 1..90 for kdet's 80 labels); None: label k
            is output k.
    """

    backbone: Any = keras_field("resnet50")
    min_level: int = 3
    max_level: int = 7
    fpn_width: int | None = None
    head_depth: int | None = None
    norm_groups: int | None = None
    head_norm: str | None = "group"
    extra_from: str = "output"
    location_offset: float = 0.0
    center_sampling_radius: float = CENTER_SAMPLING_RADIUS
    scale_range: tuple[float, float] = (RANGE_LOWER, RANGE_UPPER)
    pre_nms_top_k: int = TOP_K_PER_LEVEL
    head_output_ids: tuple[int, ...] | None = None
    score_threshold: float = SCORE_THRESHOLD
    nms_iou_threshold: float = NMS_IOU_THRESHOLD

    def is_tiny(self) -> bool:
        return isinstance(self.backbone, str) and self.backbone.lower() == "tiny"

    def resolve(self):
        for key, value in (TINY if self.is_tiny() else FULL).items():
            if key == "image_size" and self.resize in ("min_max", "none"):
                continue
            if getattr(self, key) is None:
                self._set(key, value)

    def validate(self):
        super().validate()
        if not 1 <= self.min_level <= self.max_level:
            raise ValueError(f"need 1 <= min_level <= max_level; received {self.min_level}, {self.max_level}.")
        for key in ("fpn_width", "head_depth", "norm_groups", "pre_nms_top_k"):
            self._set(key, check_positive_int(key, getattr(self, key)))
        if self.head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {HEAD_NORMS}; received {self.head_norm!r}.")
        if self.head_norm == "group" and self.fpn_width % self.norm_groups:
            raise ValueError(f"fpn_width ({self.fpn_width}) must be divisible by norm_groups ({self.norm_groups}).")
        if self.extra_from not in ("input", "output"):
            raise ValueError(f"extra_from must be 'input' or 'output'; received {self.extra_from!r}.")
        offset = float(self.location_offset)
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"location_offset must be in [0, 1); received {self.location_offset!r}.")
        self._set("location_offset", offset)
        if not float(self.center_sampling_radius) > 0:
            raise ValueError(f"center_sampling_radius must be > 0; received {self.center_sampling_radius!r}.")
        self._set("center_sampling_radius", float(self.center_sampling_radius))
        if len(self.scale_range) != 2 or not 0 <= float(self.scale_range[0]) < float(self.scale_range[1]):
            raise ValueError(f"scale_range must be (lower, upper) with 0 <= lower < upper; received {self.scale_range}.")
        self._set("scale_range", tuple(float(v) for v in self.scale_range))
        coarsest = 2 ** min(int(self.max_level), 5)
        if self.image_size is not None and self.fixed_canvas:
            check_image_size(self.image_size, multiple_of=coarsest)
        if self.resize == "min_max" and self.size_divisible % coarsest:
            raise ValueError(f"size_divisible must be a multiple of {coarsest}; received {self.size_divisible}.")
        if self.head_output_ids is not None:
            self._set("head_output_ids", check_head_output_ids(self.head_output_ids, self.num_classes))


@keras.saving.register_keras_serializable(package="kdet")
class FCOS(Detector):
    """FCOS: anchor-free one-stage detection (Tian et al. 2019, https://arxiv.org/abs/1904.01355).

    One prediction per feature-map location of P3-P7: class logits, the
    distances to the box's four sides (in strides) and a centre-ness logit
    that down-weights off-centre locations at inference.

    Args:
        num_classes: number of object classes.
        backbone: "resnet50" (default), "resnet101", "tiny", ... or a
            ``keras.Model`` returning {"P3", "P4", "P5"} features.
        **settings: every field of ``FCOSConfig``: ``image_size`` (a multiple
            of 32; default 512, 128 for "tiny"), ``resize``, ``precision``,
            ``bounding_box_format``, ``class_names``, ``min_level`` /
            ``max_level``, ``fpn_width`` / ``head_depth`` / ``norm_groups``,
            ``head_norm``, ``extra_from``, ``location_offset``,
            ``center_sampling_radius`` (1.5), ``pre_nms_top_k`` (1000 per
            level), ``score_threshold`` (0.2), ``nms_iou_threshold`` (0.6),
            ``max_detections`` (100), ``soft_nms_sigma``, ``head_output_ids``.

    Example:
        >>> model = FCOS(3, backbone="tiny", image_size=128)
        >>> model.compile()
        >>> # model.fit(images, {"boxes": boxes, "labels": labels}, epochs=30)
    """

    config_class = FCOSConfig
    loss_names = ("cls_loss", "box_loss", "centerness_loss")
    classifier_layers = ("cls_logits",)

    def __init__(self, num_classes: int, backbone="resnet50", **settings):
        super().__init__(num_classes=num_classes, backbone=backbone, **settings)

    def default_pixel_normalization(self) -> dict:
        return default_normalization(self.config.backbone)

    # ------------------------------------------------------------ assembly
    @property
    def head_classes(self) -> int:
        """Class logits per location (``max(head_output_ids) + 1`` when set)."""
        ids = self.config.head_output_ids
        return max(ids) + 1 if ids is not None else self.num_classes

    def assemble(self):
        cfg = self.config
        backbone_model, _ = build_backbone(cfg.backbone, self.network_input_shape)
        inputs = keras.Input((*self.network_input_shape, 3), name="images")
        # torchvision pads P6/P7's stride-2 convs by 1 on each side; keep that so its weights port exactly.
        pyramid = fpn(backbone_model(inputs), cfg.min_level, cfg.max_level, cfg.fpn_width,
                      extra_from=cfg.extra_from, extra_padding="symmetric")
        levels = [pyramid[f"P{level}"] for level in range(cfg.min_level, cfg.max_level + 1)]
        head = fcos_head(levels, self.head_classes, cfg.head_depth, cfg.fpn_width, cfg.head_norm, cfg.norm_groups)
        self._backbone_name = backbone_model.name
        self.network = keras.Model(inputs, head, name="network")
        self.location_generator = location_generator(cfg.min_level, cfg.max_level, cfg.location_offset)
        self._set_untracked("_location_cache", {})
        self.nms = CombinedNMS(max_output_size_per_class=cfg.max_detections, max_total_size=cfg.max_detections,
                               iou_threshold=cfg.nms_iou_threshold, score_threshold=cfg.score_threshold,
                               soft_nms_sigma=cfg.soft_nms_sigma, class_agnostic=cfg.class_agnostic,
                               name="combined_nms")
        if cfg.fixed_canvas:
            expected = len(self.locations_for(cfg.image_size)[0])
            if self.network.output["cls"].shape[1] != expected:
                raise ValueError(f"The network gives {self.network.output['cls'].shape[1]} locations but "
                                 f"{cfg.image_size} has {expected} on P{cfg.min_level}-P{cfg.max_level}; the "
                                 "backbone's strides must be 2^level.")

    @property
    def backbone(self):
        """The backbone sub-model (freeze it with ``model.backbone.trainable = False``)."""
        return self.network.get_layer(self._backbone_name)

    def locations_for(self, canvas) -> tuple[np.ndarray, list[int], np.ndarray]:
        """(locations (N, 4) unit boxes, locations per level, (N, 2) scale ranges) of a canvas, cached."""
        canvas = tuple(int(c) for c in canvas)
        if canvas not in self._location_cache:
            gen = self.location_generator
            shapes = gen.feature_shapes(*canvas)
            locations = gen.generate(*canvas, feature_shapes=shapes)
            counts = [int(h * w) for h, w in shapes]
            ranges = level_ranges(counts, gen.sizes, self.config.scale_range)
            self._location_cache[canvas] = (locations, counts, ranges)
        return self._location_cache[canvas]

    # ------------------------------------------------------------ forward
    def network_outputs(self, x, training=False):
        """{"cls": (B, N, C') logits, "box": (B, N, 4) ltrb / stride, "centerness": (B, N, 1) logits}."""
        return self.network(x, training=training)

    def class_scores(self, raw):
        """FCOS's scores sqrt(sigmoid(class) * sigmoid(centre-ness)), (B, N, num_classes) float32."""
        probs = tf.sigmoid(tf.cast(raw["cls"], tf.float32))
        if self.config.head_output_ids is not None:
            probs = tf.gather(probs, list(self.config.head_output_ids), axis=-1)
        return tf.sqrt(probs * tf.sigmoid(tf.cast(raw["centerness"], tf.float32)))

    def postprocess(self, raw, frame):
        locations, counts, _ = self.locations_for(frame["canvas"])
        boxes = clip_to_valid(decode_ltrb(raw["box"], locations), frame)
        scores = self.class_scores(raw)
        classes = self.num_classes
        candidate_boxes, candidate_scores, candidate_labels, start = [], [], [], 0
        for count in counts:
            # torchvision: per level, the top-k (location, class) pairs scoring above the threshold.
            pairs = tf.reshape(scores[:, start:start + count], (-1, count * classes))
            top_scores, top = tf.math.top_k(pairs, k=min(self.config.pre_nms_top_k, count * classes))
            candidate_boxes.append(tf.gather(boxes, top // classes + start, batch_dims=1))
            candidate_scores.append(top_scores)
            candidate_labels.append(top % classes)
            start += count
        labels = tf.concat(candidate_labels, axis=1)
        # One class per candidate: its score in its own column, 0 elsewhere, so the class-aware NMS
        # (score > threshold, suppression within a class) sees exactly the candidates torchvision keeps.
        one_hot = tf.one_hot(labels, classes) * tf.concat(candidate_scores, axis=1)[..., None]
        return self.nms(tf.concat(candidate_boxes, axis=1), one_hot)

    # ----------------------------------------------------------- training
    def head_targets(self, labels):
        """kdet labels (>= 0) -> the class head's output index."""
        ids = self.config.head_output_ids
        if ids is None:
            return labels
        return tf.gather(tf.constant(ids, tf.int32), tf.maximum(labels, 0))

    def compute_losses(self, y, raw, frame):
        locations, _, ranges = self.locations_for(frame["canvas"])
        boxes, labels = y["boxes"], y["labels"]
        if boxes.shape[1] == 0:  # no ground-truth rows at all: one padding row, every location background
            batch = tf.shape(labels)[0]
            boxes, labels = tf.zeros([batch, 1, 4]), tf.fill([batch, 1], -1)
        matched = assign_locations(locations, ranges, boxes, labels, self.config.center_sampling_radius)
        positive = matched >= 0
        weights = tf.cast(positive, tf.float32)
        num_positive = tf.maximum(tf.reduce_sum(weights), 1.0)
        index = tf.maximum(matched, 0)
        gt_boxes = tf.gather(boxes, index, batch_dims=1)
        gt_labels = tf.gather(labels, index, batch_dims=1)
        onehot = tf.one_hot(tf.where(positive, self.head_targets(gt_labels), -1), self.head_classes)
        cls_loss = tf.reduce_sum(per_anchor(self.classification_loss, onehot, tf.cast(raw["cls"], tf.float32)))
        box_pred = tf.cast(raw["box"], tf.float32)
        box_targets = encode_ltrb(locations, gt_boxes)
        if operates_on_boxes(self.box_loss):  # IoU family (GIoU by default): compare decoded boxes
            box_values = per_anchor(self.box_loss, gt_boxes, decode_ltrb(box_pred, locations))
        else:  # regression losses compare the normalised distances
            box_values = per_anchor(self.box_loss, box_targets, box_pred)
        centerness = tf.where(positive, centerness_target(box_targets), 0.0)
        ctr_values = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=centerness, logits=tf.cast(raw["centerness"], tf.float32)[..., 0])
        return {"cls_loss": cls_loss / num_positive,
                "box_loss": tf.reduce_sum(box_values * weights) / num_positive,
                "centerness_loss": tf.reduce_sum(ctr_values * weights) / num_positive}

    def default_box_loss(self):
        from kdet.losses import IoULoss

        return IoULoss(mode="giou")

    def training_recipe(self) -> TrainingRecipe:
        return SCRATCH_RECIPE if self.config.is_tiny() else FCOS_RECIPE
