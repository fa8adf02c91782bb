"""YOLOv3's top-down neck: conv sets per scale, 1x1 lateral + 2x upsampling + concatenation.

Follows ``yolov3.cfg`` (layers 75-79, 84-91, 96-103) and ``yolov3-tiny.cfg``
(layers 13, 18-20): at the coarsest level a set of alternating 1x1 / 3x3
convs; each finer level takes the previous level's output through a 1x1
"lateral" conv, upsamples it 2x and concatenates it (first) with the backbone
feature (second, as Darknet's ``[route] layers = -1, 61`` does), then applies
its own conv set.
"""

from __future__ import annotations

from typing import Sequence

import keras

from kdet.backbones.darknet import darknet_conv

# yolov3.cfg: 5 convs per scale with 512 / 256 / 128 channels (1x1) and twice that (3x3);
# the laterals (layers 84, 96) have 256 and 128 channels.
YOLOV3_NECK_WIDTHS = (512, 256, 128)
YOLOV3_LATERAL_WIDTHS = (256, 128)
YOLOV3_NECK_CONVS = (5, 5, 5)


def yolo_fpn_conv_names(levels: Sequence[int], num_convs: Sequence[int], name: str = "yolo_fpn") -> list[list[str]]:
    """Per level (coarsest first), the conv name prefixes in Darknet cfg order."""
    names = []
    for i, (level, n) in enumerate(zip(levels, num_convs)):
        level_names = [f"{name}_p{level}_lateral"] if i > 0 else []
        names.append(level_names + [f"{name}_p{level}_conv{j}" for j in range(n)])
    return names


def yolo_fpn(features: dict, levels: Sequence[int] = (5, 4, 3), widths: Sequence[int] = YOLOV3_NECK_WIDTHS,
             lateral_widths: Sequence[int] = YOLOV3_LATERAL_WIDTHS, num_convs: Sequence[int] = YOLOV3_NECK_CONVS,
             bn_momentum: float = 0.99, name: str = "yolo_fpn") -> dict:
    """Builds the YOLOv3 neck on backbone features.

    Args:
        features: ``{"P3": ..., "P4": ..., "P5": ...}`` backbone outputs.
        levels: pyramid levels, coarsest first (5, 4, 3).
        widths: channels of the 1x1 convs of each level's conv set (3x3 convs
            have twice as many).
        lateral_widths: channels of the 1x1 conv before upsampling into each
            finer level (one per level after the first).
        num_convs: convs in each level's set (5 in YOLOv3; yolov3-tiny: 1, 0).
        bn_momentum: batch-norm momentum.
        name: layer-name prefix.

    Returns:
        ``{"P5": ..., "P4": ..., "P3": ...}`` (the levels given) feeding the head.

    Example:
        >>> import keras
        >>> feats = {f"P{l}": keras.Input((64 // 2**l, 64 // 2**l, 8)) for l in (3, 4, 5)}
        >>> sorted(yolo_fpn(feats, widths=(8, 8, 8), lateral_widths=(4, 4)))
        ['P3', 'P4', 'P5']
    """
    levels = [int(level) for level in levels]
    if not (len(widths) == len(num_convs) == len(levels) and len(lateral_widths) == len(levels) - 1):
        raise ValueError(
            f"yolo_fpn needs one width and conv count per level and one lateral width per level after the "
            f"first; received levels {levels}, widths {tuple(widths)}, num_convs {tuple(num_convs)}, "
            f"lateral_widths {tuple(lateral_widths)}."
        )
    missing = [f"P{level}" for level in levels if f"P{level}" not in features]
    if missing:
        raise ValueError(f"yolo_fpn needs backbone features {missing}; received {sorted(features)}.")
    outputs = {}
    previous = None
    for i, level in enumerate(levels):
        x = features[f"P{level}"]
        if previous is not None:
            lateral = darknet_conv(previous, lateral_widths[i - 1], 1, name=f"{name}_p{level}_lateral",
                                   bn_momentum=bn_momentum)
            up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_p{level}_up")(lateral)
            x = keras.layers.Concatenate(name=f"{name}_p{level}_concat")([up, x])
        for j in range(num_convs[i]):
            # Alternating 1x1 (width) and 3x3 (2 x width) convs, as in the cfg.
            size, filters = (1, widths[i]) if j % 2 == 0 else (3, 2 * widths[i])
            x = darknet_conv(x, filters, size, name=f"{name}_p{level}_conv{j}", bn_momentum=bn_momentum)
        outputs[f"P{level}"] = x
        previous = x
    return outputs
