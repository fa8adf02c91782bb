"""AnchorDecoder: regression outputs + anchors -> xyxy boxes, inside the graph."""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.ops.box_coder import DEFAULT_SCALE_CLAMP, decode_deltas, decode_yolo
from kdet.ops.boxes import clip_boxes


@keras.saving.register_keras_serializable(package="kdet")
class AnchorDecoder(keras.layers.Layer):
    """Decodes box regressions against anchors (XLA-safe, float32 even under mixed precision).

    Args:
        variances: delta divisors, e.g. (0.1, 0.1, 0.2, 0.2) for SSD /
            Faster R-CNN's RoI head (torchvision weights (10, 10, 5, 5)).
        encoding: "deltas" (R-CNN coding, see ``kdet.ops.decode_deltas``) or
            "yolo" (sigmoid offsets in the cell and log sizes; anchors must be
            xyxy boxes centred on the cell's top-left corner and ``strides``
            given at call time).
        scale_clamp: bound on log-size deltas before ``exp``.
        xy_scale: "yolo" only: Darknet's ``scale_x_y`` (1 for YOLOv3; see
            ``kdet.ops.decode_yolo``).
        clip: clip the boxes to the image given at call time.

    Call:
        ``layer(deltas, anchors, image_shape=None, strides=None)``: deltas
        (B, A, 4); anchors (A, 4) or (B, A, 4) xyxy; image_shape (height,
        width) for clipping; strides (A,) per-anchor stride for "yolo".
        Returns (B, A, 4) float32 xyxy boxes.

    Example:
        >>> import numpy as np
        >>> AnchorDecoder()(np.zeros((1, 1, 4)), np.array([[0., 0, 4, 4]])).numpy().tolist()
        [[[0.0, 0.0, 4.0, 4.0]]]
    """

    def __init__(self, variances=(1.0, 1.0, 1.0, 1.0), encoding: str = "deltas",
                 scale_clamp: float = DEFAULT_SCALE_CLAMP, clip: bool = True, xy_scale: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # decoding stays float32 under mixed precision
        super().__init__(**kwargs)
        if encoding not in ("deltas", "yolo"):
            raise ValueError(f"encoding must be 'deltas' or 'yolo'; received {encoding!r}.")
        self.variances = tuple(float(v) for v in variances)
        if len(self.variances) != 4 or min(self.variances) <= 0:
            raise ValueError(f"variances must be 4 positive numbers; received {variances}.")
        self.encoding = encoding
        self.scale_clamp = float(scale_clamp)
        self.clip = bool(clip)
        self.xy_scale = float(xy_scale)
        self.built = True

    def call(self, deltas, anchors, image_shape=None, strides=None):
        deltas = tf.cast(deltas, tf.float32)
        anchors = tf.cast(anchors, tf.float32)
        if anchors.shape.rank == 2:
            anchors = anchors[None]
        if self.encoding == "deltas":
            boxes = decode_deltas(deltas, anchors, self.variances, self.scale_clamp)
        else:
            if strides is None:
                raise ValueError("encoding='yolo' needs the per-anchor strides at call time.")
            strides = tf.cast(strides, tf.float32)
            centre = (anchors[..., :2] + anchors[..., 2:]) / 2
            grid = tf.math.floor(centre / strides[..., None] + 1e-4)
            wh = anchors[..., 2:] - anchors[..., :2]
            boxes = decode_yolo(deltas, grid, wh, strides, self.scale_clamp, self.xy_scale)
        if self.clip and image_shape is not None:
            boxes = clip_boxes(boxes, image_shape[0], image_shape[1])
        return boxes

    def compute_output_shape(self, deltas_shape, anchors_shape=None, *args):
        return tuple(deltas_shape)

    def get_config(self):
        config = super().get_config()
        config.update(variances=self.variances, encoding=self.encoding,
                      scale_clamp=self.scale_clamp, clip=self.clip, xy_scale=self.xy_scale)
        return config
