"""A tiny CNN backbone that trains on CPU in minutes (tests, examples, quick experiments)."""

from __future__ import annotations

import keras

from kdet.layers.conv_bn_act import conv_bn_act
from kdet.validation import check_input_size

# Channels of the stride-2..32 stages (C1..C5).
TINY_CHANNELS = (16, 32, 64, 96, 128)


def tiny_backbone(image_size=(128, 128), channels=TINY_CHANNELS, name: str = "tiny_backbone") -> keras.Model:
    """Builds the tiny backbone: five stride-2 stages of conv-BN-ReLU.

    Args:
        image_size: (height, width) of the (already normalised) input.
        channels: output channels of the five stages (strides 2, 4, 8, 16, 32).

    Returns:
        A functional ``keras.Model`` mapping (B, H, W, 3) to a dict of pyramid
        features ``{"P2": stride 4, "P3": 8, "P4": 16, "P5": 32}``.

    Example:
        >>> model = tiny_backbone((64, 64))
        >>> sorted(model.output)
        ['P2', 'P3', 'P4', 'P5']
    """
    inputs = keras.Input((*check_input_size(image_size), 3), name="images")
    x = inputs
    features = {}
    for stage, filters in enumerate(channels, start=1):
        # BN momentum 0.9: the moving statistics settle within the few hundred
        # steps a tiny model trains for (0.99 would lag far behind).
        x = conv_bn_act(x, filters, 3, strides=2, name=f"stage{stage}_down", bn_momentum=0.9)
        x = conv_bn_act(x, filters, 3, name=f"stage{stage}_conv", bn_momentum=0.9)
        if stage >= 2:
            features[f"P{stage}"] = x
    return keras.Model(inputs, features, name=name)
