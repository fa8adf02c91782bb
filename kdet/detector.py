"""kdet.Detector: the train / predict / detect / export contract every architecture shares.

A detector takes raw RGB pixels (B, H, W, 3) in 0..255 and returns the padded
output dict of API.md. Subclasses assemble their network with the functional
API and implement three hooks:

* ``raw_outputs(images, training)``: head outputs at the network resolution;
* ``compute_losses(images, y, raw)``: a dict of named scalar losses, with
  ``y`` already converted to xyxy pixels of the network resolution;
* ``postprocess(raw)``: decoding + NMS -> output dict in network pixels.

The base class handles the rest: box formats, resizing of ground truth and
predictions between the input image and the network resolution, loss logging
per component, ``evaluate`` with COCO mAP, ``detect`` for one image of any
size, and export.

Calling the model with ``training=True`` returns the raw outputs (what
``model.fit`` differentiates); otherwise it returns detections, so
``predict``, ``model(images)`` and exported graphs include decoding and NMS.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.data.images import load_image
from kdet.ops.boxes import convert_format
from kdet.validation import (
    check_box_format,
    check_degenerate_xyxy,
    check_ground_truth,
    check_image_size,
    check_images,
    check_positive_int,
)

OUTPUT_KEYS = ("boxes", "scores", "labels", "num_detections")


def _to_dense_targets(y) -> dict:
    """Accepts the GT dict with ragged or dense tensors; returns dense, -1 padded."""
    if not isinstance(y, dict) or "boxes" not in y or "labels" not in y:
        got = sorted(y) if isinstance(y, dict) else type(y).__name__
        raise ValueError(f"y must be a dict with 'boxes' and 'labels'; received {got}.")
    boxes, labels = y["boxes"], y["labels"]
    if isinstance(boxes, tf.RaggedTensor):
        boxes = boxes.to_tensor(default_value=0.0)
    if isinstance(labels, tf.RaggedTensor):
        labels = labels.to_tensor(default_value=-1)
    boxes = tf.cast(boxes, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if boxes.shape.rank != 3 or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"y['boxes'] must have shape (batch, max_boxes, 4); received {boxes.shape}.")
    if labels.shape.rank != 2:
        raise ValueError(f"y['labels'] must have shape (batch, max_boxes); received {labels.shape}.")
    return {"boxes": boxes, "labels": labels}


@keras.saving.register_keras_serializable(package="kdet")
class Detector(keras.Model):
    """Base class of every kdet detector (a ``keras.Model``).

    Args:
        num_classes: number of object classes (labels 0..num_classes-1).
        bounding_box_format: format of ground-truth and predicted boxes (any
            ``keras.utils.bounding_boxes`` format), in input-image pixels.
        image_size: (height, width) of the network input, or None for fully
            convolutional detectors that take any size.
        class_names: optional names of the classes, for drawing and the CLI.
    """

    #: Names of the loss components, logged separately by ``fit``/``evaluate``.
    loss_names: Sequence[str] = ()

    def __init__(self, num_classes: int, bounding_box_format: str = "xyxy", image_size=None,
                 class_names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.bounding_box_format = check_box_format(bounding_box_format)
        self.image_size = None if image_size is None else check_image_size(image_size)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {self.num_classes}."
            )
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self._component_trackers = [keras.metrics.Mean(name=n) for n in self.loss_names]
        self._set_untracked("_coco_metric", None)
        self._detect_fn = None
        # Subclasses assemble their functional networks (and so all variables) in
        # __init__: the model is built once constructed (save_weights works at once).
        self.built = True

    def _set_untracked(self, name, value):
        # compile() may run after Keras locked the model's state (a loaded or built
        # model), so the COCO metric is kept outside Keras' attribute tracking.
        object.__setattr__(self, name, value)

    @property
    def metrics(self):
        metrics = list(super().metrics)
        if getattr(self, "_coco_metric", None) is not None:
            metrics.append(self._coco_metric)
        return metrics

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Training logs leave the COCO metric out: it is only updated by evaluate().
        results = super().compute_metrics(x, y, y_pred, sample_weight)
        if getattr(self, "_coco_metric", None) is not None:
            results = {k: v for k, v in results.items() if k != self._coco_metric.name}
        return results

    def build(self, input_shape=None):
        # Subclasses assemble (and so build) their functional networks in __init__.
        self.built = True

    # ----------------------------------------------------------------- hooks
    def raw_outputs(self, images, training=False):
        """Head outputs at the network resolution (subclasses implement it)."""
        raise TypeError(f"{type(self).__name__} must implement raw_outputs().")

    def compute_losses(self, images, y, raw) -> dict:
        """Named scalar losses (subclasses implement it). ``y`` is xyxy in network pixels."""
        raise TypeError(f"{type(self).__name__} must implement compute_losses().")

    def postprocess(self, raw) -> dict:
        """Decoding + NMS of raw outputs -> output dict in network pixels."""
        raise TypeError(f"{type(self).__name__} must implement postprocess().")

    # ------------------------------------------------------- pixel frames
    def _network_scale(self, images):
        """(sx, sy) from network pixels to input-image pixels."""
        if self.image_size is None:
            return tf.constant(1.0), tf.constant(1.0)
        shape = tf.shape(images)
        sy = tf.cast(shape[1], tf.float32) / float(self.image_size[0])
        sx = tf.cast(shape[2], tf.float32) / float(self.image_size[1])
        return sx, sy

    def _input_hw(self, images):
        shape = tf.shape(images)
        return tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)

    def targets_to_network(self, images, y) -> dict:
        """GT dict in ``bounding_box_format`` input pixels -> xyxy network pixels."""
        y = _to_dense_targets(y)
        h, w = self._input_hw(images)
        boxes = convert_format(y["boxes"], self.bounding_box_format, "xyxy", height=h, width=w)
        sx, sy = self._network_scale(images)
        boxes = boxes / tf.stack([sx, sy, sx, sy])
        valid = y["labels"] >= 0
        boxes = tf.where(valid[..., None], boxes, 0.0)
        return {"boxes": boxes, "labels": y["labels"]}

    def detections_to_input(self, images, detections: dict) -> dict:
        """Output dict in xyxy network pixels -> ``bounding_box_format`` input pixels."""
        sx, sy = self._network_scale(images)
        boxes = tf.cast(detections["boxes"], tf.float32) * tf.stack([sx, sy, sx, sy])
        extra = {}
        if "landmarks" in detections:
            extra["landmarks"] = tf.cast(detections["landmarks"], tf.float32) * tf.stack([sx, sy])
        h, w = self._input_hw(images)
        boxes = convert_format(boxes, "xyxy", self.bounding_box_format, height=h, width=w)
        valid = detections["labels"] >= 0
        boxes = tf.where(valid[..., None], boxes, 0.0)
        return {
            "boxes": boxes,
            "scores": tf.cast(detections["scores"], tf.float32),
            "labels": tf.cast(detections["labels"], tf.int32),
            "num_detections": tf.cast(detections["num_detections"], tf.int32),
            **extra,
        }

    # ------------------------------------------------------------- keras API
    def call(self, images, training=None):
        if training:
            return self.raw_outputs(images, training=True)
        raw = self.raw_outputs(images, training=False)
        return self.detections_to_input(images, self.postprocess(raw))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            raise ValueError("Training a detector needs targets: fit(images, {'boxes': ..., 'labels': ...}).")
        targets = self.targets_to_network(x, y)
        losses = self.compute_losses(x, targets, y_pred)
        for tracker in self._component_trackers:
            tracker.update_state(losses[tracker.name])
        total = tf.add_n([tf.cast(v, tf.float32) for v in losses.values()])
        if self.losses:
            total += tf.add_n([tf.cast(v, tf.float32) for v in self.losses])
        # Under tf.distribute each replica's gradients are summed: scale by
        # 1 / replicas as Keras' own compiled losses do (Keras un-scales the
        # logged value again).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            total = total / float(replicas)
        return total

    def validate_arrays(self, x, y=None) -> None:
        """Checks in-memory (NumPy) images and ground truth before training or evaluation.

        Raises ``ValueError`` for wrong ranks or channels, empty batches, NaN/inf
        boxes, degenerate boxes (x2 < x1) and labels outside [0, num_classes).
        Datasets are checked inside the graph only for shapes.
        """
        if isinstance(x, np.ndarray):
            checked = check_images(x, name="x")
            if checked.shape[-1] != x.shape[-1] or checked.ndim != x.ndim:
                raise ValueError(
                    f"x has shape {x.shape}; detectors take RGB (batch, height, width, 3). Convert "
                    "grayscale/RGBA first (kdet.data.load_image does it per image)."
                )
        if isinstance(y, dict) and all(isinstance(v, (np.ndarray, list)) for v in y.values()):
            y = check_ground_truth(y, self.num_classes)
            height = width = None
            if isinstance(x, np.ndarray):
                height, width = x.shape[1], x.shape[2]
            if not self.bounding_box_format.startswith("rel_") or height is not None:
                boxes = convert_format(y["boxes"], self.bounding_box_format, "xyxy",
                                       height=height, width=width).numpy()
                check_degenerate_xyxy(boxes, y["labels"], name="y['boxes']")

    def fit(self, x=None, y=None, *args, **kwargs):
        self.validate_arrays(x, y)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self.validate_arrays(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def train_step(self, data):
        if getattr(self, "_train_flip", False):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            x, y = self.random_horizontal_flip(x, y)
            data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        return super().train_step(data)

    def random_horizontal_flip(self, images, y, probability: float = 0.5):
        """Flips each image and its boxes left-right with ``probability`` (training augmentation)."""
        y = _to_dense_targets(y)
        images = tf.convert_to_tensor(images)
        h, w = self._input_hw(images)
        boxes = convert_format(y["boxes"], self.bounding_box_format, "xyxy", height=h, width=w)
        flip = tf.random.uniform((tf.shape(images)[0],)) < probability
        flipped = tf.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], axis=-1)
        boxes = tf.where(flip[:, None, None], flipped, boxes)
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
        boxes = convert_format(boxes, "xyxy", self.bounding_box_format, height=h, width=w)
        return images, {"boxes": boxes, "labels": y["labels"]}

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        raw = self.raw_outputs(x, training=False)
        loss = self._compute_loss(x=x, y=y, y_pred=raw, sample_weight=sample_weight, training=False)
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        if self._coco_metric is not None:
            detections = self.detections_to_input(x, self.postprocess(raw))
            self._coco_metric.update_state(_to_dense_targets(y), detections)
        return self.get_metrics_result()

    def compile(self, optimizer=None, box_loss=None, classification_loss=None, metrics=None,
                evaluate_coco: bool = True, augment: str | None = "flip", **kwargs):
        """Configures training with sensible per-architecture defaults.

        Args:
            optimizer: a Keras optimizer; default ``self.default_optimizer()``.
            box_loss: a ``keras.losses.Loss`` or name ("smooth_l1", "huber",
                "iou", "giou", "diou", "ciou"); default per architecture.
            classification_loss: a ``keras.losses.Loss``; default per architecture.
            evaluate_coco: report COCO mAP in ``evaluate`` (and validation).
            augment: training-time augmentation inside ``fit``: "flip" (random
                horizontal flip of images and boxes, p = 0.5; the default, so a
                plain ``fit(images, targets)`` generalises better) or None.
            **kwargs: forwarded to ``keras.Model.compile`` (``jit_compile``,
                ``steps_per_execution``, ...).
        """
        if "loss" in kwargs:
            raise ValueError(
                "Detectors compute their own loss; pass box_loss= or classification_loss= instead of loss=."
            )
        self.box_loss = self.resolve_box_loss(box_loss)
        self.classification_loss = classification_loss or self.default_classification_loss()
        self._set_untracked("_coco_metric", None)
        if evaluate_coco:
            from kdet.metrics import COCOMeanAveragePrecision

            self._set_untracked(
                "_coco_metric", COCOMeanAveragePrecision(bounding_box_format=self.bounding_box_format)
            )
            # The COCO metric accumulates through tf.py_function, which XLA cannot compile;
            # keep the train/test steps off XLA unless the caller asks (predict is XLA-safe).
            kwargs.setdefault("jit_compile", False)
        if augment not in ("flip", None):
            raise ValueError(f"augment must be 'flip' or None; received {augment!r}.")
        self._train_flip = augment == "flip"
        self._compile_args = {"evaluate_coco": bool(evaluate_coco), "augment": augment}
        super().compile(optimizer=optimizer or self.default_optimizer(), metrics=metrics, **kwargs)

    def get_compile_config(self):
        if not getattr(self, "compiled", False):
            return None
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            "box_loss": keras.saving.serialize_keras_object(self.box_loss),
            "classification_loss": keras.saving.serialize_keras_object(self.classification_loss),
            **self._compile_args,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("optimizer", "box_loss", "classification_loss"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)
        if self.built and self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    # Defaults a subclass may override.
    def default_optimizer(self):
        """Adam with a linear warm-up to 1e-3 and global-norm clipping."""
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=1e-4, decay_steps=1, alpha=1.0, warmup_target=1e-3, warmup_steps=100
        )
        return keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=10.0)

    def default_box_loss(self):
        from kdet.losses import SmoothL1Loss

        return SmoothL1Loss(delta=1.0 / 9.0)

    def default_classification_loss(self):
        from kdet.losses import FocalLoss

        return FocalLoss(alpha=0.25, gamma=2.0, from_logits=True)

    def resolve_box_loss(self, box_loss):
        """Turns a box-loss name into a loss object ("smooth_l1", "huber", IoU modes)."""
        if box_loss is None:
            return self.default_box_loss()
        if isinstance(box_loss, str):
            from kdet.losses import IoULoss, SmoothL1Loss

            name = box_loss.lower()
            if name in ("iou", "giou", "diou", "ciou"):
                return IoULoss(mode=name)
            if name in ("smooth_l1", "huber"):
                return SmoothL1Loss(delta=1.0 / 9.0 if name == "smooth_l1" else 1.0)
            raise ValueError(
                f"Unknown box_loss {box_loss!r}; expected 'smooth_l1', 'huber', 'iou', 'giou', "
                "'diou', 'ciou' or a keras.losses.Loss."
            )
        return box_loss

    # ---------------------------------------------------------- inference
    def detect(self, image, score_threshold: float | None = None) -> dict:
        """Detects objects in one image of any size.

        Args:
            image: a path, a PIL image or an (H, W[, C]) array (grayscale and
                RGBA are converted to RGB).
            score_threshold: keep detections scoring at least this (default:
                all the model returns).

        Returns:
            dict of NumPy arrays with the valid rows only: ``boxes`` (n, 4) in
            ``bounding_box_format`` pixels of ``image``, ``scores`` (n,),
            ``labels`` (n,) [, ``landmarks`` (n, 5, 2)].
        """
        array = load_image(image)
        height, width = array.shape[:2]
        batch = array[None].astype(np.float32)
        if self.image_size is not None:
            # Resize outside the graph so every image reuses one traced function.
            batch = tf.image.resize(batch, self.image_size).numpy()
        if self._detect_fn is None:
            self._detect_fn = tf.function(lambda x: self(x, training=False), reduce_retracing=True)
        out = {k: v.numpy() for k, v in self._detect_fn(tf.constant(batch)).items()}
        n = int(out["num_detections"][0])
        result = {k: out[k][0, :n] for k in out if k != "num_detections"}
        if self.image_size is not None:
            sy, sx = height / self.image_size[0], width / self.image_size[1]
            boxes = convert_format(result["boxes"], self.bounding_box_format, "xyxy",
                                   height=self.image_size[0], width=self.image_size[1]).numpy()
            boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
            result["boxes"] = convert_format(boxes, "xyxy", self.bounding_box_format,
                                             height=height, width=width).numpy()
            if "landmarks" in result:
                result["landmarks"] = result["landmarks"] * np.array([sx, sy], np.float32)
        if score_threshold is not None:
            keep = result["scores"] >= float(score_threshold)
            result = {k: v[keep] for k, v in result.items()}
        return result

    def export(self, filepath, format: str = "tf_saved_model", **kwargs):
        """Exports the inference graph (decoding + NMS inside): "tf_saved_model" or "litert"."""
        from kdet import export as kdet_export

        return kdet_export.export(self, filepath, format=format, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "bounding_box_format": self.bounding_box_format,
            "image_size": self.image_size,
            "class_names": self.class_names,
        }
