"""MobileNetV3-Large (Howard et al. 2019, "Searching for MobileNetV3"), torchvision's layer for layer.

The blocks, channels, kernels, squeeze-excitation sizes and activations are
``torchvision.models.mobilenet_v3_large`` (``_mobilenet_v3_conf``, Tables 1-2
of the paper), which are also ``keras.applications.MobileNetV3Large``'s: the
layer names here are keras.applications' (``conv``, ``expanded_conv_{i}_expand``,
``..._depthwise``, ``..._squeeze_excite_conv``, ``..._project``, ``conv_1``), so
its ImageNet weights load by name. Three things keras.applications cannot give,
hence this file:

* padding: torchvision pads a stride-2 conv by ``kernel // 2`` on every side;
  keras.applications pads (0, 1) / (1, 2) on even sizes ("same" and
  ``correct_pad``), which shifts the grid of converted torchvision weights.
  On odd sizes at every stride (e.g. 65 x 65) both pad alike and the two
  networks agree (``tests/backbones/test_mobilenet_v3.py``);
* ``reduced_tail``: the last stage at half width (160 -> 80 channels, Table 6
  of the paper), torchvision's SSDLite backbone;
* batch-norm epsilon: 1e-3 in the classifier and SSDLite, 1e-5 in
  torchvision's Faster R-CNN (``FrozenBatchNorm2d``).

Pyramid features (``MOBILENET_V3_FEATURES``) by output stride: P2 and P3 are
the outputs of the last stride-4 / stride-8 blocks, P4 the *expansion* of
block 12 (672 channels at stride 16: where SSDLite attaches, section 6.3 of
the paper; torchvision's "C4 expansion layer") and P5 the last 1x1 conv
(960 channels). ``features=`` taps any other layer by name, e.g.
``"expanded_conv_12_project_bn"``: block 12's output at stride 32, which with
P5 feeds torchvision's MobileNetV3 FPN.
"""

from __future__ import annotations

from typing import Mapping

import keras

from kdet.layers.batch_normalization import BatchNormalization
from kdet.validation import check_input_size

# torchvision _mobilenet_v3_conf("mobilenet_v3_large") / Howard et al. 2019 Table 1:
# (kernel, expanded channels, output channels, squeeze-excite, activation, stride); the
# last stage (blocks 12-14) is halved by ``reduced_tail``.
LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hard_swish", 2),
    (3, 200, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 480, 112, True, "hard_swish", 1),
    (3, 672, 112, True, "hard_swish", 1),
    (5, 672, 160, True, "hard_swish", 2),
    (5, 960, 160, True, "hard_swish", 1),
    (5, 960, 160, True, "hard_swish", 1),
)
REDUCED_BLOCKS = (12, 13, 14)  # the blocks whose widths reduced_tail halves
STEM_CHANNELS = 16
LAST_CONV_FACTOR = 6  # the last 1x1 conv has 6x the last block's channels (960)
# keras.applications / torchvision: squeeze channels = make_divisible(expanded / 4, 8).
SE_RATIO = 0.25
MOBILENET_V3_FEATURES = {"P2": "expanded_conv_2_add", "P3": "expanded_conv_5_add",
                         "P4": "expanded_conv_12_expand_act", "P5": "conv_1_act"}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channels to a multiple of ``divisor``, never below 90% (torchvision / TF-slim ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(x, filters, kernel, stride, name, bn, activation=None, depthwise=False):
    """conv (PyTorch padding ``kernel // 2``, no bias) -> BN [-> activation] named ``{name}``, ``{name}_bn``."""
    padding = "same"
    if stride > 1:  # symmetric padding, as torch's padding=kernel // 2 (see the module docstring)
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=name)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=name)(x)
    x = BatchNormalization(name=f"{name}_bn", **bn)(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    return x


def _squeeze_excite(x, channels: int, prefix: str):
    """torchvision ``SqueezeExcitation`` (fc1, ReLU, fc2, Hardsigmoid) as 1x1 convs on the pooled map."""
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(x)
    s = keras.layers.Conv2D(make_divisible(channels * SE_RATIO), 1, name=f"{prefix}squeeze_excite_conv")(s)
    s = keras.layers.ReLU(name=f"{prefix}squeeze_excite_relu")(s)
    s = keras.layers.Conv2D(channels, 1, name=f"{prefix}squeeze_excite_conv_1")(s)
    # hard_sigmoid = relu6(x + 3) / 6, torch's Hardsigmoid.
    s = keras.layers.Activation("hard_sigmoid", name=f"{prefix}squeeze_excite_hard_sigmoid")(s)
    return keras.layers.Multiply(name=f"{prefix}squeeze_excite_mul")([x, s])


def _inverted_residual(x, block: int, kernel, expanded, out, use_se, activation, stride, bn):
    """One bottleneck (expand 1x1 -> depthwise -> [SE] -> project 1x1 [+ input]), keras.applications' names."""
    prefix = f"expanded_conv_{block}_" if block else "expanded_conv_"
    shortcut, channels = x, x.shape[-1]
    if expanded != channels:
        x = _conv_bn(x, expanded, 1, 1, f"{prefix}expand", bn, activation)
    x = _conv_bn(x, expanded, kernel, stride, f"{prefix}depthwise", bn, activation, depthwise=True)
    if use_se:
        x = _squeeze_excite(x, expanded, prefix)
    x = _conv_bn(x, out, 1, 1, f"{prefix}project", bn)
    if stride == 1 and channels == out:
        x = keras.layers.Add(name=f"{prefix}add")([shortcut, x])
    return x


def mobilenet_v3_large(image_size=(320, 320), reduced_tail: bool = False, bn_epsilon: float = 1e-3,
                       bn_momentum: float = 0.99, features: Mapping[str, str] | None = None,
                       name: str = "mobilenet_v3_large") -> keras.Model:
    """MobileNetV3-Large feature extractor (torchvision's graph, keras.applications' layer names).

    Args:
        image_size: (height, width) of the normalised input, or (None, None).
        reduced_tail: halve the last stage (torchvision's SSDLite backbone).
        bn_epsilon, bn_momentum: of every batch norm (torchvision: 1e-3 in
            the classifier / SSDLite, 1e-5 in Faster R-CNN; Keras momentum =
            1 - PyTorch momentum).
        features: {output key: layer name} to return (default
            ``MOBILENET_V3_FEATURES``: P2..P5).
        name: model name.

    Returns:
        A functional ``keras.Model`` mapping (B, H, W, 3) normalised images to
        the ``features`` dict (P4: 672 channels at stride 16, P5: 960 at
        stride 32, 480 with ``reduced_tail``).

    Example:
        >>> model = mobilenet_v3_large((64, 64))
        >>> [tuple(model.output[k].shape[1:]) for k in ("P4", "P5")]
        [(4, 4, 672), (2, 2, 960)]
    """
    height, width = check_input_size(image_size)
    bn = {"epsilon": float(bn_epsilon), "momentum": float(bn_momentum)}
    inputs = keras.Input((height, width, 3), name="images")
    x = _conv_bn(inputs, STEM_CHANNELS, 3, 2, "conv", bn, "hard_swish")
    for block, (kernel, expanded, out, use_se, activation, stride) in enumerate(LARGE_BLOCKS):
        if reduced_tail and block in REDUCED_BLOCKS:
            expanded, out = expanded // 2 if block > REDUCED_BLOCKS[0] else expanded, out // 2
        x = _inverted_residual(x, block, kernel, expanded, out, use_se, activation, stride, bn)
    x = _conv_bn(x, LAST_CONV_FACTOR * x.shape[-1], 1, 1, "conv_1", bn, "hard_swish")
    graph = keras.Model(inputs, x, name=f"{name}_graph")
    taps = dict(features or MOBILENET_V3_FEATURES)
    layers = {layer.name for layer in graph.layers}
    unknown = sorted(set(taps.values()) - layers)
    if unknown:
        raise ValueError(f"features names layers {unknown} that MobileNetV3-Large does not have; "
                         f"e.g. {sorted(MOBILENET_V3_FEATURES.values())}.")
    return keras.Model(inputs, {key: graph.get_layer(layer).output for key, layer in taps.items()}, name=name)
