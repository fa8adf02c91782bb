"""Prediction heads, built with the functional API."""

from kdet.heads.dense import dense_head, prior_bias
from kdet.heads.yolo import split_yolo_outputs, yolo_head
from kdet.heads.roi_box import roi_box_head
from kdet.heads.roi_mask import roi_mask_head
from kdet.heads.rpn import rpn_head
from kdet.heads.rpn_proposals import generate_proposals
