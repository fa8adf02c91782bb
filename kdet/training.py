"""Training at scale: ``kdet.training.train``, behind ``examples/train.py`` and ``kdet train``.

One function trains any architecture on any supported dataset with
per-architecture defaults (optimizer, warm-up + cosine schedule, batch size),
Keras progress bars, TensorBoard logs, best-checkpointing on validation COCO
AP, and fault tolerance: ``keras.callbacks.BackupAndRestore`` writes the full
training state (weights, optimizer slots, step counter) every ``backup_every``
steps, and a restarted run resumes from it with nothing lost or repeated: the
data stream is deterministic (seeded shuffle and augmentation) and is fast-
forwarded to the restored optimizer step, and the interrupted epoch runs only
its remaining steps.

Distribution uses ``tf.distribute`` strategies as they are (no home-made
distribution code): pass ``strategy="mirrored"`` (all local GPUs),
``"multiworker"`` (``MultiWorkerMirroredStrategy`` over the workers of
``TF_CONFIG``) or any strategy object, e.g. ``tf.distribute.TPUStrategy(resolver)``;
the model and optimizer are then built in ``strategy.scope()`` and
``batch_size`` is the global batch. Each input pipeline (one per worker) reads
its own shard of every epoch's shuffled examples, so no example is seen twice
per epoch, and one global step holds the same examples as a single-device
step. Only the chief writes to ``out_dir``; the other workers write their
(identical) checkpoints to a temporary folder that is removed, as the
TensorFlow multi-worker guide does (:mod:`kdet.distribute`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from kdet.config import SCRATCH_RECIPE, TrainingRecipe
from kdet.distribute import STRATEGIES, get_strategy, is_chief  # noqa: F401  (public here too)
from kdet.distribute import distributed_stream, fit_scope, write_dir
from kdet.optimizers import SGD, Adam
from kdet.validation import check_image_size, check_positive_int

logger = logging.getLogger("kdet.training")

#: Architecture name -> builder import path (``kdet.models``).
ARCHITECTURES = {
    "retinanet": "kdet.models:RetinaNet",
    "efficientdet": "kdet.models:EfficientDet",
    "ssd": "kdet.models:SSD",
    "yolov3": "kdet.models:YOLOV3",
    "faster_rcnn": "kdet.models:FasterRCNN",
}


#: The recipe type every detector declares (``Detector.training_recipe()``); kept under its old name.
TrainingDefaults = TrainingRecipe
SCRATCH_DEFAULTS = SCRATCH_RECIPE


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: Any
    history: dict
    out_dir: pathlib.Path
    best_path: pathlib.Path | None
    final_path: pathlib.Path
    initial_step: int


def training_defaults(model) -> TrainingRecipe:
    """The recipe ``model`` declares (``Detector.training_recipe()``): the paper's for full-size
    architectures, Adam for the tiny presets; models that declare none get the from-scratch recipe."""
    recipe = getattr(model, "training_recipe", None)
    return recipe() if callable(recipe) else SCRATCH_RECIPE


def make_optimizer(defaults: TrainingDefaults, total_steps: int, batch_size: int | None = None,
                   learning_rate: float | None = None, warmup_steps: int | None = None):
    """Linear warm-up then cosine decay to 1 % of the peak, over ``total_steps``.

    Args:
        defaults: the recipe (optimizer kind, peak rate at its batch size, ...).
        total_steps: optimizer steps of the whole run.
        batch_size: the global batch size; the peak rate scales linearly with it.
        learning_rate: peak learning rate, overriding the scaled default.
        warmup_steps: warm-up length (default: the recipe's, at most 10 % of the run).
    """
    total_steps = check_positive_int("total_steps", total_steps)
    if learning_rate is None:
        learning_rate = defaults.learning_rate * (batch_size or defaults.batch_size) / defaults.batch_size
    if warmup_steps is None:
        warmup_steps = min(defaults.warmup_steps, max(1, total_steps // 10))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.1, decay_steps=max(1, total_steps - warmup_steps), alpha=0.01,
        warmup_target=learning_rate, warmup_steps=warmup_steps)
    if defaults.optimizer == "sgd":
        return SGD(schedule, momentum=defaults.momentum, weight_decay=defaults.weight_decay or None,
                   global_clipnorm=10.0)
    return Adam(schedule, weight_decay=defaults.weight_decay or None, global_clipnorm=10.0)


def build_model(model, num_classes: int | None = None, image_size=None, backbone: str | None = None,
                weights=None, class_names=None):
    """Turns ``model`` (architecture name, zoo name, ``.keras`` path, callable or Detector) into a Detector."""
    if isinstance(model, keras.Model):
        return model
    if callable(model) and not isinstance(model, str):
        return model()
    if not isinstance(model, str):
        raise ValueError(f"model must be a name, a path, a callable or a Detector; received {model!r}.")
    if model in ARCHITECTURES:
        module, _, attr = ARCHITECTURES[model].partition(":")
        builder = getattr(importlib.import_module(module), attr)
        kwargs = {"num_classes": num_classes or 3}
        if backbone is not None:
            kwargs["backbone"] = backbone
        if image_size is not None:
            kwargs["image_size"] = image_size
        if class_names is not None:
            kwargs["class_names"] = list(class_names)
        return builder(**kwargs)
    import kdet

    kwargs = {"num_classes": num_classes} if num_classes else {}
    return kdet.load(model, weights=weights, **kwargs)


def open_dataset(data, split: str = "train", num_classes: int | None = None, image_size=None, seed: int = 0):
    """Opens ``data`` as a stream of single examples ``(image, {"boxes", "labels"})``.

    ``data`` is a ``tf.data.Dataset`` of single examples, an ``(x, y)`` pair of
    arrays, or a spec string: ``synthetic[:N]``, ``coco:PATH``, ``voc:PATH``,
    ``yolo:PATH`` (YOLO txt folder) or ``tfds:NAME``.
    """
    import kdet.data

    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return tf.data.Dataset.from_tensor_slices((np.asarray(data[0]), dict(data[1])))
    if not isinstance(data, str):
        raise ValueError(f"data must be a tf.data.Dataset, an (x, y) pair or a spec string; received {data!r}.")
    kind, _, arg = data.partition(":")
    if kind == "synthetic":
        from kdet.data.synthetic import SHAPES

        size = image_size or (128, 128)
        count = int(arg) if arg else 64
        return kdet.data.synthetic(split, num_images=count, image_size=tuple(size), seed=seed,
                                   num_classes=min(num_classes or 3, len(SHAPES)))
    readers = {"coco": kdet.data.coco, "voc": kdet.data.voc, "yolo": kdet.data.yolo_txt, "tfds": kdet.data.tfds}
    if kind not in readers or not arg:
        raise ValueError(f"data must be synthetic[:N], coco:PATH, voc:PATH, yolo:PATH or tfds:NAME; received {data!r}.")
    return readers[kind](arg, split=split)


class _ResumableBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that resumes at the restored optimizer step, not at the start of its epoch.

    Keras restarts an interrupted epoch from its first batch (repeating the
    steps done before the backup); here the epoch to resume and the steps left
    in it come from ``optimizer.iterations``, which the backup restores.

    Every worker restores from ``backup_dir`` (the chief's backup, on storage all
    workers read) and writes its backups to ``write_dir`` (``backup_dir`` on the
    chief, a temporary folder on the other workers).
    """

    def __init__(self, backup_dir, steps_per_epoch: int, save_freq="epoch", write_dir=None):
        super().__init__(write_dir or backup_dir, save_freq=save_freq, delete_checkpoint=True)
        self.restore_path = os.path.join(backup_dir, "latest.weights.h5")
        self.steps_per_epoch = steps_per_epoch
        self.partial = None  # (epoch, steps left in it) after a mid-epoch restore
        self._epoch = 0
        self._stopped_here = False

    def _load_model(self):
        if os.path.isfile(self.restore_path):
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(self.restore_path)
        done = int(self.model.optimizer.iterations.numpy())
        epoch, offset = divmod(done, self.steps_per_epoch)
        self.model._initial_epoch = epoch  # the attribute BackupAndRestore itself sets
        self.partial = (epoch, self.steps_per_epoch - offset) if offset else None
        if done:
            logger.warning("kdet.training: resumed from %s at step %d (epoch %d, step %d of it).",
                           self.restore_path, done, epoch + 1, offset)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._stopped_here = False

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.partial is not None and self.partial[0] == self._epoch and batch + 1 >= self.partial[1]:
            self.model.stop_training = True  # end the resumed epoch after its remaining steps
            self._stopped_here = True

    def on_epoch_end(self, epoch, logs=None):
        if self._stopped_here:
            self.model.stop_training = False  # only the epoch ends, not the training
            self.partial = None
        super().on_epoch_end(epoch, logs)


def _restored_step(backup_dir: pathlib.Path, model) -> int:
    """The optimizer step stored in the backup (0 when there is none)."""
    weights = backup_dir / "latest.weights.h5"
    if not weights.is_file():
        return 0
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(weights)
    return int(model.optimizer.iterations.numpy())


def train(model="retinanet", data="synthetic", *, epochs: int = 10, batch_size: int | None = None,
          steps_per_epoch: int | None = None, num_classes: int | None = None, backbone: str | None = None,
          image_size=None, weights=None, validation_data=None, validation_steps: int | None = None,
          eval_every: int = 1, learning_rate: float | None = None, optimizer=None, augment: bool | Any = True,
          max_boxes: int = 100, out_dir: str | os.PathLike = "runs/kdet", backup_every: int | str = "epoch",
          mixed_precision: bool = False, strategy=None, seed: int = 0, verbose="auto",
          callbacks: list | None = None) -> TrainResult:
    """Trains a detector with per-architecture defaults, logging, checkpoints and resumption.

    Args:
        model: an architecture name (``"retinanet"``, ``"efficientdet"``, ``"ssd"``,
            ``"yolov3"``, ``"faster_rcnn"``), a zoo name / ``.keras`` path for
            ``kdet.load``, a Detector, or a zero-argument callable building one
            (needed with ``strategy``: it is called inside the strategy scope).
        data: training data: ``tf.data.Dataset`` of single examples, ``(x, y)``
            arrays, or ``synthetic[:N]`` / ``coco:PATH`` / ``voc:PATH`` /
            ``yolo:PATH`` / ``tfds:NAME``.
        epochs: number of epochs.
        batch_size: global batch size (default: the architecture's recipe); a
            multiple of the replicas in sync.
        steps_per_epoch: default: one pass over the data (``size // batch_size``
            steps; each pass drops its last incomplete batch).
        num_classes, backbone, image_size, weights: passed to the builder / ``kdet.load``.
        validation_data: like ``data`` (a spec string reads its "validation"
            split); enables COCO mAP every ``eval_every`` epochs (logged as
            ``val_AP``, ``val_AP50``, ...) and best-checkpointing on ``val_AP``.
            Not with a strategy of several replicas (ValueError).
        validation_steps: evaluate on this many batches only.
        learning_rate: peak learning rate (default: recipe, scaled with the batch).
        optimizer: a Keras optimizer replacing the default one.
        augment: True for ``kdet.data.Augmenter()`` defaults, False, or an augmenter.
        max_boxes: padded box rows per image.
        out_dir: run folder: ``logs/`` (TensorBoard, when installed), ``history.csv``,
            ``backup/``, ``best.keras``, ``final.keras``. Only the chief writes
            it; with several workers it must be on storage they all read
            (the backup they resume from).
        backup_every: back up every this many steps, or "epoch".
        mixed_precision: train with the ``mixed_float16`` policy.
        strategy: None, "mirrored", "multiworker" or a ``tf.distribute.Strategy``
            (see :func:`get_strategy`).
        seed: seed of weights initialisation, shuffling and augmentation.
        verbose: Keras ``fit`` verbosity ("auto": progress bars).
        callbacks: extra Keras callbacks.

    Returns:
        :class:`TrainResult` (model, history dict, paths, the step it resumed from).

    Example:
        >>> result = train("retinanet", "synthetic:16", backbone="tiny", image_size=128, epochs=1,
        ...                batch_size=8, out_dir="/tmp/kdet_run", verbose=0)  # doctest: +SKIP
    """
    epochs = check_positive_int("epochs", epochs)
    out_dir = pathlib.Path(out_dir)
    strategy = get_strategy(strategy)  # first: MultiWorkerMirroredStrategy must precede any TF op
    if validation_data is not None and strategy.num_replicas_in_sync > 1:
        # Fail now, not after the first epoch: the evaluation's predict_on_batch runs the whole
        # batch on every replica and concatenates the copies.
        raise ValueError(f"validation_data is not supported with {strategy.num_replicas_in_sync} replicas "
                         "(kdet.metrics.evaluate_coco would count every image once per replica); train "
                         "without it and evaluate the saved checkpoints with `kdet eval`.")
    keras.utils.set_random_seed(seed)
    previous_policy = keras.mixed_precision.global_policy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            detector = build_model(model, num_classes, image_size, backbone, weights)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    net_size = detector.image_size or (check_image_size(image_size) if image_size else None)
    defaults = training_defaults(detector)
    batch_size = check_positive_int("batch_size", batch_size or defaults.batch_size)
    examples = open_dataset(data, "train", detector.num_classes, net_size, seed)
    if steps_per_epoch is None:
        size = int(examples.cardinality())
        if size <= 0:
            raise ValueError("The dataset size is unknown; pass steps_per_epoch.")
        steps_per_epoch = max(1, size // batch_size)
    steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
    with strategy.scope():
        opt = optimizer or make_optimizer(defaults, epochs * steps_per_epoch, batch_size, learning_rate)
        # Augmentation happens in the data pipeline, seeded, so a resumed run replays it.
        detector.compile(optimizer=opt, evaluate_coco=False, augment=None)
    backup_dir = out_dir / "backup"
    with strategy.scope():  # restoring may build the optimizer's (distributed) variables
        start_step = _restored_step(backup_dir, detector)
    train_ds = distributed_stream(examples, strategy, batch_size, start_step=start_step, seed=seed,
                                  make_augmenter=lambda pipeline_seed: _augmenter(augment, net_size, pipeline_seed),
                                  image_size=net_size, max_boxes=max_boxes)
    folder = write_dir(out_dir, strategy)  # out_dir on the chief only
    try:
        cbs = _callbacks(detector, validation_data, validation_steps, eval_every, folder, backup_dir,
                         steps_per_epoch, backup_every, batch_size, max_boxes, net_size, seed)
        with fit_scope(detector, strategy):
            history = detector.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                   callbacks=cbs + list(callbacks or []), verbose=verbose)
        detector.save(folder / "final.keras")  # on every worker, as the callbacks save (kdet.distribute)
        (folder / "history.json").write_text(json.dumps(_jsonable(history.history), indent=1))
        has_best = (folder / "best.keras").exists()
    finally:
        if folder != out_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return TrainResult(detector, history.history, out_dir, out_dir / "best.keras" if has_best else None,
                       out_dir / "final.keras", start_step)


def _augmenter(augment, image_size, seed):
    if augment is True:
        from kdet.data.augment import Augmenter

        return Augmenter(image_size=image_size, seed=seed)
    return augment or None


def _callbacks(detector, validation_data, validation_steps, eval_every, out_dir, backup_dir, steps_per_epoch,
               backup_every, batch_size, max_boxes, image_size, seed):
    """The callbacks of :func:`train`; all of them write into ``out_dir`` (this worker's write folder)."""
    from kdet.data.pipeline import prepare
    from kdet.metrics import COCOEvaluationCallback

    out_dir.mkdir(parents=True, exist_ok=True)
    cbs = []
    monitor, mode = "loss", "min"
    if validation_data is not None:
        examples = open_dataset(validation_data, "validation", detector.num_classes, image_size, seed)
        val = prepare(examples, image_size=image_size, batch_size=batch_size, max_boxes=max_boxes)
        # First in the list: it adds val_AP to the logs that ModelCheckpoint reads next.
        cbs.append(COCOEvaluationCallback(val, bounding_box_format=detector.bounding_box_format,
                                          frequency=eval_every, steps=validation_steps))
        if eval_every == 1:
            monitor, mode = "val_AP", "max"
    cbs.append(_ResumableBackup(str(backup_dir), steps_per_epoch, save_freq=backup_every,
                                write_dir=str(out_dir / "backup")))
    cbs.append(keras.callbacks.ModelCheckpoint(str(out_dir / "best.keras"), monitor=monitor, mode=mode,
                                               save_best_only=True))
    cbs.append(keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True))
    if importlib.util.find_spec("tensorboard") is not None:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs")))
    else:  # TensorFlow's summary writer needs the tensorboard package
        logger.warning("kdet.training: `pip install tensorboard` for TensorBoard logs; writing %s only.",
                       out_dir / "history.csv")
    return cbs


def _jsonable(history: dict) -> dict:
    return {k: [float(v) for v in values] for k, values in history.items()}

