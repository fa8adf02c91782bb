"""YOLOv3 (Redmon and Farhadi 2018, "YOLOv3: An Incremental Improvement").

    raw pixels -> /255 -> Darknet-53 -> YOLO neck -> per level 3 anchors x (4 + 1 + C)
    training:  YOLOAssigner (best anchor by width/height IoU) -> box + objectness + class losses
    inference: sigmoid offsets / exp sizes -> score = objectness x class probability -> CombinedNMS
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kdet.backbones.darknet import darknet53_conv_names, darknet_tiny_conv_names
from kdet.backbones.factory import build_backbone, canonical_name
from kdet.config import SCRATCH_RECIPE, NMSConfig, TrainingRecipe, keras_field
from kdet.detector import Detector
from kdet.heads.yolo import split_yolo_outputs, yolo_head, yolo_head_conv_names
from kdet.layers.anchor_decoder import AnchorDecoder
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.layers.combined_nms import CombinedNMS
from kdet.losses.yolo import YOLOBoxLoss  # registered before a compiled model is loaded
from kdet.models.single_stage import clip_to_valid, operates_on_boxes, per_anchor
from kdet.models.yolov3.presets import (ANCHOR_IMAGE_SIZE, BACKBONE_NAMES, PRESETS, YOLO_IGNORE_THRESHOLD,
                                        YOLO_NMS_IOU)
from kdet.necks.yolo_fpn import yolo_fpn, yolo_fpn_conv_names
from kdet.ops.boxes import aligned_iou, iou
from kdet.targets.yolo_assigner import YOLOAssigner
from kdet.validation import check_image_size, check_positive_int, check_positive_number, check_probability

# darknet yolov3.cfg: learning_rate 1e-3, batch 64, decay 5e-4, burn_in 1000.
YOLOV3_RECIPE = TrainingRecipe("sgd", 1e-3, 64, 5e-4, 0.9, 1000,
                               "darknet yolov3.cfg: lr 1e-3, batch 64, decay 5e-4, burn_in 1000")
#: Preset-dependent settings (None or "preset" in the config: the backbone's preset value).
#: What the objectness of a responsible anchor is trained towards (``YOLOV3Config.objectness_target``).
OBJECTNESS_TARGETS = ("binary", "iou")
PRESET_KEYS = ("bn_momentum", "neck_widths", "lateral_widths", "neck_convs", "head_widths", "anchors")


def scale_anchors(anchors, image_size, anchor_image_size=ANCHOR_IMAGE_SIZE) -> list[list[tuple[float, float]]]:
    """Anchors (w, h) given in pixels of ``anchor_image_size`` -> pixels of ``image_size`` (h, w)."""
    ref_h, ref_w = check_image_size(anchor_image_size)
    height, width = image_size
    return [[(float(w) * width / ref_w, float(h) * height / ref_h) for w, h in level] for level in anchors]


@dataclasses.dataclass(frozen=True, kw_only=True)
class YOLOV3Config(NMSConfig):
    """YOLOv3's settings.

    Args:
        backbone: "darknet53" (yolov3.cfg), "darknet_tiny" (yolov3-tiny.cfg),
            "tiny" (kdet's small CNN) or a ``keras.Model`` on 0..1 images
            returning ``{"P3", "P4", "P5"}``.
        anchors: per level, finest first, (width, height) in pixels of
            ``anchor_image_size``; None: the preset's (the official cfg's).
        anchor_image_size: the input size the anchors are given for (416):
            they are scaled to ``image_size`` so they stay relative to the image.
        ignore_threshold: predictions overlapping a ground-truth box by more
            than this IoU get no objectness loss (paper: 0.5).
        pre_nms_top_k: boxes kept by best score before NMS.
        extra_positive_iou: None for the paper's assignment (each box to its
            best anchor shape only); t also makes every anchor shape with
            width/height IoU >= t responsible. "preset": None for Darknet, 0.25 for "tiny".
        anchor_ignore_iou: None for the paper's ignore rule; t also exempts
            from the no-object loss every anchor whose cell-centred box
            overlaps a ground-truth box by more than t. "preset": None for
            Darknet, 0.5 for "tiny".
        xy_scale: Darknet's ``scale_x_y`` (YOLOv4 cfgs): box centres decode
            as ``(s * sigmoid(tx) - (s - 1) / 2 + col) * stride``; 1 is
            YOLOv3's. "preset": 1 for Darknet.
        neighbour_cells: also make each box's anchor shapes responsible in the
            two neighbouring cells nearest its centre (YOLOv5's rule; needs
            ``xy_scale`` >= 2 so the decoder can reach the centre). "preset":
            False for Darknet.
        objectness_target: "binary" (the paper: 1 for responsible anchors) or
            "iou" (YOLOv5-style: the IoU of the responsible anchor's decoded
            box with its ground truth, without gradient, so that the score
            ranks boxes by localisation quality). The objectness loss is then
            reported as its KL divergence from the soft target (the
            cross-entropy minus the target's entropy: the same gradient, and 0
            when fitted). "preset": "binary" for Darknet, the
            ``presets.PRESETS`` value for "tiny".
        box_loss_weight: factor on the box loss (> 0). "preset": 1 for
            Darknet (the paper's sum), the ``presets.PRESETS`` value for "tiny".
        bn_momentum, neck_widths, lateral_widths, neck_convs, head_widths:
            None: the preset of ``backbone`` (``presets.PRESETS``).
    """

    backbone: Any = keras_field("darknet53")
    anchors: tuple | None = None
    anchor_image_size: Any = ANCHOR_IMAGE_SIZE
    ignore_threshold: float = YOLO_IGNORE_THRESHOLD
    pre_nms_top_k: int | None = 1000
    nms_iou_threshold: float = YOLO_NMS_IOU
    score_threshold: float = 0.01
    bn_momentum: float | None = None
    neck_widths: tuple[int, ...] | None = None
    lateral_widths: tuple[int, ...] | None = None
    neck_convs: tuple[int, ...] | None = None
    head_widths: tuple[int, ...] | None = None
    extra_positive_iou: Any = "preset"
    anchor_ignore_iou: Any = "preset"
    objectness_target: str = "preset"
    xy_scale: Any = "preset"
    neighbour_cells: Any = "preset"
    box_loss_weight: Any = "preset"

    def preset(self) -> dict:
        name = canonical_name(self.backbone)
        return dict(PRESETS[name if name in PRESETS else "darknet53"])

    def resolve(self):
        name = canonical_name(self.backbone)
        if name is not None and name not in PRESETS:
            raise ValueError(f"Unknown YOLOv3 backbone {self.backbone!r}; expected one of {BACKBONE_NAMES} "
                             "or a keras.Model returning {'P3', 'P4', 'P5'} features.")
        preset = self.preset()
        if self.image_size is None:
            self._set("image_size", 128 if name == "tiny" else 416)
        for key in PRESET_KEYS:
            if getattr(self, key) is None:
                self._set(key, preset[key])
        for key, paper in (("extra_positive_iou", None), ("anchor_ignore_iou", None),
                           ("objectness_target", "binary"), ("xy_scale", 1.0), ("neighbour_cells", False),
                           ("box_loss_weight", 1.0)):
            if getattr(self, key) == "preset":
                self._set(key, preset.get(key, paper))

    def validate(self):
        super().validate()
        if not self.fixed_canvas:
            raise ValueError(f"YOLOv3 predicts on a fixed canvas: resize must be 'stretch', 'letterbox' or 'pad'; "
                             f"received {self.resize!r}.")
        check_image_size(self.image_size, multiple_of=32)
        check_probability("ignore_threshold", self.ignore_threshold)
        if self.objectness_target not in OBJECTNESS_TARGETS:
            raise ValueError(f"objectness_target must be one of {OBJECTNESS_TARGETS}; "
                             f"received {self.objectness_target!r}.")
        if not isinstance(self.xy_scale, (int, float)) or not 1.0 <= self.xy_scale <= 3.0:
            raise ValueError(f"xy_scale must be a number in [1, 3] (Darknet's scale_x_y); received {self.xy_scale!r}.")
        self._set("xy_scale", float(self.xy_scale))
        self._set("box_loss_weight", check_positive_number("box_loss_weight", self.box_loss_weight))
        if not isinstance(self.neighbour_cells, bool):
            raise ValueError(f"neighbour_cells must be True or False; received {self.neighbour_cells!r}.")
        if self.neighbour_cells and self.xy_scale < 2.0:
            raise ValueError(f"neighbour_cells needs xy_scale >= 2 (the decoder must reach the neighbouring "
                             f"cells' targets); received xy_scale={self.xy_scale}.")
        if self.pre_nms_top_k is not None:
            check_positive_int("pre_nms_top_k", self.pre_nms_top_k)
        for key in ("extra_positive_iou", "anchor_ignore_iou"):
            if getattr(self, key) is not None:
                self._set(key, check_probability(key, getattr(self, key)))
        self._set("anchors", tuple(tuple(tuple(float(v) for v in wh) for wh in level) for level in self.anchors))
        levels = self.preset()["levels"]
        if len(self.anchors) != len(levels):
            raise ValueError(f"anchors has {len(self.anchors)} levels but the network predicts on "
                             f"{len(levels)} (P{', P'.join(map(str, sorted(levels)))}).")


@keras.saving.register_keras_serializable(package="kdet")
class YOLOV3(Detector):
    """YOLOv3 detector: Darknet-53 (or the yolov3-tiny trunk, or kdet's tiny CNN) + three-scale head.

    Args:
        num_classes: object classes (80 for COCO).
        backbone: see ``YOLOV3Config``.
        **settings: every field of ``YOLOV3Config`` and the shared ones
            (``image_size`` multiple of 32, default 416 (128 for "tiny");
            ``resize`` ("letterbox" is Darknet's rule); score 0.01, NMS 0.45).

    Example:
        >>> model = YOLOV3(num_classes=3, backbone="tiny", image_size=128)
        >>> model.predict(np.zeros((1, 128, 128, 3), np.uint8), verbose=0)["boxes"].shape
        (1, 100, 4)

    Reference: Redmon and Farhadi, "YOLOv3: An Incremental Improvement", 2018.
    """

    config_class = YOLOV3Config
    loss_names = ("box_loss", "obj_loss", "cls_loss")

    def __init__(self, num_classes: int, backbone="darknet53", **settings):
        super().__init__(num_classes=num_classes, backbone=backbone, **settings)

    @property
    def classifier_layers(self) -> tuple[str, ...]:
        # The 1x1 convs predicting (4 + 1 + C) values per anchor, one per output level.
        return tuple(layer.name for layer in self.network.layers if layer.name.endswith("_pred_conv"))

    def inherit_classifier_outputs(self, source: "YOLOV3") -> list[str]:
        """Copies the box and objectness outputs of ``source``'s prediction convs (new classes, same anchors).

        Darknet's prediction conv lays out (anchor, [tx, ty, tw, th, objectness,
        class_0 .. class_C-1]) (``kdet.heads.yolo``): only the class outputs
        depend on the classes. Keeping the checkpoint's box regression and
        objectness instead of starting them fresh is what makes a fine-tuned
        YOLO learn in a few hundred steps: on the fine-tuning benchmark (real
        yolov3-tiny weights, 160 images at 416 px, 8 epochs, with the frozen
        batch norms of ``fine_tune``) held-out AP50 rose from 0.56 to 0.95
        (docs/training.md, "Fine-tuning to new classes").

        Args:
            source: a YOLOV3 of the same configuration with other classes.

        Returns:
            The paths of the variables that received values.

        Raises:
            ValueError: ``source``'s prediction convs do not match this model's
                (other anchors or features).
        """
        copied = []
        for name in self.classifier_layers:
            target, origin = self.network.get_layer(name), source.network.get_layer(name)
            anchors = target.kernel.shape[-1] // (5 + self.num_classes)
            if (origin.kernel.shape[-1] != anchors * (5 + source.num_classes)
                    or origin.kernel.shape[:-1] != target.kernel.shape[:-1]):
                raise ValueError(f"{name}: the source predicts {origin.kernel.shape} values for "
                                 f"{source.num_classes} classes, which do not match this model's "
                                 f"{target.kernel.shape} for {self.num_classes} classes at {anchors} anchors.")
            for mine, theirs in ((target.kernel, origin.kernel), (target.bias, origin.bias)):
                values = mine.numpy().reshape(*mine.shape[:-1], anchors, 5 + self.num_classes)
                values[..., :5] = theirs.numpy().reshape(*theirs.shape[:-1], anchors, 5 + source.num_classes)[..., :5]
                mine.assign(values.reshape(mine.shape))
                copied.append(mine.path)
        return copied

    def assemble(self):
        cfg = self.config
        size = cfg.image_size
        self.levels = tuple(int(level) for level in cfg.preset()["levels"])
        self.anchor_shapes = scale_anchors(cfg.anchors, size, cfg.anchor_image_size)
        self.network, self._backbone_name = self._build_network(cfg)
        strides = [2 ** level for level in sorted(self.levels)]
        feature_shapes = [(size[0] // s, size[1] // s) for s in strides]
        self.assigner = YOLOAssigner(self.anchor_shapes, strides, feature_shapes,
                                     extra_positive_iou=cfg.extra_positive_iou,
                                     neighbour_cells=cfg.neighbour_cells, xy_scale=cfg.xy_scale)
        # Anchors centred on the cell's top-left corner: what the "yolo" decoder expects.
        self.anchor_generator = AnchorGenerator(strides=strides, anchor_shapes=self.anchor_shapes, offset=0.0,
                                                name="anchor_generator")
        self.anchors = self.anchor_generator.generate(*size, feature_shapes=feature_shapes)
        self.anchor_strides = self.assigner.anchor_strides
        self._cell_anchors = (self.anchors + self.anchor_strides[:, None] / 2).astype(np.float32)  # cell-centred
        self.decoder = AnchorDecoder(encoding="yolo", xy_scale=cfg.xy_scale, name="anchor_decoder")
        self.nms = CombinedNMS(max_output_size_per_class=cfg.max_detections, max_total_size=cfg.max_detections,
                               iou_threshold=cfg.nms_iou_threshold, score_threshold=cfg.score_threshold,
                               soft_nms_sigma=cfg.soft_nms_sigma, class_agnostic=cfg.class_agnostic,
                               name="combined_nms")

    def _build_network(self, cfg):
        name = canonical_name(cfg.backbone)
        options = {} if name in (None, "tiny") else {"bn_momentum": cfg.bn_momentum}
        backbone_model, _ = build_backbone(cfg.backbone, cfg.image_size, allowed=BACKBONE_NAMES, **options)
        inputs = keras.Input((*cfg.image_size, 3), name="images")
        features = backbone_model(inputs)
        if not isinstance(features, dict):
            raise ValueError(f"The backbone must return a dict of pyramid features; received {type(features)}.")
        neck = yolo_fpn(features, self.levels, cfg.neck_widths, cfg.lateral_widths, cfg.neck_convs,
                        bn_momentum=cfg.bn_momentum)
        per_location = {lvl: len(a) for lvl, a in zip(sorted(self.levels), self.anchor_shapes)}
        head = yolo_head(neck, self.levels, cfg.head_widths, [per_location[lvl] for lvl in self.levels],
                         self.num_classes, bn_momentum=cfg.bn_momentum)
        return keras.Model(inputs, head, name="network"), backbone_model.name

    @property
    def backbone(self):
        """The backbone sub-model (freeze it with ``model.backbone.trainable = False``)."""
        return self.network.get_layer(self._backbone_name)

    def darknet_conv_order(self) -> list[str]:
        """Conv layer-name prefixes in Darknet cfg order (the order of the ``.weights`` file)."""
        backbone = canonical_name(self.config.backbone)
        if backbone == "darknet53":
            names = darknet53_conv_names()
        elif backbone == "darknet_tiny":
            names = darknet_tiny_conv_names()
        else:
            raise ValueError(f"Only the darknet53 and darknet_tiny backbones have a Darknet layout; "
                             f"this model uses {backbone!r}.")
        neck = yolo_fpn_conv_names(self.levels, self.config.neck_convs)
        head = yolo_head_conv_names(self.levels)
        for neck_names, head_names in zip(neck, head):
            names += neck_names + head_names
        return names

    # ------------------------------------------------------------ forward
    def network_outputs(self, x, training=False):
        """``{"box": (B, A, 4) raw tx..th, "obj": (B, A, 1), "cls": (B, A, C) logits}``."""
        return split_yolo_outputs(self.network(x, training=training))

    def decode_boxes(self, raw_box):
        """(B, A, 4) raw box outputs -> xyxy boxes in network pixels (not clipped)."""
        return self.decoder(raw_box, self.anchors, strides=self.anchor_strides)

    def postprocess(self, raw, frame):
        boxes = clip_to_valid(self.decode_boxes(raw["box"]), frame)
        scores = tf.sigmoid(tf.cast(raw["obj"], tf.float32)) * tf.sigmoid(tf.cast(raw["cls"], tf.float32))
        k = self.config.pre_nms_top_k
        if k is not None and k < len(self.anchors):
            _, top = tf.math.top_k(tf.reduce_max(scores, axis=-1), k=k)
            boxes = tf.gather(boxes, top, batch_dims=1)
            scores = tf.gather(scores, top, batch_dims=1)
        return self.nms(boxes, scores)

    # ----------------------------------------------------------- training
    def compute_losses(self, y, raw, frame):
        targets = self.assigner(y["boxes"], y["labels"])
        positive = targets["positive"]
        batch = tf.cast(tf.shape(positive)[0], tf.float32)  # Darknet sums over anchors, averages images
        decoded = self.decode_boxes(raw["box"])
        # No-object candidates whose prediction already overlaps some box well are ignored.
        overlaps = iou(tf.stop_gradient(decoded), y["boxes"])
        overlaps = tf.where((y["labels"] >= 0)[:, None, :], overlaps, 0.0)
        ignored = tf.reduce_max(overlaps, axis=-1) > self.config.ignore_threshold
        if self.config.anchor_ignore_iou is not None:
            # Cells next to the responsible one whose (cell-centred) anchor box already covers a
            # box are not pushed to no-object either: the one-cell target is a hard spatial
            # boundary that a small training set otherwise memorises.
            anchor_overlaps = iou(tf.constant(self._cell_anchors)[None], y["boxes"])
            anchor_overlaps = tf.where((y["labels"] >= 0)[:, None, :], anchor_overlaps, 0.0)
            ignored |= tf.reduce_max(anchor_overlaps, axis=-1) > self.config.anchor_ignore_iou
        ignore = tf.cast(ignored, tf.float32) * (1.0 - positive)
        matched = targets["matched_boxes"]
        obj_target = positive
        if self.config.objectness_target == "iou":
            # YOLOv5 (utils/loss.py, gr=1): the target is the detached IoU of the decoded box.
            quality = tf.stop_gradient(aligned_iou(decoded, matched))
            obj_target = positive * tf.clip_by_value(quality, 0.0, 1.0)
        obj_values = per_anchor(self.objectness_loss, obj_target[..., None], raw["obj"])
        if self.config.objectness_target == "iou":
            # Cross-entropy minus the soft target's entropy (a constant: same gradient) = KL, 0 when fitted.
            entropy = -(tf.math.xlogy(obj_target, obj_target) + tf.math.xlogy(1.0 - obj_target, 1.0 - obj_target))
            obj_values = obj_values - entropy
        obj_loss = tf.reduce_sum(obj_values * (1.0 - ignore)) / batch
        # Box-loss scale 2 - w * h (w, h relative to the image) favours small boxes.
        relative_area = (matched[..., 2] - matched[..., 0]) * (matched[..., 3] - matched[..., 1]) / float(
            self.image_size[0] * self.image_size[1])
        box_weight = positive * (2.0 - relative_area)
        if operates_on_boxes(self.box_loss):
            box_values = per_anchor(self.box_loss, matched, decoded)
        else:
            box_values = per_anchor(self.box_loss, targets["box_targets"], raw["box"])
        box_loss = self.config.box_loss_weight * tf.reduce_sum(box_values * box_weight) / batch
        onehot = tf.one_hot(targets["labels"], self.num_classes)  # -1 -> zeros (unused: weight 0)
        cls_values = per_anchor(self.classification_loss, onehot, tf.cast(raw["cls"], tf.float32))
        cls_loss = tf.reduce_sum(cls_values * positive) / batch
        return {"box_loss": box_loss, "obj_loss": obj_loss, "cls_loss": cls_loss}

    @property
    def objectness_loss(self):
        """Binary cross-entropy on the objectness logit."""
        from kdet.losses import FocalLoss

        if not hasattr(self, "_objectness_loss"):
            self._objectness_loss = FocalLoss(alpha=None, gamma=0.0, from_logits=True)
        return self._objectness_loss

    def default_box_loss(self):
        """The preset's box loss: YOLOv3's (``YOLOBoxLoss``) for Darknet, ``PRESETS[...]["box_loss"]`` otherwise."""
        name = self.config.preset().get("box_loss")
        return YOLOBoxLoss() if name is None else self.resolve_box_loss(name)

    def default_classification_loss(self):
        """Independent logistic classifiers (paper section 2.2): per-class binary cross-entropy."""
        from kdet.losses import FocalLoss

        return FocalLoss(alpha=None, gamma=0.0, from_logits=True)

    def training_recipe(self) -> TrainingRecipe:
        return SCRATCH_RECIPE if canonical_name(self.config.backbone) == "tiny" else YOLOV3_RECIPE
