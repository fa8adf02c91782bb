"""Conv2D + BatchNorm + activation, the block every backbone and head repeats."""

from __future__ import annotations

import keras

from kdet.layers.batch_normalization import BatchNormalization


def conv_bn_act(x, filters: int, kernel_size: int = 3, strides: int = 1, activation="relu",
                separable: bool = False, use_bn: bool = True, name: str | None = None,
                bn_epsilon: float = 1e-3, bn_momentum: float = 0.99, dilation_rate: int = 1):
    """Applies conv -> batch norm -> activation in the functional API.

    Args:
        x: input tensor (B, H, W, C).
        filters, kernel_size, strides, dilation_rate: of the convolution ("same" padding).
        activation: Keras activation name or callable ("relu", "swish", "leaky_relu"...),
            or None for no activation.
        separable: depthwise-separable convolution (EfficientDet, SSDLite).
        use_bn: add batch normalisation (the conv then has no bias).
        name: prefix of the layer names (``{name}_conv``, ``{name}_bn``, ``{name}_act``).

    Returns:
        The output tensor.
    """
    conv_cls = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
    prefix = (lambda s: f"{name}_{s}") if name else (lambda s: None)
    x = conv_cls(filters, kernel_size, strides=strides, padding="same", use_bias=not use_bn,
                 dilation_rate=dilation_rate, name=prefix("conv"))(x)
    if use_bn:
        x = BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name=prefix("bn"))(x)
    if activation is not None:
        if activation == "leaky_relu":
            x = keras.layers.LeakyReLU(negative_slope=0.1, name=prefix("act"))(x)
        else:
            x = keras.layers.Activation(activation, name=prefix("act"))(x)
    return x
