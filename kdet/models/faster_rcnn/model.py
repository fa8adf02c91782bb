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

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kdet.backbones.factory import build_backbone, canonical_name, default_normalization
from kdet.config import SCRATCH_RECIPE, NMSConfig, TrainingRecipe, keras_field
from kdet.detector import Detector
from kdet.heads.roi_box import REPRESENTATION_SIZE, roi_box_head
from kdet.heads.rpn_proposals import generate_proposals
from kdet.layers.image_preprocessing import boxes_to_network
from kdet.layers.roi_align import MultiLevelRoIAlign
from kdet.models.faster_rcnn.network import build_network, pyramid_keys, roi_levels, rpn_anchors, sizes_of_level
from kdet.models.single_stage import clip_to_valid
from kdet.ops.box_coder import decode_deltas
from kdet.ops.boxes import convert_format
from kdet.ops.nms import combined_nms
from kdet.targets.samplers import ROI_BOX_VARIANCES, RoITargetSampler, RPNTargetSampler
from kdet.validation import check_head_output_ids, check_image_size, check_positive_int, check_probability

# torchvision fasterrcnn_resnet50_fpn: anchor sizes 32..512 on P2..P6 at ~800 px, ratios 0.5/1/2.
RESNET_ANCHOR_SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
BACKBONES = ("resnet50", "resnet101", "mobilenet_v3_large", "tiny")
BOX_HEADS = {"2fc": 0, "4conv1fc": 4}  # box head -> its 3x3 convs (Wu & He 2018's 4conv1fc)
FPN_NORMS = (None, "batch")
PYRAMID_INPUTS = ("P2", "P3", "P4", "P5")

# Full-size settings: torchvision's fasterrcnn_resnet50_fpn defaults.
FULL = dict(image_size=800, fpn_width=256, representation_size=REPRESENTATION_SIZE, anchor_sizes=RESNET_ANCHOR_SIZES,
            canonical_scale=224.0, rpn_pre_nms_top_k_train=2000, rpn_pre_nms_top_k_test=1000,
            rpn_post_nms_top_k_train=2000, rpn_post_nms_top_k_test=1000, rpn_batch_size_per_image=256,
            roi_batch_size_per_image=512, roi_sampling_ratio=2, relative_sizes=False, fpn_inputs=PYRAMID_INPUTS,
            rpn_score_threshold=0.0)
# torchvision fasterrcnn_mobilenet_v3_large_fpn: the FPN on the last two stages (block 12's output and
# the last conv, both stride 32, ``_mobilenet_extractor(returned_layers=[4, 5])``) + max-pool; sizes
# 32..512 at each of the 3 levels; RPN proposals scoring under 0.05 dropped (its rpn_score_thresh).
MOBILENET = dict(FULL, fpn_inputs=("expanded_conv_12_project_bn", "conv_1_act"),
                 anchor_sizes=(RESNET_ANCHOR_SIZES,) * 3, rpn_score_threshold=0.05)
# torchvision builds its detection MobileNetV3 with FrozenBatchNorm2d (eps 1e-5).
BACKBONE_OPTIONS = {"mobilenet_v3_large": {"bn_epsilon": 1e-5}}
# Tiny (backbone="tiny"): narrow, fewer proposals and RoIs; sizes relative to the image so
# 128..256 px inputs keep the same anchor coverage (image/16 .. image on P2..P6) and the
# level rule's canonical scale follows the image (224 at 800 px -> 0.28 * side).
TINY = dict(image_size=128, fpn_width=64, representation_size=256, anchor_sizes=(1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0),
            canonical_scale=0.28, rpn_pre_nms_top_k_train=300, rpn_pre_nms_top_k_test=150,
            rpn_post_nms_top_k_train=300, rpn_post_nms_top_k_test=100, rpn_batch_size_per_image=256,
            roi_batch_size_per_image=128, roi_sampling_ratio=1, relative_sizes=True, fpn_inputs=PYRAMID_INPUTS,
            rpn_score_threshold=0.0)
# Ren et al. 2015 / Detectron: SGD 0.02 at 16 images, weight decay 1e-4, warm-up.
FASTER_RCNN_RECIPE = TrainingRecipe("sgd", 0.02, 16, 1e-4, 0.9, 500,
                                    "Ren et al. 2015 / Detectron: SGD 0.02 at 16 images, wd 1e-4, warm-up")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FasterRCNNConfig(NMSConfig):
    """Faster R-CNN's settings (None: the backbone's preset, torchvision's values for full size).

    Args:
        backbone: "resnet50" (alias "resnet50_fpn"), "resnet101", "tiny" or a
            ``keras.Model`` returning {"P2".."P5"} (then raw pixels / 255 go in).
        fpn_width, representation_size: FPN channels (256) and fc6/fc7 units (1024).
        anchor_sizes: per RPN level a size or a tuple of sizes (32..512 px
            on P2..P6; MobileNetV3: all five on each of its 3 levels); fractions
            of the canvas's short side when ``relative_sizes`` (tiny).
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
            border instead of zero (the torchvision ports set True).
        canonical_scale, canonical_level: level rule ``k0 + log2(sqrt(wh) / s0)`` (224, 4).
        min_box_size: detections narrower than this (network pixels) are dropped.
        box_head_ranks: truncated-SVD ranks of fc6 / fc7 (see ``compress_box_head``).
        seed: seed of the RPN / RoI samplers (None: random).
        head_output_ids: the box head's output index of each kdet label
            (background is output 0; torchvision's COCO ids); None: label k is output k + 1.
        relative_sizes: anchor sizes and canonical scale as fractions of the short side.
        fpn_inputs: backbone outputs or layer names the FPN reads, finest
            first (None: the backbone's preset, "P2".."P5"; MobileNetV3-Large:
            torchvision's last two stages); the RPN sees these plus one max-pooled level.
        fpn_norm: None or "batch" (bias-free FPN convs + BatchNorm: torchvision's v2).
        rpn_head_depth: 3x3 conv + ReLU layers of the RPN head (1; 2 in v2).
        rpn_score_threshold: proposals whose objectness probability is below
            this are dropped (None: the preset, 0 or MobileNetV3's 0.05).
        box_head: "2fc" (fc6, fc7: torchvision's TwoMLPHead) or "4conv1fc"
            (four 3x3 conv + BatchNorm + ReLU, one fc: its v2 FastRCNNConvFCHead).
    """

    aliases = {"box_score_threshold": "score_threshold", "box_nms_threshold": "nms_iou_threshold"}

    backbone: Any = keras_field("resnet50")
    fpn_width: int | None = None
    representation_size: int | None = None
    anchor_sizes: tuple[float, ...] | None = None
    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS
    canonical_scale: float | None = None
    canonical_level: int = 4
    rpn_pre_nms_top_k_train: int | None = None
    rpn_pre_nms_top_k_test: int | None = None
    rpn_post_nms_top_k_train: int | None = None
    rpn_post_nms_top_k_test: int | None = None
    rpn_nms_threshold: float = 0.7
    rpn_min_size: float = 1e-3
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_batch_size_per_image: int | None = None
    rpn_positive_fraction: float = 0.5
    roi_positive_iou: float = 0.5
    roi_negative_iou: float = 0.5
    roi_batch_size_per_image: int | None = None
    roi_positive_fraction: float = 0.25
    roi_pooling: str = "align"
    roi_output_size: int = 7
    roi_sampling_ratio: int | None = None
    roi_aligned: bool = False
    roi_clamp_outside: bool = False
    min_box_size: float = 1e-2
    box_head_ranks: tuple = (None, None)
    seed: int | None = None
    head_output_ids: tuple[int, ...] | None = None
    relative_sizes: bool | None = None
    fpn_inputs: tuple[str, ...] | None = None
    fpn_norm: str | None = None
    rpn_head_depth: int = 1
    rpn_score_threshold: float | None = None
    box_head: str = "2fc"

    def is_tiny(self) -> bool:
        return canonical_name(self.backbone) == "tiny"

    def resolve(self):
        name = canonical_name(self.backbone)
        if name is not None:
            if name not in BACKBONES:
                raise ValueError(f"Unknown backbone {self.backbone!r}; expected one of {list(BACKBONES)} (or "
                                 f"'resnet50_fpn', 'resnet101_fpn') or a keras.Model returning {{'P2', 'P3', 'P4', "
                                 f"'P5'}} features.")
            self._set("backbone", name)
        preset = TINY if self.is_tiny() else MOBILENET if name == "mobilenet_v3_large" else FULL
        for key, value in preset.items():
            if key == "image_size" and not self.fixed_canvas:
                continue
            if getattr(self, key) is None:
                self._set(key, value)

    def validate(self):
        super().validate()
        if self.roi_pooling not in ("align", "pool"):
            raise ValueError(f"roi_pooling must be 'align' or 'pool'; received {self.roi_pooling!r}.")
        ranks = tuple(None if r is None else check_positive_int("box_head_ranks", r) for r in self.box_head_ranks)
        if len(ranks) != 2:
            raise ValueError(f"box_head_ranks must be (rank_fc6, rank_fc7); received {self.box_head_ranks!r}.")
        self._set("box_head_ranks", ranks)
        if self.fixed_canvas:
            check_image_size(self.image_size, multiple_of=32)
        self._validate_pyramid()
        if self.head_output_ids is not None:
            self._set("head_output_ids", check_head_output_ids(self.head_output_ids, self.num_classes, lowest=1))

    def _validate_pyramid(self):
        """FPN inputs, anchors per level, RPN / box heads."""
        if not self.fpn_inputs or not all(isinstance(n, str) and n for n in self.fpn_inputs):
            raise ValueError(f"fpn_inputs must name at least one backbone output or layer; received "
                             f"{self.fpn_inputs!r}.")
        levels = len(self.fpn_inputs) + 1
        sizes = tuple(tuple(float(v) for v in s) if isinstance(s, (tuple, list)) else float(s)
                      for s in self.anchor_sizes)
        if len(sizes) != levels or len({len(sizes_of_level(sizes, i)) for i in range(levels)}) != 1:
            raise ValueError(f"anchor_sizes needs one size (or one tuple of as many sizes) per RPN level: {levels} "
                             f"for fpn_inputs {list(self.fpn_inputs)} + the max-pooled level; received "
                             f"{self.anchor_sizes!r}.")
        self._set("anchor_sizes", sizes)
        if self.fpn_norm not in FPN_NORMS:
            raise ValueError(f"fpn_norm must be one of {FPN_NORMS}; received {self.fpn_norm!r}.")
        check_positive_int("rpn_head_depth", self.rpn_head_depth)
        self._set("rpn_score_threshold", check_probability("rpn_score_threshold", self.rpn_score_threshold))
        if self.box_head not in BOX_HEADS:
            raise ValueError(f"box_head must be one of {sorted(BOX_HEADS)}; received {self.box_head!r}.")
        if self.box_head != "2fc" and self.box_head_ranks[1] is not None:
            raise ValueError(f"box_head={self.box_head!r} has one fc (fc6): box_head_ranks[1] must be None; "
                             f"received {self.box_head_ranks!r}.")

    @property
    def anchors_per_location(self) -> int:
        return len(self.aspect_ratios) * len(sizes_of_level(self.anchor_sizes, 0))


@keras.saving.register_keras_serializable(package="kdet")
class FasterRCNN(Detector):
    """Faster R-CNN with FPN (Ren et al. 2015, https://arxiv.org/abs/1506.01497; FPN: Lin et al. 2017).

    Args:
        num_classes: object classes (background is added internally at index 0).
        backbone: see ``FasterRCNNConfig``.
        **settings: every field of ``FasterRCNNConfig`` and the shared ones:
            ``image_size`` (multiple of 32; default 800, tiny 128), ``resize``
            ("min_max" is torchvision's rule), ``score_threshold`` (0.05),
            ``nms_iou_threshold`` (0.5), ``max_detections`` (100). The old
            names ``box_score_threshold`` / ``box_nms_threshold`` still work.

    Fast R-CNN mode: call the model (or ``predict`` / ``fit``) with
    ``{"images": (B, H, W, 3), "proposals": (B, N, 4)}``; proposals are in
    ``bounding_box_format`` input pixels, rows of zero area are padding. The
    RPN is then bypassed (its losses are 0).

    Example:
        >>> model = FasterRCNN(3, backbone="tiny", image_size=128)
        >>> sorted(model.predict(np.zeros((1, 128, 128, 3)), verbose=0))
        ['boxes', 'labels', 'num_detections', 'scores']
    """

    config_class = FasterRCNNConfig
    loss_names = ("rpn_cls", "rpn_box", "roi_cls", "roi_box")
    classifier_layers = ("roi_heads_box_predictor_cls_score", "roi_heads_box_predictor_bbox_pred")
    input_keys = ("proposals",)

    def __init__(self, num_classes: int, backbone="resnet50_fpn", **settings):
        super().__init__(num_classes=num_classes, backbone=backbone, **settings)

    def default_pixel_normalization(self) -> dict:
        return default_normalization(self.config.backbone)

    @property
    def head_classes(self) -> int:
        """Outputs of the box classifier (background included)."""
        ids = self.config.head_output_ids
        return max(ids) + 1 if ids is not None else self.num_classes + 1

    def assemble(self):
        cfg = self.config
        options = BACKBONE_OPTIONS.get(canonical_name(cfg.backbone), {})
        backbone_model, _ = build_backbone(cfg.backbone, self.network_input_shape, **options)
        self.network, strides = build_network(backbone_model, self.network_input_shape, cfg.fpn_inputs,
                                              cfg.fpn_width, cfg.anchors_per_location, cfg.fpn_norm,
                                              cfg.rpn_head_depth)
        self._set_untracked("_canvas_cache", {})
        self._set_untracked("pyramid_keys", pyramid_keys(cfg.fpn_inputs))
        self._set_untracked("level_strides", strides)
        k_min, k_max = roi_levels(strides)
        self._set_untracked("roi_keys", self.pyramid_keys[:k_max - k_min + 1])
        self.roi_pooler = MultiLevelRoIAlign(k_min, k_max, cfg.roi_output_size, cfg.roi_sampling_ratio,
                                             cfg.roi_aligned, cfg.roi_pooling, self.canonical_scale(),
                                             cfg.canonical_level, clamp_outside=cfg.roi_clamp_outside,
                                             name="box_roi_pool")
        roi_shape = (cfg.roi_output_size, cfg.roi_output_size, cfg.fpn_width)
        self.box_head = roi_box_head(roi_shape, self.head_classes - 1, cfg.representation_size, cfg.box_head_ranks,
                                     convs=BOX_HEADS[cfg.box_head], conv_width=cfg.fpn_width)
        self.seed_generator = keras.random.SeedGenerator(cfg.seed, name="sampler_seed")
        self.rpn_sampler = RPNTargetSampler(cfg.rpn_positive_iou, cfg.rpn_negative_iou,
                                            cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction,
                                            seed=self.seed_generator)
        self.roi_sampler = RoITargetSampler(cfg.roi_positive_iou, cfg.roi_negative_iou,
                                            cfg.roi_batch_size_per_image, cfg.roi_positive_fraction,
                                            ROI_BOX_VARIANCES, seed=self.seed_generator)

    def canonical_scale(self) -> float:
        """``s0`` of the RoI level rule in network pixels (a fraction of the short side when relative)."""
        cfg = self.config
        if not cfg.relative_sizes:
            return cfg.canonical_scale
        if not cfg.fixed_canvas:
            raise ValueError("relative_sizes needs a fixed canvas (resize 'stretch', 'letterbox' or 'pad').")
        return cfg.canonical_scale * min(cfg.image_size)

    # ------------------------------------------------------------ anchors
    def canvas_anchors(self, canvas) -> tuple[np.ndarray, list[int]]:
        """(anchors (A, 4), anchors per level) of a network canvas, cached per size."""
        canvas = tuple(int(c) for c in canvas)
        if canvas not in self._canvas_cache:
            cfg = self.config
            out = self.network.compute_output_shape((None, *canvas, 3))
            shapes = [tuple(int(d) for d in out[key][1:3]) for key in self.pyramid_keys]
            scale = min(canvas) if cfg.relative_sizes else 1.0
            anchors = rpn_anchors(canvas, shapes, self.level_strides, cfg.anchor_sizes, cfg.aspect_ratios, scale)
            self._canvas_cache[canvas] = (anchors, [h * w * cfg.anchors_per_location for h, w in shapes])
        return self._canvas_cache[canvas]

    @property
    def anchors(self) -> np.ndarray | None:
        """The (A, 4) RPN anchors of the fixed canvas (None where the canvas follows the image)."""
        return self.canvas_anchors(self.config.image_size)[0] if self.config.fixed_canvas else None

    def raw_anchors(self) -> np.ndarray:
        """The (A, 4) xyxy RPN anchors in network pixels of the fixed canvas."""
        return self.anchors

    @property
    def level_sizes(self) -> list[int] | None:
        return self.canvas_anchors(self.config.image_size)[1] if self.config.fixed_canvas else None

    # ------------------------------------------------------------ inputs
    def attach_inputs(self, raw, extras, frame):
        """Fast R-CNN mode: external proposals (input pixels) -> network pixels + validity."""
        if "proposals" in extras:
            raw["proposals"], raw["proposal_valid"] = self.proposals_to_network(extras["proposals"], frame)
        return raw

    def proposals_to_network(self, proposals, frame):
        """External proposals in ``bounding_box_format`` input pixels -> xyxy network pixels + validity."""
        proposals = tf.cast(self._check_proposals(proposals, frame), tf.float32)
        h, w = frame["input_hw"][:, 0, None, None], frame["input_hw"][:, 1, None, None]
        boxes = convert_format(proposals, self.bounding_box_format, "xyxy", height=h, width=w)
        boxes = clip_to_valid(boxes_to_network(boxes, frame), frame)
        valid = tf.reduce_all(boxes[..., 2:] - boxes[..., :2] > 0, axis=-1)
        return tf.where(valid[..., None], boxes, 0.0), valid

    @staticmethod
    def _check_proposals(proposals, frame):
        proposals = tf.convert_to_tensor(proposals)
        if proposals.shape.rank != 3 or proposals.shape[-1] != 4:
            raise ValueError(f"proposals must have shape (batch, num_proposals, 4); received {proposals.shape}.")
        if proposals.shape[1] is None:
            raise ValueError("proposals need a static number of rows (pad them to a fixed N).")
        batch = frame["scale"].shape[0]
        if batch is not None and proposals.shape[0] is not None and batch != proposals.shape[0]:
            raise ValueError(f"proposals batch ({proposals.shape[0]}) differs from the images batch ({batch}).")
        return proposals

    def _augment(self, x, y):
        if isinstance(x, dict) and "proposals" in x:
            raise ValueError("Training augmentation does not move external proposals: compile(augment=None) for "
                             "Fast R-CNN inputs, and augment images, boxes and proposals in the data pipeline.")
        return super()._augment(x, y)

    # ------------------------------------------------------------ forward
    def network_outputs(self, x, training=False):
        """{pyramid keys ("P2".."P6"), "rpn_cls", "rpn_box"} at the network resolution."""
        return dict(self.network(x, training=training))

    def propose(self, raw, frame, training: bool = False) -> dict:
        """RPN proposals {"boxes" (B, N, 4), "scores", "valid"} in network pixels (gradients stopped)."""
        cfg = self.config
        mode = "train" if training else "test"
        anchors, level_sizes = self.canvas_anchors(frame["canvas"])
        return generate_proposals(tf.stop_gradient(raw["rpn_cls"]), tf.stop_gradient(raw["rpn_box"]), anchors,
                                  level_sizes, frame["valid_hw"], getattr(cfg, f"rpn_pre_nms_top_k_{mode}"),
                                  getattr(cfg, f"rpn_post_nms_top_k_{mode}"), cfg.rpn_nms_threshold,
                                  cfg.rpn_min_size, cfg.rpn_score_threshold)

    def box_head_outputs(self, raw, boxes, training=False):
        """Box head on RoIs (B, R, 4) -> class logits (B, R, K), per-class deltas (B, R, K, 4); K = head_classes."""
        boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
        pooled = self.roi_pooler([raw[key] for key in self.roi_keys], boxes)
        batch, rois = tf.shape(boxes)[0], tf.shape(boxes)[1]
        flat = tf.reshape(pooled, tf.concat([[-1], tf.shape(pooled)[2:]], axis=0))
        out = self.box_head(flat, training=training)
        cls = tf.reshape(tf.cast(out["cls"], tf.float32), [batch, rois, self.head_classes])
        box = tf.reshape(tf.cast(out["box"], tf.float32), [batch, rois, self.head_classes, 4])
        return cls, box

    def rois(self, raw, frame, training):
        """The RoIs of a batch: external proposals (Fast R-CNN mode) or the RPN's, with validity."""
        if "proposals" in raw:
            return raw["proposals"], raw["proposal_valid"]
        proposals = self.propose(raw, frame, training=training)
        return proposals["boxes"], proposals["valid"]

    def label_columns(self) -> list[int]:
        """The head outputs of kdet's labels 0..C-1 (background is output 0)."""
        ids = self.config.head_output_ids
        return list(ids) if ids is not None else list(range(1, self.num_classes + 1))

    def postprocess(self, raw, frame):
        cfg = self.config
        rois, valid = self.rois(raw, frame, training=False)
        cls, deltas = self.box_head_outputs(raw, rois)
        columns = self.label_columns()
        scores = tf.gather(tf.nn.softmax(cls, axis=-1), columns, axis=-1) * tf.cast(valid, tf.float32)[..., None]
        boxes = decode_deltas(tf.gather(deltas, columns, axis=2), rois[:, :, None, :], ROI_BOX_VARIANCES)
        boxes = clip_to_valid(boxes, frame)
        wh = boxes[..., 2:] - boxes[..., :2]
        scores = tf.where(tf.reduce_all(wh >= cfg.min_box_size, axis=-1), scores, 0.0)
        return combined_nms(boxes, scores, cfg.max_detections, cfg.max_detections, cfg.nms_iou_threshold,
                            cfg.score_threshold, soft_nms_sigma=cfg.soft_nms_sigma,
                            class_agnostic=cfg.class_agnostic)

    # ----------------------------------------------------------- training
    def head_targets(self, labels):
        """kdet labels (-1 background) -> the box head's output index (0 background)."""
        ids = self.config.head_output_ids
        if ids is None:
            return tf.where(labels >= 0, labels + 1, 0)
        return tf.where(labels >= 0, tf.gather(tf.constant(ids, tf.int32), tf.maximum(labels, 0)), 0)

    def compute_losses(self, y, raw, frame):
        return self.losses_and_sample(y, raw, frame)[0]

    def losses_and_sample(self, y, raw, frame) -> tuple[dict, dict]:
        """(the four losses, the RoI sample of ``RoITargetSampler`` they were computed on).

        Mask R-CNN adds its mask loss on the same sampled RoIs.
        """
        gt_boxes, gt_labels = y["boxes"], y["labels"]
        if "proposals" in raw:
            rpn_cls = rpn_box = tf.constant(0.0)
        else:
            rpn_cls, rpn_box = self._rpn_losses(raw, frame, gt_boxes, gt_labels)
        rois, valid = self.rois(raw, frame, training=True)
        sample = self.roi_sampler(tf.stop_gradient(rois), valid, gt_boxes, gt_labels)
        cls, deltas = self.box_head_outputs(raw, sample["boxes"], training=True)
        weight = tf.cast(sample["valid"], tf.float32)
        count = tf.maximum(tf.reduce_sum(weight), 1.0)
        target = self.head_targets(sample["labels"])
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=cls)
        roi_cls = tf.reduce_sum(ce * weight) / count
        class_deltas = tf.gather(deltas, target, batch_dims=2)  # (B, S, 4): the GT class's deltas
        box_values = self._box_values(sample["box_targets"], class_deltas)
        roi_box = tf.reduce_sum(box_values * tf.cast(sample["positive"], tf.float32)) / count
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "roi_cls": roi_cls, "roi_box": roi_box}, sample

    def _rpn_losses(self, raw, frame, gt_boxes, gt_labels):
        anchors, _ = self.canvas_anchors(frame["canvas"])
        sample = self.rpn_sampler(anchors, gt_boxes, gt_labels)
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

    def training_recipe(self) -> TrainingRecipe:
        return SCRATCH_RECIPE if self.config.is_tiny() else FASTER_RCNN_RECIPE
