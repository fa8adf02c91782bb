"""Feature Pyramid Network (Lin et al. 2017, "Feature Pyramid Networks for Object Detection")."""

from __future__ import annotations

from typing import Sequence

import keras

from kdet.layers.batch_normalization import BatchNormalization

# torchvision's FeaturePyramidNetwork(norm_layer=nn.BatchNorm2d) (fasterrcnn_resnet50_fpn_v2):
# PyTorch BatchNorm2d defaults, eps 1e-5 and momentum 0.1 (Keras momentum 0.9).
FPN_BN_EPSILON = 1e-5
FPN_BN_MOMENTUM = 0.9
NORMS = (None, "batch")


def _conv_norm(x, width: int, kernel: int, norm: str | None, name: str):
    """Conv (bias only without a norm, as torchvision's Conv2dNormActivation) [-> BatchNorm ``{name}_bn``]."""
    x = keras.layers.Conv2D(width, kernel, padding="same", use_bias=norm is None, name=name)(x)
    if norm == "batch":
        x = BatchNormalization(epsilon=FPN_BN_EPSILON, momentum=FPN_BN_MOMENTUM, name=f"{name}_bn")(x)
    return x


def feature_pyramid(features: Sequence, strides: Sequence[int], width: int = 256, names: Sequence[str] | None = None,
                    norm: str | None = None, name: str = "fpn") -> list:
    """torchvision's ``FeaturePyramidNetwork`` on a list of maps, finest first: laterals, top-down, 3x3 outputs.

    Each map gets a 1x1 lateral conv; from the coarsest down, the merged map
    above is upsampled (nearest) to the lateral's size and added; a 3x3 conv
    gives each output. Neighbouring maps may share a stride (MobileNetV3's last
    two stages): the top-down path then adds without resizing, as
    torchvision's ``interpolate(size=lateral size)``.

    Args:
        features: (B, H_i, W_i, C_i) maps, finest first.
        strides: their output strides (each a multiple of the one before).
        width: output channels.
        names: suffix of each level's layers (default ``l0``, ``l1``, ...):
            ``{name}_lateral_{suffix}``, ``{name}_output_{suffix}``,
            ``{name}_up_{suffix of the coarser map}``, ``{name}_merge_{suffix}``.
        norm: None (biased convs) or "batch" (bias-free convs + BatchNorm
            ``{conv}_bn``: torchvision's ``norm_layer=nn.BatchNorm2d``, v2).
        name: layer-name prefix.

    Returns:
        The output maps, finest first, ``width`` channels each.

    Example:
        >>> maps = [keras.Input((8, 8, 16)), keras.Input((4, 4, 32)), keras.Input((4, 4, 64))]
        >>> [tuple(o.shape[1:]) for o in feature_pyramid(maps, (16, 32, 32), width=8)]
        [(8, 8, 8), (4, 4, 8), (4, 4, 8)]
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; received {norm!r}.")
    names = list(names) if names is not None else [f"l{i}" for i in range(len(features))]
    if not features or len(strides) != len(features) or len(names) != len(features):
        raise ValueError(f"feature_pyramid needs one stride and name per map; received {len(features)} maps, "
                         f"{len(strides)} strides, {len(names)} names.")
    laterals = [_conv_norm(f, width, 1, norm, f"{name}_lateral_{n}") for f, n in zip(features, names)]
    merged = [None] * len(features)
    merged[-1] = laterals[-1]
    for i in reversed(range(len(features) - 1)):
        factor, rest = divmod(int(strides[i + 1]), int(strides[i]))
        if rest or factor < 1:
            raise ValueError(f"strides must grow by whole factors, finest first; received {list(strides)}.")
        above = merged[i + 1]
        if factor > 1:
            above = keras.layers.UpSampling2D(factor, interpolation="nearest", name=f"{name}_up_{names[i + 1]}")(above)
        merged[i] = keras.layers.Add(name=f"{name}_merge_{names[i]}")([laterals[i], above])
    return [_conv_norm(m, width, 3, norm, f"{name}_output_{n}") for m, n in zip(merged, names)]


def fpn(features: dict, min_level: int = 3, max_level: int = 7, width: int = 256,
        extra_from: str = "output", name: str = "fpn", extra_padding: str = "same", norm: str | None = None) -> dict:
    """Top-down FPN with optional extra coarse levels (RetinaNet's P6/P7).

    Backbone levels ``min_level .. 5`` (or up to the coarsest given) get 1x1
    lateral convs, nearest-neighbour top-down addition and 3x3 output convs
    (:func:`feature_pyramid`). Levels above the backbone's are stride-2 3x3 convs: from the backbone's
    coarsest map (``extra_from="input"``, the RetinaNet paper's P6 from C5)
    or from the coarsest FPN output (``"output"``, torchvision's
    ``LastLevelP6P7`` when in_channels == out_channels); P7 applies ReLU first.

    Args:
        features: {"P2": ..., "P5": ...} backbone features.
        min_level, max_level: output levels.
        width: output channels.
        extra_from: "input" or "output", see above.
        extra_padding: padding of the stride-2 extra convs: "same" (TensorFlow:
            (0, 1) on even sizes) or "symmetric" (1 on every side, PyTorch's
            ``padding=1``; needed to reproduce torchvision checkpoints).
        norm: None or "batch" after the lateral and output convs (see
            :func:`feature_pyramid`).

    Returns:
        {"P{min_level}": ..., "P{max_level}": ...} with ``width`` channels each.
    """
    if extra_padding not in ("same", "symmetric"):
        raise ValueError(f"extra_padding must be 'same' or 'symmetric'; received {extra_padding!r}.")
    if extra_from not in ("input", "output"):
        raise ValueError(f"extra_from must be 'input' or 'output'; received {extra_from!r}.")
    backbone_levels = sorted(int(k[1:]) for k in features if int(k[1:]) >= min_level)
    if not backbone_levels:
        raise ValueError(f"The backbone gives levels {sorted(features)}; FPN needs some >= P{min_level}.")
    top = backbone_levels[-1]
    maps = feature_pyramid([features[f"P{lvl}"] for lvl in backbone_levels], [2 ** lvl for lvl in backbone_levels],
                           width, [f"p{lvl}" for lvl in backbone_levels], norm, name)
    outputs = {f"P{lvl}": m for lvl, m in zip(backbone_levels, maps) if lvl <= max_level}
    x = features[f"P{top}"] if extra_from == "input" else maps[-1]
    for lvl in range(top + 1, max_level + 1):
        if lvl > top + 1:
            x = keras.layers.ReLU(name=f"{name}_relu_p{lvl}")(x)
        if extra_padding == "symmetric":
            x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad_p{lvl}")(x)
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same" if extra_padding == "same" else "valid",
                                name=f"{name}_extra_p{lvl}")(x)
        outputs[f"P{lvl}"] = x
    return outputs
