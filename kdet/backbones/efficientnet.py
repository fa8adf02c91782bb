"""EfficientNet-B0..B7 backbones (Tan & Le 2019) built from ``keras.applications``.

``keras.applications.EfficientNetB*`` starts with its own ``Rescaling(1/255)``
and ``Normalization`` layers (whose statistics only exist once ImageNet
weights are loaded). kdet normalises raw pixels in ``ImagePreprocessing``
instead (``(x / 255 - mean) / std`` with ImageNet statistics, the same as
automl's ``(x - mean_rgb) / stddev_rgb``), so the backbone returned here is
the sub-graph from ``stem_conv_pad`` on: it takes normalised images.

Pyramid features are the outputs of the last block of each resolution:
stage 2 (stride 4), 3 (stride 8), 5 (stride 16) and 7 (stride 32), the
``reduction_2..5`` endpoints EfficientDet feeds to its BiFPN (automl,
``efficientdet/efficientdet_keras.py``). Layer names are keras.applications'
(``stem_conv``, ``block1a_dwconv``, ``block2a_expand_conv``, ...); automl's
``efficientnet-bN/blocks_K/...`` map to them in block order.
"""

from __future__ import annotations

import keras

from kdet.validation import check_input_size

EFFICIENTNET_BUILDERS = {
    "b0": "EfficientNetB0", "b1": "EfficientNetB1", "b2": "EfficientNetB2", "b3": "EfficientNetB3",
    "b4": "EfficientNetB4", "b5": "EfficientNetB5", "b6": "EfficientNetB6", "b7": "EfficientNetB7",
}
# Stage whose last block ends each pyramid level (stride 4, 8, 16, 32).
LEVEL_STAGES = {"P2": 2, "P3": 3, "P4": 5, "P5": 7}


def efficientnet_backbone(variant: str = "b0", image_size=(512, 512), name: str | None = None) -> keras.Model:
    """Builds an EfficientNet feature extractor without weights (no download).

    Args:
        variant: "b0" .. "b7".
        image_size: (height, width) of the normalised input (int for square).
        name: model name (default ``efficientnet_{variant}``).

    Returns:
        A functional ``keras.Model`` mapping (B, H, W, 3) ImageNet-normalised
        images to ``{"P2": stride 4, "P3": 8, "P4": 16, "P5": 32}`` features
        (B0 channels: 24, 40, 112, 320).

    Example:
        >>> model = efficientnet_backbone("b0", (64, 64))
        >>> [model.output[k].shape[-1] for k in ("P3", "P4", "P5")]
        [40, 112, 320]
    """
    variant = str(variant).lower()
    if variant not in EFFICIENTNET_BUILDERS:
        raise ValueError(f"variant must be one of {sorted(EFFICIENTNET_BUILDERS)}; received {variant!r}.")
    height, width = check_input_size(image_size)
    builder = getattr(keras.applications, EFFICIENTNET_BUILDERS[variant])
    full = builder(include_top=False, weights=None, input_shape=(height, width, 3))
    names = [layer.name for layer in full.layers]
    outputs = {}
    for level, stage in LEVEL_STAGES.items():
        last = [n for n in names if n.startswith(f"block{stage}")][-1]
        outputs[level] = full.get_layer(last).output
    # Skip keras' Rescaling/Normalization: start at the stem's padding (see the module docstring).
    start = full.get_layer("stem_conv_pad").input
    return keras.Model(start, outputs, name=name or f"efficientnet_{variant}")
