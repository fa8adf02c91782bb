"""torchvision's v2 and mobile detection checkpoints -> kdet, as options of the existing builders.

Four checkpoints, four builders of existing architectures with torchvision's
settings, four converters (key maps onto ``kdet.zoo.torchvision.apply_key_map``,
whose layout conventions they share):

* ``retinanet_resnet50_fpn_v2`` (Zhang et al. 2020 "ATSS" recipe): RetinaNet
  with P6 from C5 (``extra_from="input"``), GroupNorm subnets without conv
  biases (``head_norm="group"``) and a GIoU box loss (``box_loss_type="giou"``).
* ``fasterrcnn_resnet50_fpn_v2`` (Li et al. 2021, "Benchmarking Detection
  Transfer Learning with Vision Transformers" recipe): Faster R-CNN with a
  BatchNorm FPN (``fpn_norm="batch"``), a two-conv RPN head
  (``rpn_head_depth=2``) and the 4conv1fc box head with BatchNorm
  (``box_head="4conv1fc"``).
* ``fasterrcnn_mobilenet_v3_large_fpn``: Faster R-CNN on MobileNetV3-Large,
  its FPN on the last two stages (both stride 32) plus max-pool, 5 sizes x 3
  ratios of anchors on each of the 3 levels, RPN score threshold 0.05.
* ``ssdlite320_mobilenet_v3_large``: SSD with SSDLite heads (depthwise 3x3 +
  BN + ReLU6, then 1x1), MobileNetV3-Large with the reduced tail, fixed
  320 x 320 stretch, pixels to [-1, 1].

Labels follow the v1 entries: sigmoid heads (RetinaNet) convert to kdet's 80
COCO labels by dropping the unused channels; softmax heads keep all 91
outputs and read kdet's labels through ``head_output_ids`` (the COCO ids),
so their scores are torchvision's.

Example:
    >>> from kdet.zoo.pth import load_state_dict                                     # doctest: +SKIP
    >>> model = convert_retinanet_v2(torchvision_retinanet_v2(), load_state_dict(    # doctest: +SKIP
    ...     "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth"))
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kdet.zoo.coco_classes import COCO_CATEGORY_IDS
from kdet.zoo.torchvision import (TORCHVISION_COCO_OUTPUTS, _from_pth, apply_key_map, chw_to_hwc_rows,
                                  class_channels, coco_options, fpn_key_map, head_channels, resnet_key_map,
                                  select_anchor_channels, select_blocks)

# torchvision RetinaNet / GeneralizedRCNNTransform inference settings (retinanet.py, RetinaNet.__init__).
RETINANET_INFERENCE = dict(score_threshold=0.05, pre_nms_top_k=1000, top_k_per_level=True, nms_iou_threshold=0.5,
                           max_detections=300, box_variances=(1.0, 1.0, 1.0, 1.0))
HEAD_DEPTH = 4  # RetinaNetHead: 4 Conv2dNormActivation per subnet


def _coco_options(num_classes: int, options: dict, softmax: bool) -> dict:
    """COCO class names (80 labels) and, for softmax heads, the 91-output head read at the COCO ids."""
    from kdet.zoo.coco_classes import COCO_CLASSES

    if num_classes == 80:
        options.setdefault("class_names", list(COCO_CLASSES))
        if softmax:
            options.setdefault("head_output_ids", list(COCO_CATEGORY_IDS))
    return options


# --------------------------------------------------------------------------- RetinaNet v2
def torchvision_retinanet_v2(num_classes: int = 80, **options):
    """A kdet ``RetinaNet`` with torchvision's ``retinanet_resnet50_fpn_v2`` architecture and pipeline.

    P6 from C5, GroupNorm heads, GIoU as the default box loss, torchvision's
    anchors (:func:`kdet.models.retinanet.torchvision_anchor_generator`),
    resize "min_max" (800 / 1333, padded to 32), ImageNet normalisation;
    inference as the v1 entry (:func:`kdet.zoo.torchvision.torchvision_retinanet`): score 0.05, 1000
    (anchor, class) pairs per level over all 91 sigmoid outputs (80 classes keep them, read through
    ``head_output_ids``), NMS 0.5, 300 detections.
    """
    from kdet.models.retinanet import RetinaNet, torchvision_anchor_generator

    options = {**RETINANET_INFERENCE, "top_k_rule": "pair", "resize": "min_max", "extra_from": "input",
               "head_norm": "group", "box_loss_type": "giou", **options}
    options.setdefault("anchor_generator", torchvision_anchor_generator())
    return RetinaNet(num_classes, backbone="resnet50", **coco_options(num_classes, options))


def retinanet_v2_key_map(head_depth: int = HEAD_DEPTH) -> dict[str, tuple[str, str]]:
    """kdet ``RetinaNet`` (v2 options) layer -> torchvision ``retinanet_resnet50_fpn_v2`` key."""
    mapping = {**resnet_key_map(), **fpn_key_map((3, 4, 5), extra=(6, 7))}
    for tower, torch_head in (("cls", "classification_head"), ("box", "regression_head")):
        for i in range(head_depth):
            mapping[f"{tower}_conv{i}"] = ("conv_nobias", f"head.{torch_head}.conv.{i}.0")
            mapping[f"{tower}_gn{i}"] = ("norm", f"head.{torch_head}.conv.{i}.1")
    mapping["cls_pred"] = ("conv", "head.classification_head.cls_logits")
    mapping["box_pred"] = ("conv", "head.regression_head.bbox_reg")
    return mapping


def convert_retinanet_v2(model, state_dict: Mapping[str, np.ndarray]):
    """Loads ``retinanet_resnet50_fpn_v2`` weights into a kdet ``RetinaNet`` built by :func:`torchvision_retinanet_v2`.

    Args:
        model: the RetinaNet (80 COCO labels on the 91 outputs through
            ``head_output_ids``, 91 classes, or 80 outputs: the 11 unused
            sigmoid outputs dropped).
        state_dict: ``{key: np.ndarray}`` (e.g. :func:`kdet.zoo.pth.load_state_dict`).

    Returns:
        ``model``, with its weights set.
    """
    keep = head_channels(model, background=False)
    transforms = {"cls_pred": lambda arrays: select_anchor_channels(arrays, TORCHVISION_COCO_OUTPUTS, keep)}
    apply_key_map(model, state_dict, retinanet_v2_key_map(model.config.head_depth), transforms)
    return model


load_retinanet_v2_pth = _from_pth(convert_retinanet_v2)


# --------------------------------------------------------------------------- MobileNetV3-Large
def _depthwise(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """A grouped conv (C, 1, k, k), read as (k, k, 1, C), -> Keras ``DepthwiseConv2D`` (k, k, C, 1)."""
    return [np.transpose(arrays[0], (0, 1, 3, 2)), *arrays[1:]]


def mobilenet_v3_key_map(block_key, stem_key: str, last_key: str) -> tuple[dict, dict]:
    """kdet ``mobilenet_v3_large`` layers -> torchvision ``MobileNetV3.features`` keys, + depthwise transforms.

    Args:
        block_key: ``f(block, j)`` -> the key of sub-layer ``j`` (expand,
            depthwise, SE, project in that order) of bottleneck ``block``
            (0-based: torchvision's ``features[block + 1]``).
        stem_key, last_key: keys of ``features[0]`` and ``features[16]``.

    Returns:
        (key map, transforms) for :func:`kdet.zoo.torchvision.apply_key_map`.
    """
    from kdet.backbones.mobilenet_v3 import LARGE_BLOCKS

    mapping = {"conv": ("conv_nobias", f"{stem_key}.0"), "conv_bn": ("bn", f"{stem_key}.1"),
               "conv_1": ("conv_nobias", f"{last_key}.0"), "conv_1_bn": ("bn", f"{last_key}.1")}
    transforms = {}
    for block, (_, _, _, use_se, _, _) in enumerate(LARGE_BLOCKS):
        prefix = f"expanded_conv_{block}_" if block else "expanded_conv_"
        parts = (["expand"] if block else []) + ["depthwise"] + (["se"] if use_se else []) + ["project"]
        for j, part in enumerate(parts):
            key = block_key(block, j)
            if part == "se":  # SqueezeExcitation's fc1 / fc2 are biased 1x1 convs
                mapping[f"{prefix}squeeze_excite_conv"] = ("conv", f"{key}.fc1")
                mapping[f"{prefix}squeeze_excite_conv_1"] = ("conv", f"{key}.fc2")
                continue
            mapping[f"{prefix}{part}"] = ("conv_nobias", f"{key}.0")
            mapping[f"{prefix}{part}_bn"] = ("bn", f"{key}.1")
        transforms[f"{prefix}depthwise"] = _depthwise
    return mapping, transforms


# --------------------------------------------------------------------------- Faster R-CNN v2 / MobileNetV3
def torchvision_faster_rcnn_v2(num_classes: int = 80, **options):
    """A kdet ``FasterRCNN`` with torchvision's ``fasterrcnn_resnet50_fpn_v2`` architecture and pipeline.

    BatchNorm FPN, two-conv RPN head, 4conv1fc box head with BatchNorm; the
    rest as v1 (anchors 32..512 on P2..P6, RPN 1000 / 1000 at test, RoIAlign
    7x7 sampling 2, score 0.05, NMS 0.5, 100 detections), resize "min_max",
    RoIAlign border clamping as the fixtures' torchvision (see
    :func:`kdet.zoo.torchvision.torchvision_faster_rcnn`). With 80 classes the
    box head keeps torchvision's 91 outputs (``head_output_ids``).
    """
    from kdet.models.faster_rcnn import FasterRCNN

    options = {"resize": "min_max", "fpn_norm": "batch", "rpn_head_depth": 2, "box_head": "4conv1fc",
               "roi_clamp_outside": True, **options}
    return FasterRCNN(num_classes, backbone="resnet50", **_coco_options(num_classes, options, softmax=True))


def torchvision_faster_rcnn_mobilenet(num_classes: int = 80, **options):
    """A kdet ``FasterRCNN`` with torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` architecture and pipeline.

    MobileNetV3-Large (BN eps 1e-5), FPN on its last two stages + max-pool,
    15 anchors per location on each of the 3 levels, RPN score threshold
    0.05; resize "min_max" (800 / 1333), ImageNet normalisation; as v1 otherwise.
    """
    from kdet.models.faster_rcnn import FasterRCNN

    options = {"resize": "min_max", "roi_clamp_outside": True, **options}
    return FasterRCNN(num_classes, backbone="mobilenet_v3_large", **_coco_options(num_classes, options, softmax=True))


def _box_predictor(model, mapping: dict, transforms: dict) -> None:
    """The box predictor's entries: all 91 outputs (``head_output_ids``) or kdet's labels' (v1 rule)."""
    mapping["roi_heads_box_predictor_cls_score"] = ("dense", "roi_heads.box_predictor.cls_score")
    mapping["roi_heads_box_predictor_bbox_pred"] = ("dense", "roi_heads.box_predictor.bbox_pred")
    if model.head_classes != TORCHVISION_COCO_OUTPUTS:
        keep = class_channels(model.num_classes, background=True)
        transforms["roi_heads_box_predictor_cls_score"] = lambda arrays: select_blocks(arrays, 1, keep)
        transforms["roi_heads_box_predictor_bbox_pred"] = lambda arrays: select_blocks(arrays, 4, keep)


def convert_faster_rcnn_v2(model, state_dict: Mapping[str, np.ndarray]):
    """Loads ``fasterrcnn_resnet50_fpn_v2`` weights into a ``FasterRCNN`` built by :func:`torchvision_faster_rcnn_v2`."""
    mapping = resnet_key_map()
    for index, level in enumerate((2, 3, 4, 5)):
        for kdet_name, torch_name in (("lateral", "inner_blocks"), ("output", "layer_blocks")):
            mapping[f"fpn_{kdet_name}_p{level}"] = ("conv_nobias", f"backbone.fpn.{torch_name}.{index}.0")
            mapping[f"fpn_{kdet_name}_p{level}_bn"] = ("bn", f"backbone.fpn.{torch_name}.{index}.1")
    for i in range(model.config.rpn_head_depth):
        mapping["rpn_head_conv" + (f"_{i}" if i else "")] = ("conv", f"rpn.head.conv.{i}.0")
    mapping["rpn_head_cls_logits"] = ("conv", "rpn.head.cls_logits")
    mapping["rpn_head_bbox_pred"] = ("conv", "rpn.head.bbox_pred")
    for i in range(4):  # FastRCNNConvFCHead: 4 x Conv2dNormActivation, Flatten (4), Linear (5)
        mapping[f"roi_heads_box_head_conv{i}"] = ("conv_nobias", f"roi_heads.box_head.{i}.0")
        mapping[f"roi_heads_box_head_conv{i}_bn"] = ("bn", f"roi_heads.box_head.{i}.1")
    mapping["roi_heads_box_head_fc6"] = ("dense", "roi_heads.box_head.5")
    size = model.config.roi_output_size
    transforms = {"roi_heads_box_head_fc6": lambda arrays: chw_to_hwc_rows(arrays, model.config.fpn_width, size)}
    _box_predictor(model, mapping, transforms)
    apply_key_map(model, state_dict, mapping, transforms)
    return model


def convert_faster_rcnn_mobilenet(model, state_dict: Mapping[str, np.ndarray]):
    """Loads ``fasterrcnn_mobilenet_v3_large_fpn`` weights into a ``FasterRCNN`` built by
    :func:`torchvision_faster_rcnn_mobilenet`."""
    body = "backbone.body"
    mapping, transforms = mobilenet_v3_key_map(lambda block, j: f"{body}.{block + 1}.block.{j}", f"{body}.0",
                                               f"{body}.16")
    for index in range(2):
        mapping[f"fpn_lateral_{index}"] = ("conv", f"backbone.fpn.inner_blocks.{index}.0")
        mapping[f"fpn_output_{index}"] = ("conv", f"backbone.fpn.layer_blocks.{index}.0")
    mapping["rpn_head_conv"] = ("conv", "rpn.head.conv.0.0")
    mapping["rpn_head_cls_logits"] = ("conv", "rpn.head.cls_logits")
    mapping["rpn_head_bbox_pred"] = ("conv", "rpn.head.bbox_pred")
    mapping["roi_heads_box_head_fc6"] = ("dense", "roi_heads.box_head.fc6")
    mapping["roi_heads_box_head_fc7"] = ("dense", "roi_heads.box_head.fc7")
    size = model.config.roi_output_size
    transforms["roi_heads_box_head_fc6"] = lambda arrays: chw_to_hwc_rows(arrays, model.config.fpn_width, size)
    _box_predictor(model, mapping, transforms)
    apply_key_map(model, state_dict, mapping, transforms)
    return model


load_faster_rcnn_v2_pth = _from_pth(convert_faster_rcnn_v2)
load_faster_rcnn_mobilenet_pth = _from_pth(convert_faster_rcnn_mobilenet)


# --------------------------------------------------------------------------- SSDLite
# torchvision ssdlite320_mobilenet_v3_large inference (ssdlite.py defaults, SSD.postprocess_detections):
# score 0.001, each class's 300 best default boxes, class-aware NMS 0.55, 300 detections.
SSDLITE_INFERENCE = dict(image_size=320, score_threshold=0.001, nms_iou_threshold=0.55, max_detections=300,
                         pre_nms_top_k=None, candidates_per_class=300, box_variances=(0.1, 0.1, 0.2, 0.2))
SSDLITE_LEVELS = 6
SSDLITE_EXTRAS = 4


def torchvision_ssdlite(num_classes: int = 80, **options):
    """A kdet ``SSD`` with torchvision's ``ssdlite320_mobilenet_v3_large`` architecture and pipeline.

    MobileNetV3-Large with the reduced tail, SSDLite extras and heads, default
    boxes of ``DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)``
    (clipped, spaced by 320 / feature size), images stretched to 320 x 320 and
    mapped to [-1, 1], box weights (10, 10, 5, 5); inference: score 0.001,
    each class's 300 best boxes, class-aware NMS 0.55, 300 detections. With 80
    classes the head keeps torchvision's 91 outputs (``head_output_ids``).
    """
    from kdet.models.ssd import SSD

    options = {**SSDLITE_INFERENCE, "resize": "stretch", **options}
    return SSD(num_classes, backbone="mobilenet_v3_large", **_coco_options(num_classes, options, softmax=True))


def _ssdlite_block(block: int, j: int) -> str:
    """torchvision's SSDLite splits MobileNetV3 inside block 12 (``features[13]``): the expansion ends
    ``features.0``, the depthwise / SE / project start ``features.1.0`` (Sequential slicing keeps indices)."""
    index = block + 1
    if index < 13:
        return f"backbone.features.0.{index}.block.{j}"
    if index == 13:
        return "backbone.features.0.13" if j == 0 else f"backbone.features.1.0.{j}"
    return f"backbone.features.1.{index - 13}.block.{j}"


def convert_ssdlite(model, state_dict: Mapping[str, np.ndarray]):
    """Loads ``ssdlite320_mobilenet_v3_large`` weights into an ``SSD`` built by :func:`torchvision_ssdlite`."""
    mapping, transforms = mobilenet_v3_key_map(_ssdlite_block, "backbone.features.0.0", "backbone.features.1.3")
    for k in range(SSDLITE_EXTRAS):  # _extra_block: 1x1, depthwise 3x3 stride 2, 1x1, each with BN
        for j, part in enumerate(("reduce", "depthwise", "conv")):
            mapping[f"extra{k + 1}_{part}"] = ("conv_nobias", f"backbone.extra.{k}.{j}.0")
            mapping[f"extra{k + 1}_{part}_bn"] = ("bn", f"backbone.extra.{k}.{j}.1")
        transforms[f"extra{k + 1}_depthwise"] = _depthwise
    keep = None
    if model.head_classes != TORCHVISION_COCO_OUTPUTS:
        keep = class_channels(model.num_classes, background=True)
    for level in range(SSDLITE_LEVELS):  # _prediction_block: depthwise 3x3 + BN + ReLU6, 1x1
        for tower, torch_head in (("cls", "classification_head"), ("box", "regression_head")):
            key = f"head.{torch_head}.module_list.{level}"
            mapping[f"ssd_{tower}_l{level}_depthwise"] = ("conv_nobias", f"{key}.0.0")
            mapping[f"ssd_{tower}_l{level}_depthwise_bn"] = ("bn", f"{key}.0.1")
            mapping[f"ssd_{tower}_l{level}"] = ("conv", f"{key}.1")
            transforms[f"ssd_{tower}_l{level}_depthwise"] = _depthwise
        if keep is not None:
            transforms[f"ssd_cls_l{level}"] = (
                lambda arrays: select_anchor_channels(arrays, TORCHVISION_COCO_OUTPUTS, keep))
    apply_key_map(model, state_dict, mapping, transforms)
    return model


load_ssdlite_pth = _from_pth(convert_ssdlite)
