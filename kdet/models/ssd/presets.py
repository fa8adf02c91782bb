"""SSD configurations per backbone: sources, extra blocks, default boxes, preprocessing."""

from __future__ import annotations

from kdet.necks.ssd_extra import SSD300_EXTRAS, SSD512_EXTRAS

# Box-coder variances of SSD (Caffe prior_variance; torchvision weights (10, 10, 5, 5)).
SSD_VARIANCES = (0.1, 0.1, 0.2, 0.2)
# Default-box aspect ratios per level (Liu et al. 2016, section 3): {1, 2, 1/2} on the first
# and last two sources, {1, 2, 3, 1/2, 1/3} elsewhere (1 and sqrt(s_k s_k+1) always added).
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD512_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
# Caffe SSD's steps ("step" of each prior-box layer): centres at (i + 0.5) * step.
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD512_STEPS = (8, 16, 32, 64, 128, 256, 512)
# Scale range of the default boxes (paper: s_min 0.2, s_max 0.9; 0.15 for SSD512).
SSD300_SCALES = (0.2, 0.9)
SSD512_SCALES = (0.15, 0.9)
# torchvision / Caffe SSD subtract the ImageNet mean from 0..255 RGB pixels (no std).
VGG_MEAN_RGB = (123.0, 117.0, 104.0)
# Matching and inference (Liu et al. 2016, section 2.2-3; torchvision SSD: nms 0.45,
# score 0.01, 200 detections, 400 candidates).
SSD_NMS_IOU = 0.45
SSD_SCORE_THRESHOLD = 0.01

PRESETS = {
    "vgg16": dict(sizes={300: dict(extras=SSD300_EXTRAS, steps=SSD300_STEPS, aspect_ratios=SSD300_ASPECT_RATIOS,
                                   scales=SSD300_SCALES),
                         512: dict(extras=SSD512_EXTRAS, steps=SSD512_STEPS, aspect_ratios=SSD512_ASPECT_RATIOS,
                                   scales=SSD512_SCALES)},
                  default_size=300, extras=SSD300_EXTRAS, separable=False,
                  preprocessing=dict(scale=1.0, mean=VGG_MEAN_RGB)),
    # SSDLite (Sandler et al. 2018, section 6.2): MobileNetV2 stride 16 and 32 + 4 separable extras.
    "mobilenet_v2": dict(sizes={}, default_size=320, separable=True, head_block="separable",
                         extras=((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (64, 128, 3, 2, 1)),
                         preprocessing=dict(scale=1.0 / 127.5, mean=(1.0, 1.0, 1.0))),
    # SSDLite on MobileNetV3-Large (Howard et al. 2019, section 6.3; torchvision ssdlite320_mobilenet_v3_large):
    # the C4 expansion (stride 16) and the last conv, the reduced tail (Table 6), 4 separable extras with BN +
    # ReLU6, depthwise + BN + ReLU6 then 1x1 heads, 6 default boxes per location ([2, 3] everywhere) on scales
    # 0.2-0.95, BN eps 1e-3 / momentum 0.97 (torch 0.03), pixels to [-1, 1] ((x / 255 - 0.5) / 0.5).
    "mobilenet_v3_large": dict(sizes={}, default_size=320, separable=True, head_block="depthwise_bn",
                               extras=((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1),
                                       (64, 128, 3, 2, 1)),
                               aspect_ratios=((2, 3),) * 6, scales=(0.2, 0.95), reduced_tail=True,
                               backbone_options=dict(bn_epsilon=1e-3, bn_momentum=0.97),
                               preprocessing=dict(scale=1.0 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))),
    # kdet's tiny CNN: P3-P5 + two extras (16, 8, 4, 2, 1 at 128 px), the paper's scale range
    # (0.2-0.9 relative to the image), and two hidden 64-channel convs per head level because the
    # tiny sources are only 6-10 convs from the pixels (VGG's conv4_3 is 10 convs of 256-512).
    # Measured on the issue-4 protocol (docs/models/ssd.md): held-out AP50 0.47 with scales
    # 0.1-0.9 and the paper's single-conv head, 0.77 with 0.2-0.9, 0.86 with both.
    "tiny": dict(sizes={}, default_size=128, separable=False, extras=((64, 128, 3, 2, 1), (64, 128, 3, 2, 1)),
                 aspect_ratios=((2,), (2, 3), (2, 3), (2,), (2,)), scales=SSD300_SCALES, head_depth=2,
                 preprocessing=dict(scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0))),
}
BACKBONE_NAMES = tuple(PRESETS)
# Head blocks (SSDConfig.head_block): a 3x3 conv (the paper), a Keras SeparableConv2D, or SSDLite's
# depthwise 3x3 + BN + ReLU6 then 1x1 (Sandler et al. 2018 sec. 6.2, torchvision's _prediction_block).
HEAD_BLOCKS = ("conv", "separable", "depthwise_bn")
# Backbones whose sources are the stride-16 expansion and the last layer (SSDLite).
SSDLITE_SOURCES = ("P4", "P5")
