"""FCOS's head: a classification tower and a regression tower shared across pyramid levels.

Tian et al. 2019 ("FCOS: Fully Convolutional One-Stage Object Detection"),
figure 2, in torchvision's layout (``torchvision/models/detection/fcos.py``,
``FCOSClassificationHead`` / ``FCOSRegressionHead``), so its checkpoints port
layer by layer:

* each tower is ``depth`` x (conv3x3 -> GroupNorm(32) -> ReLU), the convs *and*
  the GroupNorms shared by every level (one module applied to each level);
* the classification tower ends in ``cls_logits`` (one logit per class,
  sigmoid, bias at the focal-loss prior);
* the regression tower ends in two predictors: ``bbox_reg`` (4 distances
  left, top, right, bottom in units of the level's stride, through a ReLU:
  the official FCOS code's ``norm_reg_targets`` variant, which torchvision
  follows, instead of the paper's ``exp(s_i x)``) and ``bbox_ctrness`` (the
  centre-ness logit, on the regression tower: the official code's
  ``centerness_on_reg``, Tian et al. 2020, "FCOS: A Simple and Strong
  Anchor-free Object Detector", section 3.3).
"""

from __future__ import annotations

from typing import Sequence

import keras

from kdet.heads.dense import prior_bias

# Focal-loss prior of the class logits' bias (Lin et al. 2017, section 4.1; torchvision FCOS).
PRIOR_PROBABILITY = 0.01
# Normal init of every head conv (torchvision FCOS: std 0.01, zero bias).
KERNEL_STD = 0.01
# PyTorch's nn.GroupNorm epsilon (Keras' default is 1e-3): needed to reproduce torchvision's outputs.
GROUP_NORM_EPSILON = 1e-5
HEAD_NORMS = ("group", None)


def _tower(name: str, depth: int, width: int, norm: str | None, groups: int) -> list:
    """The shared layers of one tower: [(conv, norm or None), ...]."""
    init = keras.initializers.RandomNormal(stddev=KERNEL_STD)
    layers = []
    for i in range(depth):
        conv = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=init, name=f"{name}_conv{i}")
        gn = (keras.layers.GroupNormalization(groups, epsilon=GROUP_NORM_EPSILON, name=f"{name}_norm{i}")
              if norm == "group" else None)
        layers.append((conv, gn))
    return layers


def _apply_tower(x, tower: list, name: str, level: int):
    for i, (conv, gn) in enumerate(tower):
        x = conv(x)
        if gn is not None:
            x = gn(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}_l{level}")(x)
    return x


def fcos_head(features: Sequence, num_classes: int, depth: int = 4, width: int = 256, norm: str | None = "group",
              groups: int = 32) -> dict:
    """Applies FCOS's shared towers to every pyramid level and flattens per location.

    Args:
        features: list of (B, h_l, w_l, width) pyramid maps, finest level first.
        num_classes: class logits per location (the head's outputs, e.g.
            torchvision's 91 COCO ids).
        depth: convs per tower (4 in the paper and torchvision).
        width: channels of the towers (= the FPN width).
        norm: "group" (GroupNorm after each tower conv: FCOS v2 and
            torchvision) or None (the original paper's towers).
        groups: GroupNorm groups (32).

    Returns:
        ``{"cls": (B, N, num_classes) logits, "box": (B, N, 4) ltrb distances
        in strides (>= 0), "centerness": (B, N, 1) logits}``, N = sum of
        h_l * w_l, in (level, row, column) order like ``AnchorGenerator``.
        Layer names: ``cls_conv{i}``, ``cls_norm{i}``, ``cls_logits``,
        ``box_conv{i}``, ``box_norm{i}``, ``bbox_reg``, ``bbox_ctrness``.

    Example:
        >>> p3 = keras.Input((16, 16, 64)); p4 = keras.Input((8, 8, 64))
        >>> out = fcos_head([p3, p4], num_classes=3, depth=1, width=64, groups=16)
        >>> tuple(out["cls"].shape), tuple(out["box"].shape)
        ((None, 320, 3), (None, 320, 4))
    """
    if norm not in HEAD_NORMS:
        raise ValueError(f"norm must be one of {HEAD_NORMS}; received {norm!r}.")
    if norm == "group" and width % groups:
        raise ValueError(f"GroupNorm needs the head width ({width}) divisible by its groups ({groups}).")
    init = keras.initializers.RandomNormal(stddev=KERNEL_STD)
    cls_tower = _tower("cls", depth, width, norm, groups)
    box_tower = _tower("box", depth, width, norm, groups)
    cls_logits = keras.layers.Conv2D(num_classes, 3, padding="same", kernel_initializer=init,
                                     bias_initializer=keras.initializers.Constant(prior_bias(PRIOR_PROBABILITY)),
                                     name="cls_logits")
    bbox_reg = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=init, name="bbox_reg")
    bbox_ctrness = keras.layers.Conv2D(1, 3, padding="same", kernel_initializer=init, name="bbox_ctrness")
    outputs = {"cls": [], "box": [], "centerness": []}
    for level, x in enumerate(features):
        cls = cls_logits(_apply_tower(x, cls_tower, "cls", level))
        box_features = _apply_tower(x, box_tower, "box", level)
        box = keras.layers.ReLU(name=f"bbox_reg_relu_l{level}")(bbox_reg(box_features))
        ctr = bbox_ctrness(box_features)
        for key, value, size in (("cls", cls, num_classes), ("box", box, 4), ("centerness", ctr, 1)):
            outputs[key].append(keras.layers.Reshape((-1, size), name=f"{key}_flat_l{level}")(value))
    if len(features) == 1:
        return {key: values[0] for key, values in outputs.items()}
    return {key: keras.layers.Concatenate(axis=1, name=f"{key}_concat")(values) for key, values in outputs.items()}
