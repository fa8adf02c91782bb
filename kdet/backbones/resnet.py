"""ResNet-50/101 backbones (He et al. 2016, "Deep Residual Learning for Image Recognition").

The graph follows ``keras.applications.ResNet50`` layer for layer and keeps
its layer names (``conv1_conv``, ``conv2_block1_1_conv``, ...), so weights map
by name. Two conventions change numbers and are parameters:

* ``style="torchvision"`` (default, ResNet v1.5): the stride-2 of each stage
  sits in the 3x3 conv, padded by 1 on every side; convs have no bias; BN
  epsilon 1e-5. This is torchvision's ``resnet50`` and the backbone of its
  ``retinanet_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` checkpoints:
  ``backbone.body.layerS.B.convK`` maps to ``conv{S+1}_block{B+1}_{K}_conv``,
  ``downsample.0/1`` to ``_0_conv/_0_bn``, ``conv1/bn1`` to ``conv1_conv/conv1_bn``.
* ``style="keras"``: the stride sits in the first 1x1 conv, convs carry a
  bias, BN epsilon 1.001e-5: exactly ``keras.applications.ResNet50/101``
  (its weights load layer by layer).
"""

from __future__ import annotations

import keras

from kdet.layers.batch_normalization import BatchNormalization
from kdet.validation import check_input_size

# Bottleneck blocks per stage (conv2..conv5), He et al. 2016, table 1.
RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_FILTERS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x
STYLES = {
    # stride_in_1x1, conv bias, BN epsilon
    "torchvision": (False, False, 1e-5),
    "keras": (True, True, 1.001e-5),
}


def _bottleneck(x, filters, stride, shortcut_conv, name, style, bn_momentum):
    stride_in_1x1, use_bias, eps = STYLES[style]

    def bn(y, suffix):
        return BatchNormalization(epsilon=eps, momentum=bn_momentum, name=f"{name}_{suffix}_bn")(y)

    if shortcut_conv:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, use_bias=use_bias, name=f"{name}_0_conv")(x)
        shortcut = bn(shortcut, "0")
    else:
        shortcut = x
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    y = keras.layers.Conv2D(filters, 1, strides=s1, use_bias=use_bias, name=f"{name}_1_conv")(x)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(bn(y, "1"))
    if s3 > 1:
        # torchvision pads 1 on every side; "same" would pad (0, 1) and shift the grid.
        y = keras.layers.ZeroPadding2D(1, name=f"{name}_2_pad")(y)
        y = keras.layers.Conv2D(filters, 3, strides=s3, use_bias=use_bias, name=f"{name}_2_conv")(y)
    else:
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=use_bias, name=f"{name}_2_conv")(y)
    y = keras.layers.Activation("relu", name=f"{name}_2_relu")(bn(y, "2"))
    y = keras.layers.Conv2D(4 * filters, 1, use_bias=use_bias, name=f"{name}_3_conv")(y)
    y = bn(y, "3")
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def resnet_backbone(depth: int = 50, image_size=(512, 512), style: str = "torchvision",
                    bn_momentum: float = 0.99, name: str | None = None) -> keras.Model:
    """Builds a ResNet backbone returning C2..C5 as pyramid features.

    Args:
        depth: 50 or 101.
        image_size: (height, width) of the normalised input (int for square).
        style: "torchvision" (v1.5, torchvision checkpoints) or "keras"
            (``keras.applications`` ResNet v1), see the module docstring.
        bn_momentum: moving-average momentum of the batch norms.
        name: model name (default ``resnet{depth}``).

    Returns:
        A functional ``keras.Model`` mapping (B, H, W, 3) normalised images to
        ``{"P2": (B, H/4, W/4, 256), "P3": (.., 512), "P4": (.., 1024),
        "P5": (B, H/32, W/32, 2048)}`` (the outputs of conv2..conv5).

    Example:
        >>> model = resnet_backbone(50, (64, 64))
        >>> [tuple(model.output[k].shape[1:]) for k in ("P3", "P5")]
        [(8, 8, 512), (2, 2, 2048)]
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"depth must be one of {sorted(RESNET_DEPTHS)}; received {depth!r}.")
    if style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}; received {style!r}.")
    height, width = check_input_size(image_size)
    _, use_bias, eps = STYLES[style]
    inputs = keras.Input((height, width, 3), name="images")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=use_bias, name="conv1_conv")(x)
    x = BatchNormalization(epsilon=eps, momentum=bn_momentum, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding equals torchvision's implicit -inf padding here: inputs are >= 0 after ReLU.
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    features = {}
    for stage, (blocks, filters) in enumerate(zip(RESNET_DEPTHS[depth], STAGE_FILTERS), start=2):
        for block in range(1, blocks + 1):
            stride = 2 if (block == 1 and stage > 2) else 1
            x = _bottleneck(x, filters, stride, block == 1, f"conv{stage}_block{block}", style, bn_momentum)
        features[f"P{stage}"] = x
    return keras.Model(inputs, features, name=name or f"resnet{depth}")
