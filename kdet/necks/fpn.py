"""Feature Pyramid Network (Lin et al. 2017, "Feature Pyramid Networks for Object Detection")."""

from __future__ import annotations

import keras


def fpn(features: dict, min_level: int = 3, max_level: int = 7, width: int = 256,
        extra_from: str = "output", name: str = "fpn", extra_padding: str = "same") -> dict:
    """Top-down FPN with optional extra coarse levels (RetinaNet's P6/P7).

    Backbone levels ``min_level .. 5`` (or up to the coarsest given) get 1x1
    lateral convs, nearest-neighbour top-down addition and 3x3 output convs.
    Levels above the backbone's are stride-2 3x3 convs: from the backbone's
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
    laterals = {lvl: keras.layers.Conv2D(width, 1, name=f"{name}_lateral_p{lvl}")(features[f"P{lvl}"])
                for lvl in backbone_levels}
    merged = {top: laterals[top]}
    for lvl in reversed(backbone_levels[:-1]):
        up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up_p{lvl + 1}")(merged[lvl + 1])
        merged[lvl] = keras.layers.Add(name=f"{name}_merge_p{lvl}")([laterals[lvl], up])
    outputs = {f"P{lvl}": keras.layers.Conv2D(width, 3, padding="same", name=f"{name}_output_p{lvl}")(merged[lvl])
               for lvl in backbone_levels if lvl <= max_level}
    x = features[f"P{top}"] if extra_from == "input" else outputs[f"P{top}"]
    for lvl in range(top + 1, max_level + 1):
        if lvl > top + 1:
            x = keras.layers.ReLU(name=f"{name}_relu_p{lvl}")(x)
        if extra_padding == "symmetric":
            x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad_p{lvl}")(x)
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same" if extra_padding == "same" else "valid",
                                name=f"{name}_extra_p{lvl}")(x)
        outputs[f"P{lvl}"] = x
    return outputs
