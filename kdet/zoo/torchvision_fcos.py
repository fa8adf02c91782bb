"""torchvision ``fcos_resnet50_fpn`` ``state_dict`` -> kdet ``FCOS``, and the zoo entry's builder.

The backbone, FPN and layout conventions are those of :mod:`kdet.zoo.torchvision`
(kernels (out, in, kh, kw) -> (kh, kw, in, out), ``FrozenBatchNorm2d`` ->
``BatchNormalization``, P6 / P7 from the FPN's P5 with symmetric padding). The
head maps one to one: torchvision's ``head.{classification,regression}_head.conv``
is ``Sequential(conv, GroupNorm, ReLU) x 4``, so tower conv ``i`` is index ``3 i``
and its GroupNorm ``3 i + 1``.

Labels: torchvision's COCO head has 91 sigmoid outputs indexed by category id
(0 = background, 10 ids unused). The zoo entry keeps all 91 outputs and reads
kdet's 80 labels through ``head_output_ids = COCO_CATEGORY_IDS`` (sigmoid
scores of one class do not depend on the others, so nothing is renormalised).
``torchvision_fcos(91)`` keeps torchvision's own label space (label = category
id), which reproduces upstream's detections even where they carry an unused id
(random-weight parity fixtures).

Example:
    >>> from kdet.zoo.pth import load_state_dict
    >>> model = convert_fcos(torchvision_fcos(), load_state_dict("fcos_resnet50_fpn_coco-99b0c9b7.pth"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kdet.zoo.coco_classes import COCO_CATEGORY_IDS, COCO_CLASSES
from kdet.zoo.torchvision import TORCHVISION_COCO_OUTPUTS, _from_pth, apply_key_map, fpn_key_map, resnet_key_map

# torchvision fcos_resnet50_fpn (FCOS.__init__ defaults and GeneralizedRCNNTransform): the settings its
# COCO checkpoint was evaluated with (39.2 box AP).
TORCHVISION_FCOS = dict(resize="min_max", min_size=800, max_size=1333, size_divisible=32, score_threshold=0.2,
                        nms_iou_threshold=0.6, max_detections=100, pre_nms_top_k=1000, center_sampling_radius=1.5,
                        location_offset=0.0, fpn_width=256, head_depth=4, norm_groups=32, head_norm="group",
                        extra_from="output", min_level=3, max_level=7)
# torchvision's names for its 91 outputs (``_COCO_CATEGORIES``): background, the 80 classes, "N/A" slots.
BACKGROUND_NAME, UNUSED_NAME = "__background__", "N/A"


def torchvision_coco_names() -> tuple[str, ...]:
    """Names of torchvision's 91 COCO outputs (category id order; kdet's spelling of the 80 classes)."""
    names = [UNUSED_NAME] * TORCHVISION_COCO_OUTPUTS
    names[0] = BACKGROUND_NAME
    for category, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES):
        names[category] = name
    return tuple(names)


def fcos_key_map(head_depth: int = 4) -> dict[str, tuple[str, str]]:
    """kdet ``FCOS`` (resnet50, P3-P7) layer -> torchvision ``fcos_resnet50_fpn`` key."""
    mapping = {**resnet_key_map(), **fpn_key_map((3, 4, 5), extra=(6, 7))}
    for tower, torch_head in (("cls", "classification_head"), ("box", "regression_head")):
        for i in range(head_depth):
            mapping[f"{tower}_conv{i}"] = ("conv", f"head.{torch_head}.conv.{3 * i}")
            mapping[f"{tower}_norm{i}"] = ("norm", f"head.{torch_head}.conv.{3 * i + 1}")
    mapping["cls_logits"] = ("conv", "head.classification_head.cls_logits")
    mapping["bbox_reg"] = ("conv", "head.regression_head.bbox_reg")
    mapping["bbox_ctrness"] = ("conv", "head.regression_head.bbox_ctrness")
    return mapping


def convert_fcos(model, state_dict: Mapping[str, np.ndarray]):
    """Loads torchvision ``fcos_resnet50_fpn`` weights into a kdet ``FCOS``.

    Args:
        model: ``FCOS`` with ``backbone="resnet50"``, FPN width 256, head
            depth 4, GroupNorm towers and torchvision's 91 class outputs: build
            it with :func:`torchvision_fcos` (80 COCO labels through
            ``head_output_ids``, or 91).
        state_dict: ``{key: np.ndarray}`` (e.g. :func:`kdet.zoo.pth.load_state_dict`).

    Returns:
        ``model``, with its weights set.

    Raises:
        ValueError: the model's class head does not have 91 outputs, or the
            ``state_dict`` and the model differ (missing / unused keys, shapes).
    """
    if model.head_classes != TORCHVISION_COCO_OUTPUTS:
        raise ValueError(f"A torchvision FCOS checkpoint has {TORCHVISION_COCO_OUTPUTS} class outputs; the model's "
                         f"head has {model.head_classes} (num_classes={model.num_classes}). Build it with "
                         "torchvision_fcos(80) (the COCO labels, through head_output_ids) or torchvision_fcos(91).")
    apply_key_map(model, state_dict, fcos_key_map(model.config.head_depth))
    return model


def torchvision_fcos(num_classes: int = 80, **kwargs):
    """A kdet ``FCOS`` with torchvision's ``fcos_resnet50_fpn`` conventions (``TORCHVISION_FCOS``).

    Args:
        num_classes: 80 (the COCO labels, read from torchvision's 91 outputs
            through ``head_output_ids``), 91 (torchvision's own label space:
            label = COCO category id, 0 = background) or any other count (a
            fresh class head, for fine-tuning).
        **kwargs: ``FCOS`` settings replacing the defaults.
    """
    from kdet.models.fcos import FCOS

    options = dict(TORCHVISION_FCOS)
    if num_classes == len(COCO_CATEGORY_IDS):
        options.update(head_output_ids=COCO_CATEGORY_IDS, class_names=COCO_CLASSES)
    elif num_classes == TORCHVISION_COCO_OUTPUTS:
        options.update(class_names=torchvision_coco_names())
    options.update(kwargs)
    return FCOS(num_classes, backbone="resnet50", **options)


load_fcos_pth = _from_pth(convert_fcos)
