"""SSD's prediction head: one 3x3 conv per source level for classes and one for boxes."""

from __future__ import annotations

from typing import Sequence

import keras

from kdet.layers.batch_normalization import BatchNormalization


# SSDLite's batch norms (torchvision ssdlite320_mobilenet_v3_large: BatchNorm2d(eps=0.001, momentum=0.03)).
SSDLITE_BN = {"epsilon": 1e-3, "momentum": 0.97}


def _predictor(x, outputs: int, block: str, name: str):
    """The predicting layer of one level: a 3x3 conv, a separable conv, or depthwise + BN + ReLU6 then 1x1."""
    if block == "conv":
        return keras.layers.Conv2D(outputs, 3, padding="same", name=name)(x)
    if block == "separable":
        return keras.layers.SeparableConv2D(outputs, 3, padding="same", name=name)(x)
    # torchvision's _prediction_block: Conv2dNormActivation(groups=C, ReLU6), then a biased 1x1 conv.
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_depthwise")(x)
    x = BatchNormalization(name=f"{name}_depthwise_bn", **SSDLITE_BN)(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_depthwise_relu6")(x)
    return keras.layers.Conv2D(outputs, 1, name=name)(x)


def ssd_head(features: Sequence, num_anchors: Sequence[int], num_outputs: int, separable: bool = False,
             name: str = "ssd_cls", depth: int = 0, width: int = 64, block: str | None = None):
    """Per level a 3x3 conv to ``num_anchors[l] * num_outputs`` channels, flattened per anchor.

    The paper's head is that single conv (``depth=0``): VGG's sources are
    already deep. ``depth`` > 0 puts that many 3x3 conv + ReLU layers of
    ``width`` channels (per level, not shared) before it, for shallow
    backbones whose sources are a few layers from the pixels (kdet's tiny
    preset).

    Channels are laid out (anchor, output) as in Caffe's and torchvision's SSD,
    so flattening (row, column, anchor) matches ``AnchorGenerator`` and
    torchvision's ``SSDHead`` order.

    Args:
        features: source maps (B, h_l, w_l, C_l), finest first.
        num_anchors: default boxes per location of each level (4 or 6).
        num_outputs: classes + 1 (background first) or 4.
        separable: a depthwise-separable 3x3 conv (``block="separable"``).
        name: prefix; level l's conv is ``{name}_l{l}``, its hidden layers
            ``{name}_l{l}_hidden{d}``.
        depth: hidden 3x3 conv + ReLU layers before the predicting conv.
        width: channels of the hidden layers.
        block: the predicting layer: "conv" (3x3, the paper), "separable"
            (Keras ``SeparableConv2D``) or "depthwise_bn" (SSDLite as
            torchvision: depthwise 3x3 ``{name}_l{l}_depthwise`` + BN + ReLU6,
            then the 1x1 conv ``{name}_l{l}``); None: from ``separable``.

    Returns:
        (B, sum_l h_l * w_l * num_anchors[l], num_outputs).

    Example:
        >>> out = ssd_head([keras.Input((4, 4, 8)), keras.Input((2, 2, 8))], [4, 6], 5)
        >>> tuple(out.shape)
        (None, 88, 5)
    """
    if len(features) != len(num_anchors):
        raise ValueError(f"ssd_head got {len(features)} feature maps but {len(num_anchors)} anchor counts.")
    if depth < 0 or width < 1:
        raise ValueError(f"ssd_head needs depth >= 0 and width >= 1; received depth={depth}, width={width}.")
    block = block or ("separable" if separable else "conv")
    if block not in ("conv", "separable", "depthwise_bn"):
        raise ValueError(f"block must be 'conv', 'separable' or 'depthwise_bn'; received {block!r}.")
    conv_cls = keras.layers.SeparableConv2D if block == "separable" else keras.layers.Conv2D
    outputs = []
    for level, (x, anchors) in enumerate(zip(features, num_anchors)):
        for d in range(depth):
            x = conv_cls(width, 3, padding="same", activation="relu", name=f"{name}_l{level}_hidden{d}")(x)
        x = _predictor(x, anchors * num_outputs, block, f"{name}_l{level}")
        outputs.append(keras.layers.Reshape((-1, num_outputs), name=f"{name}_flat_l{level}")(x))
    return keras.layers.Concatenate(axis=1, name=f"{name}_concat")(outputs)
