"""COCO mAP for ``model.evaluate``: a Keras metric and an epoch-end callback.

COCO AP is not decomposable into per-batch statistics, so the metric stores
the valid rows of every batch on the host and evaluates them all at once in
``result()`` (``kdet.metrics.coco_map``). ``update_state`` works eagerly and
inside ``tf.function`` (Keras' test step) through ``tf.py_function``; it
cannot run inside an XLA-compiled step (``jit_compile=True``), so a step
that updates it must leave this call outside XLA.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.metrics._inputs import FlatBoxes, flatten_boxes
from kdet.metrics.coco import COCO_MAX_DETECTIONS, COCO_METRIC_NAMES, _check_max_detections, evaluate_flat
from kdet.validation import check_box_format


class _COCOAccumulator:
    """Host-side store of validated rows; caches the last evaluation."""

    def __init__(self, bounding_box_format, max_detections, image_size):
        self.bounding_box_format = bounding_box_format
        self.max_detections = max_detections
        self.image_size = image_size
        self.reset()

    def reset(self):
        self.gt: list[FlatBoxes] = []
        self.dt: list[FlatBoxes] = []
        self.version = 0
        self.cached_version = 0
        self.cached = {k: -1.0 for k in self.keys}

    @property
    def keys(self):
        return COCO_METRIC_NAMES[:6] + tuple(f"AR{m}" for m in self.max_detections) + COCO_METRIC_NAMES[9:]

    def add(self, y_true, y_pred):
        kw = dict(bounding_box_format=self.bounding_box_format, target="xywh", image_size=self.image_size)
        gt = flatten_boxes(y_true, "y_true", detections=False, **kw)
        dt = flatten_boxes(y_pred, "y_pred", detections=True, **kw)
        if gt.num_images != dt.num_images:
            raise ValueError(f"y_true has {gt.num_images} images but y_pred has {dt.num_images}.")
        self.gt.append(gt)
        self.dt.append(dt)
        self.version += 1

    def add_tensors(self, gt_boxes, gt_labels, dt_boxes, dt_scores, dt_labels, dt_num=None):
        y_pred = {"boxes": dt_boxes, "scores": dt_scores, "labels": dt_labels}
        if dt_num is not None:
            y_pred["num_detections"] = dt_num
        self.add({"boxes": gt_boxes, "labels": gt_labels}, y_pred)

    def compute(self) -> dict:
        if self.cached_version != self.version:
            gt, dt = FlatBoxes.concatenate(self.gt), FlatBoxes.concatenate(self.dt)
            if gt.num_images:
                self.cached = evaluate_flat(gt, dt, self.max_detections)
            self.cached_version = self.version
        return self.cached


class COCOMeanAveragePrecision(keras.metrics.Metric):
    """COCO box AP (pycocotools conventions) accumulated over batches.

    ``update_state(y_true, y_pred)`` takes the GT dict ``{"boxes": (B, M, 4),
    "labels": (B, M)}`` (padded with -1, or ragged) and the detector output
    dict ``{"boxes", "scores", "labels", "num_detections"}``, both in
    ``bounding_box_format`` pixels. ``result()`` evaluates everything
    accumulated since ``reset_state()`` with ``kdet.metrics.coco_map``.

    Inside a traced function ``result()`` returns the value of the last
    evaluation instead of re-evaluating the whole set at every step (Keras
    calls it after each batch); Keras reads the metric eagerly once
    ``evaluate`` ends, which computes the exact value. Set
    ``compute_in_graph=True`` to evaluate at every traced call instead.

    Args:
        bounding_box_format: format of the boxes (any Keras format).
        max_detections: pycocotools ``maxDets``.
        return_dict: ``result()`` returns all 12 numbers as a dict (keys
            ``AP``, ``AP50``, ...) instead of the AP alone.
        image_size: (height, width) for ``rel_*`` formats.
        compute_in_graph: evaluate in traced ``result()`` calls too.
        name: metric name (the log key when ``return_dict=False``).

    Example:
        >>> metric = COCOMeanAveragePrecision()
        >>> metric.update_state({"boxes": [[[0., 0, 10, 10]]], "labels": [[0]]},
        ...                     {"boxes": [[[0., 0, 10, 10]]], "scores": [[0.9]], "labels": [[0]]})
        >>> float(metric.result())
        1.0

    Reference: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014.
    """

    def __init__(self, bounding_box_format: str = "xyxy",
                 max_detections: Sequence[int] = COCO_MAX_DETECTIONS, return_dict: bool = False,
                 image_size=None, compute_in_graph: bool = False, name: str = "coco_map", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bounding_box_format = check_box_format(bounding_box_format)
        self.max_detections = _check_max_detections(max_detections)
        self.return_dict = bool(return_dict)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.compute_in_graph = bool(compute_in_graph)
        self._acc = _COCOAccumulator(self.bounding_box_format, self.max_detections, self.image_size)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight=None) -> None:
        """Stores one batch; ``sample_weight`` is not supported by COCO AP and ignored."""
        if tf.executing_eagerly():
            self._acc.add(y_true, y_pred)
            return
        for arg, value, keys in (("y_true", y_true, ("boxes", "labels")),
                                 ("y_pred", y_pred, ("boxes", "scores", "labels"))):
            if not isinstance(value, dict) or any(k not in value for k in keys):
                got = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise ValueError(f"{arg} must be a dict with keys {keys}; received {got}.")
        inputs = [_dense(y_true["boxes"], 0.0), _dense(y_true["labels"], -1),
                  _dense(y_pred["boxes"], 0.0), _dense(y_pred["scores"], 0.0), _dense(y_pred["labels"], -1)]
        if y_pred.get("num_detections") is not None:
            inputs.append(tf.convert_to_tensor(y_pred["num_detections"]))
        tf.py_function(func=self._acc.add_tensors, inp=inputs, Tout=[])

    def _values(self):
        values = self._acc.compute()
        return [np.float32(values[k]) for k in self._acc.keys]

    def _cached_values(self):
        if self.compute_in_graph:
            return self._values()
        return [np.float32(self._acc.cached[k]) for k in self._acc.keys]

    def result(self):
        if tf.executing_eagerly():
            values = [tf.constant(v) for v in self._values()]
        else:
            values = tf.py_function(func=self._cached_values, inp=[], Tout=[tf.float32] * 12)
            for v in values:
                v.set_shape([])
        if self.return_dict:
            return dict(zip(self._acc.keys, values))
        return values[0]

    def reset_state(self) -> None:
        self._acc.reset()

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            bounding_box_format=self.bounding_box_format, max_detections=list(self.max_detections),
            return_dict=self.return_dict, image_size=self.image_size, compute_in_graph=self.compute_in_graph,
        )
        return config


def _dense(value, default):
    """Ragged batches become padded ones (padding rows carry label -1)."""
    if isinstance(value, tf.RaggedTensor):
        return value.to_tensor(default_value=default)
    return tf.convert_to_tensor(value)


def evaluate_coco(model, dataset, bounding_box_format: str = "xyxy",
                  max_detections: Sequence[int] = COCO_MAX_DETECTIONS, image_size=None,
                  steps: int | None = None) -> dict:
    """Runs ``model.predict_on_batch`` over ``dataset`` and returns ``coco_map``'s 12 numbers.

    Args:
        model: a detector whose call returns the output dict of API.md.
        dataset: iterable of ``(images, y_true)`` or ``(images, y_true, w)``
            batches (e.g. a ``tf.data.Dataset``); ``y_true`` is the GT dict.
        bounding_box_format: format of the GT and predicted boxes.
        max_detections, image_size: as ``coco_map``.
        steps: stop after this many batches (default: the whole dataset).
    """
    acc = _COCOAccumulator(check_box_format(bounding_box_format),
                           _check_max_detections(max_detections), image_size)
    for step, batch in enumerate(dataset):
        if steps is not None and step >= steps:
            break
        images, y_true = batch[0], batch[1]
        acc.add(y_true, model.predict_on_batch(images))
    if not acc.gt:
        raise ValueError("evaluate_coco received an empty dataset; expected at least one batch.")
    return dict(acc.compute())


class COCOEvaluationCallback(keras.callbacks.Callback):
    """Evaluates COCO mAP on a validation set after every ``frequency`` epochs.

    Adds ``{prefix}AP``, ``{prefix}AP50``, ... (all 12 numbers by default) to
    the epoch logs, so ``ModelCheckpoint(monitor="val_AP", mode="max")`` and
    ``EarlyStopping`` can use them.

    Args:
        dataset: ``(images, y_true)`` batches (a ``tf.data.Dataset``).
        bounding_box_format: format of the GT and predicted boxes.
        prefix: prefix of the log keys.
        keys: which of the 12 numbers to log (default all).
        frequency: evaluate every this many epochs.
        max_detections, image_size, steps: as ``evaluate_coco``.

    Example:
        >>> cb = COCOEvaluationCallback(val_ds)                    # doctest: +SKIP
        >>> model.fit(train_ds, epochs=10, callbacks=[cb])         # doctest: +SKIP
    """

    def __init__(self, dataset, bounding_box_format: str = "xyxy", prefix: str = "val_",
                 keys: Sequence[str] | None = None, frequency: int = 1,
                 max_detections: Sequence[int] = COCO_MAX_DETECTIONS, image_size=None, steps=None):
        super().__init__()
        self.dataset = dataset
        self.bounding_box_format = check_box_format(bounding_box_format)
        self.max_detections = _check_max_detections(max_detections)
        known = _COCOAccumulator(self.bounding_box_format, self.max_detections, None).keys
        self.keys = tuple(known if keys is None else keys)
        unknown = [k for k in self.keys if k not in known]
        if unknown:
            raise ValueError(f"keys must be among {known}; received unknown {unknown}.")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"frequency must be a positive integer; received {frequency!r}.")
        self.prefix, self.frequency = prefix, frequency
        self.image_size, self.steps = image_size, steps
        self.last_results: dict | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.frequency:
            return
        self.last_results = evaluate_coco(self.model, self.dataset, self.bounding_box_format,
                                          self.max_detections, self.image_size, self.steps)
        if logs is not None:
            logs.update({self.prefix + k: self.last_results[k] for k in self.keys})
