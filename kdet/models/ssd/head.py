"""SSD's prediction head: one 3x3 conv per source level for classes and one for boxes."""

from __future__ import annotations

from typing import Sequence

import keras


def ssd_head(features: Sequence, num_anchors: Sequence[int], num_outputs: int, separable: bool = False,
             name: str = "ssd_cls"):
    """Per level a 3x3 conv to ``num_anchors[l] * num_outputs`` channels, flattened per anchor.

    Channels are laid out (anchor, output) as in Caffe's and torchvision's SSD,
    so flattening (row, column, anchor) matches ``AnchorGenerator`` and
    torchvision's ``SSDHead`` order.

    Args:
        features: source maps (B, h_l, w_l, C_l), finest first.
        num_anchors: default boxes per location of each level (4 or 6).
        num_outputs: classes + 1 (background first) or 4.
        separable: SSDLite: a depthwise-separable 3x3 conv.
        name: prefix; level l's conv is ``{name}_l{l}``.

    Returns:
        (B, sum_l h_l * w_l * num_anchors[l], num_outputs).

    Example:
        >>> out = ssd_head([keras.Input((4, 4, 8)), keras.Input((2, 2, 8))], [4, 6], 5)
        >>> tuple(out.shape)
        (None, 88, 5)
    """
    if len(features) != len(num_anchors):
        raise ValueError(f"ssd_head got {len(features)} feature maps but {len(num_anchors)} anchor counts.")
    conv_cls = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
    outputs = []
    for level, (x, anchors) in enumerate(zip(features, num_anchors)):
        x = conv_cls(anchors * num_outputs, 3, padding="same", name=f"{name}_l{level}")(x)
        outputs.append(keras.layers.Reshape((-1, num_outputs), name=f"{name}_flat_l{level}")(x))
    return keras.layers.Concatenate(axis=1, name=f"{name}_concat")(outputs)
