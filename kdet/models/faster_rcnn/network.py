"""Faster R-CNN's network (backbone taps -> FPN -> max-pool level -> RPN head) and its RPN anchors.

The FPN reads the backbone outputs named by ``fpn_inputs`` (finest first):
pyramid keys of the backbone ({"P2".."P5"} of ResNet) or names of layers
inside it (torchvision's MobileNetV3 FPN reads block 12's output and the last
conv, both at stride 32). One more level is the last FPN output max-pooled
with stride 2 (torchvision's ``LastLevelMaxPool``). The levels' output keys
are "P2".."P6" when the inputs are P-keys, else "fpn_0", "fpn_1", ... and
"fpn_pool" (torchvision's "0", "1", "pool"); their strides come from the graph itself (one probe canvas).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import keras
import numpy as np

from kdet.heads.rpn import rpn_head
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.necks.fpn import feature_pyramid

# A canvas large enough for every stride up to 512 (strides = probe / feature size).
PROBE_SIDE = 512


def tap_backbone(backbone_model: keras.Model, names: Sequence[str]) -> keras.Model:
    """The backbone returning ``names``: its own outputs (pyramid keys) or the outputs of layers inside it."""
    outputs = backbone_model.output if isinstance(backbone_model.output, dict) else {}
    if all(name in outputs for name in names):
        return backbone_model
    taps = {}
    for name in names:
        if name in outputs:
            taps[name] = outputs[name]
            continue
        try:
            taps[name] = backbone_model.get_layer(name).output
        except ValueError:
            raise ValueError(f"fpn_inputs names {name!r}, neither an output {sorted(outputs)} nor a layer of the "
                             f"backbone {backbone_model.name!r}.") from None
    return keras.Model(backbone_model.input, taps, name=backbone_model.name)


def pyramid_keys(fpn_inputs: Sequence[str]) -> list[str]:
    """Output keys of the FPN levels, finest first, the max-pooled level last (see the module docstring)."""
    levels = [re.fullmatch(r"P(\d+)", name) for name in fpn_inputs]
    if all(levels):
        return list(fpn_inputs) + [f"P{int(levels[-1].group(1)) + 1}"]
    return [f"fpn_{i}" for i in range(len(fpn_inputs))] + ["fpn_pool"]


def build_network(backbone_model: keras.Model, size, fpn_inputs: Sequence[str], fpn_width: int, num_anchors: int,
                  fpn_norm: str | None = None, rpn_depth: int = 1) -> tuple[keras.Model, list[int]]:
    """Normalised images -> {pyramid keys..., "rpn_cls" (B, A), "rpn_box" (B, A, 4)}, and each level's stride.

    Args:
        backbone_model: the feature extractor.
        size: (height, width) of the canvas, or (None, None).
        fpn_inputs: backbone outputs or layer names the FPN reads, finest first.
        fpn_width: FPN channels.
        num_anchors: RPN anchors per location.
        fpn_norm: None or "batch" (torchvision's v2 FPN).
        rpn_depth: 3x3 convs of the RPN head.

    Returns:
        (network, strides of the FPN levels in ``pyramid_keys`` order).
    """
    tapped = tap_backbone(backbone_model, fpn_inputs)
    side = size[0] or PROBE_SIDE  # a fixed canvas is the only size a fixed-size backbone takes
    probe = tapped.compute_output_shape((None, side, size[1] or PROBE_SIDE, 3))
    strides = [int(round(side / int(probe[name][1]))) for name in fpn_inputs]
    keys = pyramid_keys(fpn_inputs)
    inputs = keras.Input((*size, 3), name="images")
    feats = tapped(inputs)
    # Layer names: fpn_lateral_p2 .. (P-keys, kdet's v1 names) or fpn_lateral_0 .. (torchvision's level names).
    suffixes = [k.lower() if k.startswith("P") else k.removeprefix("fpn_") for k in keys]
    maps = feature_pyramid([feats[name] for name in fpn_inputs], strides, fpn_width, suffixes[:-1], fpn_norm)
    # torchvision's LastLevelMaxPool: max_pool2d(kernel 1, stride 2) of the coarsest output.
    pool_name = "fpn_pool" if suffixes[-1] == "pool" else f"fpn_pool_{suffixes[-1]}"
    maps.append(keras.layers.MaxPooling2D(1, strides=2, name=pool_name)(maps[-1]))
    rpn = rpn_head(maps, num_anchors, depth=rpn_depth)
    network = keras.Model(inputs, {**dict(zip(keys, maps)), **rpn}, name="network")
    return network, strides + [2 * strides[-1]]


def roi_levels(strides: Sequence[int]) -> tuple[int, int]:
    """(k_min, k_max) of torchvision's ``MultiScaleRoIAlign``: the levels of the first and last non-pooled maps.

    RoIs go to the map ``level - k_min`` of the list, so maps sharing a stride
    (MobileNetV3's) leave every RoI on the first one, as torchvision's ``LevelMapper``.
    """
    levels = [int(round(math.log2(s))) for s in strides[:-1]]
    return levels[0], levels[-1]


def sizes_of_level(anchor_sizes, level: int) -> tuple[float, ...]:
    """The anchor sizes of one level: one number or a tuple of them."""
    entry = anchor_sizes[level]
    return tuple(float(s) for s in entry) if isinstance(entry, (tuple, list)) else (float(entry),)


def rpn_anchors(canvas, feature_shapes, strides, anchor_sizes, aspect_ratios, scale: float = 1.0) -> np.ndarray:
    """torchvision ``AnchorGenerator`` anchors (A, 4) of a canvas: per location ratio-major, then size.

    Centres on the grid corners (offset 0), spaced by ``canvas // feature size``
    per axis, zero-centred base anchors rounded; ``scale`` multiplies the sizes
    (kdet's ``relative_sizes``).
    """
    shapes = [[(s * scale / r ** 0.5, s * scale * r ** 0.5) for r in aspect_ratios
               for s in sizes_of_level(anchor_sizes, level)] for level in range(len(feature_shapes))]
    generator = AnchorGenerator(strides=strides, anchor_shapes=shapes, offset=0.0, round_base_anchors=True,
                                stride_from_grid=True, name="anchor_generator")
    return generator.generate(*canvas, feature_shapes=feature_shapes)
