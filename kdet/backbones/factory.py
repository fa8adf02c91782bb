"""The one backbone factory: a name (or a Keras model) -> pyramid feature model + its pixel normalisation.

Every builder resolves ``backbone=`` here, so a name means the same network
and the same input normalisation in every architecture. A backbone maps
normalised images (B, H, W, 3) to ``{"P2": stride 4, ..., "P5": stride 32}``
(a subset for some); ``ImagePreprocessing`` applies the normalisation
returned with it (``(x * scale - mean) / std``).

Example:
    >>> model, normalisation = build_backbone("tiny", (128, 128))
    >>> sorted(model.output), normalisation["scale"]
    (['P2', 'P3', 'P4', 'P5'], 0.00392156862745098)
"""

from __future__ import annotations

import difflib
from typing import Callable

import keras

from kdet.backbones.darknet import darknet53, darknet_tiny
from kdet.backbones.efficientnet import EFFICIENTNET_BUILDERS, efficientnet_backbone
from kdet.backbones.mobilenet import mobilenet_v2
from kdet.backbones.mobilenet_v3 import mobilenet_v3_large
from kdet.backbones.resnet import resnet_backbone
from kdet.backbones.tiny import tiny_backbone
from kdet.backbones.vgg import vgg16_ssd

# ImageNet statistics of torchvision and automl (mean_rgb / stddev_rgb divided by 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe / torchvision SSD: 0..255 RGB minus the ImageNet mean, no std.
VGG_MEAN_RGB = (123.0, 117.0, 104.0)

UNIT = {"scale": 1.0 / 255.0}  # 0..1 pixels (Darknet, kdet's tiny CNN, custom models)
IMAGENET = {"scale": 1.0 / 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
MINUS_ONE_ONE = {"scale": 1.0 / 127.5, "mean": (1.0, 1.0, 1.0)}  # keras.applications MobileNet: [-1, 1]
CAFFE_VGG = {"scale": 1.0, "mean": VGG_MEAN_RGB}


def _registry() -> dict[str, tuple[Callable, dict]]:
    builders = {
        "tiny": (lambda size, **kw: tiny_backbone(size), UNIT),
        "resnet50": (lambda size, **kw: resnet_backbone(50, size, **kw), IMAGENET),
        "resnet101": (lambda size, **kw: resnet_backbone(101, size, **kw), IMAGENET),
        "vgg16": (lambda size, **kw: vgg16_ssd(size, **kw), CAFFE_VGG),
        "mobilenet_v2": (lambda size, **kw: mobilenet_v2(size, **kw), MINUS_ONE_ONE),
        # torchvision's MobileNetV3 (ImageNet mean / std, as its classifier and Faster R-CNN; SSDLite
        # overrides it with [-1, 1] in the SSD presets).
        "mobilenet_v3_large": (lambda size, **kw: mobilenet_v3_large(size, **kw), IMAGENET),
        "darknet53": (lambda size, **kw: darknet53(size, **kw), UNIT),
        "darknet_tiny": (lambda size, **kw: darknet_tiny(size, **kw), UNIT),
    }
    for variant in EFFICIENTNET_BUILDERS:
        builders[f"efficientnet_{variant}"] = (
            lambda size, v=variant, **kw: efficientnet_backbone(v, size, **kw), IMAGENET)
    return builders


#: Old names some builders accepted, kept working.
ALIASES = {"resnet50_fpn": "resnet50", "resnet101_fpn": "resnet101"}


def backbone_names() -> list[str]:
    """Every backbone name ``build_backbone`` knows."""
    return sorted(_registry())


def canonical_name(backbone) -> str | None:
    """The factory name of ``backbone`` ("resnet50_fpn" -> "resnet50"), None for a model."""
    if isinstance(backbone, keras.Model):
        return None
    name = str(backbone).lower()
    return ALIASES.get(name, name)


def default_normalization(backbone) -> dict:
    """The pixel normalisation a backbone name expects (0..1 pixels for custom models)."""
    name = canonical_name(backbone)
    if name is None:
        return dict(UNIT)
    return dict(_registry()[check_backbone(backbone)][1])


def check_backbone(backbone, allowed=None) -> str:
    """Validates a backbone name (optionally against the ones an architecture supports)."""
    name = canonical_name(backbone)
    known = list(allowed) if allowed is not None else backbone_names()
    if name not in known:
        close = difflib.get_close_matches(str(backbone), known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown backbone {backbone!r}; expected one of {known} or a keras.Model returning "
                         f"pyramid features {{'P3': ..., 'P5': ...}}.{hint}")
    return name


def build_backbone(backbone, image_size, allowed=None, **options) -> tuple[keras.Model, dict]:
    """Resolves ``backbone`` into (feature model, pixel normalisation of ``ImagePreprocessing``).

    Args:
        backbone: a name of ``backbone_names()`` or a ``keras.Model`` mapping
            normalised images to a dict of pyramid features {"P3": ..., ...}.
        image_size: (height, width) of the network input, or (None, None) for
            a fully convolutional model whose canvas follows the image.
        allowed: the names an architecture supports (default: all).
        **options: builder options (e.g. ``bn_momentum`` for Darknet).

    Returns:
        (model, {"scale", "mean", "std"} subset): a custom model gets 0..1 pixels.
    """
    if isinstance(backbone, keras.Model):
        outputs = backbone.output
        if not isinstance(outputs, dict) or not any(str(k).startswith("P") for k in outputs):
            raise ValueError("A backbone model must return a dict of pyramid features {'P3': ..., 'P5': ...}; "
                             f"received outputs {type(outputs).__name__}.")
        return backbone, dict(UNIT)
    name = check_backbone(backbone, allowed)
    builder, normalization = _registry()[name]
    return builder(image_size, **options), dict(normalization)
