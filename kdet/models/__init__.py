"""kdet.models."""
from kdet.models.yolov3 import YOLOV3
