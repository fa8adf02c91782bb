"""Mask R-CNN with FPN (He et al. 2017): Faster R-CNN plus a mask branch, one Keras model, static shapes.

    Faster R-CNN (kdet.models.faster_rcnn): raw pixels -> ... -> detections (boxes, scores, labels)
      -> multi-level RoIAlign 14x14 of each detection box (sampling ratio 2)
      -> four 3x3 convs + ReLU -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv: 28x28 logits per class
      -> sigmoid of each detection's own class -> "masks" (B, K, 28, 28) probabilities in the box

Training adds one loss, ``roi_mask``: on the positive RoIs of the box head's
sample (the same RoIs, positives come first in it), binary cross-entropy of
the logits of the RoI's ground-truth class against its ground-truth mask
cropped and resized to the RoI (torchvision ``maskrcnn_loss`` /
``project_masks_on_boxes``). Ground-truth masks stay in input-image pixels:
the RoIs are mapped back through the frame to crop them.

``detect()`` pastes the masks into the image's pixels
(``kdet.ops.paste_masks``, threshold ``mask_threshold``), as torchvision's
``paste_masks_in_image``.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from kdet.heads.roi_mask import MASK_HEAD_WIDTHS, MASK_PREDICTOR_WIDTH, roi_mask_head
from kdet.layers.image_preprocessing import boxes_to_input
from kdet.layers.roi_align import MultiLevelRoIAlign
from kdet.models.faster_rcnn.model import FasterRCNN, FasterRCNNConfig
from kdet.targets.masks import mask_targets
from kdet.validation import check_positive_int, check_probability

# torchvision maskrcnn_resnet50_fpn: MultiScaleRoIAlign(["0", "1", "2", "3"], 14, sampling_ratio=2).
MASK_ROI_OUTPUT_SIZE = 14
MASK_ROI_SAMPLING_RATIO = 2
# The threshold torchvision's users and COCO evaluation apply to pasted mask probabilities.
MASK_THRESHOLD = 0.5
# Full size: torchvision's maskrcnn_resnet50_fpn. Tiny (backbone="tiny"): a narrow mask head and one
# RoIAlign sample per bin, as the tiny box branch (its mask branch would otherwise cost 4x the rest of a
# training step on CPU).
FULL_MASK = dict(mask_roi_sampling_ratio=MASK_ROI_SAMPLING_RATIO, mask_head_widths=MASK_HEAD_WIDTHS,
                 mask_predictor_width=MASK_PREDICTOR_WIDTH)
TINY_MASK = dict(mask_roi_sampling_ratio=1, mask_head_widths=(32, 32, 32, 32), mask_predictor_width=32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskRCNNConfig(FasterRCNNConfig):
    """Mask R-CNN's settings: every ``FasterRCNNConfig`` field plus the mask branch's.

    Args:
        mask_roi_output_size: RoIAlign bins of the mask branch (14; the masks are twice that, 28).
        mask_roi_sampling_ratio: RoIAlign samples per bin and axis (2; tiny 1).
        mask_head_widths: channels of the 3x3 convs (256 x 4; tiny 32 x 4).
        mask_predictor_width: channels of the transposed conv (256; tiny 32).
        mask_threshold: ``detect()`` keeps pasted mask pixels above this probability (0.5).
    """

    mask_roi_output_size: int = MASK_ROI_OUTPUT_SIZE
    mask_roi_sampling_ratio: int | None = None
    mask_head_widths: tuple[int, ...] | None = None
    mask_predictor_width: int | None = None
    mask_threshold: float = MASK_THRESHOLD

    def resolve(self):
        super().resolve()
        for key, value in (TINY_MASK if self.is_tiny() else FULL_MASK).items():
            if getattr(self, key) is None:
                self._set(key, value)

    def validate(self):
        super().validate()
        self._set("mask_roi_output_size", check_positive_int("mask_roi_output_size", self.mask_roi_output_size))
        self._set("mask_roi_sampling_ratio",
                  check_positive_int("mask_roi_sampling_ratio", self.mask_roi_sampling_ratio))
        widths = tuple(self.mask_head_widths)
        if not widths:
            raise ValueError("mask_head_widths must list at least one conv width; received ().")
        self._set("mask_head_widths", tuple(check_positive_int("mask_head_widths", w) for w in widths))
        self._set("mask_predictor_width", check_positive_int("mask_predictor_width", self.mask_predictor_width))
        self._set("mask_threshold", check_probability("mask_threshold", self.mask_threshold))


@keras.saving.register_keras_serializable(package="kdet")
class MaskRCNN(FasterRCNN):
    """Mask R-CNN with FPN (He et al. 2017, https://arxiv.org/abs/1703.06870): boxes and instance masks.

    Args:
        num_classes: object classes (background is added internally at index 0).
        backbone: "resnet50" (alias "resnet50_fpn"), "resnet101", "tiny" or a
            ``keras.Model`` returning {"P2".."P5"}.
        **settings: every field of ``MaskRCNNConfig``: Faster R-CNN's (see
            ``FasterRCNN``) and the mask branch's.

    Outputs: the API.md dict plus ``"masks"`` (B, K, 28, 28) float32, each
    detection's mask probabilities for its own class, in its box.
    ``kdet.ops.paste_masks(masks, boxes, H, W)`` puts them into image pixels;
    ``detect()`` returns them pasted, (n, H, W) uint8. Ground truth for
    ``fit`` adds ``"masks"`` (B, M, H, W) uint8 in input-image pixels.

    Example:
        >>> model = MaskRCNN(3, backbone="tiny", image_size=128)
        >>> model.predict(np.zeros((1, 128, 128, 3)), verbose=0)["masks"].shape
        (1, 100, 28, 28)
    """

    config_class = MaskRCNNConfig
    loss_names = FasterRCNN.loss_names + ("roi_mask",)
    classifier_layers = FasterRCNN.classifier_layers + ("roi_heads_mask_predictor_mask_fcn_logits",)

    def __init__(self, num_classes: int, backbone="resnet50_fpn", **settings):
        super().__init__(num_classes=num_classes, backbone=backbone, **settings)

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks (twice the mask RoIAlign size: 28)."""
        return 2 * self.config.mask_roi_output_size

    def assemble(self):
        super().assemble()
        cfg = self.config
        # The box branch's level rule and RoIAlign conventions (torchvision uses one MultiScaleRoIAlign
        # class for both; only the output size differs). Mask R-CNN always aligns (never RoIPool).
        k_min, k_max = self.roi_pooler.min_level, self.roi_pooler.max_level
        self.mask_roi_pooler = MultiLevelRoIAlign(k_min, k_max, cfg.mask_roi_output_size, cfg.mask_roi_sampling_ratio,
                                                  cfg.roi_aligned, "align", self.canonical_scale(),
                                                  cfg.canonical_level, clamp_outside=cfg.roi_clamp_outside,
                                                  name="mask_roi_pool")
        roi_shape = (cfg.mask_roi_output_size, cfg.mask_roi_output_size, cfg.fpn_width)
        self.mask_head = roi_mask_head(roi_shape, self.head_classes, cfg.mask_head_widths, cfg.mask_predictor_width)

    # ------------------------------------------------------------ forward
    def mask_logits(self, raw, boxes, head_index, training=False):
        """Mask logits (B, R, 28, 28) of head output ``head_index`` (B, R) for RoIs ``boxes`` (B, R, 4)."""
        boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
        pooled = self.mask_roi_pooler([raw[key] for key in self.roi_keys], boxes)
        batch, rois = tf.shape(boxes)[0], tf.shape(boxes)[1]
        flat = tf.reshape(pooled, tf.concat([[-1], tf.shape(pooled)[2:]], axis=0))
        logits = tf.cast(self.mask_head(flat, training=training), tf.float32)   # (B * R, 28, 28, head_classes)
        # Only the RoI's own class is read (torchvision maskrcnn_inference / maskrcnn_loss).
        own = tf.gather(logits, tf.reshape(tf.cast(head_index, tf.int32), [-1]), axis=3, batch_dims=1)
        return tf.reshape(own, [batch, rois, self.mask_size, self.mask_size])

    def postprocess(self, raw, frame):
        detections = super().postprocess(raw, frame)
        labels = detections["labels"]
        columns = tf.constant(self.label_columns(), tf.int32)
        logits = self.mask_logits(raw, detections["boxes"], tf.gather(columns, tf.maximum(labels, 0)))
        valid = (labels >= 0)[..., None, None]
        return {**detections, "masks": tf.where(valid, tf.sigmoid(logits), 0.0)}

    # ----------------------------------------------------------- training
    # The ground-truth masks are checked (statically, so datasets too) before anything reads them:
    # the in-fit augmentation of train_step moves them before compute_loss sees them.
    def train_step(self, data):
        self._check_mask_targets(*keras.utils.unpack_x_y_sample_weight(data)[:2])
        return super().train_step(data)

    def test_step(self, data):
        self._check_mask_targets(*keras.utils.unpack_x_y_sample_weight(data)[:2])
        return super().test_step(data)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self._check_mask_targets(x, y)
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def _check_mask_targets(self, x, y) -> None:
        """Static checks of y["masks"] against the boxes and the images (datasets are checked here too)."""
        if y is None:
            return  # Detector.compute_loss says that training needs targets
        if not isinstance(y, dict) or y.get("masks") is None:
            got = sorted(y) if isinstance(y, dict) else type(y).__name__
            raise ValueError(f"MaskRCNN trains on instance masks: y needs 'masks' (batch, max_boxes, height, "
                             f"width) uint8 in input-image pixels besides 'boxes' and 'labels'; received {got}.")
        masks, boxes = y["masks"], y["boxes"]
        images = self.split_inputs(x)[0] if x is not None else None
        mask_shape = tuple(masks.shape)
        if len(mask_shape) != 4:
            raise ValueError(f"y['masks'] must have shape (batch, max_boxes, height, width); received {mask_shape}.")
        expected_rows = boxes.shape[1] if len(boxes.shape) == 3 else None
        if None not in (expected_rows, mask_shape[1]) and mask_shape[1] != expected_rows:
            raise ValueError(f"y['masks'] must hold one mask per box row: expected {expected_rows} masks per image "
                             f"(y['boxes'] has shape {tuple(boxes.shape)}); received masks of shape {mask_shape}.")
        if images is not None:
            image_hw = tuple(images.shape[1:3])
            if None not in image_hw + mask_shape[2:] and mask_shape[2:] != image_hw:
                raise ValueError(f"y['masks'] must be in the pixels of the input images: expected height x width "
                                 f"{image_hw}; received masks of shape {mask_shape}.")

    def compute_losses(self, y, raw, frame):
        losses, sample = self.losses_and_sample(y, raw, frame)
        losses["roi_mask"] = self.mask_loss(raw, frame, sample, y["masks"])
        return losses

    def mask_loss(self, raw, frame, sample, gt_masks):
        """Mean binary cross-entropy over the positive RoIs' 28x28 cells (torchvision ``maskrcnn_loss``).

        Args:
            raw: the network outputs (FPN levels P2..P5).
            frame: the input <-> network pixel frame.
            sample: ``RoITargetSampler``'s sample (positives first, with their ``gt_index``).
            gt_masks: (B, M, H, W) ground-truth masks in input-image pixels.
        """
        cfg = self.config
        # balanced_sample puts the positives first, at most this many: the static slice holds them all.
        count = min(int(cfg.roi_batch_size_per_image * cfg.roi_positive_fraction), sample["boxes"].shape[1])
        if count == 0:
            return tf.constant(0.0)
        boxes, positive = sample["boxes"][:, :count], tf.cast(sample["positive"][:, :count], tf.float32)
        logits = self.mask_logits(raw, boxes, self.head_targets(sample["labels"][:, :count]), training=True)
        targets = self.roi_mask_targets(gt_masks, sample["gt_index"][:, :count], boxes, frame)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.stop_gradient(targets), logits=logits)
        per_roi = tf.reduce_mean(bce, axis=[2, 3])
        return tf.reduce_sum(per_roi * positive) / tf.maximum(tf.reduce_sum(positive), 1.0)

    def roi_mask_targets(self, gt_masks, gt_index, boxes, frame):
        """Mask targets (B, R, 28, 28) of RoIs ``boxes`` (B, R, 4) in network pixels and their GT rows.

        The ground-truth masks are in input-image pixels: they are cropped at
        the RoIs mapped back through the frame (torchvision crops masks
        resized with the image; mapping the RoIs back avoids resizing every
        mask to the canvas).
        """
        return mask_targets(gt_masks, gt_index, boxes_to_input(boxes, frame), self.mask_size,
                            aligned=self.config.roi_aligned)
