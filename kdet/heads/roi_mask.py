"""The Mask R-CNN mask head: four 3x3 convs, a 2x transposed conv, per-class mask logits (He et al. 2017)."""

from __future__ import annotations

from typing import Sequence

import keras

# torchvision MaskRCNNHeads (256, 256, 256, 256) and MaskRCNNPredictor(dim_reduced=256).
MASK_HEAD_WIDTHS = (256, 256, 256, 256)
MASK_PREDICTOR_WIDTH = 256
# torchvision initialises the mask head and predictor with kaiming_normal_(mode="fan_out", relu), bias 0.
_KAIMING_FAN_OUT = dict(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def roi_mask_head(roi_shape: Sequence[int], num_outputs: int, widths: Sequence[int] = MASK_HEAD_WIDTHS,
                  predictor_width: int = MASK_PREDICTOR_WIDTH, name: str = "roi_heads") -> keras.Model:
    """Builds the mask head on pooled RoI features (He et al. 2017, figure 4, right: the FPN head).

    Layer names follow torchvision (``mask_head.<i>``, ``mask_predictor.conv5_mask``,
    ``mask_predictor.mask_fcn_logits``) so its checkpoints convert by name.

    Args:
        roi_shape: (P, P, C) of one pooled RoI (14 x 14 x 256).
        num_outputs: mask channels, one per head class (background included
            where the box head has it, as torchvision's 91).
        widths: channels of the 3x3 convs (each followed by ReLU).
        predictor_width: channels of the 2x2 stride-2 transposed conv (ReLU).

    Returns:
        A ``keras.Model`` mapping (N, P, P, C) to (N, 2P, 2P, num_outputs) mask logits.

    Example:
        >>> head = roi_mask_head((14, 14, 8), num_outputs=4, widths=(8, 8), predictor_width=8)
        >>> head.output.shape
        (None, 28, 28, 4)
    """
    if not widths:
        raise ValueError(f"widths must list at least one conv width; received {widths!r}.")
    inputs = keras.Input(tuple(roi_shape), name="mask_roi_features")
    x = inputs
    for index, width in enumerate(widths):
        x = keras.layers.Conv2D(int(width), 3, padding="same", activation="relu",
                                kernel_initializer=keras.initializers.VarianceScaling(**_KAIMING_FAN_OUT),
                                name=f"{name}_mask_head_{index}")(x)
    x = keras.layers.Conv2DTranspose(int(predictor_width), 2, strides=2, activation="relu",
                                     kernel_initializer=keras.initializers.VarianceScaling(**_KAIMING_FAN_OUT),
                                     name=f"{name}_mask_predictor_conv5_mask")(x)
    logits = keras.layers.Conv2D(int(num_outputs), 1,
                                 kernel_initializer=keras.initializers.VarianceScaling(**_KAIMING_FAN_OUT),
                                 name=f"{name}_mask_predictor_mask_fcn_logits")(x)
    return keras.Model(inputs, logits, name=f"{name}_mask")
