"""Dense per-anchor prediction heads (RetinaNet subnets, EfficientDet, SSD, the tiny detector)."""

from __future__ import annotations

import math
from typing import Sequence

import keras

from kdet.layers.batch_normalization import BatchNormalization

# torchvision's v2 heads: nn.GroupNorm(32, channels), eps 1e-5 (PyTorch's default; Keras' is 1e-3).
GROUPS = 32
GROUP_NORM_EPSILON = 1e-5


def prior_bias(prior_probability: float) -> float:
    """Bias so that sigmoid(bias) = prior (Lin et al. 2017, section 4.1, 'Initialization')."""
    return -math.log((1 - prior_probability) / prior_probability)


def dense_head(features: Sequence, num_anchors: int, num_outputs: int, depth: int = 4, width: int = 256,
               shared: bool = True, separable: bool = False, activation: str = "relu",
               norm: str | None = None, final_bias: float = 0.0, kernel_std: float | None = 0.01,
               name: str = "head", bn_momentum: float = 0.99, bn_epsilon: float = 1e-3):
    """Applies a conv tower + predictor to every pyramid level and flattens per anchor.

    Args:
        features: list of (B, h_l, w_l, C) tensors, finest level first.
        num_anchors: anchors per location.
        num_outputs: values predicted per anchor (classes, or 4 for boxes).
        depth, width: conv tower of ``depth`` 3x3 convs with ``width`` channels.
        shared: share the tower and predictor weights across levels (RetinaNet);
            False gives each level its own (SSD).
        separable: depthwise-separable convs (EfficientDet).
        norm: None, "batch" (one BatchNorm per level, EfficientDet) or "group"
            (GroupNorm(32) after each bias-free conv: with ``shared``, one
            GroupNorm per conv applied to every level, torchvision's
            ``RetinaNetHead(norm_layer=GroupNorm)`` of the v2 checkpoints;
            layers ``{name}_gn{i}``).
        final_bias: bias init of the predictor (use :func:`prior_bias` for classes).
        kernel_std: std of the normal init of the convs (RetinaNet uses 0.01);
            None for fan-in variance scaling (EfficientDet).
        bn_momentum, bn_epsilon: of the per-level batch norms (``norm="batch"``).

    Returns:
        (B, sum_l h_l * w_l * num_anchors, num_outputs) in (level, row, column,
        anchor) order, matching ``AnchorGenerator``.
    """
    conv_cls = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
    # kernel_std=None: fan-in variance scaling (automl's EfficientDet heads).
    init = keras.initializers.RandomNormal(stddev=kernel_std) if kernel_std else keras.initializers.VarianceScaling()
    conv_kwargs = (
        {"depthwise_initializer": init, "pointwise_initializer": init} if separable else {"kernel_initializer": init}
    )

    if norm not in (None, "batch", "group"):
        raise ValueError(f"norm must be None, 'batch' or 'group'; received {norm!r}.")

    def make_tower(suffix):
        # torchvision's Conv2dNormActivation drops the conv bias in front of a GroupNorm.
        convs = [conv_cls(width, 3, padding="same", use_bias=norm != "group", name=f"{name}_conv{i}{suffix}",
                          **conv_kwargs) for i in range(depth)]
        predictor = conv_cls(num_anchors * num_outputs, 3, padding="same", name=f"{name}_pred{suffix}",
                             bias_initializer=keras.initializers.Constant(final_bias), **conv_kwargs)
        # GroupNorm normalises each level's map on its own, so one layer serves every level.
        norms = [keras.layers.GroupNormalization(GROUPS, epsilon=GROUP_NORM_EPSILON, name=f"{name}_gn{i}{suffix}")
                 for i in range(depth)] if norm == "group" else None
        return convs, predictor, norms

    shared_tower = make_tower("") if shared else None
    outputs = []
    for level, x in enumerate(features):
        convs, predictor, group_norms = shared_tower if shared else make_tower(f"_l{level}")
        for i, conv in enumerate(convs):
            x = conv(x)
            if norm == "batch":
                x = BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name=f"{name}_bn{i}_l{level}")(x)
            elif norm == "group":
                x = group_norms[i](x)
            x = keras.layers.Activation(activation, name=f"{name}_act{i}_l{level}")(x)
        x = predictor(x)
        outputs.append(keras.layers.Reshape((-1, num_outputs), name=f"{name}_flat_l{level}")(x))
    if len(outputs) == 1:
        return outputs[0]
    return keras.layers.Concatenate(axis=1, name=f"{name}_concat")(outputs)
