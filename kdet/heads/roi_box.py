"""The Fast R-CNN box head: two fully connected layers + class scores and per-class box deltas."""

from __future__ import annotations

from typing import Sequence

import keras

from kdet.layers.batch_normalization import BatchNormalization

# torchvision's TwoMLPHead representation size and FastRCNNPredictor.
REPRESENTATION_SIZE = 1024
# Detectron's initialisation of the predictors (normal 0.01 for scores, 0.001 for deltas).
CLS_INIT_STD = 0.01
BOX_INIT_STD = 0.001
# FastRCNNConvFCHead(norm_layer=nn.BatchNorm2d): PyTorch's eps 1e-5, momentum 0.1 (Keras 0.9).
CONV_BN_EPSILON = 1e-5
CONV_BN_MOMENTUM = 0.9


def _fc(x, units: int, name: str, rank: int | None):
    """A ReLU dense layer, or its rank-``rank`` factorisation (Girshick 2015, section 3.1)."""
    if rank is None:
        return keras.layers.Dense(units, activation="relu", name=name)(x)
    # W (in x out) ~ U_t (in x t) . (S_t V_t^T) (t x out): two layers, the bias on the second.
    x = keras.layers.Dense(rank, use_bias=False, name=f"{name}_svd_in")(x)
    return keras.layers.Dense(units, activation="relu", name=f"{name}_svd_out")(x)


def _conv_bn_relu(x, width: int, name: str):
    """torchvision's ``Conv2dNormActivation(norm_layer=nn.BatchNorm2d)``: bias-free 3x3 conv, BN, ReLU."""
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=name)(x)
    x = BatchNormalization(epsilon=CONV_BN_EPSILON, momentum=CONV_BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def roi_box_head(roi_shape: Sequence[int], num_classes: int, representation_size: int = REPRESENTATION_SIZE,
                 ranks: Sequence[int | None] = (None, None), name: str = "roi_heads", convs: int = 0,
                 conv_width: int = 256) -> keras.Model:
    """Builds the box head on pooled RoI features.

    "2fc" (``convs=0``, the default): fc6 -> fc7, torchvision's ``TwoMLPHead``.
    "4conv1fc" (``convs=4``): four 3x3 conv + BatchNorm + ReLU layers then one
    fc, torchvision's ``FastRCNNConvFCHead`` of ``fasterrcnn_resnet50_fpn_v2``
    (Wu & He 2018, the GroupNorm paper's head, with BatchNorm).

    Names follow torchvision (``box_head.fc6``, ``box_head.fc7``,
    ``box_predictor.cls_score``, ``box_predictor.bbox_pred``; the convs
    ``box_head_conv{i}`` + ``_bn``, the 4conv1fc's fc is ``box_head_fc6``). Note the
    flatten order: kdet pools (P, P, C), torchvision (C, P, P); a converter
    permutes fc6's input rows accordingly.

    Args:
        roi_shape: (P, P, C) of one pooled RoI.
        num_classes: object classes; background is added at index 0.
        representation_size: units of fc6 and fc7 (1024).
        ranks: truncated-SVD ranks of fc6 and fc7 (None = full layers); with
            ``convs`` only fc6 exists and ``ranks[1]`` must be None.
        convs: 3x3 conv layers before the single fc (0: the two-fc head).
        conv_width: their channels (256).

    Returns:
        A ``keras.Model`` mapping (N, P, P, C) to ``{"cls": (N, num_classes + 1)
        logits, "box": (N, num_classes + 1, 4) deltas}`` (class-specific boxes).

    Example:
        >>> head = roi_box_head((7, 7, 8), num_classes=3, representation_size=16)
        >>> head.output["box"].shape
        (None, 4, 4)
    """
    if len(ranks) != 2:
        raise ValueError(f"ranks must give the ranks of fc6 and fc7 (or None); received {ranks!r}.")
    if convs and ranks[1] is not None:
        raise ValueError(f"A box head with convs has one fc (fc6): ranks[1] must be None; received {ranks!r}.")
    inputs = keras.Input(tuple(roi_shape), name="roi_features")
    x = inputs
    for i in range(int(convs)):
        x = _conv_bn_relu(x, conv_width, f"{name}_box_head_conv{i}")
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    x = _fc(x, representation_size, f"{name}_box_head_fc6", ranks[0])
    if not convs:
        x = _fc(x, representation_size, f"{name}_box_head_fc7", ranks[1])
    cls = keras.layers.Dense(num_classes + 1, name=f"{name}_box_predictor_cls_score",
                             kernel_initializer=keras.initializers.RandomNormal(stddev=CLS_INIT_STD))(x)
    box = keras.layers.Dense((num_classes + 1) * 4, name=f"{name}_box_predictor_bbox_pred",
                             kernel_initializer=keras.initializers.RandomNormal(stddev=BOX_INIT_STD))(x)
    box = keras.layers.Reshape((num_classes + 1, 4), name=f"{name}_box_reshape")(box)
    return keras.Model(inputs, {"cls": cls, "box": box}, name=name)
