"""Target assignment: matchers and label encoders."""

from kdet.targets.anchor_labeler import AnchorLabelEncoder
from kdet.targets.box_matcher import BACKGROUND, IGNORE, POSITIVE, match_boxes
from kdet.targets.yolo_assigner import YOLOAssigner
from kdet.targets.masks import mask_targets
from kdet.targets.samplers import RoITargetSampler, RPNTargetSampler, balanced_sample
