"""YOLOv3 configurations: backbone, neck and head widths, anchors (pixels at 416)."""

from __future__ import annotations

from kdet.layers.anchor_generator import YOLOV3_COCO_ANCHORS

# Input size the official anchors are given for (yolov3.cfg width/height); anchors
# are scaled by image_size / 416 so that they stay relative to the image.
ANCHOR_IMAGE_SIZE = 416
# yolov3-tiny.cfg anchors (width, height) at 416, finest level first (masks 0,1,2 / 3,4,5).
YOLOV3_TINY_COCO_ANCHORS = (
    ((10, 14), (23, 27), (37, 58)),
    ((81, 82), (135, 169), (344, 319)),
)
# Non-maximum suppression IoU of Darknet's detector (src/detector.c: nms = .45).
YOLO_NMS_IOU = 0.45
# Objectness ignore threshold (YOLOv3 paper, section 2.1; yolov3.cfg ignore_thresh = .7
# in the released cfg, 0.5 in the paper): predictions overlapping a box by more are
# neither pushed to object nor to no-object.
YOLO_IGNORE_THRESHOLD = 0.5

# The tiny configuration trains on a few hundred images for a few hundred steps: one
# positive per box (the paper's rule) memorises them; every anchor shape with
# width/height IoU >= 0.25 (YOLOv4-style, Bochkovskiy et al. 2020) generalises.
TINY_EXTRA_POSITIVE_IOU = 0.25
# ... and no no-object loss on anchors whose cell-centred box overlaps a box by more than
# 0.5 (the 0.5 of YOLO_IGNORE_THRESHOLD, applied to anchors as RetinaNet's ignore band):
# held-out AP50 ~0.45-0.50 -> 0.61 on the synthetic generalisation bar.
TINY_ANCHOR_IGNORE_IOU = 0.5
# ... and CIoU on the decoded boxes (Zheng et al. 2020) weighted x3, with each responsible anchor's
# objectness trained towards the detached IoU of its box (YOLOv5, utils/loss.py, gr = 1): held-out AP50
# on the bar protocol 0.85 / 0.95 / 0.89 -> 0.94 / 0.97 / 0.94 at train seeds 0 / 1 / 2, AP 0.36-0.47 ->
# 0.50-0.52 (docs/training.md). CIoU fits boxes slowly at first: memorising 8 images takes ~150 steps.
TINY_BOX_LOSS, TINY_BOX_LOSS_WEIGHT, TINY_OBJECTNESS_TARGET = "ciou", 3.0, "iou"


def stride_anchors(strides=(8, 16, 32), size_per_stride: float = 2.0, aspect_ratios=(0.5, 1.0, 2.0),
                   image_size: int = 128, anchor_image_size: int = ANCHOR_IMAGE_SIZE):
    """Per level (finest first) anchor (w, h) of side ``size_per_stride * stride`` and each h/w ratio.

    Given in pixels of ``anchor_image_size`` for a network of ``image_size``, so
    that ``scale_anchors`` maps them back to ``size_per_stride * stride`` pixels.
    """
    scale = anchor_image_size / image_size
    sides = [size_per_stride * stride * scale for stride in strides]
    return tuple(tuple((round(side / r ** 0.5, 2), round(side * r ** 0.5, 2)) for r in aspect_ratios)
                 for side in sides)


# kdet's tiny configuration: COCO's anchors scaled to 128 px put three of nine shapes below
# 10 px and leave the stride-8 level idle; anchors of 2 x stride with ratios 1:2, 1:1, 2:1
# (the foundation's TinyAnchorDetector: 16 / 32 / 64 px at 128; RetinaNet's 4 x stride at
# full size, Lin et al. 2017) use every level. Given at 416 like the cfg's anchors, so they
# stay relative to the image (1/8, 1/4, 1/2 of it: 16 / 32 / 64 px at 128).
TINY_ANCHORS = stride_anchors()

# levels are coarsest first (the order of the cfg); anchors finest first.
PRESETS = {
    # yolov3.cfg: Darknet-53, three scales.
    "darknet53": dict(levels=(5, 4, 3), neck_widths=(512, 256, 128), lateral_widths=(256, 128),
                      neck_convs=(5, 5, 5), head_widths=(1024, 512, 256), anchors=YOLOV3_COCO_ANCHORS,
                      bn_momentum=0.99),
    # yolov3-tiny.cfg: 7-conv trunk, two scales.
    "darknet_tiny": dict(levels=(5, 4), neck_widths=(256, 128), lateral_widths=(128,), neck_convs=(1, 0),
                         head_widths=(512, 256), anchors=YOLOV3_TINY_COCO_ANCHORS, bn_momentum=0.99),
    # kdet's tiny CNN (tests, examples, CPU experiments); BN momentum 0.9 so that the
    # inference statistics settle within a few hundred steps.
    "tiny": dict(levels=(5, 4, 3), neck_widths=(64, 48, 32), lateral_widths=(32, 32), neck_convs=(3, 3, 3),
                 head_widths=(128, 96, 64), anchors=TINY_ANCHORS, bn_momentum=0.9,
                 extra_positive_iou=TINY_EXTRA_POSITIVE_IOU, anchor_ignore_iou=TINY_ANCHOR_IGNORE_IOU,
                 box_loss=TINY_BOX_LOSS, box_loss_weight=TINY_BOX_LOSS_WEIGHT,
                 objectness_target=TINY_OBJECTNESS_TARGET),
}
BACKBONE_NAMES = tuple(PRESETS)
