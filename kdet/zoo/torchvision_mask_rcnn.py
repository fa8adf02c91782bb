"""torchvision ``maskrcnn_resnet50_fpn`` ``state_dict`` -> kdet ``MaskRCNN``, and the zoo entry's builder.

Faster R-CNN's conversion (:mod:`kdet.zoo.torchvision`) plus the mask head and
predictor. With 80 classes the heads keep torchvision's 91 outputs and read
kdet's labels through ``head_output_ids`` (the COCO ids), so the softmax and
the per-class masks are torchvision's.

Example:
    >>> from kdet.zoo.pth import load_state_dict                                     # doctest: +SKIP
    >>> model = convert_mask_rcnn(torchvision_mask_rcnn(), load_state_dict(          # doctest: +SKIP
    ...     "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"))
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kdet.zoo.coco_classes import COCO_CATEGORY_IDS
from kdet.zoo.torchvision import (_from_pth, apply_key_map, chw_to_hwc_rows, faster_rcnn_key_map, head_channels,
                                  select_blocks)


def mask_rcnn_key_map(mask_head_depth: int = 4) -> dict[str, tuple[str, str]]:
    """kdet ``MaskRCNN`` (resnet50_fpn) layer -> torchvision ``maskrcnn_resnet50_fpn`` key.

    Faster R-CNN's map plus the mask head (``Conv2dNormActivation`` blocks
    without norm: ``mask_head.<i>.0``) and predictor. The transposed conv's
    PyTorch kernel (in, out, kh, kw) takes the same permutation as a conv's
    to Keras' (kh, kw, out, in); a 2x2 stride-2 transposed conv writes input
    pixel (i, j) times kernel tap (a, b) to output (2i + a, 2j + b) in both.
    """
    mapping = faster_rcnn_key_map()
    for index in range(mask_head_depth):
        mapping[f"roi_heads_mask_head_{index}"] = ("conv", f"roi_heads.mask_head.{index}.0")
    mapping["roi_heads_mask_predictor_conv5_mask"] = ("conv", "roi_heads.mask_predictor.conv5_mask")
    mapping["roi_heads_mask_predictor_mask_fcn_logits"] = ("conv", "roi_heads.mask_predictor.mask_fcn_logits")
    return mapping


def convert_mask_rcnn(model, state_dict: Mapping[str, np.ndarray]):
    """Loads torchvision ``maskrcnn_resnet50_fpn`` (v1) weights into a kdet ``MaskRCNN``.

    Args:
        model: ``MaskRCNN(80, head_output_ids=COCO ids)`` (all 91 outputs kept,
            softmax over them as torchvision), ``MaskRCNN(90)`` (torchvision's
            id space) or ``MaskRCNN(80)`` (the 80 used outputs only), with
            ``backbone="resnet50_fpn"`` and the full heads; build it with
            :func:`torchvision_mask_rcnn`.
        state_dict: ``{key: np.ndarray}``.

    Returns:
        ``model``, with its weights set.
    """
    keep = head_channels(model, background=True)
    size = model.config.roi_output_size
    transforms = {
        "roi_heads_box_head_fc6": lambda arrays: chw_to_hwc_rows(arrays, model.config.fpn_width, size),
        "roi_heads_box_predictor_cls_score": lambda arrays: select_blocks(arrays, 1, keep),
        "roi_heads_box_predictor_bbox_pred": lambda arrays: select_blocks(arrays, 4, keep),
        "roi_heads_mask_predictor_mask_fcn_logits": lambda arrays: select_blocks(arrays, 1, keep),
    }
    apply_key_map(model, state_dict, mask_rcnn_key_map(len(model.config.mask_head_widths)), transforms)
    return model


def torchvision_mask_rcnn(num_classes: int = 80, **options):
    """A kdet ``MaskRCNN`` with torchvision's ``maskrcnn_resnet50_fpn`` conventions.

    torchvision's pipeline and inference settings: ``resize="min_max"``
    (shorter side 800 unless the longer passes 1333, padded to a multiple of
    32), the Faster R-CNN defaults (RPN 1000 / 1000 at test, NMS 0.7; score
    0.05, NMS 0.5, 100 detections), mask RoIAlign 14x14 sampling ratio 2,
    RoIAlign's border clamping as the reference outputs show
    (``roi_clamp_outside=True``). With 80 classes (COCO labels) the heads keep
    all 91 outputs and the softmax runs over all of them
    (``head_output_ids`` = the COCO category ids), so scores are torchvision's.
    """
    from kdet.models.mask_rcnn import MaskRCNN
    from kdet.zoo.coco_classes import COCO_CLASSES

    if num_classes == 80:
        options.setdefault("class_names", list(COCO_CLASSES))
        options.setdefault("head_output_ids", tuple(COCO_CATEGORY_IDS))
    options.setdefault("roi_clamp_outside", True)
    options.setdefault("resize", "min_max")
    return MaskRCNN(num_classes, backbone="resnet50_fpn", **options)


load_mask_rcnn_pth = _from_pth(convert_mask_rcnn)
