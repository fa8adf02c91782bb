"""Pieces RetinaNet and EfficientDet share: backbone choice, pyramid anchors, heads, config plumbing.

Both are "backbone -> pyramid P3..P7 -> shared class/box subnets -> 9
anchors per location" detectors; they differ only in the neck and the
defaults, so everything else is assembled here once.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras

from kdet.backbones.efficientnet import EFFICIENTNET_BUILDERS, efficientnet_backbone
from kdet.backbones.resnet import resnet_backbone
from kdet.backbones.tiny import tiny_backbone
from kdet.heads.dense import dense_head, prior_bias
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.layers.image_preprocessing import ImagePreprocessing
from kdet.validation import check_image_size

# ImageNet statistics of torchvision and automl (mean_rgb / stddev_rgb divided by 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Lin et al. 2017 (RetinaNet), section 4, and automl's anchors.py: 3 octave scales,
# anchor side = anchor_scale * stride * 2^(i/3) with anchor_scale 4 (32 px on P3 .. 512 px on P7).
ANCHOR_SCALE = 4.0
NUM_SCALES = 3
# Prior probability of the class subnet's bias, Lin et al. 2017, section 4.1.
PRIOR_PROBABILITY = 0.01


def backbone_names() -> list[str]:
    """Backbone names the builders accept."""
    return ["tiny", "resnet50", "resnet101"] + [f"efficientnet_{v}" for v in EFFICIENTNET_BUILDERS]


def build_backbone(backbone, image_size) -> tuple[keras.Model, ImagePreprocessing]:
    """Resolves a backbone name or model into (feature model, matching preprocessing).

    Args:
        backbone: "tiny", "resnet50", "resnet101", "efficientnet_b0".."b7", or a
            ``keras.Model`` mapping normalised images to {"P3": ..., "P5": ...}.
        image_size: (height, width) of the network input.

    Returns:
        The backbone model and the ``ImagePreprocessing`` that turns raw
        0..255 pixels into its input (ImageNet mean/std for the ImageNet
        architectures, ``x / 255`` for "tiny" and custom models).
    """
    size = check_image_size(image_size)
    imagenet = ImagePreprocessing(size, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="preprocessing")
    if isinstance(backbone, keras.Model):
        outputs = backbone.output
        if not isinstance(outputs, dict) or not any(str(k).startswith("P") for k in outputs):
            raise ValueError("A backbone model must return a dict of pyramid features {'P3': ..., 'P5': ...}; "
                             f"received outputs {type(outputs).__name__}.")
        return backbone, ImagePreprocessing(size, name="preprocessing")
    name = str(backbone).lower()
    if name == "tiny":
        return tiny_backbone(size), ImagePreprocessing(size, name="preprocessing")
    if name in ("resnet50", "resnet101"):
        return resnet_backbone(int(name[6:]), size), imagenet
    if name.startswith("efficientnet_") and name[13:] in EFFICIENTNET_BUILDERS:
        return efficientnet_backbone(name[13:], size), imagenet
    raise ValueError(f"Unknown backbone {backbone!r}; expected one of {backbone_names()} or a keras.Model.")


def pyramid_anchor_generator(min_level: int = 3, max_level: int = 7, anchor_scale: float = ANCHOR_SCALE,
                             num_scales: int = NUM_SCALES, aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                             offset: float = 0.5, order: str = "ratio_major",
                             round_base_anchors: bool = False) -> AnchorGenerator:
    """Anchors of RetinaNet / EfficientDet: side ``anchor_scale * stride * 2^(i / num_scales)``.

    Sizes follow the strides, so they scale with the image (32..512 px on
    P3..P7 with ``anchor_scale=4``). ``aspect_ratios`` are height / width.
    automl: offset 0.5, "scale_major", ratios (1, 0.5, 2) (its (1, 2, 0.5) are
    width / height); torchvision: see ``kdet.models.retinanet.torchvision_anchor_generator``.
    """
    if not 1 <= min_level <= max_level:
        raise ValueError(f"need 1 <= min_level <= max_level; received {min_level}, {max_level}.")
    strides = [2 ** lvl for lvl in range(min_level, max_level + 1)]
    return AnchorGenerator(
        strides=strides, sizes=[anchor_scale * s for s in strides],
        scales=[2 ** (i / num_scales) for i in range(num_scales)], aspect_ratios=aspect_ratios,
        offset=offset, order=order, round_base_anchors=round_base_anchors, name="anchor_generator",
    )


def anchor_heads(levels: Sequence, num_anchors: int, num_classes: int, depth: int, width: int,
                 separable: bool = False, norm: str | None = None, activation: str = "relu",
                 bn_momentum: float = 0.99, kernel_std: float | None = 0.01) -> dict:
    """The class and box subnets shared across levels: {"box": (B, A, 4), "cls": (B, A, C)}.

    Layers are named ``cls_conv{i}``, ``cls_pred``, ``box_conv{i}``, ``box_pred``
    (+ ``{cls,box}_bn{i}_l{level}`` per-level norms), the torchvision
    ``head.{classification,regression}_head.conv.{i}.0`` / ``cls_logits`` /
    ``bbox_reg`` and automl ``class_net/class-{i}``, ``class-{i}-bn-{level}``,
    ``class-predict`` layers. Channels are anchor-major (anchor a's classes are
    channels ``a * C .. a * C + C - 1``), like both upstreams.
    """
    common = dict(depth=depth, width=width, shared=True, separable=separable, norm=norm,
                  activation=activation, bn_momentum=bn_momentum, kernel_std=kernel_std)
    cls = dense_head(levels, num_anchors, num_classes, final_bias=prior_bias(PRIOR_PROBABILITY), name="cls",
                     **common)
    box = dense_head(levels, num_anchors, 4, name="box", **common)
    return {"box": box, "cls": cls}


def check_level_image_size(image_size, max_level: int) -> tuple[int, int]:
    """The image must divide by the coarsest stride 2^max_level (the pyramid adds exact 2x maps)."""
    return check_image_size(image_size, multiple_of=2 ** int(max_level))


def serialize_backbone(backbone):
    """Backbone argument as stored in ``get_config`` (names stay names)."""
    return keras.saving.serialize_keras_object(backbone) if isinstance(backbone, keras.Model) else backbone


def deserialize_backbone(backbone):
    return keras.saving.deserialize_keras_object(backbone) if isinstance(backbone, dict) else backbone


