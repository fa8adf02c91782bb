"""RetinaNet (Lin et al. 2017): FPN + focal loss."""

from kdet.models.retinanet.retinanet import RetinaNet, RetinaNetConfig, torchvision_anchor_generator

__all__ = ["RetinaNet", "RetinaNetConfig", "torchvision_anchor_generator"]
