"""SingleStageDetector: the shared train/inference logic of dense anchor-based detectors.

RetinaNet, EfficientDet and SSD differ in backbone, neck, head and defaults;
the chain below is the same for all of them and lives here once:

    network input -> network -> {"box": (B, A, 4), "cls": (B, A, C')}
    training:  AnchorLabelEncoder -> classification loss + box loss / num positives
    inference: AnchorDecoder -> clip to the image -> scores -> top-k -> CombinedNMS -> output dict
               (``clip_before_nms=False``: clip the NMS output instead, as automl)

``classification = "sigmoid"`` (focal loss, C' = C) or ``"softmax"`` (background
class at index 0 added internally, C' = C + 1, hard negative mining at
``negative_ratio`` : 1 as in SSD, Liu et al. 2016, section 2.2) is a class
attribute of the architecture. ``head_output_ids`` lets a head keep all of an
upstream checkpoint's outputs (torchvision's 91 COCO ids): the softmax runs
over all of them, then kdet's labels read their own columns.

Anchors depend on the network canvas; they are generated once per canvas
size (a NumPy constant at trace time), so "min_max" models whose canvas
follows the image get the right anchors for every image size.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from kdet.config import NMSConfig
from kdet.detector import Detector
from kdet.layers.anchor_decoder import AnchorDecoder
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.layers.combined_nms import CombinedNMS
from kdet.ops.boxes import clip_boxes
from kdet.targets.anchor_labeler import AnchorLabelEncoder
from kdet.targets.box_matcher import BACKGROUND, IGNORE
from kdet.validation import check_head_output_ids, check_positive_int, check_probability


def per_anchor(loss_fn, y_true, y_pred):
    """Unreduced values of a Keras loss, summed to one value per anchor: (B, A)."""
    values = tf.cast(loss_fn.call(y_true, y_pred), tf.float32)
    if values.shape.rank == 3:
        values = tf.reduce_sum(values, axis=-1)
    return values


def operates_on_boxes(loss_fn) -> bool:
    """IoU-family losses compare decoded boxes, the others compare encoded deltas."""
    from kdet.losses import IoULoss

    return isinstance(loss_fn, IoULoss) or getattr(loss_fn, "operates_on_boxes", False)


def clip_to_valid(boxes, frame):
    """Clips xyxy network-pixel boxes (B, ..., 4) to each image's region of the canvas (torchvision's rule)."""
    return clip_boxes(boxes, frame["valid_hw"][:, 0], frame["valid_hw"][:, 1])


#: What ``pre_nms_top_k`` counts (``SingleStageConfig.top_k_rule``).
TOP_K_RULES = ("anchor", "pair", "class", "best")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SingleStageConfig(NMSConfig):
    """Settings of the dense anchor chain (see ``SingleStageDetector``).

    Args:
        box_variances: box-coder divisors.
        positive_threshold, negative_threshold, allow_low_quality_matches,
        force_match_for_each_gt: the IoU matcher.
        negative_ratio: hard negatives per positive ("softmax" heads).
        pre_nms_top_k: candidates kept before NMS (see ``top_k_rule``).
        top_k_per_level: apply ``pre_nms_top_k`` to each pyramid level
            separately (RetinaNet, Lin et al. 2017, section 4: "top 1k
            predictions per level") instead of to all anchors at once.
        top_k_rule: what ``pre_nms_top_k`` counts. "anchor": the anchors with
            the best class scores, each with all its classes; "pair": (anchor,
            class) pairs, each one NMS candidate (torchvision's RetinaNet
            ``postprocess_detections``: ``topk`` over the flattened per-level
            scores of every head output); "class": each class's best anchors
            (torchvision's SSD ``postprocess_detections``: ``topk_candidates``
            per class); "best": each anchor is one candidate, of its best class
            only (automl's ``topk_class_boxes`` "max_reduce" branch, its
            inference default ``max_nms_inputs=0``), the ``pre_nms_top_k``
            best anchors (None: all). With ``head_output_ids``, "pair" and
            "best" rank every head output (as upstream) and keep kdet's labels.
        clip_before_nms: clip the decoded boxes to the image before NMS
            (torchvision), or NMS on the boxes as decoded and clip its output
            (False: automl's ``postprocess_global``), which changes the IoUs
            of boxes that cross the image border.
        head_output_ids: the head's output index of each kdet label (e.g.
            torchvision's COCO ids 1..90 for kdet's 80 labels); None: label k
            is output k (k + 1 after a softmax head's background).
    """

    box_variances: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    positive_threshold: float = 0.5
    negative_threshold: float = 0.4
    allow_low_quality_matches: bool = True
    force_match_for_each_gt: bool = False
    negative_ratio: float = 3.0
    pre_nms_top_k: int | None = 1000
    top_k_per_level: bool = False
    top_k_rule: str = "anchor"
    head_output_ids: tuple[int, ...] | None = None
    clip_before_nms: bool = True

    def validate(self):
        super().validate()
        if len(self.box_variances) != 4 or min(self.box_variances) <= 0:
            raise ValueError(f"box_variances must be 4 positive numbers; received {self.box_variances}.")
        self._set("box_variances", tuple(float(v) for v in self.box_variances))
        check_probability("positive_threshold", self.positive_threshold)
        check_probability("negative_threshold", self.negative_threshold)
        if self.negative_threshold > self.positive_threshold:
            raise ValueError(f"negative_threshold ({self.negative_threshold}) must be <= positive_threshold "
                             f"({self.positive_threshold}).")
        if not float(self.negative_ratio) > 0:
            raise ValueError(f"negative_ratio must be > 0; received {self.negative_ratio!r}.")
        if self.pre_nms_top_k is not None:
            check_positive_int("pre_nms_top_k", self.pre_nms_top_k)
        if self.top_k_rule not in TOP_K_RULES:
            raise ValueError(f"top_k_rule must be one of {TOP_K_RULES}; received {self.top_k_rule!r}.")
        if self.head_output_ids is not None:
            self._set("head_output_ids", check_head_output_ids(self.head_output_ids, self.num_classes))
        if not isinstance(self.clip_before_nms, bool):
            raise ValueError(f"clip_before_nms must be True or False; received {self.clip_before_nms!r}.")


class SingleStageDetector(Detector):
    """Base of dense anchor-based detectors (see the module docstring).

    Subclasses implement ``build_network()`` returning the functional network
    (network input -> {"box": (B, A, 4), "cls": (B, A, C')}) and its
    ``AnchorGenerator``.
    """

    config_class = SingleStageConfig
    loss_names = ("cls_loss", "box_loss")
    #: "sigmoid" (C outputs) or "softmax" (background + C outputs).
    classification: ClassVar[str] = "sigmoid"

    def build_network(self) -> tuple[keras.Model, AnchorGenerator]:
        raise TypeError(f"{type(self).__name__} must implement build_network().")

    def assemble(self):
        cfg = self.config
        self.network, self.anchor_generator = self.build_network()
        self._set_untracked("_anchor_cache", {})
        self._set_untracked("_default_feature_shapes", None)
        if cfg.fixed_canvas:
            self._default_feature_shapes = self.network_feature_shapes()
            expected = (len(self.anchors), self.head_classes)
            cls_shape = tuple(self.network.output["cls"].shape)
            if cls_shape[1:] != expected:
                raise ValueError(
                    f"The network's 'cls' output has shape {cls_shape} but {len(self.anchors)} anchors and "
                    f"{self.head_classes} outputs ({self.classification}) need (None, *{expected})."
                )
        self.encoder = AnchorLabelEncoder(cfg.positive_threshold, cfg.negative_threshold,
                                          cfg.allow_low_quality_matches, cfg.force_match_for_each_gt,
                                          cfg.box_variances)
        self.decoder = AnchorDecoder(variances=cfg.box_variances, name="anchor_decoder")
        self.nms = CombinedNMS(max_output_size_per_class=cfg.max_detections, max_total_size=cfg.max_detections,
                               iou_threshold=cfg.nms_iou_threshold, score_threshold=cfg.score_threshold,
                               soft_nms_sigma=cfg.soft_nms_sigma, class_agnostic=cfg.class_agnostic,
                               name="combined_nms")

    # ------------------------------------------------------------ anchors
    @property
    def head_classes(self) -> int:
        """Outputs per anchor of the class head."""
        ids = self.config.head_output_ids
        if ids is not None:
            return max(ids) + 1
        return self.num_classes + (self.classification == "softmax")

    def network_feature_shapes(self):
        """Per-level (h, w) of the head outputs for the fixed canvas (default: ceil(canvas / stride))."""
        return self.anchor_generator.feature_shapes(*self.config.image_size)

    def anchors_for(self, canvas) -> np.ndarray:
        """The (A, 4) xyxy anchors of a network canvas (height, width), cached per size."""
        canvas = tuple(int(c) for c in canvas)
        if canvas not in self._anchor_cache:
            shapes = (self._default_feature_shapes if self.config.fixed_canvas and
                      canvas == tuple(self.config.image_size) else self.anchor_generator.feature_shapes(*canvas))
            anchors = self.anchor_generator.generate(*canvas, feature_shapes=shapes)
            counts = [int(h * w * a) for (h, w), a in zip(shapes, self.anchor_generator.anchors_per_location)]
            self._anchor_cache[canvas] = (anchors, counts)
        return self._anchor_cache[canvas][0]

    def level_counts(self, canvas) -> list[int]:
        """Anchors per pyramid level of a canvas."""
        self.anchors_for(canvas)
        return self._anchor_cache[tuple(int(c) for c in canvas)][1]

    @property
    def anchors(self) -> np.ndarray | None:
        """The (A, 4) xyxy anchors of the fixed canvas (None where the canvas follows the image)."""
        return self.anchors_for(self.config.image_size) if self.config.fixed_canvas else None

    def raw_anchors(self) -> np.ndarray:
        """The (A, 4) xyxy anchors in network pixels of the fixed canvas."""
        return self.anchors

    @property
    def backbone(self):
        """The backbone sub-model (freeze it with ``model.backbone.trainable = False``)."""
        return self.network.get_layer(self._backbone_name) if hasattr(self, "_backbone_name") else None

    # ------------------------------------------------------------ forward
    def network_outputs(self, x, training=False):
        """{"box": (B, A, 4) deltas, "cls": (B, A, C') logits} at the network resolution."""
        return self.network(x, training=training)

    def class_scores(self, cls_logits):
        """Per-class probabilities (B, A, C) from the logits (background dropped)."""
        probs, labels = self.head_probabilities(cls_logits)
        if self.config.head_output_ids is None:
            return probs
        return tf.gather(probs, np.argsort(np.where(labels < 0, len(labels), labels))[:self.num_classes], axis=-1)

    def head_probabilities(self, cls_logits):
        """(probabilities (B, A, H) of the head's class outputs, kdet label of each (H,), -1 for none).

        The softmax (or sigmoid) runs over every head output, as upstream's;
        a softmax head's background column is dropped.
        """
        cls_logits = tf.cast(cls_logits, tf.float32)
        softmax = self.classification == "softmax"
        probs = tf.nn.softmax(cls_logits, axis=-1) if softmax else tf.sigmoid(cls_logits)
        ids = self.config.head_output_ids
        if ids is None:
            return (probs[..., 1:] if softmax else probs), np.arange(self.num_classes)
        labels = np.full(self.head_classes, -1)
        labels[list(ids)] = np.arange(self.num_classes)
        return (probs[..., 1:], labels[1:]) if softmax else (probs, labels)

    def head_targets(self, labels):
        """kdet labels (>= 0) -> the class head's output index."""
        ids = self.config.head_output_ids
        if ids is not None:
            return tf.gather(tf.constant(ids, tf.int32), tf.maximum(labels, 0))
        return labels + 1 if self.classification == "softmax" else labels

    def postprocess(self, raw, frame):
        boxes = self.decoder(raw["box"], self.anchors_for(frame["canvas"]))
        if not self.config.clip_before_nms:
            out = self._candidates_nms(boxes, raw["cls"], frame["canvas"])
            # Padding rows stay zero boxes: clipping moves no coordinate of (0, 0, 0, 0).
            return {**out, "boxes": clip_to_valid(out["boxes"], frame)}
        return self._candidates_nms(clip_to_valid(boxes, frame), raw["cls"], frame["canvas"])

    def _candidates_nms(self, boxes, cls_logits, canvas):
        """The ``top_k_rule`` candidates of decoded boxes (B, A, 4) -> CombinedNMS's output dict."""
        rule = self.config.top_k_rule
        if rule == "pair" and self.config.pre_nms_top_k is not None:
            return self.nms(*self._top_pairs(boxes, cls_logits, canvas))
        if rule == "best":
            return self.nms(*self._best_class(boxes, cls_logits, canvas))
        scores = self.class_scores(cls_logits)
        if rule == "class":
            return self.nms(boxes, self._top_per_class(scores))
        top = self._pre_nms_indices(tf.reduce_max(scores, axis=-1), canvas)
        if top is not None:
            boxes = tf.gather(boxes, top, batch_dims=1)
            scores = tf.gather(scores, top, batch_dims=1)
        return self.nms(boxes, scores)

    def _best_class(self, boxes, cls_logits, canvas):
        """automl's "max_reduce" candidates: each anchor with its best head output only.

        automl ``postprocess.topk_class_boxes`` (``max_nms_inputs=0``): argmax
        and max over the class outputs of every anchor. Returns boxes (B, K, 4)
        and one-hot scores (B, K, C); an anchor whose best output is no kdet
        label scores 0.
        """
        probs, labels = self.head_probabilities(cls_logits)
        best = tf.argmax(probs, axis=-1, output_type=tf.int32)
        value = tf.reduce_max(probs, axis=-1)
        top = self._pre_nms_indices(value, canvas)
        if top is not None:
            boxes, best, value = (tf.gather(t, top, batch_dims=1) for t in (boxes, best, value))
        label = tf.gather(tf.constant(labels, tf.int32), best)
        return boxes, tf.one_hot(label, self.num_classes) * value[..., None]  # label -1: zeros

    def _level_slices(self, canvas) -> list[tuple[int, int]]:
        """(start, count) of each group ``pre_nms_top_k`` applies to: every level, or all anchors."""
        counts = self.level_counts(canvas)
        if not self.config.top_k_per_level:
            return [(0, sum(counts))]
        starts = np.cumsum([0] + counts[:-1])
        return [(int(a), int(n)) for a, n in zip(starts, counts)]

    def _top_pairs(self, boxes, cls_logits, canvas):
        """torchvision's RetinaNet candidates: the ``pre_nms_top_k`` best (anchor, class) pairs per level.

        Exact two-stage selection: the k best pairs of a level lie among its k
        anchors with the best score over all outputs (each of those pairs'
        anchors scores at least the k-th pair), so the pairs are ranked among
        those anchors only. Returns boxes (B, K, 4) and one-hot scores (B, K, C):
        each pair is one NMS candidate of its own class (pairs of head outputs
        that are no kdet label score 0).
        """
        probs, labels = self.head_probabilities(cls_logits)
        columns = int(probs.shape[-1])
        k = self.config.pre_nms_top_k
        anchors, values, classes = [], [], []
        for start, count in self._level_slices(canvas):
            level = probs[:, start:start + count]
            rows = None
            if count > k:
                rows = tf.math.top_k(tf.reduce_max(level, axis=-1), k=k)[1]
                level = tf.gather(level, rows, batch_dims=1)
            flat = tf.reshape(level, [-1, int(level.shape[1]) * columns])
            top, index = tf.math.top_k(flat, k=min(k, int(flat.shape[-1])))
            row = index // columns
            anchors.append(start + (tf.gather(rows, row, batch_dims=1) if rows is not None else row))
            values.append(top)
            classes.append(index % columns)
        label = tf.gather(tf.constant(labels, tf.int32), tf.concat(classes, axis=1))
        scores = tf.one_hot(label, self.num_classes) * tf.concat(values, axis=1)[..., None]  # label -1: zeros
        return tf.gather(boxes, tf.concat(anchors, axis=1), batch_dims=1), scores

    def _top_per_class(self, scores):
        """torchvision's SSD candidates: each class keeps its ``pre_nms_top_k`` best anchors (others score 0)."""
        k, num_anchors = self.config.pre_nms_top_k, scores.shape[1]
        if k is None or (num_anchors is not None and k >= num_anchors):
            return scores
        per_class = tf.transpose(scores, [0, 2, 1])  # (B, C, A)
        kth = tf.math.top_k(per_class, k=k)[0][..., -1]  # (B, C): each class's k-th best score
        return tf.where(scores >= kth[:, None, :], scores, 0.0)

    def _pre_nms_indices(self, best_scores, canvas):
        """(B, K) indices of the anchors kept before NMS, or None to keep all."""
        k = self.config.pre_nms_top_k
        counts = self.level_counts(canvas)
        if k is None or k >= sum(counts):
            return None
        if not self.config.top_k_per_level:
            return tf.math.top_k(best_scores, k=k)[1]
        indices, start = [], 0
        for count in counts:
            if count > k:
                indices.append(tf.math.top_k(best_scores[:, start:start + count], k=k)[1] + start)
            else:  # a small level keeps every anchor
                all_rows = tf.range(start, start + count)[None]
                indices.append(tf.tile(all_rows, [tf.shape(best_scores)[0], 1]))
            start += count
        return tf.concat(indices, axis=1)

    # ----------------------------------------------------------- training
    def compute_losses(self, y, raw, frame):
        anchors = self.anchors_for(frame["canvas"])
        targets = self.encoder(anchors, y["boxes"], y["labels"])
        labels, positive = targets["labels"], targets["positive"]
        num_positive = tf.maximum(tf.reduce_sum(positive), 1.0)
        cls_logits = tf.cast(raw["cls"], tf.float32)
        if self.classification == "sigmoid":
            index = tf.where(labels >= 0, self.head_targets(labels), -1)
            onehot = tf.one_hot(index, self.head_classes)  # -1, -2 -> all zeros
            weights = tf.cast(labels != IGNORE, tf.float32)
            cls_values = per_anchor(self.classification_loss, onehot, cls_logits)
            cls_loss = tf.reduce_sum(cls_values * weights) / num_positive
        else:
            cls_loss = self._hard_negative_softmax_loss(cls_logits, labels, positive) / num_positive
        box_pred = tf.cast(raw["box"], tf.float32)
        if operates_on_boxes(self.box_loss):  # IoU family: compare decoded boxes
            decoded = self.decoder(box_pred, anchors)
            box_values = per_anchor(self.box_loss, targets["matched_boxes"], decoded)
        else:
            box_values = per_anchor(self.box_loss, targets["box_targets"], box_pred)
        box_loss = tf.reduce_sum(box_values * positive) / num_positive
        return {"cls_loss": cls_loss, "box_loss": box_loss}

    def _hard_negative_softmax_loss(self, cls_logits, labels, positive):
        """Softmax cross-entropy on positives plus the hardest negatives (SSD)."""
        target = tf.where(labels >= 0, self.head_targets(labels), 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=cls_logits)
        negative = labels == BACKGROUND
        num_neg = tf.minimum(
            tf.cast(self.config.negative_ratio * tf.reduce_sum(positive, axis=1), tf.int32),
            tf.reduce_sum(tf.cast(negative, tf.int32), axis=1),
        )
        neg_ce = tf.where(negative, ce, -1.0)
        order = tf.argsort(neg_ce, axis=1, direction="DESCENDING")
        rank = tf.argsort(order, axis=1)
        hard = negative & (rank < num_neg[:, None])
        return tf.reduce_sum(ce * (positive + tf.cast(hard, tf.float32)))
