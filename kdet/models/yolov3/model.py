"""YOLOv3 (Redmon and Farhadi 2018, "YOLOv3: An Incremental Improvement").

    raw pixels -> /255 -> Darknet-53 -> YOLO neck -> per level 3 anchors x (4 + 1 + C)
    training:  YOLOAssigner (best anchor by width/height IoU) -> box + objectness + class losses
    inference: sigmoid offsets / exp sizes -> score = objectness x class probability -> CombinedNMS
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.backbones.darknet import darknet53, darknet53_conv_names, darknet_tiny, darknet_tiny_conv_names
from kdet.backbones.tiny import tiny_backbone
from kdet.detector import Detector
from kdet.heads.yolo import split_yolo_outputs, yolo_head, yolo_head_conv_names
from kdet.layers.anchor_decoder import AnchorDecoder
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.layers.image_preprocessing import ImagePreprocessing
from kdet.losses.yolo import YOLOBoxLoss  # registered before a compiled model is loaded
from kdet.models.single_stage import per_anchor
from kdet.models.yolov3.presets import (ANCHOR_IMAGE_SIZE, BACKBONE_NAMES, PRESETS, YOLO_IGNORE_THRESHOLD,
                                        YOLO_NMS_IOU)
from kdet.necks.yolo_fpn import yolo_fpn, yolo_fpn_conv_names
from kdet.ops.boxes import iou
from kdet.targets.yolo_assigner import YOLOAssigner
from kdet.validation import check_image_size, check_positive_int, check_probability

_BACKBONE_BUILDERS = {"darknet53": darknet53, "darknet_tiny": darknet_tiny, "tiny": tiny_backbone}


def scale_anchors(anchors, image_size, anchor_image_size=ANCHOR_IMAGE_SIZE) -> list[list[tuple[float, float]]]:
    """Anchors (w, h) given in pixels of ``anchor_image_size`` -> pixels of ``image_size`` (h, w)."""
    ref_h, ref_w = check_image_size(anchor_image_size)
    height, width = image_size
    return [[(float(w) * width / ref_w, float(h) * height / ref_h) for w, h in level] for level in anchors]


@keras.saving.register_keras_serializable(package="kdet")
class YOLOV3(Detector):
    """YOLOv3 detector: Darknet-53 (or the yolov3-tiny trunk, or kdet's tiny CNN) + three-scale head.

    Args:
        num_classes: object classes (80 for COCO).
        backbone: "darknet53" (yolov3.cfg), "darknet_tiny" (yolov3-tiny.cfg),
            "tiny" (kdet's small CNN for CPU experiments) or a ``keras.Model``
            on 0..1 images returning ``{"P3", "P4", "P5"}`` features.
        image_size: network input (height, width) or int, multiples of 32.
        bounding_box_format: format of ground truth and detections.
        class_names: optional names of the classes.
        anchors: per level, finest first, lists of (width, height) in pixels of
            ``anchor_image_size``; default the official cfg's anchors.
        anchor_image_size: the input size the anchors are given for (416):
            they are scaled to ``image_size`` so they stay relative to the image.
        ignore_threshold: predictions overlapping a ground-truth box by more
            than this IoU get no objectness loss (paper: 0.5).
        pre_nms_top_k: boxes kept by best score before NMS.
        nms_iou_threshold, score_threshold, max_detections: ``CombinedNMS``.
        extra_positive_iou: None for the paper's assignment (each box to its
            best anchor shape only); t also makes every anchor shape with
            width/height IoU >= t responsible (``YOLOAssigner``). "preset":
            None for the Darknet backbones, 0.25 for "tiny".
        anchor_ignore_iou: None for the paper's ignore rule (only predictions
            overlapping a box by more than ``ignore_threshold``); t also
            exempts from the no-object loss every anchor whose box, centred
            in its cell, overlaps a ground-truth box by more than t (as the
            ignore band of RPN / RetinaNet matchers). "preset": None for the
            Darknet backbones, 0.5 for "tiny".
        bn_momentum, neck_widths, lateral_widths, neck_convs, head_widths:
            override the preset of ``backbone`` (see ``presets.PRESETS``).

    Example:
        >>> model = YOLOV3(num_classes=3, backbone="tiny", image_size=128)
        >>> model.predict(np.zeros((1, 128, 128, 3), np.uint8), verbose=0)["boxes"].shape
        (1, 100, 4)

    Reference: Redmon and Farhadi, "YOLOv3: An Incremental Improvement", 2018.
    """

    loss_names = ("box_loss", "obj_loss", "cls_loss")

    def __init__(self, num_classes: int, backbone="darknet53", image_size=416, bounding_box_format: str = "xyxy",
                 class_names: Sequence[str] | None = None, anchors=None, anchor_image_size=ANCHOR_IMAGE_SIZE,
                 ignore_threshold: float = YOLO_IGNORE_THRESHOLD, pre_nms_top_k: int | None = 1000,
                 nms_iou_threshold: float = YOLO_NMS_IOU, score_threshold: float = 0.01,
                 max_detections: int = 100, bn_momentum: float | None = None, neck_widths=None,
                 lateral_widths=None, neck_convs=None, head_widths=None, extra_positive_iou="preset",
                 anchor_ignore_iou="preset", **kwargs):
        size = check_image_size(image_size, multiple_of=32)
        if isinstance(backbone, dict):  # a serialised custom backbone (get_config)
            backbone = keras.saving.deserialize_keras_object(backbone)
        if isinstance(backbone, str) and backbone not in PRESETS:
            raise ValueError(f"Unknown YOLOv3 backbone {backbone!r}; expected one of {BACKBONE_NAMES} "
                             "or a keras.Model returning {'P3', 'P4', 'P5'} features.")
        super().__init__(num_classes, bounding_box_format=bounding_box_format, image_size=size,
                         class_names=class_names, **kwargs)
        from kdet.layers import CombinedNMS

        preset = dict(PRESETS[backbone if isinstance(backbone, str) else "darknet53"])
        overrides = dict(bn_momentum=bn_momentum, neck_widths=neck_widths, lateral_widths=lateral_widths,
                         neck_convs=neck_convs, head_widths=head_widths, anchors=anchors)
        preset.update({k: v for k, v in overrides.items() if v is not None})
        for key, value in (("extra_positive_iou", extra_positive_iou), ("anchor_ignore_iou", anchor_ignore_iou)):
            if value != "preset":
                preset[key] = value
            overrides[key] = value
        self._arguments = dict(backbone=backbone, anchor_image_size=anchor_image_size,
                               ignore_threshold=ignore_threshold, pre_nms_top_k=pre_nms_top_k,
                               nms_iou_threshold=nms_iou_threshold, score_threshold=score_threshold,
                               max_detections=max_detections, **overrides)
        self.preset = preset
        self.levels = tuple(int(level) for level in preset["levels"])
        if len(preset["anchors"]) != len(self.levels):
            raise ValueError(f"anchors has {len(preset['anchors'])} levels but the network predicts on "
                             f"{len(self.levels)} (P{', P'.join(map(str, sorted(self.levels)))}).")
        self.anchor_shapes = scale_anchors(preset["anchors"], size, anchor_image_size)
        self.ignore_threshold = check_probability("ignore_threshold", ignore_threshold)
        self.pre_nms_top_k = None if pre_nms_top_k is None else check_positive_int("pre_nms_top_k", pre_nms_top_k)
        self.network, self._backbone_name = self._build_network(backbone, size, preset)
        self.preprocessing = ImagePreprocessing(size, scale=1.0 / 255.0, name="preprocessing")
        strides = [2 ** level for level in sorted(self.levels)]
        feature_shapes = [(size[0] // s, size[1] // s) for s in strides]
        self.assigner = YOLOAssigner(self.anchor_shapes, strides, feature_shapes,
                                     extra_positive_iou=preset.get("extra_positive_iou"))
        # Anchors centred on the cell's top-left corner: what the "yolo" decoder expects.
        self.anchor_generator = AnchorGenerator(strides=strides, anchor_shapes=self.anchor_shapes, offset=0.0,
                                                name="anchor_generator")
        self.anchors = self.anchor_generator.generate(*size, feature_shapes=feature_shapes)
        np.testing.assert_allclose(self.anchors, self.assigner.anchors, atol=1e-3)
        self.anchor_strides = self.assigner.anchor_strides
        self._cell_anchors = (self.anchors + self.anchor_strides[:, None] / 2).astype(np.float32)  # cell-centred
        ignore_iou = preset.get("anchor_ignore_iou")
        self.anchor_ignore_iou = None if ignore_iou is None else check_probability("anchor_ignore_iou", ignore_iou)
        self.decoder = AnchorDecoder(encoding="yolo", name="anchor_decoder")
        self.nms = CombinedNMS(max_output_size_per_class=max_detections, max_total_size=max_detections,
                               iou_threshold=nms_iou_threshold, score_threshold=score_threshold, name="combined_nms")

    def _build_network(self, backbone, size, preset):
        if isinstance(backbone, str):
            builder = _BACKBONE_BUILDERS[backbone]
            backbone_model = (builder(size) if backbone == "tiny"
                              else builder(size, bn_momentum=preset["bn_momentum"]))
        elif isinstance(backbone, keras.Model):
            backbone_model = backbone
        else:
            raise ValueError(f"backbone must be a name in {BACKBONE_NAMES} or a keras.Model; "
                             f"received {type(backbone).__name__}.")
        inputs = keras.Input((*size, 3), name="images")
        features = backbone_model(inputs)
        if not isinstance(features, dict):
            raise ValueError(f"The backbone must return a dict of pyramid features; received {type(features)}.")
        neck = yolo_fpn(features, self.levels, preset["neck_widths"], preset["lateral_widths"],
                        preset["neck_convs"], bn_momentum=preset["bn_momentum"])
        per_location = {lvl: len(a) for lvl, a in zip(sorted(self.levels), self.anchor_shapes)}
        head = yolo_head(neck, self.levels, preset["head_widths"], [per_location[lvl] for lvl in self.levels],
                         self.num_classes, bn_momentum=preset["bn_momentum"])
        return keras.Model(inputs, head, name="network"), backbone_model.name

    @property
    def backbone(self):
        """The backbone sub-model (freeze it with ``model.backbone.trainable = False``)."""
        return self.network.get_layer(self._backbone_name)

    def darknet_conv_order(self) -> list[str]:
        """Conv layer-name prefixes in Darknet cfg order (the order of the ``.weights`` file)."""
        backbone = self._arguments["backbone"]
        if backbone == "darknet53":
            names = darknet53_conv_names()
        elif backbone == "darknet_tiny":
            names = darknet_tiny_conv_names()
        else:
            raise ValueError(f"Only the darknet53 and darknet_tiny backbones have a Darknet layout; "
                             f"this model uses {backbone!r}.")
        neck = yolo_fpn_conv_names(self.levels, self.preset["neck_convs"])
        head = yolo_head_conv_names(self.levels)
        for neck_names, head_names in zip(neck, head):
            names += neck_names + head_names
        return names

    # ------------------------------------------------------------ forward
    def raw_outputs(self, images, training=False):
        """``{"box": (B, A, 4) raw tx..th, "obj": (B, A, 1), "cls": (B, A, C) logits}``."""
        return split_yolo_outputs(self.network(self.preprocessing(images), training=training))

    def decode_boxes(self, raw_box, clip: bool = True):
        """(B, A, 4) raw box outputs -> xyxy boxes in network pixels."""
        return self.decoder(raw_box, self.anchors, image_shape=self.image_size if clip else None,
                            strides=self.anchor_strides)

    def postprocess(self, raw):
        boxes = self.decode_boxes(raw["box"])
        scores = tf.sigmoid(tf.cast(raw["obj"], tf.float32)) * tf.sigmoid(tf.cast(raw["cls"], tf.float32))
        if self.pre_nms_top_k is not None and self.pre_nms_top_k < len(self.anchors):
            _, top = tf.math.top_k(tf.reduce_max(scores, axis=-1), k=self.pre_nms_top_k)
            boxes = tf.gather(boxes, top, batch_dims=1)
            scores = tf.gather(scores, top, batch_dims=1)
        return self.nms(boxes, scores)

    # ----------------------------------------------------------- training
    def compute_losses(self, images, y, raw):
        targets = self.assigner(y["boxes"], y["labels"])
        positive = targets["positive"]
        batch = tf.cast(tf.shape(positive)[0], tf.float32)  # Darknet sums over anchors, averages images
        decoded = self.decode_boxes(raw["box"], clip=False)
        # No-object candidates whose prediction already overlaps some box well are ignored.
        overlaps = iou(tf.stop_gradient(decoded), y["boxes"])
        overlaps = tf.where((y["labels"] >= 0)[:, None, :], overlaps, 0.0)
        ignored = tf.reduce_max(overlaps, axis=-1) > self.ignore_threshold
        if self.anchor_ignore_iou is not None:
            # Cells next to the responsible one whose (cell-centred) anchor box already covers a
            # box are not pushed to no-object either: the one-cell target is a hard spatial
            # boundary that a small training set otherwise memorises.
            anchor_overlaps = iou(tf.constant(self._cell_anchors)[None], y["boxes"])
            anchor_overlaps = tf.where((y["labels"] >= 0)[:, None, :], anchor_overlaps, 0.0)
            ignored |= tf.reduce_max(anchor_overlaps, axis=-1) > self.anchor_ignore_iou
        ignore = tf.cast(ignored, tf.float32) * (1.0 - positive)
        obj_values = per_anchor(self.objectness_loss, positive[..., None], raw["obj"])
        obj_loss = tf.reduce_sum(obj_values * (1.0 - ignore)) / batch
        # Box-loss scale 2 - w * h (w, h relative to the image) favours small boxes.
        matched = targets["matched_boxes"]
        relative_area = (matched[..., 2] - matched[..., 0]) * (matched[..., 3] - matched[..., 1]) / float(
            self.image_size[0] * self.image_size[1])
        box_weight = positive * (2.0 - relative_area)
        if _operates_on_boxes(self.box_loss):
            box_values = per_anchor(self.box_loss, matched, decoded)
        else:
            box_values = per_anchor(self.box_loss, targets["box_targets"], raw["box"])
        box_loss = tf.reduce_sum(box_values * box_weight) / batch
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
        return YOLOBoxLoss()

    def default_classification_loss(self):
        """Independent logistic classifiers (paper section 2.2): per-class binary cross-entropy."""
        from kdet.losses import FocalLoss

        return FocalLoss(alpha=None, gamma=0.0, from_logits=True)

    def get_config(self):
        config = super().get_config()
        arguments = dict(self._arguments)
        if isinstance(arguments["backbone"], keras.Model):
            arguments["backbone"] = keras.saving.serialize_keras_object(arguments["backbone"])
        config.update(arguments)
        return config


def _operates_on_boxes(loss_fn) -> bool:
    from kdet.models.single_stage import _operates_on_boxes as check

    return check(loss_fn)
