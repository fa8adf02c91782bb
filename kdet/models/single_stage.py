"""SingleStageDetector: the shared train/inference logic of dense anchor-based detectors.

RetinaNet, EfficientDet and SSD differ in backbone, neck, head and defaults;
the chain below is the same for all of them and lives here once:

    raw pixels -> ImagePreprocessing -> network -> {"box": (B, A, 4), "cls": (B, A, C')}
    training:  AnchorLabelEncoder -> classification loss + box loss / num positives
    inference: AnchorDecoder -> scores -> top-k -> CombinedNMS -> output dict

``classification="sigmoid"`` (focal loss, C' = C) or ``"softmax"`` (background
class at index 0 added internally, C' = C + 1, hard negative mining at
``negative_ratio`` : 1 as in SSD, Liu et al. 2016, section 2.2).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kdet.detector import Detector
from kdet.layers.anchor_decoder import AnchorDecoder
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.layers.image_preprocessing import ImagePreprocessing
from kdet.targets.anchor_labeler import AnchorLabelEncoder
from kdet.targets.box_matcher import BACKGROUND, IGNORE


def per_anchor(loss_fn, y_true, y_pred):
    """Unreduced values of a Keras loss, summed to one value per anchor: (B, A)."""
    values = tf.cast(loss_fn.call(y_true, y_pred), tf.float32)
    if values.shape.rank == 3:
        values = tf.reduce_sum(values, axis=-1)
    return values


def _operates_on_boxes(loss_fn) -> bool:
    """IoU-family losses compare decoded boxes, the others compare encoded deltas."""
    from kdet.losses import IoULoss

    return isinstance(loss_fn, IoULoss) or getattr(loss_fn, "operates_on_boxes", False)


class SingleStageDetector(Detector):
    """Base of dense anchor-based detectors (see the module docstring).

    Subclasses build ``network`` (normalised images -> {"box", "cls"}) and the
    ``AnchorGenerator`` in their ``__init__`` and pass them here.

    Args:
        num_classes, bounding_box_format, image_size, class_names: see ``Detector``.
        network: functional ``keras.Model`` on normalised images returning
            ``{"box": (B, A, 4), "cls": (B, A, C')}``.
        anchor_generator: the ``AnchorGenerator`` matching the network's levels.
        feature_shapes: per-level (h, w) of the head outputs (default
            ceil(image / stride)).
        preprocessing: ``ImagePreprocessing`` turning raw pixels into network input.
        classification: "sigmoid" or "softmax".
        box_variances: box-coder divisors.
        positive_threshold, negative_threshold, allow_low_quality_matches,
        force_match_for_each_gt: matcher settings.
        negative_ratio: hard negatives per positive for "softmax".
        pre_nms_top_k: anchors kept (by best class score) before NMS.
        top_k_per_level: apply ``pre_nms_top_k`` to each pyramid level
            separately (RetinaNet, Lin et al. 2017, section 4: "top 1k
            predictions per level") instead of to all anchors at once.
        nms_iou_threshold, score_threshold, max_detections, soft_nms_sigma:
            ``CombinedNMS`` settings.
    """

    loss_names = ("cls_loss", "box_loss")

    def __init__(self, num_classes, network, anchor_generator: AnchorGenerator, preprocessing: ImagePreprocessing,
                 image_size, bounding_box_format="xyxy", class_names=None, feature_shapes=None,
                 classification="sigmoid", box_variances=(1.0, 1.0, 1.0, 1.0), positive_threshold=0.5,
                 negative_threshold=0.4, allow_low_quality_matches=True, force_match_for_each_gt=False,
                 negative_ratio=3.0, pre_nms_top_k=1000, nms_iou_threshold=0.5, score_threshold=0.05,
                 max_detections=100, soft_nms_sigma=0.0, top_k_per_level=False, **kwargs):
        super().__init__(num_classes, bounding_box_format=bounding_box_format, image_size=image_size,
                         class_names=class_names, **kwargs)
        from kdet.layers import CombinedNMS

        if classification not in ("sigmoid", "softmax"):
            raise ValueError(f"classification must be 'sigmoid' or 'softmax'; received {classification!r}.")
        self.network = network
        self.preprocessing = preprocessing
        self.anchor_generator = anchor_generator
        self.classification = classification
        self.anchors = anchor_generator.generate(*self.image_size, feature_shapes=feature_shapes)
        shapes = feature_shapes or anchor_generator.feature_shapes(*self.image_size)
        self._level_counts = [int(h * w * a) for (h, w), a in zip(shapes, anchor_generator.anchors_per_location)]
        self.top_k_per_level = bool(top_k_per_level)
        expected = (None, len(self.anchors), num_classes + (classification == "softmax"))
        cls_shape = tuple(network.output["cls"].shape)
        if cls_shape[1:] != expected[1:]:
            raise ValueError(
                f"The network's 'cls' output has shape {cls_shape} but {len(self.anchors)} anchors and "
                f"{num_classes} classes ({classification}) need {expected}."
            )
        self.encoder = AnchorLabelEncoder(positive_threshold, negative_threshold, allow_low_quality_matches,
                                          force_match_for_each_gt, box_variances)
        self.decoder = AnchorDecoder(variances=box_variances, name="anchor_decoder")
        self.negative_ratio = float(negative_ratio)
        self.pre_nms_top_k = None if pre_nms_top_k is None else int(pre_nms_top_k)
        self.nms = CombinedNMS(max_output_size_per_class=max_detections, max_total_size=max_detections,
                               iou_threshold=nms_iou_threshold, score_threshold=score_threshold,
                               soft_nms_sigma=soft_nms_sigma, name="combined_nms")
        self.built = True  # the functional network is built already: count_params() etc. work at once

    @property
    def backbone(self):
        """The backbone sub-model (freeze it with ``model.backbone.trainable = False``)."""
        return self.network.get_layer(self._backbone_name) if hasattr(self, "_backbone_name") else None

    # ------------------------------------------------------------ forward
    def raw_outputs(self, images, training=False):
        """{"box": (B, A, 4) deltas, "cls": (B, A, C') logits} at the network resolution."""
        return self.network(self.preprocessing(images), training=training)

    def class_scores(self, cls_logits):
        """Per-class probabilities (B, A, C) from the logits (background dropped)."""
        cls_logits = tf.cast(cls_logits, tf.float32)
        if self.classification == "softmax":
            return tf.nn.softmax(cls_logits, axis=-1)[..., 1:]
        return tf.sigmoid(cls_logits)

    def postprocess(self, raw):
        boxes = self.decoder(raw["box"], self.anchors, image_shape=self.image_size)
        scores = self.class_scores(raw["cls"])
        top = self._pre_nms_indices(tf.reduce_max(scores, axis=-1))
        if top is not None:
            boxes = tf.gather(boxes, top, batch_dims=1)
            scores = tf.gather(scores, top, batch_dims=1)
        return self.nms(boxes, scores)

    def _pre_nms_indices(self, best_scores):
        """(B, K) indices of the anchors kept before NMS, or None to keep all."""
        k = self.pre_nms_top_k
        if k is None or k >= len(self.anchors):
            return None
        if not self.top_k_per_level:
            return tf.math.top_k(best_scores, k=k)[1]
        indices, start = [], 0
        for count in self._level_counts:
            if count > k:
                indices.append(tf.math.top_k(best_scores[:, start:start + count], k=k)[1] + start)
            else:  # a small level keeps every anchor
                all_rows = tf.range(start, start + count)[None]
                indices.append(tf.tile(all_rows, [tf.shape(best_scores)[0], 1]))
            start += count
        return tf.concat(indices, axis=1)

    # ----------------------------------------------------------- training
    def compute_losses(self, images, y, raw):
        targets = self.encoder(self.anchors, y["boxes"], y["labels"])
        labels, positive = targets["labels"], targets["positive"]
        num_positive = tf.maximum(tf.reduce_sum(positive), 1.0)
        cls_logits = tf.cast(raw["cls"], tf.float32)
        if self.classification == "sigmoid":
            onehot = tf.one_hot(tf.maximum(labels, -1), self.num_classes)  # -1, -2 -> all zeros
            weights = tf.cast(labels != IGNORE, tf.float32)
            cls_values = per_anchor(self.classification_loss, onehot, cls_logits)
            cls_loss = tf.reduce_sum(cls_values * weights) / num_positive
        else:
            cls_loss = self._hard_negative_softmax_loss(cls_logits, labels, positive) / num_positive
        box_pred = tf.cast(raw["box"], tf.float32)
        if _operates_on_boxes(self.box_loss):  # IoU family: compare decoded boxes
            decoded = self.decoder(box_pred, self.anchors)
            box_values = per_anchor(self.box_loss, targets["matched_boxes"], decoded)
        else:
            box_values = per_anchor(self.box_loss, targets["box_targets"], box_pred)
        box_loss = tf.reduce_sum(box_values * positive) / num_positive
        return {"cls_loss": cls_loss, "box_loss": box_loss}

    def _hard_negative_softmax_loss(self, cls_logits, labels, positive):
        """Softmax cross-entropy on positives plus the hardest negatives (SSD)."""
        target = tf.where(labels >= 0, labels + 1, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=cls_logits)
        negative = labels == BACKGROUND
        num_neg = tf.minimum(
            tf.cast(self.negative_ratio * tf.reduce_sum(positive, axis=1), tf.int32),
            tf.reduce_sum(tf.cast(negative, tf.int32), axis=1),
        )
        neg_ce = tf.where(negative, ce, -1.0)
        order = tf.argsort(neg_ce, axis=1, direction="DESCENDING")
        rank = tf.argsort(order, axis=1)
        hard = negative & (rank < num_neg[:, None])
        return tf.reduce_sum(ce * (positive + tf.cast(hard, tf.float32)))

    def raw_anchors(self) -> np.ndarray:
        """The (A, 4) xyxy anchors in network pixels."""
        return self.anchors
