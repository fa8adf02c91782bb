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
                 head_widths=(128, 96, 64), anchors=YOLOV3_COCO_ANCHORS, bn_momentum=0.9,
                 extra_positive_iou=TINY_EXTRA_POSITIVE_IOU),
}
BACKBONE_NAMES = tuple(PRESETS)
