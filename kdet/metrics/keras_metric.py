"""COCO mAP for ``model.evaluate``: a Keras metric and an epoch-end callback.

COCO AP is not decomposable into per-batch statistics, so the metric stores
the valid rows of every batch on the host and evaluates them all at once in
``result()`` (``kdet.metrics.coco_map``). ``update_state`` works eagerly and
inside ``tf.function`` (Keras' test step) through ``tf.py_function``; it
cannot run inside an XLA-compiled step (``jit_compile=True``), so a step
that updates it must leave this call outside XLA.

When the ground truth and the detections both hold ``"masks"`` (an
instance-segmentation model), the same rows are also evaluated as mask AP
(``coco_map(..., iou_type="segm")``) and reported with a ``mask_`` prefix:
``mask_AP``, ``mask_AP50``, ... Masks are kept as crops of their non-zero
pixels (:mod:`kdet.metrics._masks`), so memory follows the objects' areas.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.metrics._inputs import FlatBoxes, flatten_boxes
from kdet.metrics.coco import COCO_MAX_DETECTIONS, COCO_METRIC_NAMES, _check_max_detections, evaluate_flat
from kdet.validation import check_box_format

#: Prefix of the mask AP keys (``mask_AP``, ``mask_AP50``, ...).
MASK_PREFIX = "mask_"


def has_masks(y_true: Any, y_pred: Any) -> bool:
    """Whether both dicts hold masks, i.e. mask AP can be evaluated."""
    return all(isinstance(y, dict) and y.get("masks") is not None for y in (y_true, y_pred))


class _COCOAccumulator:
    """Host-side store of validated rows; caches the last evaluation.

    ``masks``: True evaluates mask AP too (both dicts must hold masks), False
    never, None whenever every stored batch holds masks.
    """

    def __init__(self, bounding_box_format, max_detections, image_size, masks=None):
        self.bounding_box_format = bounding_box_format
        self.max_detections = max_detections
        self.image_size = image_size
        self.masks = masks
        self.reset()

    def reset(self):
        self.gt: list[FlatBoxes] = []
        self.dt: list[FlatBoxes] = []
        self.version = 0
        self.cached_version = 0
        self.cached = {k: -1.0 for k in self.box_keys + (self.mask_keys if self.masks else ())}

    @property
    def box_keys(self) -> tuple[str, ...]:
        return COCO_METRIC_NAMES[:6] + tuple(f"AR{m}" for m in self.max_detections) + COCO_METRIC_NAMES[9:]

    @property
    def mask_keys(self) -> tuple[str, ...]:
        return tuple(MASK_PREFIX + k for k in self.box_keys)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the values computed so far (box keys, then mask keys once masks were seen)."""
        return tuple(self.cached)

    @property
    def with_masks(self) -> bool:
        return bool(self.gt) and all(g.masks is not None for g in self.gt)

    def add(self, y_true, y_pred):
        masks = has_masks(y_true, y_pred) if self.masks is None else self.masks
        kw = dict(bounding_box_format=self.bounding_box_format, target="xywh", image_size=self.image_size,
                  masks=masks)
        gt = flatten_boxes(y_true, "y_true", detections=False, **kw)
        dt = flatten_boxes(y_pred, "y_pred", detections=True, **kw,
                           mask_image_sizes=gt.masks.image_sizes if masks else None)
        if gt.num_images != dt.num_images:
            raise ValueError(f"y_true has {gt.num_images} images but y_pred has {dt.num_images}.")
        self.gt.append(gt)
        self.dt.append(dt)
        self.version += 1

    def add_tensors(self, with_num, with_masks, *tensors):
        gt_boxes, gt_labels, dt_boxes, dt_scores, dt_labels, *rest = tensors
        y_true = {"boxes": gt_boxes, "labels": gt_labels}
        y_pred = {"boxes": dt_boxes, "scores": dt_scores, "labels": dt_labels}
        if with_num:
            y_pred["num_detections"] = rest.pop(0)
        if with_masks:
            y_true["masks"], y_pred["masks"] = rest
        self.add(y_true, y_pred)

    def compute(self) -> dict:
        if self.cached_version != self.version:
            gt, dt = FlatBoxes.concatenate(self.gt), FlatBoxes.concatenate(self.dt)
            if gt.num_images:
                self.cached = evaluate_flat(gt, dt, self.max_detections)
                if self.with_masks:
                    segm = evaluate_flat(gt, dt, self.max_detections, iou_type="segm")
                    self.cached.update({MASK_PREFIX + k: v for k, v in segm.items()})
            self.cached_version = self.version
        return self.cached


class COCOMeanAveragePrecision(keras.metrics.Metric):
    """COCO box AP (and mask AP for masks; pycocotools conventions) accumulated over batches.

    ``update_state(y_true, y_pred)`` takes the GT dict ``{"boxes": (B, M, 4),
    "labels": (B, M)}`` (padded with -1, or ragged) and the detector output
    dict ``{"boxes", "scores", "labels", "num_detections"}``, both in
    ``bounding_box_format`` pixels. ``result()`` evaluates everything
    accumulated since ``reset_state()`` with ``kdet.metrics.coco_map``.

    With ``"masks"`` in both dicts (ground truth (B, M, H, W) in image pixels;
    detections as the model's (B, K, M, M) probabilities in their boxes, or
    pasted (B, K, H, W) uint8: see ``coco_map(iou_type="segm")``) mask AP is
    evaluated as well and reported as ``mask_AP``, ``mask_AP50``, ...:
    ``result()`` is then a dict, ``{name: box AP, "mask_AP": mask AP}``
    (all 24 numbers with ``return_dict=True``), so ``model.evaluate`` logs both.

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
        masks: None (default) evaluates mask AP whenever ``y_true`` and
            ``y_pred`` both hold ``"masks"``; True requires them; False
            evaluates boxes only.
        name: metric name (the log key of box AP when ``return_dict=False``).

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
                 image_size=None, compute_in_graph: bool = False, masks: bool | None = None,
                 name: str = "coco_map", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bounding_box_format = check_box_format(bounding_box_format)
        self.max_detections = _check_max_detections(max_detections)
        self.return_dict = bool(return_dict)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.compute_in_graph = bool(compute_in_graph)
        if masks not in (None, True, False):
            raise ValueError(f"masks must be None (automatic), True or False; received {masks!r}.")
        self.masks = masks
        self._acc = _COCOAccumulator(self.bounding_box_format, self.max_detections, self.image_size, masks)
        # Whether traced result() calls report mask AP: set when a traced update sees masks (the
        # test step traces update_state before result), so the graph has a fixed set of outputs.
        self._traced_masks = bool(masks)

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
        with_masks = has_masks(y_true, y_pred) if self.masks is None else self.masks
        self._traced_masks = self._traced_masks or with_masks
        inputs = [_dense(y_true["boxes"], 0.0), _dense(y_true["labels"], -1),
                  _dense(y_pred["boxes"], 0.0), _dense(y_pred["scores"], 0.0), _dense(y_pred["labels"], -1)]
        with_num = y_pred.get("num_detections") is not None
        if with_num:
            inputs.append(tf.convert_to_tensor(y_pred["num_detections"]))
        if with_masks:
            if not has_masks(y_true, y_pred):
                raise ValueError("masks=True needs 'masks' in both y_true and y_pred.")
            inputs += [_dense(y_true["masks"], 0), _dense(y_pred["masks"], 0)]
        tf.py_function(func=lambda *t: self._acc.add_tensors(with_num, with_masks, *t), inp=inputs, Tout=[])

    def _keys(self, traced: bool) -> tuple[str, ...]:
        masks = self._traced_masks if traced else self._acc.with_masks or bool(self.masks)
        return self._acc.box_keys + (self._acc.mask_keys if masks else ())

    def _values(self, keys):
        values = self._acc.compute()
        return [np.float32(values.get(k, -1.0)) for k in keys]

    def _cached_values(self, keys):
        if self.compute_in_graph:
            return self._values(keys)
        return [np.float32(self._acc.cached.get(k, -1.0)) for k in keys]

    def result(self):
        if tf.executing_eagerly():
            keys = self._keys(traced=False)
            values = [tf.constant(v) for v in self._values(keys)]
        else:
            keys = self._keys(traced=True)
            values = tf.py_function(func=lambda: self._cached_values(keys), inp=[], Tout=[tf.float32] * len(keys))
            for v in values:
                v.set_shape([])
        results = dict(zip(keys, values))
        if self.return_dict:
            return results
        if MASK_PREFIX + "AP" in results:
            return {self.name: results["AP"], MASK_PREFIX + "AP": results[MASK_PREFIX + "AP"]}
        return results["AP"]

    def result_keys(self) -> tuple[str, ...]:
        """Every key ``result()`` may report (log keys): box and mask AP names, with and without ``return_dict``."""
        return (self.name, MASK_PREFIX + "AP") + self._acc.box_keys + self._acc.mask_keys

    def reset_state(self) -> None:
        self._acc.reset()

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            bounding_box_format=self.bounding_box_format, max_detections=list(self.max_detections),
            return_dict=self.return_dict, image_size=self.image_size, compute_in_graph=self.compute_in_graph,
            masks=self.masks,
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

    When the ground truth and the predictions both hold ``"masks"``, the 12
    mask AP numbers are added with a ``mask_`` prefix.

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

    Adds ``{prefix}AP``, ``{prefix}AP50``, ... (all 12 numbers by default, and
    the 12 ``mask_*`` numbers for models with masks) to the epoch logs, so
    ``ModelCheckpoint(monitor="val_AP", mode="max")`` and ``EarlyStopping``
    can use them.

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
        acc = _COCOAccumulator(self.bounding_box_format, self.max_detections, None)
        known = acc.box_keys + acc.mask_keys
        self.keys = None if keys is None else tuple(keys)
        unknown = [k for k in self.keys or () if k not in known]
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
            keys = self.keys or tuple(self.last_results)
            missing = [k for k in keys if k not in self.last_results]
            if missing:
                raise ValueError(f"COCOEvaluationCallback: {missing} were not computed (mask keys need masks in "
                                 "the data and the model's output).")
            logs.update({self.prefix + k: self.last_results[k] for k in keys})
