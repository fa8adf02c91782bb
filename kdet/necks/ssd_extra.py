"""SSD's extra feature layers (Liu et al. 2016, Fig. 2) and the L2 normalisation of conv4_3.

Each extra block is a 1x1 "reduce" conv then a 3x3 conv that halves the map
(or, without padding, shrinks it by two), both followed by ReLU. Paddings are
explicit and symmetric, as in Caffe and torchvision (Keras' "same" pads a
stride-2 conv on an even map at the bottom/right only, which shifts the
features of a converted checkpoint). ``separable=True`` gives SSDLite's
blocks (Sandler et al. 2018): 1x1 -> depthwise 3x3 -> 1x1, each with batch
norm and ReLU6.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet.layers.batch_normalization import BatchNormalization

# (reduce channels, output channels, kernel, stride, padding) of each extra block.
# SSD300 (torchvision ssd300_vgg16 / Caffe): conv8_2 .. conv11_2 -> 10, 5, 3, 1 at 300 px.
SSD300_EXTRAS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0))
# SSD512 (Caffe): five blocks, the last a 4x4 conv -> 32, 16, 8, 4, 2, 1 at 512 px.
SSD512_EXTRAS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1),
                 (128, 256, 4, 1, 1))
# L2Norm's initial per-channel scale (Liu et al. 2016, section 3.1; ParseNet, Liu et al. 2015).
L2NORM_SCALE = 20.0


@keras.saving.register_keras_serializable(package="kdet")
class L2Normalization(keras.layers.Layer):
    """Normalises each position's feature vector to unit L2 norm, times a learned per-channel scale.

    Args:
        scale: initial value of the per-channel scale (SSD uses 20 on conv4_3).
        epsilon: floor of the norm (torchvision's ``F.normalize``: 1e-12).

    Call:
        (B, H, W, C) -> (B, H, W, C).

    Example:
        >>> import numpy as np
        >>> L2Normalization(scale=1.0)(np.array([[[[3.0, 4.0]]]])).numpy().tolist()
        [[[[0.6000000238418579, 0.800000011920929]]]]
    """

    def __init__(self, scale: float = L2NORM_SCALE, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],),
                                     initializer=keras.initializers.Constant(self.scale))

    def call(self, x):
        x32 = tf.cast(x, tf.float32)
        norm = tf.maximum(tf.norm(x32, axis=-1, keepdims=True), self.epsilon)
        return tf.cast(x32 / norm * tf.cast(self.gamma, tf.float32), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, epsilon=self.epsilon)
        return config


def ssd_extra_layers(x, blocks: Sequence[Sequence[int]] = SSD300_EXTRAS, separable: bool = False,
                     name: str = "extra") -> list:
    """Appends SSD's extra blocks to ``x`` and returns each block's output.

    Args:
        x: (B, H, W, C) the coarsest backbone source (fc7 for VGG).
        blocks: (reduce channels, out channels, kernel, stride, padding) per block.
        separable: SSDLite blocks (depthwise 3x3, batch norm, ReLU6).
        name: prefix; block k has layers ``{name}{k}_reduce`` and ``{name}{k}_conv``.

    Returns:
        list of the blocks' outputs, finest first.

    Example:
        >>> feats = ssd_extra_layers(keras.Input((19, 19, 1024)))
        >>> [tuple(f.shape[1:3]) for f in feats]
        [(10, 10), (5, 5), (3, 3), (1, 1)]
    """
    outputs = []
    for k, (mid, out, kernel, stride, pad) in enumerate(blocks, start=1):
        prefix = f"{name}{k}"
        if separable:
            x = _conv_bn_relu6(x, keras.layers.Conv2D(out // 2, 1, use_bias=False, name=f"{prefix}_reduce"))
            x = keras.layers.ZeroPadding2D(pad, name=f"{prefix}_pad")(x) if pad else x
            x = _conv_bn_relu6(x, keras.layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False,
                                                               name=f"{prefix}_depthwise"))
            x = _conv_bn_relu6(x, keras.layers.Conv2D(out, 1, use_bias=False, name=f"{prefix}_conv"))
        else:
            x = keras.layers.Conv2D(mid, 1, activation="relu", name=f"{prefix}_reduce")(x)
            x = keras.layers.ZeroPadding2D(pad, name=f"{prefix}_pad")(x) if pad else x
            x = keras.layers.Conv2D(out, kernel, strides=stride, activation="relu", name=f"{prefix}_conv")(x)
        outputs.append(x)
    return outputs


def _conv_bn_relu6(x, conv):
    x = conv(x)
    x = BatchNormalization(epsilon=1e-3, momentum=0.97, name=f"{conv.name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{conv.name}_relu6")(x)
