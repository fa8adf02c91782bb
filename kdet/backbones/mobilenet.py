"""MobileNetV2 pyramid features (Sandler et al. 2018), e.g. for SSDLite."""

from __future__ import annotations

import keras

from kdet.validation import check_input_size

# Layers of keras.applications.MobileNetV2 giving the stride-8/16/32 features. SSDLite
# attaches to the expansion of block 13 (stride 16) and the last layer (Sandler et al.
# 2018, section 6.2: "the first layer of SSDLite is attached to the expansion of layer 15").
MOBILENET_V2_FEATURES = {"P3": "block_6_expand_relu", "P4": "block_13_expand_relu", "P5": "out_relu"}


def mobilenet_v2(image_size=(320, 320), alpha: float = 1.0, weights=None, name: str = "mobilenet_v2") -> keras.Model:
    """MobileNetV2 (``keras.applications``) returning pyramid features.

    Args:
        image_size: (height, width) of the input, normalised to [-1, 1].
        alpha: width multiplier.
        weights: None (random) or a path / "imagenet" (downloaded by Keras, needs network).
        name: model name.

    Returns:
        ``keras.Model`` mapping (B, H, W, 3) to ``{"P3": stride 8, "P4": stride 16
        (576 channels at alpha 1), "P5": stride 32 (1280 channels)}``.

    Example:
        >>> sorted(mobilenet_v2((128, 128)).output)
        ['P3', 'P4', 'P5']
    """
    height, width = check_input_size(image_size)
    base = keras.applications.MobileNetV2(input_shape=(height, width, 3), alpha=alpha, include_top=False,
                                          weights=weights)
    outputs = {level: base.get_layer(layer).output for level, layer in MOBILENET_V2_FEATURES.items()}
    return keras.Model(base.input, outputs, name=name)
