"""VGG-16 as the SSD backbone (Simonyan and Zisserman 2015; Liu et al. 2016, section 3).

Convolutions are named as in ``keras.applications.VGG16`` (``block1_conv1`` ..
``block5_conv3``) so its ImageNet weights transfer by name. SSD's changes:
pool3 rounds up (300 -> 38 at conv4_3, Caffe / torchvision ``ceil_mode``),
pool5 is 3x3 stride 1, and fc6 / fc7 become a 3x3 conv with dilation 6 and a
1x1 conv (the "atrous" subsampled fully connected layers), 1024 channels each.
"""

from __future__ import annotations

import keras

from kdet.validation import check_input_size

# VGG-16 configuration "D": channels of the convs of each of the five blocks.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# SSD's fc6 / fc7 (Liu et al. 2016, section 3: "conv6 ... dilation 6", 1024 channels).
SSD_FC_WIDTH = 1024
SSD_FC6_DILATION = 6


def vgg16_ssd(image_size=(300, 300), name: str = "vgg16", fc_width: int = SSD_FC_WIDTH,
              fc6_dilation: int = SSD_FC6_DILATION, blocks=VGG16_BLOCKS) -> keras.Model:
    """Builds SSD's VGG-16: conv1_1 .. conv5_3, pool5 3x3/1, dilated fc6 and fc7.

    Args:
        image_size: (height, width) of the input (already normalised).
        name: model name.
        fc_width: channels of fc6 / fc7.
        fc6_dilation: dilation of the 3x3 fc6 conv.
        blocks: per-block conv channels.

    Returns:
        ``keras.Model`` mapping (B, H, W, 3) to ``{"P3": conv4_3 (stride 8, before
        SSD's L2 normalisation), "P4": fc7 (stride 16)}``; at 300 px the maps
        are 38 x 38 and 19 x 19.

    Example:
        >>> [tuple(t.shape) for t in vgg16_ssd((300, 300)).output.values()]
        [(None, 38, 38, 512), (None, 19, 19, 1024)]
    """
    height, width = check_input_size(image_size)
    inputs = keras.Input((height, width, 3), name="images")
    x = inputs
    features = {}
    for block, channels in enumerate(blocks, start=1):
        for i, filters in enumerate(channels, start=1):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                    name=f"block{block}_conv{i}")(x)
        if block == 4:
            features["P3"] = x
        if block < 5:
            # "same" rounds up like Caffe's / torchvision's ceil_mode on odd sizes (75 -> 38).
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"block{block}_pool")(x)
    x = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = keras.layers.Conv2D(fc_width, 3, padding="same", dilation_rate=fc6_dilation, activation="relu",
                            name="fc6")(x)
    features["P4"] = keras.layers.Conv2D(fc_width, 1, activation="relu", name="fc7")(x)
    return keras.Model(inputs, features, name=name)
