"""YOLOv3 prediction head: per level a 3x3 conv then a linear 1x1 conv to anchors x (4 + 1 + C)."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from kdet.backbones.darknet import darknet_conv
from kdet.heads.dense import prior_bias

# Initial objectness / class probability of the prediction biases (as RetinaNet's
# prior, Lin et al. 2017): keeps the summed no-object loss small at the start.
YOLO_PRIOR_PROBABILITY = 0.01


def yolo_head_conv_names(levels: Sequence[int], name: str = "yolo_head") -> list[list[str]]:
    """Per level, the head conv name prefixes in Darknet cfg order (3x3 conv, prediction)."""
    return [[f"{name}_p{level}_conv", f"{name}_p{level}_pred"] for level in levels]


def yolo_head(features: dict, levels: Sequence[int], widths: Sequence[int], num_anchors: Sequence[int],
              num_classes: int, bn_momentum: float = 0.99, prior_probability: float = YOLO_PRIOR_PROBABILITY,
              name: str = "yolo_head"):
    """Applies the YOLOv3 head to each level and flattens the outputs per anchor.

    Darknet's prediction conv lays channels out as (anchor, [tx, ty, tw, th,
    objectness, class_0 .. class_C-1]), which the flattening keeps.

    Args:
        features: neck outputs ``{"P5": ..., ...}``.
        levels: the levels to predict on; outputs are concatenated finest
            first (the order of ``AnchorGenerator``).
        widths: channels of each level's 3x3 conv (same order as ``levels``).
        num_anchors: anchors per location of each level.
        num_classes: object classes.
        bn_momentum: batch-norm momentum.
        prior_probability: initial sigmoid of the objectness and class logits.
        name: layer-name prefix.

    Returns:
        (B, A, 5 + C): per anchor raw (tx, ty, tw, th), the objectness logit and
        C class logits, in (level finest first, row, column, anchor) order
        (split it with :func:`split_yolo_outputs`).
    """
    per_level = {}
    for level, width, anchors in zip(levels, widths, num_anchors):
        x = darknet_conv(features[f"P{level}"], width, 3, name=f"{name}_p{level}_conv", bn_momentum=bn_momentum)
        pred_layer = keras.layers.Conv2D(anchors * (5 + num_classes), 1, name=f"{name}_p{level}_pred_conv")
        x = pred_layer(x)
        bias = np.zeros((anchors, 5 + num_classes), np.float32)
        bias[:, 4:] = prior_bias(prior_probability)
        pred_layer.bias.assign(bias.reshape(-1))
        per_level[level] = keras.layers.Reshape((-1, 5 + num_classes), name=f"{name}_p{level}_flat")(x)
    ordered = [per_level[level] for level in sorted(per_level)]
    if len(ordered) == 1:
        return ordered[0]
    return keras.layers.Concatenate(axis=1, name=f"{name}_concat")(ordered)


def split_yolo_outputs(flat) -> dict:
    """(B, A, 5 + C) head output -> ``{"box": (B, A, 4), "obj": (B, A, 1), "cls": (B, A, C)}``."""
    return {"box": flat[..., :4], "obj": flat[..., 4:5], "cls": flat[..., 5:]}
