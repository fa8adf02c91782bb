"""Faster R-CNN with FPN (Ren et al. 2015; Lin et al. 2017), one Keras model, static shapes.

    raw pixels -> ImagePreprocessing -> backbone C2..C5 -> FPN P2..P5 (+ P6 by max-pool)
      -> RPN (3x3 conv, objectness + deltas per anchor)
      -> proposals (per-level top-k, decode, clip, small-box removal, NMS 0.7, top-N)
         or external proposals (Fast R-CNN mode, Girshick 2015)
      -> multi-level RoIAlign 7x7 (or RoIPool) -> fc6 -> fc7 -> class scores + per-class deltas
      -> class-specific decoding (weights 10, 10, 5, 5) -> class-aware NMS -> output dict

Training (``compute_losses``, inside the gradient tape): RPN anchors sampled
256 per image at half positives (IoU 0.7 / 0.3), proposals generated from the
*stopped* RPN outputs (approximate joint training, Ren et al. 2015 section
3.2), GT boxes appended, 512 RoIs sampled per image at 25% foreground (IoU
0.5), softmax cross-entropy + smooth-L1 on the GT class's deltas. Losses are
logged as ``rpn_cls``, ``rpn_box``, ``roi_cls``, ``roi_box``.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.detector import Detector, _to_dense_targets
from kdet.heads.roi_box import REPRESENTATION_SIZE, roi_box_head
from kdet.heads.rpn import rpn_head
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.layers.image_preprocessing import ImagePreprocessing
from kdet.layers.roi_align import MultiLevelRoIAlign
from kdet.models.faster_rcnn.proposals import generate_proposals
from kdet.necks.fpn import fpn
from kdet.ops.box_coder import decode_deltas
from kdet.ops.boxes import clip_boxes, convert_format
from kdet.ops.nms import combined_nms
from kdet.targets.samplers import ROI_BOX_VARIANCES, RoITargetSampler, RPNTargetSampler
from kdet.validation import check_image_size

# torchvision's ImageNet normalisation (GeneralizedRCNNTransform).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision fasterrcnn_resnet50_fpn: anchor sizes 32..512 on P2..P6 at ~800 px, ratios 0.5/1/2.
RESNET_ANCHOR_SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)

# Full-size settings: torchvision's fasterrcnn_resnet50_fpn defaults.
FULL = dict(image_size=800, fpn_width=256, representation_size=REPRESENTATION_SIZE, anchor_sizes=RESNET_ANCHOR_SIZES,
            canonical_scale=224.0, rpn_pre_nms_top_k_train=2000, rpn_pre_nms_top_k_test=1000,
            rpn_post_nms_top_k_train=2000, rpn_post_nms_top_k_test=1000, rpn_batch_size_per_image=256,
            roi_batch_size_per_image=512)
# Tiny (backbone="tiny"): narrow, fewer proposals and RoIs; sizes relative to the image so
# 128..256 px inputs keep the same anchor coverage (image/16 .. image on P2..P6) and the
# level rule's canonical scale follows the image (224 at 800 px -> 0.28 * side).
TINY = dict(image_size=128, fpn_width=64, representation_size=256, anchor_sizes=(1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0),
            canonical_scale=0.28, rpn_pre_nms_top_k_train=300, rpn_pre_nms_top_k_test=150,
            rpn_post_nms_top_k_train=300, rpn_post_nms_top_k_test=100, rpn_batch_size_per_image=256,
            roi_batch_size_per_image=128, roi_sampling_ratio=1)
# Options with defaults shared by every preset (torchvision's values).
COMMON = dict(aspect_ratios=ASPECT_RATIOS, rpn_nms_threshold=0.7, rpn_min_size=1e-3, rpn_positive_iou=0.7,
              rpn_negative_iou=0.3, rpn_positive_fraction=0.5, roi_positive_iou=0.5, roi_negative_iou=0.5,
              roi_positive_fraction=0.25, roi_pooling="align", roi_output_size=7, roi_sampling_ratio=2,
              roi_aligned=False, roi_clamp_outside=False, canonical_level=4, box_score_threshold=0.05, box_nms_threshold=0.5,
              max_detections=100, min_box_size=1e-2, box_head_ranks=(None, None), seed=None)
BACKBONES = ("resnet50_fpn", "resnet101_fpn", "tiny")


def _build_backbone(backbone, size):
    from kdet.backbones.resnet import resnet_backbone
    from kdet.backbones.tiny import tiny_backbone

    if isinstance(backbone, keras.Model):
        return backbone, ImagePreprocessing(size, name="preprocessing")
    name = str(backbone).lower()
    if name == "tiny":
        return tiny_backbone(size), ImagePreprocessing(size, name="preprocessing")
    if name in ("resnet50_fpn", "resnet101_fpn", "resnet50", "resnet101"):
        return (resnet_backbone(int(name[6:].split("_")[0]), size),
                ImagePreprocessing(size, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="preprocessing"))
    raise ValueError(f"Unknown backbone {backbone!r}; expected one of {BACKBONES} or a keras.Model "
                     "returning {'P2', 'P3', 'P4', 'P5'} features.")


def build_network(backbone_model: keras.Model, size, fpn_width: int, num_anchors: int) -> keras.Model:
    """Normalised images -> {"P2".."P6", "rpn_cls" (B, A), "rpn_box" (B, A, 4)}."""
    outputs = backbone_model.output
    if not isinstance(outputs, dict) or not all(f"P{lvl}" in outputs for lvl in (2, 3, 4, 5)):
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(f"Faster R-CNN's backbone must return features P2..P5; received {got}.")
    inputs = keras.Input((*size, 3), name="images")
    feats = backbone_model(inputs)
    pyramid = fpn({f"P{lvl}": feats[f"P{lvl}"] for lvl in (2, 3, 4, 5)}, min_level=2, max_level=5, width=fpn_width)
    # torchvision's LastLevelMaxPool: P6 = max_pool2d(P5, kernel 1, stride 2).
    pyramid["P6"] = keras.layers.MaxPooling2D(1, strides=2, name="fpn_pool_p6")(pyramid["P5"])
    rpn = rpn_head([pyramid[f"P{lvl}"] for lvl in range(2, 7)], num_anchors)
    return keras.Model(inputs, {**pyramid, **rpn}, name="network")


@keras.saving.register_keras_serializable(package="kdet")
class FasterRCNN(Detector):
    """Faster R-CNN with FPN (Ren et al. 2015, https://arxiv.org/abs/1506.01497; FPN: Lin et al. 2017).

    Args:
        num_classes: object classes (background is added internally at index 0).
        backbone: "resnet50_fpn" (default), "resnet101_fpn", "tiny" or a
            ``keras.Model`` returning {"P2".."P5"} (then raw pixels / 255 go in).
        image_size: network input (h, w), multiple of 32 (default 800, tiny 128).
        bounding_box_format: format of GT, proposals and detections.
        fpn_width, representation_size: FPN channels (256) and fc6/fc7 units (1024).
        anchor_sizes: one per level P2..P6 (32..512 px); for "tiny" fractions of the short side.
        aspect_ratios: height / width of the anchors (0.5, 1, 2).
        rpn_pre_nms_top_k_train/test: candidates per level before NMS (2000 / 1000).
        rpn_post_nms_top_k_train/test: proposals per image after NMS (2000 / 1000).
        rpn_nms_threshold, rpn_min_size: proposal NMS IoU (0.7) and smallest side.
        rpn_positive_iou, rpn_negative_iou, rpn_batch_size_per_image, rpn_positive_fraction:
            RPN sampling (0.7, 0.3, 256, 0.5).
        roi_positive_iou, roi_negative_iou, roi_batch_size_per_image, roi_positive_fraction:
            RoI sampling (0.5, 0.5, 512, 0.25).
        roi_pooling: "align" (RoIAlign) or "pool" (RoIPool).
        roi_output_size, roi_sampling_ratio, roi_aligned: 7, 2, False (torchvision v1).
        roi_clamp_outside: RoIAlign samples beyond the feature map read its
            border instead of zero (False; the torchvision ports set True, which
            is what the parity fixture of ``fasterrcnn_resnet50_fpn`` shows).
        canonical_scale, canonical_level: level rule ``k0 + log2(sqrt(wh) / s0)``
            (224, 4); for "tiny" the scale is a fraction of the short side.
        box_score_threshold, box_nms_threshold, max_detections, min_box_size:
            inference (0.05, 0.5, 100, 0.01 px).
        box_head_ranks: truncated-SVD ranks of fc6 / fc7 (see ``compress_box_head``).
        seed: seed of the RPN / RoI samplers (None: random).

    Fast R-CNN mode: call the model (or ``predict`` / ``fit``) with
    ``{"images": (B, H, W, 3), "proposals": (B, N, 4)}``; proposals are in
    ``bounding_box_format`` input pixels, rows of zero area are padding. The
    RPN is then bypassed (its losses are 0).

    Example:
        >>> model = FasterRCNN(3, backbone="tiny", image_size=128)
        >>> sorted(model.predict(np.zeros((1, 128, 128, 3)), verbose=0))
        ['boxes', 'labels', 'num_detections', 'scores']
    """

    loss_names = ("rpn_cls", "rpn_box", "roi_cls", "roi_box")

    def __init__(self, num_classes: int, backbone="resnet50_fpn", image_size=None, bounding_box_format: str = "xyxy",
                 class_names: Sequence[str] | None = None, **options):
        preset = TINY if str(backbone).lower() == "tiny" else FULL
        unknown = set(options) - set(preset) - set(COMMON)
        unknown.discard("name")
        name = options.pop("name", None)
        if unknown:
            raise ValueError(f"Unknown FasterRCNN options {sorted(unknown)}; expected some of "
                             f"{sorted(set(preset) | set(COMMON) - {'image_size'})}.")
        cfg = {**COMMON, **{k: v for k, v in preset.items() if k != "image_size"}, **options}
        size = check_image_size(preset["image_size"] if image_size is None else image_size, multiple_of=32)
        kwargs = {"name": name} if name else {}
        super().__init__(num_classes, bounding_box_format=bounding_box_format, image_size=size,
                         class_names=class_names, **kwargs)
        if cfg["roi_pooling"] not in ("align", "pool"):
            raise ValueError(f"roi_pooling must be 'align' or 'pool'; received {cfg['roi_pooling']!r}.")
        cfg["box_head_ranks"] = tuple(None if r is None else int(r) for r in cfg["box_head_ranks"])
        self.backbone_name = backbone if not isinstance(backbone, keras.Model) else None
        self._backbone_arg = backbone
        self.options = cfg
        relative = str(backbone).lower() == "tiny"
        side = min(size)
        sizes = [s * side if relative else s for s in cfg["anchor_sizes"]]
        backbone_model, self.preprocessing = _build_backbone(backbone, size)
        self.network = build_network(backbone_model, size, cfg["fpn_width"], len(cfg["aspect_ratios"]))
        shapes = [tuple(self.network.output[f"P{lvl}"].shape[1:3]) for lvl in range(2, 7)]
        # torchvision: stride = image size // feature size (61 for P6 of an 800 px image).
        strides = [size[0] // h for h, _ in shapes]
        self.anchor_generator = AnchorGenerator(strides=strides, sizes=sizes, scales=(1.0,),
                                                aspect_ratios=cfg["aspect_ratios"], offset=0.0,
                                                round_base_anchors=True, name="anchor_generator")
        self.anchors = self.anchor_generator.generate(*size, feature_shapes=shapes)
        self.level_sizes = [h * w * len(cfg["aspect_ratios"]) for h, w in shapes]
        scale = cfg["canonical_scale"] * side if relative else cfg["canonical_scale"]
        self.roi_pooler = MultiLevelRoIAlign(2, 5, cfg["roi_output_size"], cfg["roi_sampling_ratio"],
                                             cfg["roi_aligned"], cfg["roi_pooling"], scale, cfg["canonical_level"],
                                             clamp_outside=cfg["roi_clamp_outside"], name="box_roi_pool")
        roi_shape = (cfg["roi_output_size"], cfg["roi_output_size"], cfg["fpn_width"])
        self.box_head = roi_box_head(roi_shape, num_classes, cfg["representation_size"], cfg["box_head_ranks"])
        self.seed_generator = keras.random.SeedGenerator(cfg["seed"], name="sampler_seed")
        self.rpn_sampler = RPNTargetSampler(cfg["rpn_positive_iou"], cfg["rpn_negative_iou"],
                                            cfg["rpn_batch_size_per_image"], cfg["rpn_positive_fraction"],
                                            seed=self.seed_generator)
        self.roi_sampler = RoITargetSampler(cfg["roi_positive_iou"], cfg["roi_negative_iou"],
                                            cfg["roi_batch_size_per_image"], cfg["roi_positive_fraction"],
                                            ROI_BOX_VARIANCES, seed=self.seed_generator)
        self.built = True  # every sub-network is built above

    # ------------------------------------------------------------ inputs
    def _split_inputs(self, inputs):
        """images, or {"images", "proposals"} (Fast R-CNN mode) -> (images, proposals or None)."""
        if isinstance(inputs, dict):
            if "images" not in inputs or set(inputs) - {"images", "proposals"}:
                raise ValueError("Dict inputs must be {'images': (B, H, W, 3), 'proposals': (B, N, 4)}; "
                                 f"received keys {sorted(inputs)}.")
            return inputs["images"], inputs.get("proposals")
        return inputs, None

    def random_horizontal_flip(self, images, y, probability: float = 0.5):
        """The base flip, extended to Fast R-CNN inputs: external proposals flip with their image."""
        images, proposals = self._split_inputs(images)
        if proposals is None:
            return super().random_horizontal_flip(images, y, probability)
        proposals = tf.cast(self._check_proposals(images, proposals), tf.float32)
        y = _to_dense_targets(y)
        # One draw per image for both: proposals ride along as extra rows (label -1) before
        # the GT, so the first N rows keep a static shape. Zero-area padding stays zero-area.
        count = proposals.shape[1]
        rows = {"boxes": tf.concat([proposals, tf.cast(y["boxes"], tf.float32)], axis=1),
                "labels": tf.concat([tf.fill(tf.shape(proposals)[:2], -1), y["labels"]], axis=1)}
        images, rows = super().random_horizontal_flip(images, rows, probability)
        targets = {"boxes": rows["boxes"][:, count:], "labels": rows["labels"][:, count:]}
        return {"images": images, "proposals": rows["boxes"][:, :count]}, targets

    def _network_scale(self, images):
        return super()._network_scale(self._split_inputs(images)[0])

    def _input_hw(self, images):
        return super()._input_hw(self._split_inputs(images)[0])

    def proposals_to_network(self, images, proposals):
        """External proposals in ``bounding_box_format`` input pixels -> xyxy network pixels + validity."""
        proposals = self._check_proposals(images, proposals)
        h, w = self._input_hw(images)
        boxes = convert_format(proposals, self.bounding_box_format, "xyxy", height=h, width=w)
        sx, sy = self._network_scale(images)
        boxes = clip_boxes(boxes / tf.stack([sx, sy, sx, sy]), *self.image_size)
        valid = tf.reduce_all(boxes[..., 2:] - boxes[..., :2] > 0, axis=-1)
        return tf.where(valid[..., None], boxes, 0.0), valid

    @staticmethod
    def _check_proposals(images, proposals):
        proposals = tf.convert_to_tensor(proposals)
        if proposals.shape.rank != 3 or proposals.shape[-1] != 4:
            raise ValueError(f"proposals must have shape (batch, num_proposals, 4); received {proposals.shape}.")
        if proposals.shape[1] is None:
            raise ValueError("proposals need a static number of rows (pad them to a fixed N).")
        if images.shape[0] is not None and proposals.shape[0] is not None and images.shape[0] != proposals.shape[0]:
            raise ValueError(f"proposals batch ({proposals.shape[0]}) differs from the images batch "
                             f"({images.shape[0]}).")
        return proposals

    # ------------------------------------------------------------ forward
    def raw_outputs(self, images, training=False):
        """{"P2".."P6", "rpn_cls", "rpn_box"} (+ "proposals", "proposal_valid" in Fast R-CNN mode)."""
        images, proposals = self._split_inputs(images)
        raw = dict(self.network(self.preprocessing(images), training=training))
        if proposals is not None:
            raw["proposals"], raw["proposal_valid"] = self.proposals_to_network(images, proposals)
        return raw

    def propose(self, raw, training: bool = False) -> dict:
        """RPN proposals {"boxes" (B, N, 4), "scores", "valid"} in network pixels (gradients stopped)."""
        cfg = self.options
        mode = "train" if training else "test"
        return generate_proposals(tf.stop_gradient(raw["rpn_cls"]), tf.stop_gradient(raw["rpn_box"]), self.anchors,
                                  self.level_sizes, self.image_size, cfg[f"rpn_pre_nms_top_k_{mode}"],
                                  cfg[f"rpn_post_nms_top_k_{mode}"], cfg["rpn_nms_threshold"], cfg["rpn_min_size"])

    def box_head_outputs(self, raw, boxes, training=False):
        """Box head on RoIs (B, R, 4) -> class logits (B, R, C+1), per-class deltas (B, R, C+1, 4)."""
        boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
        pooled = self.roi_pooler([raw[f"P{lvl}"] for lvl in (2, 3, 4, 5)], boxes)
        batch, rois = tf.shape(boxes)[0], tf.shape(boxes)[1]
        flat = tf.reshape(pooled, tf.concat([[-1], tf.shape(pooled)[2:]], axis=0))
        out = self.box_head(flat, training=training)
        cls = tf.reshape(tf.cast(out["cls"], tf.float32), [batch, rois, self.num_classes + 1])
        box = tf.reshape(tf.cast(out["box"], tf.float32), [batch, rois, self.num_classes + 1, 4])
        return cls, box

    def _rois(self, raw, training):
        if "proposals" in raw:
            return raw["proposals"], raw["proposal_valid"]
        proposals = self.propose(raw, training=training)
        return proposals["boxes"], proposals["valid"]

    def postprocess(self, raw):
        rois, valid = self._rois(raw, training=False)
        cls, deltas = self.box_head_outputs(raw, rois)
        scores = tf.nn.softmax(cls, axis=-1)[..., 1:] * tf.cast(valid, tf.float32)[..., None]
        boxes = decode_deltas(deltas[:, :, 1:], rois[:, :, None, :], ROI_BOX_VARIANCES)
        boxes = clip_boxes(boxes, *self.image_size)
        wh = boxes[..., 2:] - boxes[..., :2]
        scores = tf.where(tf.reduce_all(wh >= self.options["min_box_size"], axis=-1), scores, 0.0)
        cfg = self.options
        return combined_nms(boxes, scores, cfg["max_detections"], cfg["max_detections"], cfg["box_nms_threshold"],
                            cfg["box_score_threshold"])

    # ----------------------------------------------------------- training
    def compute_losses(self, images, y, raw):
        gt_boxes, gt_labels = y["boxes"], y["labels"]
        if "proposals" in raw:
            rpn_cls = rpn_box = tf.constant(0.0)
        else:
            rpn_cls, rpn_box = self._rpn_losses(raw, gt_boxes, gt_labels)
        rois, valid = self._rois(raw, training=True)
        sample = self.roi_sampler(tf.stop_gradient(rois), valid, gt_boxes, gt_labels)
        cls, deltas = self.box_head_outputs(raw, sample["boxes"], training=True)
        weight = tf.cast(sample["valid"], tf.float32)
        count = tf.maximum(tf.reduce_sum(weight), 1.0)
        target = tf.where(sample["labels"] >= 0, sample["labels"] + 1, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=cls)
        roi_cls = tf.reduce_sum(ce * weight) / count
        class_deltas = tf.gather(deltas, target, batch_dims=2)  # (B, S, 4): the GT class's deltas
        box_values = self._box_values(sample["box_targets"], class_deltas)
        roi_box = tf.reduce_sum(box_values * tf.cast(sample["positive"], tf.float32)) / count
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "roi_cls": roi_cls, "roi_box": roi_box}

    def _rpn_losses(self, raw, gt_boxes, gt_labels):
        sample = self.rpn_sampler(self.anchors, gt_boxes, gt_labels)
        idx = sample["indices"]
        logits = tf.gather(tf.cast(raw["rpn_cls"], tf.float32), idx, batch_dims=1)
        deltas = tf.gather(tf.cast(raw["rpn_box"], tf.float32), idx, batch_dims=1)
        weight = tf.cast(sample["valid"], tf.float32)
        count = tf.maximum(tf.reduce_sum(weight), 1.0)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(sample["positive"], tf.float32), logits=logits)
        box_values = self._box_values(sample["box_targets"], deltas)
        return (tf.reduce_sum(bce * weight) / count,
                tf.reduce_sum(box_values * tf.cast(sample["positive"], tf.float32)) / count)

    def _box_values(self, targets, deltas):
        """Per-box values of the compiled box loss (smooth-L1, beta 1/9 by default), summed over 4."""
        loss = getattr(self, "box_loss", None) or self.default_box_loss()
        values = tf.cast(loss.call(targets, deltas), tf.float32)
        return tf.reduce_sum(values, axis=-1) if values.shape.rank == targets.shape.rank else values

    # ------------------------------------------------------------ defaults
    def default_classification_loss(self):
        return None

    def resolve_box_loss(self, box_loss):
        if isinstance(box_loss, str) and box_loss.lower() in ("iou", "giou", "diou", "ciou"):
            raise ValueError(f"Faster R-CNN regresses deltas; box_loss {box_loss!r} is not supported "
                             "(use 'smooth_l1', 'huber' or a delta loss).")
        return super().resolve_box_loss(box_loss)

    def compile(self, optimizer=None, box_loss=None, classification_loss=None, **kwargs):
        if classification_loss is not None:
            raise ValueError("Faster R-CNN uses binary (RPN) and softmax (RoI head) cross-entropy; "
                             "classification_loss cannot be changed.")
        super().compile(optimizer=optimizer, box_loss=box_loss, **kwargs)

    def raw_anchors(self) -> np.ndarray:
        """The (A, 4) xyxy RPN anchors in network pixels."""
        return self.anchors

    def get_config(self):
        config = super().get_config()
        backbone = self._backbone_arg
        if isinstance(backbone, keras.Model):
            backbone = keras.saving.serialize_keras_object(backbone)
        config.update(backbone=backbone, **{k: v for k, v in self.options.items()})
        config["box_head_ranks"] = list(self.options["box_head_ranks"])
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
