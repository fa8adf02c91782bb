"""Mask R-CNN with FPN (He et al. 2017): Faster R-CNN with a per-class 28x28 mask branch."""

from kdet.models.mask_rcnn.model import MaskRCNN, MaskRCNNConfig

__all__ = ["MaskRCNN", "MaskRCNNConfig"]
