"""Faster R-CNN with FPN (Ren et al. 2015; Lin et al. 2017) and its truncated-SVD head compression."""

from kdet.heads.rpn_proposals import generate_proposals  # moved to kdet.heads (shared with Mask R-CNN)
from kdet.models.faster_rcnn.compress import compress_box_head
from kdet.models.faster_rcnn.model import FasterRCNN

__all__ = ["FasterRCNN", "compress_box_head", "generate_proposals"]
