"""Prediction heads, built with the functional API."""

from kdet.heads.dense import dense_head, prior_bias
from kdet.heads.yolo import split_yolo_outputs, yolo_head
