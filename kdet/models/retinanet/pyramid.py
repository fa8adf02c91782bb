"""Pieces RetinaNet and EfficientDet share: the pyramid config, anchors and class/box subnets.

Both are "backbone -> pyramid P3..P7 -> shared class / box subnets -> 9
anchors per location" detectors; they differ only in the neck and the
defaults, so the config fields and the anchor / head assembly live here once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import keras

from kdet.config import keras_field
from kdet.heads.dense import dense_head, prior_bias
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.models.single_stage import SingleStageConfig
from kdet.validation import check_image_size, check_positive_int

# Lin et al. 2017 (RetinaNet), section 4, and automl's anchors.py: 3 octave scales,
# anchor side = anchor_scale * stride * 2^(i/3) with anchor_scale 4 (32 px on P3 .. 512 px on P7).
ANCHOR_SCALE = 4.0
NUM_SCALES = 3
# The paper's levels P3-P7 (anchors 32-813 px: small to large objects of 512-1333 px images).
LEVELS = {"min_level": 3, "max_level": 7}
# The tiny preset's levels, for its 128-px canvases: P3-P7 would put the smallest anchors at 25 % of
# the side and leave P6/P7 (2x2, 1x1) larger than the image; P2-P6 (16-406 px) starts where P3
# starts on a 256-px image. Measured on the learning protocol (docs/training.md): held-out AP50
# 0.93 -> 0.99+ (RetinaNet, EfficientDet) on the standard data, 0.06-0.08 -> 0.21-0.25 on the hard data.
TINY_LEVELS = {"min_level": 2, "max_level": 6}
# Prior probability of the class subnet's bias, Lin et al. 2017, section 4.1.
PRIOR_PROBABILITY = 0.01


@dataclasses.dataclass(frozen=True, kw_only=True)
class PyramidConfig(SingleStageConfig):
    """Settings shared by RetinaNet and EfficientDet (pyramid levels, anchors, heads).

    Args:
        backbone: a name of ``kdet.backbones.factory`` or a ``keras.Model``.
        min_level, max_level: pyramid levels (None: the preset's, P3-P7; the
            tiny preset P2-P6, see ``TINY_LEVELS``).
        fpn_width, head_depth: neck / subnet channels and subnet depth
            (None: the preset of the backbone).
        anchor_scale, num_scales, aspect_ratios: anchors of side
            ``anchor_scale * stride * 2^(i / num_scales)``, ratios h / w.
        anchor_generator: an ``AnchorGenerator`` replacing the three above.
    """

    backbone: Any = keras_field("resnet50")
    min_level: int | None = None
    max_level: int | None = None
    fpn_width: int | None = None
    head_depth: int | None = None
    anchor_scale: float = ANCHOR_SCALE
    num_scales: int = NUM_SCALES
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_generator: Any = keras_field(None)
    pre_nms_top_k: int | None = 1000
    top_k_per_level: bool = True

    def validate(self):
        super().validate()
        for key in ("min_level", "max_level"):
            check_positive_int(key, getattr(self, key))
        if not 1 <= self.min_level <= self.max_level:
            raise ValueError(f"need 1 <= min_level <= max_level; received {self.min_level}, {self.max_level}.")
        for key in ("fpn_width", "head_depth", "num_scales"):
            check_positive_int(key, getattr(self, key))
        self._set("aspect_ratios", tuple(float(r) for r in self.aspect_ratios))
        self._set("anchor_scale", float(self.anchor_scale))
        if self.image_size is not None and self.fixed_canvas:
            check_image_size(self.image_size, multiple_of=2 ** min(int(self.max_level), 5))
        if self.resize == "min_max" and self.size_divisible % 2 ** min(int(self.max_level), 5):
            raise ValueError(f"size_divisible must be a multiple of {2 ** min(int(self.max_level), 5)}; "
                             f"received {self.size_divisible}.")

    def is_tiny(self) -> bool:
        return isinstance(self.backbone, str) and self.backbone.lower() == "tiny"

    def fill(self, preset: dict) -> None:
        """Sets every field left None from ``preset`` (image_size only for fixed-canvas rules)."""
        for key, value in preset.items():
            if key == "image_size" and self.resize in ("min_max", "none"):
                continue
            if key in self.__dataclass_fields__ and getattr(self, key) is None:
                self._set(key, value)


def level_strides(min_level: int, max_level: int) -> list[int]:
    """Strides of pyramid levels P{min_level}..P{max_level}: 2^level."""
    return [2 ** lvl for lvl in range(min_level, max_level + 1)]


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
    strides = level_strides(min_level, max_level)
    return AnchorGenerator(
        strides=strides, sizes=[anchor_scale * s for s in strides],
        scales=[2 ** (i / num_scales) for i in range(num_scales)], aspect_ratios=aspect_ratios,
        offset=offset, order=order, round_base_anchors=round_base_anchors, name="anchor_generator",
    )


def config_anchor_generator(cfg: PyramidConfig, order: str) -> AnchorGenerator:
    """The config's ``anchor_generator``, or the pyramid anchors of its settings."""
    anchors = cfg.anchor_generator or pyramid_anchor_generator(
        cfg.min_level, cfg.max_level, cfg.anchor_scale, cfg.num_scales, cfg.aspect_ratios, offset=0.5, order=order)
    strides = level_strides(cfg.min_level, cfg.max_level)
    if list(anchors.strides) != strides:
        raise ValueError(f"anchor_generator has strides {list(anchors.strides)}; P{cfg.min_level}-P{cfg.max_level} "
                         f"needs {strides} (set min_level / max_level to its levels).")
    return anchors


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


def pyramid_levels(pyramid: dict, cfg: PyramidConfig) -> list:
    return [pyramid[f"P{lvl}"] for lvl in range(cfg.min_level, cfg.max_level + 1)]
