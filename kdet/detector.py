"""kdet.Detector: the train / predict / detect / export contract every architecture shares.

A detector takes raw RGB pixels (B, H, W, 3) in 0..255 and returns the padded
output dict of API.md. Its settings are one typed config (``config_class``,
see ``kdet.config``); ``get_config()`` is that config, so every setting
survives ``model.save`` / ``keras.models.load_model``.

The base class owns everything around the network:

    raw pixels --ImagePreprocessing (resize rule, normalise, pad)--> network input x
    x --network_outputs--> raw  --postprocess(raw, frame)--> detections in network pixels
      --detections_to_input(frame)--> detections in input pixels (API.md dict)

where the *frame* maps input-image pixels to network pixels per image
(``kdet.layers.image_preprocessing``). A subclass implements:

* ``assemble()``: builds the networks from ``self.config`` (called once,
  inside the config's precision scope);
* ``network_outputs(x, training)``: head outputs of the network input at the
  network resolution (``raw_outputs(images)`` gives them for raw images);
* ``compute_losses(y, raw, frame)``: named scalar losses, ``y`` in xyxy
  network pixels (masks, when present, stay in input pixels);
* ``postprocess(raw, frame)``: decoding + NMS -> output dict in network pixels.

Optional declarations: ``loss_names``, ``classifier_layers`` (the layers that
depend on the class count, for fine-tuning), ``point_outputs`` (outputs of
(x, y) points mapped back like boxes, e.g. facial keypoints), ``input_keys`` (extra
dict inputs and ``attach_inputs`` to use them), ``xla_on_cpu`` (False where
XLA:CPU is the slow path) and ``training_recipe()``.

Calling the model with ``training=True`` returns the raw outputs (what
``model.fit`` differentiates); otherwise it returns detections, so
``predict``, ``model(images)`` and exported graphs include decoding and NMS.
"""

from __future__ import annotations

import contextlib

import logging
from typing import Any, ClassVar, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.config import SCRATCH_RECIPE, DetectorConfig, TrainingRecipe, precision_scope
from kdet.data.images import load_image
from kdet.layers.image_preprocessing import (ImagePreprocessing, boxes_to_input, boxes_to_network,
                                             points_to_input)
from kdet.ops.boxes import convert_format
from kdet.optimizers import Adam
from kdet.validation import check_degenerate_xyxy, check_ground_truth, check_images, check_positive_int

logger = logging.getLogger("kdet")

OUTPUT_KEYS = ("boxes", "scores", "labels", "num_detections")
_KERAS_KWARGS = ("name", "trainable")
_LOGGED: set = set()
# compile(augment=name) -> kdet.data.Augmenter settings. "standard" (the default): horizontal flip,
# scale jitter of the content by 0.75-1.25 (Keras RandomZoom, as keras-cv's JitteredResize) and the
# Augmenter's colour jitter (brightness / contrast 0.15, saturation, hue, gamma; YOLO/SSD-style
# photometric distortion). On the synthetic learning protocol it raised held-out AP50 over "flip"
# (the default before) for the tiny configurations, whose train / held-out gap was the overfit
# (docs/training.md, "Defaults that learn").
_NO_COLOUR = dict(brightness=None, contrast=None, saturation=None, hue=None, gamma=None)
AUGMENT_PRESETS = {
    "standard": dict(flip="horizontal", scale=(0.75, 1.25)),
    "flip": dict(flip="horizontal", **_NO_COLOUR),
}
DEFAULT_AUGMENT = "standard"


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.warning(message)


def _per_image_hw(frame) -> tuple:
    """Each image's input (height, width) as (B, 1, 1) tensors: they broadcast against (B, M, 1) coordinates."""
    return frame["input_hw"][:, 0, None, None], frame["input_hw"][:, 1, None, None]


def to_dense_targets(y) -> dict:
    """Accepts the GT dict with ragged or dense tensors; returns dense, -1 padded (masks kept as given)."""
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
    dense = {"boxes": boxes, "labels": labels}
    if "masks" in y:
        masks = y["masks"]
        if isinstance(masks, tf.RaggedTensor):
            masks = masks.to_tensor(default_value=0)
        dense["masks"] = masks
    return dense


@keras.saving.register_keras_serializable(package="kdet")
class Detector(keras.Model):
    """Base class of every kdet detector (a ``keras.Model``); see the module docstring.

    Args:
        **settings: the fields of ``config_class`` (``num_classes``,
            ``bounding_box_format``, ``image_size``, ``class_names``, ``resize``,
            ``precision``, thresholds, ...) plus Keras' ``name`` / ``trainable``.
    """

    #: The typed config holding every constructor setting.
    config_class: ClassVar[type[DetectorConfig]] = DetectorConfig
    #: Names of the loss components, logged separately by ``fit``/``evaluate``.
    loss_names: ClassVar[Sequence[str]] = ()
    #: Layers whose shapes depend on ``num_classes`` (re-initialised when fine-tuning to new classes).
    classifier_layers: ClassVar[tuple[str, ...]] = ()
    #: Outputs of (x, y) points (B, K, P, 2) in network pixels, mapped back like boxes.
    point_outputs: ClassVar[tuple[str, ...]] = ()
    #: Extra keys a dict input may carry besides "images" and "image_sizes" (see ``attach_inputs``).
    input_keys: ClassVar[tuple[str, ...]] = ()
    #: False where TensorFlow's graph kernels beat XLA:CPU (then CPU inference never uses XLA).
    xla_on_cpu: ClassVar[bool] = True
    #: False where bfloat16 is not faster than float32 on CPUs with native bfloat16 (``bfloat16_pays``).
    bfloat16_on_cpu: ClassVar[bool] = True

    def __init__(self, **settings):
        keras_kwargs = {k: settings.pop(k) for k in _KERAS_KWARGS if k in settings}
        settings.pop("dtype", None)  # the detector computes in float32; `precision` sets its networks'
        config = self.config_class.create(**settings)
        super().__init__(dtype="float32", **keras_kwargs)
        self.config = config
        self._component_trackers = [keras.metrics.Mean(name=n) for n in self.loss_names]
        self._set_untracked("_coco_metric", None)
        self._set_untracked("_augmenter", None)
        self._set_untracked("_inference_fns", {})
        with precision_scope(config.precision):
            self.preprocessor = ImagePreprocessing(
                config.image_size, resize=config.resize, min_size=config.min_size, max_size=config.max_size,
                size_divisible=config.size_divisible, name="preprocessing", **self.pixel_normalization())
            self.assemble()
        # Subclasses assemble their functional networks (and so all variables) in
        # assemble(): the model is built once constructed (save_weights works at once).
        self.built = True
        if config.fine_tune:
            self.freeze_batch_norm()

    def _set_untracked(self, name, value):
        # Set outside Keras' attribute tracking: metrics, augmenters and function caches are
        # not part of the model's state (and a locked, loaded model refuses new tracked attributes).
        object.__setattr__(self, name, value)

    def freeze_batch_norm(self) -> int:
        """Freezes every ``BatchNormalization`` of the model: inference-mode statistics, fixed scale and shift.

        What ``fine_tune=True`` applies at construction. A pretrained network's
        statistics come from large batches of its own data; re-estimating them
        from a fine-tuning set's small batches (8 images) replaces them with
        noisy ones, which the layers above were never trained on. Keras runs a
        non-trainable batch norm in inference mode (``keras.layers.BatchNormalization``).
        On the fine-tuning benchmark (real yolov3-tiny weights, 160 images at 416 px,
        8 epochs, docs/training.md "Fine-tuning to new classes") it lifted held-out
        AP50 from 0.14 to 0.56.

        Returns:
            The number of batch-norm layers frozen.
        """
        frozen = 0
        for layer in self._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
                frozen += 1
        return frozen

    # --------------------------------------------------------- settings
    def __getattr__(self, name):
        # Every config setting reads as an attribute: model.score_threshold, model.num_classes, ...
        config = self.__dict__.get("config")
        if config is not None and name in config.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def get_config(self) -> dict[str, Any]:
        base = {k: v for k, v in super().get_config().items() if k in ("name", "trainable")}
        return {**base, **self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # ----------------------------------------------------------- hooks
    def default_pixel_normalization(self) -> dict:
        """The backbone's input statistics {"scale", "mean", "std"}; default x / 255."""
        return {"scale": 1.0 / 255.0}

    def pixel_normalization(self) -> dict:
        """``ImagePreprocessing`` statistics: the backbone's, with the config's pixel_* settings applied."""
        return self.config.pixel_normalization(self.default_pixel_normalization())

    def assemble(self) -> None:
        """Builds the networks from ``self.config`` (subclasses implement it)."""
        raise TypeError(f"{type(self).__name__} must implement assemble().")

    def network_outputs(self, x, training=False):
        """Head outputs of the network input ``x`` (normalised, on the canvas; subclasses implement it)."""
        raise TypeError(f"{type(self).__name__} must implement network_outputs().")

    def compute_losses(self, y, raw, frame) -> dict:
        """Named scalar losses (subclasses implement it); ``y`` holds xyxy network-pixel boxes."""
        raise TypeError(f"{type(self).__name__} must implement compute_losses().")

    def postprocess(self, raw, frame) -> dict:
        """Decoding + NMS of raw outputs -> output dict in network pixels (subclasses implement it)."""
        raise TypeError(f"{type(self).__name__} must implement postprocess().")

    def attach_inputs(self, raw: dict, extras: dict, frame: dict) -> dict:
        """Adds extra dict inputs (``input_keys``) to the raw outputs; the base takes none."""
        return raw

    def training_recipe(self) -> TrainingRecipe:
        """The recipe ``kdet.training`` uses: Adam for models trained from scratch by default."""
        return SCRATCH_RECIPE

    def inherit_classifier_outputs(self, source: "Detector") -> list[str]:
        """Copies the class-independent outputs of ``source``'s classifier layers into this model's.

        ``kdet.load(name, num_classes=k)`` calls it after copying every weight
        outside ``classifier_layers``: a classifier layer that also predicts
        class-independent values (YOLO's boxes and objectness share one conv
        with the class logits) keeps those from the checkpoint instead of
        starting fresh. The base class has none.

        Args:
            source: the same architecture with the checkpoint's classes and weights.

        Returns:
            The paths of the variables that received values.
        """
        return []

    # ------------------------------------------------------- geometry
    @property
    def network_input_shape(self) -> tuple:
        """(height, width) of the network input; None entries where it follows the image."""
        return tuple(self.config.image_size) if self.config.fixed_canvas else (None, None)

    def split_inputs(self, inputs) -> tuple:
        """images, or a dict {"images", "image_sizes"?, *input_keys} -> (images, extras dict)."""
        if isinstance(inputs, dict):
            allowed = {"images", "image_sizes", *self.input_keys}
            if "images" not in inputs or set(inputs) - allowed:
                raise ValueError(f"Dict inputs must hold 'images' and optionally {sorted(allowed - {'images'})}; "
                                 f"received keys {sorted(inputs)}.")
            extras = {k: v for k, v in inputs.items() if k != "images"}
            return tf.convert_to_tensor(inputs["images"]), extras
        return tf.convert_to_tensor(inputs), {}

    def frame_of(self, inputs) -> dict:
        """The input <-> network pixel frame of each image of ``inputs``."""
        images, extras = self.split_inputs(inputs)
        return self.preprocessor.frame(images, extras.get("image_sizes"))

    def targets_to_network(self, y, frame) -> dict:
        """GT dict in ``bounding_box_format`` input pixels -> xyxy network pixels."""
        y = to_dense_targets(y)
        h, w = _per_image_hw(frame)
        boxes = convert_format(y["boxes"], self.bounding_box_format, "xyxy", height=h, width=w)
        boxes = boxes_to_network(boxes, frame)
        valid = y["labels"] >= 0
        return {**y, "boxes": tf.where(valid[..., None], boxes, 0.0)}

    def detections_to_input(self, detections: dict, frame) -> dict:
        """Output dict in xyxy network pixels -> ``bounding_box_format`` input pixels."""
        valid = detections["labels"] >= 0
        boxes = boxes_to_input(detections["boxes"], frame)
        h, w = _per_image_hw(frame)
        boxes = convert_format(boxes, "xyxy", self.bounding_box_format, height=h, width=w)
        out = {
            "boxes": tf.where(valid[..., None], boxes, 0.0),
            "scores": tf.cast(detections["scores"], tf.float32),
            "labels": tf.cast(detections["labels"], tf.int32),
            "num_detections": tf.cast(detections["num_detections"], tf.int32),
        }
        for key in self.point_outputs:
            out[key] = tf.where(valid[..., None, None], points_to_input(detections[key], frame), 0.0)
        for key, value in detections.items():
            out.setdefault(key, value)
        return out

    # ------------------------------------------------------------- keras API
    def forward(self, inputs, training=False):
        """(raw outputs, frame) of ``inputs`` (images or a dict input)."""
        images, extras = self.split_inputs(inputs)
        sizes = extras.get("image_sizes")
        frame = self.preprocessor.frame(images, sizes)
        raw = self.network_outputs(self.preprocessor(images, sizes), training=bool(training))
        extras = {k: v for k, v in extras.items() if k != "image_sizes"}
        return self.attach_inputs(dict(raw), extras, frame), frame

    def raw_outputs(self, inputs, training=False) -> dict:
        """Raw head outputs (before decoding and NMS) of raw images (or a dict input), at the network resolution."""
        return self.forward(inputs, training=training)[0]

    def call(self, inputs, training=None):
        raw, frame = self.forward(inputs, training=training)
        if training:
            return raw
        return self.detections_to_input(self.postprocess(raw, frame), frame)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            raise ValueError("Training a detector needs targets: fit(images, {'boxes': ..., 'labels': ...}).")
        frame = self.frame_of(x)
        losses = self.compute_losses(self.targets_to_network(y, frame), y_pred, frame)
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

    def train_step(self, data):
        if self._augmenter is not None:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            x, y = self._augment(x, y)
            data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        return super().train_step(data)

    def _augment(self, x, y):
        images, extras = self.split_inputs(x)
        images, y = self._augmenter(tf.cast(images, tf.float32), to_dense_targets(y))
        return ({"images": images, **extras} if extras else images), y

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        raw, frame = self.forward(x, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=raw, sample_weight=sample_weight, training=False)
        for metric in self.metrics:
            if metric.name == "loss":  # Keras' total-loss tracker
                metric.update_state(loss, sample_weight=tf.shape(self.split_inputs(x)[0])[0])
        if self._coco_metric is not None:
            detections = self.detections_to_input(self.postprocess(raw, frame), frame)
            self._coco_metric.update_state(to_dense_targets(y), detections)
        return self.get_metrics_result()

    @property
    def metrics(self):
        metrics = list(super().metrics)
        if getattr(self, "_coco_metric", None) is not None:
            metrics.append(self._coco_metric)
        return metrics

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Training logs leave the COCO metric out (every key it reports: box AP, and mask AP for
        # models with masks): it is only updated by evaluate().
        results = super().compute_metrics(x, y, y_pred, sample_weight)
        if getattr(self, "_coco_metric", None) is not None:
            coco_keys = set(self._coco_metric.result_keys())
            results = {k: v for k, v in results.items() if k not in coco_keys}
        return results

    def validate_arrays(self, x, y=None) -> None:
        """Checks in-memory (NumPy) images and ground truth before training or evaluation.

        Raises ``ValueError`` for wrong ranks or channels, empty batches, NaN/inf
        boxes, degenerate boxes (x2 < x1), labels outside [0, num_classes) and
        masks that are not one per box row in the images' pixels.
        Datasets are checked inside the graph only for shapes.
        """
        images = x.get("images") if isinstance(x, dict) else x
        if isinstance(images, np.ndarray):
            checked = check_images(images, name="x")
            if checked.shape[-1] != images.shape[-1] or checked.ndim != images.ndim:
                raise ValueError(
                    f"x has shape {images.shape}; detectors take RGB (batch, height, width, 3). Convert "
                    "grayscale/RGBA first (kdet.data.load_image does it per image)."
                )
        if isinstance(y, dict) and all(isinstance(v, (np.ndarray, list)) for v in y.values()):
            height = width = None
            if isinstance(images, np.ndarray):
                height, width = images.shape[1], images.shape[2]
            # Masks (instance segmentation) must be in the images' pixels, one per box row.
            checked_y = check_ground_truth(y, self.num_classes,
                                           image_size=(height, width) if height is not None else None)
            if not self.bounding_box_format.startswith("rel_") or height is not None:
                boxes = convert_format(checked_y["boxes"], self.bounding_box_format, "xyxy",
                                       height=height, width=width).numpy()
                check_degenerate_xyxy(boxes, checked_y["labels"], name="y['boxes']")

    def fit(self, x=None, y=None, *args, **kwargs):
        self.validate_arrays(x, y)
        self.build_optimizer()
        return super().fit(x, y, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        self.build_optimizer()
        return super().train_on_batch(x, y, *args, **kwargs)

    def build_optimizer(self) -> None:
        """Creates the optimizer's slot variables now, before the training step is traced.

        Without a distribution strategy Keras defers this to the first trace of
        the training step, and a ``tf.function`` whose first trace creates
        variables is traced a second time: the first ``fit`` then traced the
        whole step twice (18 s before the first step of a tiny EfficientDet on
        2 cores, 10 s with this). Under a strategy Keras builds it itself, in
        the strategy's scope. Does nothing when not compiled or already built.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or optimizer.built or getattr(self, "_distribute_strategy", None) is not None:
            return
        optimizer.build(self.trainable_variables)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self.validate_arrays(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def compile(self, optimizer=None, box_loss=None, classification_loss=None, metrics=None,
                evaluate_coco: bool = True, augment=DEFAULT_AUGMENT, **kwargs):
        """Configures training with sensible per-architecture defaults.

        Args:
            optimizer: a Keras optimizer; default ``self.default_optimizer()``.
            box_loss: a ``keras.losses.Loss`` or name ("smooth_l1", "huber",
                "iou", "giou", "diou", "ciou"); default per architecture.
            classification_loss: a ``keras.losses.Loss``; default per architecture.
            evaluate_coco: report COCO mAP in ``evaluate`` (and validation).
            augment: augmentation ``fit`` applies to each training batch, with
                the data pipeline's ``kdet.data.Augmenter`` (the one
                augmentation implementation): a name of :data:`AUGMENT_PRESETS`
                ("standard", the default: horizontal flip, scale jitter and
                colour jitter, so a plain ``fit(images, targets)`` generalises
                better; "flip": the flip alone), None, or an ``Augmenter``.
                Pipelines that augment themselves (``kdet.training``) pass None.
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
        self._set_untracked("_augmenter", self._make_augmenter(augment))
        self._compile_args = {"evaluate_coco": bool(evaluate_coco),
                              "augment": augment if isinstance(augment, (str, type(None))) else None}
        super().compile(optimizer=optimizer or self.default_optimizer(), metrics=metrics, **kwargs)
        self._set_untracked("_inference_fns", {})

    def _make_augmenter(self, augment):
        from kdet.data.augment import Augmenter

        if augment is None or isinstance(augment, Augmenter):
            return augment
        if augment not in AUGMENT_PRESETS:
            raise ValueError(f"augment must be one of {sorted(AUGMENT_PRESETS)}, None or a kdet.data.Augmenter; "
                             f"received {augment!r}.")
        return Augmenter(bounding_box_format=self.bounding_box_format, **AUGMENT_PRESETS[augment])

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
        """Adam (Keras' updates, traced in fewer ops: ``kdet.optimizers``) with a linear warm-up to 1e-3
        and global-norm clipping."""
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=1e-4, decay_steps=1, alpha=1.0, warmup_target=1e-3, warmup_steps=100
        )
        return Adam(learning_rate=schedule, global_clipnorm=10.0)

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
    def inference_compiler(self, jit_compile: bool | None = None) -> str:
        """"xla" or "graph": how ``predict`` / ``detect`` run (``compile(jit_compile=...)`` asks).

        Keras' rule ("auto": XLA where every layer supports it), except that on
        CPU graph mode runs when asked for XLA (logged once) for architectures
        declaring ``xla_on_cpu = False`` and for bfloat16 / float16 networks
        (XLA:CPU has no oneDNN low-precision kernels: a bfloat16 3x3 conv ran at
        354 GFLOP/s under XLA against 2831 as a graph, 2-core AMX CPU); and
        shape-agnostic inputs of fixed-canvas models always trace one graph.

        Args:
            jit_compile: what to decide for (default: the model's ``jit_compile``).
        """
        want_xla = bool(self.jit_compile if jit_compile is None else jit_compile)
        if want_xla and not tf.config.list_logical_devices("GPU"):
            if not self.xla_on_cpu:
                _log_once(f"kdet: {type(self).__name__} runs inference in graph mode on CPU, where XLA:CPU is "
                          "several times slower for it; XLA stays on for GPUs.")
                return "graph"
            if self.config.precision != "float32":
                _log_once(f"kdet: a {self.config.precision} network runs inference in graph mode on CPU (oneDNN's "
                          "low-precision kernels; XLA:CPU has none); XLA stays on for GPUs.")
                return "graph"
        return "xla" if want_xla else "graph"

    def bfloat16_pays(self) -> bool:
        """Whether bfloat16 is faster than float32 for this model here (``kdet.load``'s default precision).

        True on hardware that computes bfloat16 natively (``kdet.config.native_bfloat16``:
        Ampere+ GPUs, CPUs with AVX512_BF16 / AMX), except on CPU for networks with
        depthwise convolutions and architectures declaring ``bfloat16_on_cpu = False``:
        oneDNN's bfloat16 path speeds up dense convolutions and matmuls, not those.
        Measured on a 2-core AMX CPU: RetinaNet-R50 and SSD300 4-5x
        faster in bfloat16 at batch 8, SSDlite-MobileNetV3 32 -> 43 ms, Faster
        R-CNN MobileNetV3-FPN 385 -> 425 ms, MTCNN 43 -> 46 ms (docs/zoo.md, "Precision").
        """
        from kdet.config import native_bfloat16

        if not native_bfloat16():
            return False
        if tf.config.list_logical_devices("GPU"):
            return True
        if not self.bfloat16_on_cpu:
            return False
        network = self.__dict__.get("network")
        layers = network._flatten_layers(include_self=False, recursive=True) if network is not None else ()
        return not any(isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))
                       for layer in layers)

    @property
    def active_compiler(self) -> str | None:
        """The compiler ("xla" / "graph") of the inference function being traced, None outside one."""
        return self.__dict__.get("_active_compiler")

    def _inference_fn(self, images, extras: dict, compiler: str | None = None):
        """The compiled inference function for this input signature.

        XLA and canvases that follow the image ("min_max", "none") trace one
        function per static shape; graph mode on a fixed canvas traces one
        function for every image size.
        """
        compiler = compiler or self.inference_compiler()
        shape_free = compiler == "graph" and self.config.fixed_canvas and not extras
        key = (compiler, None if shape_free else tuple(images.shape), tuple(sorted(extras)))
        fn = self._inference_fns.get(key)
        if fn is None:
            def run(x):
                self._set_untracked("_active_compiler", compiler)  # read at trace time by the hooks
                try:
                    with self._inference_network():
                        return self(x, training=False)
                finally:
                    self._set_untracked("_active_compiler", None)

            spec = [tf.TensorSpec((None, None, None, 3), tf.float32)] if shape_free else None
            fn = tf.function(run, jit_compile=compiler == "xla", input_signature=spec)
            self._inference_fns[key] = fn
        return fn

    @contextlib.contextmanager
    def _inference_network(self):
        """While inference traces: ``self.network`` with its conv + batch-norm pairs folded, at low precision.

        Under a bfloat16 / float16 policy every Keras batch norm round-trips its
        input through float32; folded, yolov3-tiny's bf16 network ran in 14 ms
        instead of 18 ms (416 px, batch 1, 2-core CPU). The folded copy shares
        the variables (kdet.layers.folded_batch_norm), so it never goes stale.
        Float32 networks run as built (bit-exact parity with upstream weights).
        """
        network = self.__dict__.get("network")
        if not isinstance(network, keras.Model) or network.dtype_policy.compute_dtype == "float32":
            yield
            return
        cached = self.__dict__.get("_folded_network")
        if cached is None or cached[0] is not network:
            from kdet.layers.folded_batch_norm import fold_batch_norms

            cached = (network, fold_batch_norms(network))
            self._set_untracked("_folded_network", cached)
        object.__setattr__(self, "network", cached[1])  # untracked swap, for this trace only
        try:
            yield
        finally:
            object.__setattr__(self, "network", network)

    def infer(self, inputs, compiler: str | None = None) -> dict:
        """Detections (NumPy) for one batch: images (B, H, W, 3) or a dict input."""
        images, extras = self.split_inputs(inputs)
        images = tf.cast(images, tf.float32)
        if images.shape.rank != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch (batch, height, width, 3); received {images.shape}.")
        x = {"images": images, **extras} if extras else images
        return {k: v.numpy() for k, v in self._inference_fn(images, extras, compiler)(x).items()}

    def predict(self, x, batch_size: int | None = None, verbose="auto", steps=None, callbacks=None,
                **kwargs) -> dict:
        """Detections for arrays, a dict input with arrays, or a ``tf.data`` dataset of such batches.

        Runs one compiled function per input signature (``inference_compiler``);
        returns the API.md output dict of NumPy arrays.
        """
        if callbacks:
            raise ValueError("Detector.predict takes no callbacks; iterate and call model.infer(batch) instead.")
        if isinstance(x, tf.data.Dataset):
            batches = (b[0] if isinstance(b, tuple) else b for b in x)
            total = None if x.cardinality() < 0 else int(x.cardinality())
        else:
            batches, total = self._array_batches(x, batch_size)
        if steps is not None:
            total = check_positive_int("steps", steps)
            batches = (b for _, b in zip(range(total), batches))
        bar = keras.utils.Progbar(total) if verbose not in (0, False) and total and total > 1 else None
        parts = []
        for step, batch in enumerate(batches):
            parts.append(self.infer(batch))
            if bar is not None:
                bar.update(step + 1)
        if not parts:
            raise ValueError("predict received no data: an empty batch or an empty dataset; expected at least one image.")
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _array_batches(self, x, batch_size):
        images = x["images"] if isinstance(x, dict) else x
        if isinstance(images, tf.Tensor):
            images = images.numpy()
        images = check_images(np.asarray(images), name="images")
        step = check_positive_int("batch_size", batch_size or 32)
        count = len(images)
        extras = {k: np.asarray(v) for k, v in x.items() if k != "images"} if isinstance(x, dict) else {}
        for key, value in extras.items():
            if len(value) != count:
                raise ValueError(f"{key} has {len(value)} rows but images has {count}.")

        def batches():
            for i in range(0, count, step):
                chunk = images[i:i + step]
                yield {"images": chunk, **{k: v[i:i + step] for k, v in extras.items()}} if extras else chunk

        return batches(), -(-count // step)

    def detect(self, image, score_threshold: float | None = None) -> dict:
        """Detects objects in one image of any size.

        Args:
            image: a path, a PIL image or an (H, W[, C]) array (grayscale and
                RGBA are converted to RGB); or a list of them, of any sizes
                (then a list of results, one per image, in order).
            score_threshold: keep detections scoring at least this (default:
                all the model returns).

        Returns:
            dict of NumPy arrays with the valid rows only: ``boxes`` (n, 4) in
            ``bounding_box_format`` pixels of ``image``, ``scores`` (n,),
            ``labels`` (n,), and the model's extra outputs (``point_outputs``)
            for the same rows. Instance masks come pasted into the image:
            ``masks`` (n, H, W) uint8 (see ``paste_detection_masks``).
        """
        if isinstance(image, (list, tuple)):  # photos of different sizes: one frame each
            return [self.detect(item, score_threshold) for item in image]
        array = load_image(image)
        # One image at a time: a fixed canvas runs one graph for every photo size (no XLA
        # compilation per size); canvases that follow the image trace once per size.
        compiler = "graph" if self.config.fixed_canvas else None
        out = self.infer(array[None].astype(np.float32), compiler)
        n = int(out["num_detections"][0])
        result = {k: v[0, :n] for k, v in out.items() if k != "num_detections"}
        if score_threshold is not None:
            keep = result["scores"] >= float(score_threshold)
            result = {k: v[keep] for k, v in result.items()}
        if "masks" in result:
            result["masks"] = self.paste_detection_masks(result["masks"], result["boxes"], *array.shape[:2])
        return result

    def paste_detection_masks(self, masks, boxes, height: int, width: int, chunk: int = 16) -> np.ndarray:
        """One image's (n, M, M) mask probabilities -> (n, height, width) uint8 in its pixels.

        ``kdet.ops.paste_masks`` (torchvision ``paste_masks_in_image``) at the
        detections' boxes (``bounding_box_format``, image pixels), thresholded
        at the config's ``mask_threshold`` (0.5 where it has none); ``chunk``
        detections at a time bounds the float32 intermediates.
        """
        from kdet.ops.masks import paste_masks

        threshold = getattr(self.config, "mask_threshold", 0.5)
        masks = np.asarray(masks, np.float32)
        boxes = np.asarray(boxes, np.float32)
        pasted = [paste_masks(masks[None, i:i + chunk], boxes[None, i:i + chunk], int(height), int(width),
                              threshold=threshold, bounding_box_format=self.bounding_box_format).numpy()[0]
                  for i in range(0, len(masks), chunk)]
        return np.concatenate(pasted) if pasted else np.zeros((0, int(height), int(width)), np.uint8)

    def export(self, filepath, format: str = "tf_saved_model", **kwargs):
        """Exports the inference graph (decoding + NMS inside): "tf_saved_model" or "litert".

        ``precision=`` exports the same weights at another network precision.
        """
        from kdet import export as kdet_export

        return kdet_export.export(self, filepath, format=format, **kwargs)

    def with_settings(self, **changes) -> "Detector":
        """A copy of this model with some settings changed and the same weights.

        For settings that leave every weight's shape as it is: ``precision``,
        ``resize`` and the sizes, thresholds, ``max_detections``, ...
        (``num_classes`` changes go through ``kdet.load(..., num_classes=k)``).

        Example:
            >>> fast = model.with_settings(precision="bfloat16")      # doctest: +SKIP
            >>> strict = model.with_settings(score_threshold=0.5)     # doctest: +SKIP
        """
        config = {**self.get_config(), **changes}
        clone = type(self).from_config(config)
        source, target = self.weights, clone.weights
        if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
            raise ValueError(f"with_settings({', '.join(sorted(changes))}) changes the model's weights; it only "
                             "takes settings that keep every weight's shape.")
        for a, b in zip(source, target):
            b.assign(a.value)
        return clone
