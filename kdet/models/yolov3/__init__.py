"""YOLOv3 (Redmon and Farhadi 2018): ``kdet.models.YOLOV3``."""

from kdet.models.yolov3.model import YOLOV3, scale_anchors
from kdet.models.yolov3.presets import ANCHOR_IMAGE_SIZE, PRESETS, YOLOV3_TINY_COCO_ANCHORS

__all__ = ["YOLOV3", "scale_anchors", "ANCHOR_IMAGE_SIZE", "PRESETS", "YOLOV3_TINY_COCO_ANCHORS"]
