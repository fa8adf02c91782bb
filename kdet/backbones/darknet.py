"""Darknet backbones of YOLOv3: Darknet-53 and the yolov3-tiny trunk (Redmon and Farhadi 2018).

Layers follow the official ``yolov3.cfg`` / ``yolov3-tiny.cfg`` one to one so
that :mod:`kdet.zoo.darknet` can load the official ``.weights`` files: every
convolution is conv (no bias) -> batch norm -> leaky ReLU (slope 0.1), and
stride-2 convolutions pad one pixel at the top and left only (Darknet pads
``size // 2`` on every side; Keras' "same" would pad bottom/right instead and
shift every feature by one pixel).
"""

from __future__ import annotations

import keras

from kdet.layers.batch_normalization import BatchNormalization
from kdet.validation import check_input_size

# Darknet-53 (YOLOv3 paper, Table 1): channels and residual blocks of the five stages.
DARKNET53_CHANNELS = (64, 128, 256, 512, 1024)
DARKNET53_BLOCKS = (1, 2, 8, 8, 4)
# yolov3-tiny.cfg: conv channels before each of the six max-pools, then the 1024 conv.
DARKNET_TINY_CHANNELS = (16, 32, 64, 128, 256, 512, 1024)
# Darknet normalises with (x - mean) / (sqrt(var) + 1e-6) (src/batchnorm_layer.c);
# OpenCV's importer uses sqrt(var + 1e-6). The same epsilon keeps converted weights exact.
DARKNET_BN_EPSILON = 1e-6
LEAKY_SLOPE = 0.1


def darknet_conv(x, filters: int, size: int, strides: int = 1, name: str = "conv",
                 bn_momentum: float = 0.99, batch_norm: bool = True, activation: bool = True):
    """One Darknet ``[convolutional]`` section: conv -> BN -> leaky ReLU 0.1.

    Args:
        x: (B, H, W, C) input.
        filters, size, strides: of the convolution (Darknet ``pad=1``: ``size // 2``).
        name: prefix of the layer names ``{name}_conv``, ``{name}_bn``, ``{name}_act``.
        bn_momentum: moving-average momentum of the batch norm.
        batch_norm: False gives a biased linear conv (the YOLO prediction convs).
        activation: apply leaky ReLU.

    Returns:
        (B, ceil(H / strides), ceil(W / strides), filters).
    """
    padding = "same"
    if strides > 1:
        # Darknet pads size // 2 on all sides; with stride 2 only the top/left pad is used.
        pad = size // 2
        x = keras.layers.ZeroPadding2D(((pad, 0), (pad, 0)), name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=not batch_norm,
                            name=f"{name}_conv")(x)
    if batch_norm:
        x = BatchNormalization(epsilon=DARKNET_BN_EPSILON, momentum=bn_momentum, name=f"{name}_bn")(x)
    if activation:
        x = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_act")(x)
    return x


def darknet53_conv_names(name: str = "darknet53", blocks=DARKNET53_BLOCKS) -> list[str]:
    """Prefixes of Darknet-53's convolutions in ``yolov3.cfg`` order (for weight conversion)."""
    names = [f"{name}_stem"]
    for stage, num_blocks in enumerate(blocks, start=1):
        names.append(f"{name}_stage{stage}_down")
        for block in range(num_blocks):
            names += [f"{name}_stage{stage}_block{block}_conv1", f"{name}_stage{stage}_block{block}_conv2"]
    return names


def darknet53(image_size=(416, 416), name: str = "darknet53", bn_momentum: float = 0.99,
              channels=DARKNET53_CHANNELS, blocks=DARKNET53_BLOCKS) -> keras.Model:
    """Darknet-53: a 3x3 stem and five stages of stride-2 conv + residual blocks.

    Args:
        image_size: (height, width) of the input (multiple of 32), normalised to 0..1.
        name: model name and layer-name prefix.
        bn_momentum: batch-norm momentum (0.99 = Darknet's 0.01 update rate).
        channels, blocks: per-stage output channels and residual block counts.

    Returns:
        ``keras.Model`` mapping (B, H, W, 3) to ``{"P1".."P5"}``: the outputs of
        the stages of stride 2..32 (``yolov3.cfg`` routes P4 = layer 61 and
        P3 = layer 36).

    Example:
        >>> sorted(darknet53((64, 64)).output)
        ['P1', 'P2', 'P3', 'P4', 'P5']

    Reference: Redmon and Farhadi, "YOLOv3: An Incremental Improvement", 2018, Table 1.
    """
    height, width = check_input_size(image_size, multiple_of=32)
    inputs = keras.Input((height, width, 3), name="images")
    x = darknet_conv(inputs, 32, 3, name=f"{name}_stem", bn_momentum=bn_momentum)
    features = {}
    for stage, (filters, num_blocks) in enumerate(zip(channels, blocks), start=1):
        prefix = f"{name}_stage{stage}"
        x = darknet_conv(x, filters, 3, strides=2, name=f"{prefix}_down", bn_momentum=bn_momentum)
        for block in range(num_blocks):
            shortcut = x
            y = darknet_conv(x, filters // 2, 1, name=f"{prefix}_block{block}_conv1", bn_momentum=bn_momentum)
            y = darknet_conv(y, filters, 3, name=f"{prefix}_block{block}_conv2", bn_momentum=bn_momentum)
            x = keras.layers.Add(name=f"{prefix}_block{block}_add")([shortcut, y])
        features[f"P{stage}"] = x
    return keras.Model(inputs, features, name=name)


def darknet_tiny_conv_names(name: str = "darknet_tiny") -> list[str]:
    """Prefixes of the yolov3-tiny trunk's convolutions in ``yolov3-tiny.cfg`` order."""
    return [f"{name}_conv{i}" for i in range(len(DARKNET_TINY_CHANNELS))]


def darknet_tiny(image_size=(416, 416), name: str = "darknet_tiny", bn_momentum: float = 0.99) -> keras.Model:
    """The yolov3-tiny trunk: seven 3x3 convs interleaved with 2x2 max-pools.

    The sixth pool has stride 1 (Darknet pads it at the bottom/right, as
    Keras' "same" does), so the last conv stays at stride 32.

    Args:
        image_size: (height, width), a multiple of 32.
        name: model name and layer-name prefix.
        bn_momentum: batch-norm momentum.

    Returns:
        ``keras.Model`` mapping (B, H, W, 3) to ``{"P3": 128 ch, "P4": 256 ch
        (cfg layer 8), "P5": 1024 ch (cfg layer 12)}``.

    Example:
        >>> darknet_tiny((64, 64)).output["P5"].shape
        (None, 2, 2, 1024)
    """
    height, width = check_input_size(image_size, multiple_of=32)
    inputs = keras.Input((height, width, 3), name="images")
    x = inputs
    features = {}
    for i, filters in enumerate(DARKNET_TINY_CHANNELS):
        x = darknet_conv(x, filters, 3, name=f"{name}_conv{i}", bn_momentum=bn_momentum)
        if i in (3, 4):
            features[f"P{i}"] = x  # conv 128 at stride 8 (P3), conv 256 at stride 16 (P4)
        if i < 6:
            pool_stride = 2 if i < 5 else 1
            x = keras.layers.MaxPooling2D(2, strides=pool_stride, padding="same", name=f"{name}_pool{i}")(x)
    features["P5"] = x
    return keras.Model(inputs, features, name=name)
