"""IoU-family box losses: ``1 - IoU``, ``1 - GIoU``, ``1 - DIoU``, ``1 - CIoU``.

IoU loss: Yu et al. 2016 ("UnitBox"); GIoU: Rezatofighi et al. 2019, section 3;
DIoU and CIoU: Zheng et al. 2020 ("Distance-IoU Loss"), eqs. (7) and (10).
The geometry lives in :func:`kdet.ops.boxes.aligned_iou`, which never returns
NaN and has finite gradients for empty, degenerate and identical boxes.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.ops.boxes import IOU_MODES, aligned_iou
from kdet.validation import check_box_format


def _check_mode(mode: str) -> str:
    if mode not in IOU_MODES:
        raise ValueError(f"mode must be one of {IOU_MODES}; received {mode!r}.")
    return mode


def iou_loss(y_true, y_pred, mode: str = "iou", bounding_box_format: str = "xyxy"):
    """Element-wise ``1 - IoU-family(y_true, y_pred)`` of aligned boxes.

    Args:
        y_true: (..., 4) target boxes in ``bounding_box_format``.
        y_pred: (..., 4) predicted boxes, same format, any float dtype.
        mode: "iou" | "giou" | "diou" | "ciou".
        bounding_box_format: any ``keras.utils.bounding_boxes`` format
            (``rel_*`` formats are read on a unit image).

    Returns:
        (...) float32 loss in [0, 1] for "iou", [0, 2] for "giou", [0, 2) for
        "diou" and about [0, 2.25] for "ciou".

    Example:
        >>> round(float(iou_loss([0., 0, 2, 2], [1., 0, 3, 2])), 4)   # IoU = 1/3
        0.6667
    """
    return 1.0 - aligned_iou(y_pred, y_true, mode=_check_mode(mode),
                             bounding_box_format=bounding_box_format)


@keras.saving.register_keras_serializable(package="kdet")
class IoULoss(keras.losses.Loss):
    """``1 - IoU`` (or GIoU / DIoU / CIoU) between aligned predicted and target boxes.

    Args:
        mode: "iou" (UnitBox, Yu 2016) | "giou" (Rezatofighi 2019) |
            "diou" | "ciou" (Zheng 2020).
        bounding_box_format: format of both ``y_true`` and ``y_pred``.
        reduction, name, dtype: as in ``keras.losses.Loss``.

    Call arguments:
        y_true: (B, A, 4) target boxes (decoded, not deltas).
        y_pred: (B, A, 4) predicted boxes, any float dtype.
        sample_weight: (B, A) anchor weights: 0 for background and ignored
            anchors. Their boxes may be anything finite (zeros are fine:
            empty boxes give IoU 0 and finite gradients).

    Returns:
        The reduced float32 loss, one value per box before reduction.

    Example:
        >>> loss = IoULoss(mode="giou")
        >>> round(float(loss([[0., 0, 1, 1]], [[2., 0, 3, 1]])), 4)  # GIoU = 0 - 1/3
        1.3333
    """

    def __init__(self, mode: str = "iou", bounding_box_format: str = "xyxy",
                 reduction: str | None = "sum_over_batch_size", name: str = "iou_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.mode = _check_mode(mode)
        self.bounding_box_format = check_box_format(bounding_box_format)

    def call(self, y_true, y_pred):
        y_true, y_pred = tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)
        if not y_true.shape.is_compatible_with(y_pred.shape) or (
            y_pred.shape.rank is not None and y_pred.shape[-1] not in (None, 4)
        ):
            raise ValueError(
                f"IoULoss expects y_true and y_pred of the same shape (..., 4); received "
                f"y_true {y_true.shape} and y_pred {y_pred.shape}."
            )
        return iou_loss(y_true, y_pred, self.mode, self.bounding_box_format)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(mode=self.mode, bounding_box_format=self.bounding_box_format)
        return config
