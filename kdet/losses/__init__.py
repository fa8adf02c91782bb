"""kdet.losses: detection losses as serialisable ``keras.losses.Loss`` subclasses.

Each class has an element-wise functional twin for use inside
``Detector.compute_loss`` with per-anchor weights.
"""

from kdet.losses.focal import FocalLoss, focal_loss
from kdet.losses.iou import IoULoss, iou_loss
from kdet.losses.repulsion import RepulsionLoss, pack_repulsion_targets, smooth_ln
from kdet.losses.smooth_l1 import SmoothL1Loss, smooth_l1_loss

__all__ = [
    "FocalLoss", "focal_loss", "SmoothL1Loss", "smooth_l1_loss", "IoULoss", "iou_loss",
    "RepulsionLoss", "pack_repulsion_targets", "smooth_ln",
]
from kdet.losses.yolo import YOLOBoxLoss, yolo_box_loss  # noqa: E402
