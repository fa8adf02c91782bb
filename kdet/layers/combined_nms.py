"""CombinedNMS: batched multi-class NMS as a serialisable Keras layer."""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.ops.nms import _check_sigma, combined_nms
from kdet.validation import check_positive_int, check_probability

# Detection defaults used by RetinaNet / EfficientDet evaluation on COCO
# (100 detections per image; Lin et al. 2017, Tan et al. 2020).
DEFAULT_MAX_DETECTIONS = 100
DEFAULT_IOU_THRESHOLD = 0.5
DEFAULT_SCORE_THRESHOLD = 0.05


@keras.saving.register_keras_serializable(package="kdet")
class CombinedNMS(keras.layers.Layer):
    """Multi-class non-maximum suppression returning kdet's padded detection dict.

    Wraps ``kdet.ops.combined_nms``: same result as
    ``tf.image.combined_non_max_suppression(..., clip_boxes=False)`` for hard
    NMS, but it compiles with XLA, exports to LiteRT with builtin ops only and
    runs at any batch size. Inputs are cast to float32, so the layer also
    works inside mixed-precision models.

    In graph mode (``predict`` on a CPU-only machine, SavedModel serving) the
    NMS runs as nested XLA-compiled functions, compiled once per input shape
    (about a second on CPU), because it is a loop of small steps that
    TensorFlow's graph executor runs slowly; a ``jit_compile=True`` model
    compiles it with the rest. ``benchmarks/nms.py`` times it against
    TensorFlow's kernel on both paths.

    Args:
        max_output_size_per_class: most detections kept per class and image.
        max_total_size: K, detections returned per image (padded).
        iou_threshold: IoU in [0, 1] above which a box is suppressed.
        score_threshold: in [0, 1]; only scores above it are candidates.
        soft_nms_sigma: > 0 for Gaussian soft-NMS (Bodla et al. 2017), decay
            ``exp(-0.5 * iou**2 / sigma)`` as in TensorFlow.
        class_agnostic: boxes suppress overlapping boxes of every class.
        pre_nms_top_k: consider only this many best (box, class) pairs per
            image (bounded work, approximate); None is exact.

    Call:
        ``layer(boxes, scores)``: boxes (B, N, 4) or (B, N, C, 4) ``xyxy``;
        scores (B, N, C) probabilities. Returns ``{"boxes": (B, K, 4),
        "scores": (B, K), "labels": (B, K) int32 (-1 on padding),
        "num_detections": (B,) int32}``, sorted by score.

    Example:
        >>> import numpy as np
        >>> nms = CombinedNMS(max_total_size=5)
        >>> out = nms(np.array([[[0., 0, 10, 10], [1, 1, 10, 10]]]), np.array([[[0.9], [0.8]]]))
        >>> int(out["num_detections"][0]), out["labels"].numpy().tolist()
        (1, [[0, -1, -1, -1, -1]])
    """

    def __init__(self, max_output_size_per_class: int = DEFAULT_MAX_DETECTIONS,
                 max_total_size: int = DEFAULT_MAX_DETECTIONS,
                 iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 soft_nms_sigma: float = 0.0, class_agnostic: bool = False,
                 pre_nms_top_k: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # NMS stays float32 under mixed precision
        super().__init__(**kwargs)
        self.max_output_size_per_class = check_positive_int(
            "max_output_size_per_class", max_output_size_per_class)
        self.max_total_size = check_positive_int("max_total_size", max_total_size)
        self.iou_threshold = check_probability("iou_threshold", iou_threshold)
        self.score_threshold = check_probability("score_threshold", score_threshold)
        self.soft_nms_sigma = _check_sigma(soft_nms_sigma)
        self.class_agnostic = bool(class_agnostic)
        self.pre_nms_top_k = (None if pre_nms_top_k is None
                              else check_positive_int("pre_nms_top_k", pre_nms_top_k))
        self.built = True

    def call(self, boxes, scores):
        return combined_nms(
            tf.cast(boxes, tf.float32), tf.cast(scores, tf.float32),
            self.max_output_size_per_class, self.max_total_size, self.iou_threshold,
            self.score_threshold, self.soft_nms_sigma, self.class_agnostic, self.pre_nms_top_k)

    def compute_output_spec(self, boxes, scores):
        batch, k = boxes.shape[0], self.max_total_size
        return {"boxes": keras.KerasTensor((batch, k, 4), "float32"),
                "scores": keras.KerasTensor((batch, k), "float32"),
                "labels": keras.KerasTensor((batch, k), "int32"),
                "num_detections": keras.KerasTensor((batch,), "int32")}

    def get_config(self):
        config = super().get_config()
        config.update({
            "max_output_size_per_class": self.max_output_size_per_class,
            "max_total_size": self.max_total_size,
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "soft_nms_sigma": self.soft_nms_sigma,
            "class_agnostic": self.class_agnostic,
            "pre_nms_top_k": self.pre_nms_top_k,
        })
        return config
