"""``tf.distribute`` for kdet's training: strategies, sharded input pipelines, chief-only writing.

Used by :func:`kdet.training.train` and ``kdet train``; nothing here replaces
``tf.distribute``: the strategies are TensorFlow's, and so is the rule of who
writes (``strategy.extended.should_checkpoint``). What kdet adds:

- :func:`sharded_batches` / :func:`distributed_stream`: every input pipeline
  (one per worker) draws the same seeded permutation of each pass over the
  data and keeps its own shard of it, so no example is seen twice per epoch
  and a global step holds the same examples as a single-device step; the
  stream is fast-forwarded to a restored step for resumption.
- :func:`write_dir` / :func:`save_on_chief`: only the chief writes the run's
  files; the other workers save to a temporary folder that is removed, as
  TensorFlow's multi-worker Keras guide prescribes: reading a variable that
  is synchronised on read (a metric's state, say) is a collective op that all
  workers must join. (kdet's detectors save without one today: a chief-only
  save of a RetinaNet went through in a two-worker check. Saving everywhere
  keeps models and callbacks that do read one from hanging.)
- :func:`fit_scope`: works around two Keras 3 steps that fail under
  ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585).

Example:
    >>> strategy = get_strategy("default")
    >>> is_chief(strategy), strategy.num_replicas_in_sync
    (True, 1)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Callable

import tensorflow as tf

from kdet.validation import check_positive_int

#: The strategy names of :func:`get_strategy` (and ``kdet train --strategy``).
STRATEGIES = ("default", "mirrored", "multiworker")

#: Seed offset between the augmenters of two input pipelines (a prime): each worker
#: augments its own shard with its own random draws.
PIPELINE_SEED_STRIDE = 7919


def get_strategy(strategy=None) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy named by ``strategy``.

    Args:
        strategy: None or "default" (the default strategy: one device),
            "mirrored" (``MirroredStrategy()``: all local GPUs), "multiworker"
            (``MultiWorkerMirroredStrategy()``: the cluster of the ``TF_CONFIG``
            environment variable, one process per machine), or a
            ``tf.distribute.Strategy`` object, returned as it is.

    Returns:
        The strategy.

    Raises:
        ValueError: for any other value.
        RuntimeError: "multiworker" after TensorFlow already ran an operation in
            this process (collective ops must be configured at program start).

    Example:
        >>> get_strategy("default").num_replicas_in_sync
        1
    """
    if strategy is None or strategy == "default":
        return tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if strategy == "multiworker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            raise RuntimeError(
                f"MultiWorkerMirroredStrategy could not start ({error}): it must be created before TensorFlow "
                "runs anything in the process. Call kdet.training.get_strategy('multiworker') first thing in "
                "the program and pass the strategy object on.") from error
    raise ValueError(f"strategy must be None, one of {STRATEGIES} or a tf.distribute.Strategy; "
                     f"received {strategy!r}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and logs: the chief of a cluster, or a single process.

    ``strategy.extended.should_checkpoint`` is TensorFlow's own answer: False on the
    non-chief workers of ``MultiWorkerMirroredStrategy`` (the task "chief", else
    worker 0, is the chief), True for single-process strategies (default, mirrored, TPU).

    Example:
        >>> is_chief(tf.distribute.get_strategy())
        True
    """
    return bool(strategy.extended.should_checkpoint)


def write_dir(out_dir: str | os.PathLike, strategy: tf.distribute.Strategy) -> pathlib.Path:
    """Where this process writes: ``out_dir`` on the chief, a new temporary folder on the other workers.

    The caller removes the temporary folder when done (see :func:`save_on_chief`).

    Example:
        >>> write_dir("runs/x", tf.distribute.get_strategy())
        PosixPath('runs/x')
    """
    if is_chief(strategy):
        return pathlib.Path(out_dir)
    resolver = strategy.cluster_resolver
    return pathlib.Path(tempfile.mkdtemp(prefix=f"kdet_{resolver.task_type}{resolver.task_id}_"))


def save_on_chief(model, path: str | os.PathLike, strategy: tf.distribute.Strategy) -> bool:
    """``model.save(path)`` on the chief (creating its folder); the others save to a temporary folder they remove.

    Every worker saves because reading a variable synchronised on read (a
    metric's state) is a collective op that all workers must join.

    Returns:
        Whether this process wrote ``path``.

    Example:
        >>> save_on_chief(model, "model.keras", strategy)  # doctest: +SKIP
        True
    """
    path = pathlib.Path(path)
    folder = write_dir(path.parent, strategy)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        model.save(folder / path.name)
    finally:
        if folder != path.parent:
            shutil.rmtree(folder, ignore_errors=True)
    return folder == path.parent


def sharded_batches(examples: tf.data.Dataset, batch_size: int, *, num_shards: int = 1, index: int = 0,
                    global_batch: int | None = None, image_size=None, max_boxes: int = 100,
                    augmenter: Callable | None = None, seed: int = 0) -> tf.data.Dataset:
    """One input pipeline's endless stream of padded batches: shard ``index`` of ``num_shards``.

    Every pipeline draws the same seeded permutation of each pass over the data
    and keeps every ``num_shards``-th example of it, so the shards of one pass
    are disjoint and together complete, and global step ``s`` holds the same
    examples as step ``s`` of a single-device run. With a known dataset size,
    each pass is first cut to whole global batches (the remainder, a different
    one each pass, is dropped), so one pass is ``size // global_batch`` steps and
    every pipeline runs the same number of steps per pass; of an unknown size,
    the endless shuffled stream is sharded.

    Args:
        examples: single examples ``(image, {"boxes", "labels"})``.
        batch_size: examples per batch of this pipeline (the per-replica batch).
        num_shards, index: the number of input pipelines and this one's index.
        global_batch: examples per global step (default ``batch_size * num_shards``).
        image_size, max_boxes, augmenter: as in :func:`kdet.data.pipeline.prepare`.
        seed: the shuffle seed, the same in every pipeline.

    Returns:
        A repeated ``tf.data.Dataset`` of ``batch_size`` batches (static batch size).

    Example:
        >>> ds = sharded_batches(kdet.data.synthetic("train", 8, 64), 2, num_shards=2, index=1)  # doctest: +SKIP
    """
    from kdet.data.pipeline import prepare

    batch_size = check_positive_int("batch_size", batch_size)
    global_batch = check_positive_int("global_batch", global_batch or batch_size * num_shards)
    size = int(examples.cardinality())
    if size > 0:
        if size < global_batch:
            raise ValueError(f"The dataset has {size} examples, fewer than one global batch of {global_batch}.")
        stream = examples.shuffle(size, seed=seed, reshuffle_each_iteration=True)
        stream = stream.take(size // global_batch * global_batch)
    else:
        stream = examples.shuffle(1024, seed=seed, reshuffle_each_iteration=True).repeat()
    if num_shards > 1:
        stream = stream.shard(num_shards, index)
    stream = prepare(stream, image_size=image_size, batch_size=batch_size, max_boxes=max_boxes,
                     augmenter=augmenter, drop_remainder=True, prefetch=False)
    return stream.repeat() if size > 0 else stream


def distributed_stream(examples: tf.data.Dataset, strategy: tf.distribute.Strategy, batch_size: int, *,
                       start_step: int = 0, make_augmenter: Callable[[int], Callable | None] | None = None,
                       seed: int = 0, **options):
    """The training stream of ``strategy`` fast-forwarded to ``start_step``.

    With one replica, a dataset of ``batch_size`` batches. With several, a
    distributed dataset (``strategy.distribute_datasets_from_function``): each
    worker's input pipeline reads its own shard (:func:`sharded_batches`) in
    per-replica batches, with ``tf.data`` auto-sharding off (the shards are
    disjoint already).

    Args:
        examples: single examples.
        strategy: the strategy of the model.
        batch_size: the global batch, a multiple of the replicas in sync.
        start_step: global steps to skip (the restored optimizer step); the
            skipped batches run through the pipeline, augmenter included, so its
            random state matches an uninterrupted run.
        make_augmenter: pipeline seed -> augmenter (or None).
        seed: shuffle seed; pipeline ``i`` augments with ``seed + PIPELINE_SEED_STRIDE * i``.
        **options: ``image_size``, ``max_boxes`` for :func:`sharded_batches`.

    Returns:
        A ``tf.data.Dataset`` or a ``tf.distribute.DistributedDataset`` for ``fit``.
    """
    make_augmenter = make_augmenter or (lambda _: None)
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        stream = sharded_batches(examples, batch_size, augmenter=make_augmenter(seed), seed=seed, **options)
        return stream.skip(start_step).prefetch(tf.data.AUTOTUNE)
    if batch_size % replicas:
        raise ValueError(f"batch_size ({batch_size}, the global batch) must be a multiple of the "
                         f"{replicas} replicas in sync.")

    def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        index = context.input_pipeline_id
        stream = sharded_batches(examples, context.get_per_replica_batch_size(batch_size),
                                 num_shards=context.num_input_pipelines, index=index, global_batch=batch_size,
                                 augmenter=make_augmenter(seed + PIPELINE_SEED_STRIDE * index), seed=seed,
                                 **options)
        # A global step takes one batch for each local replica from this pipeline.
        stream = stream.skip(start_step * local).prefetch(tf.data.AUTOTUNE)
        no_autoshard = tf.data.Options()
        no_autoshard.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return stream.with_options(no_autoshard)

    return strategy.distribute_datasets_from_function(pipeline)


@contextlib.contextmanager
def fit_scope(model, strategy: tf.distribute.Strategy):
    """Context for ``model.fit`` under ``strategy``; works around Keras 3 under ``MultiWorkerMirroredStrategy``.

    A no-op for other strategies and for a cluster of one worker. Two steps of
    Keras 3's ``fit`` fail under ``MultiWorkerMirroredStrategy`` with several
    workers (keras-team/keras#20585, seen with Keras 3.15):

    1. ``fit`` averages the first (images, targets) batch over the replicas with
       ``strategy.reduce`` to build the model symbolically whenever the model
       was created in a strategy scope, and ``MultiWorkerMirroredStrategy.reduce``
       takes no nested values ("Attempt to convert a value (PerReplica...)").
       kdet's models are built when created, so ``fit`` runs in the strategy's
       scope (where Keras finds the strategy) with the model's own record of it
       cleared, which skips that build; the optimizer is built here, in scope.
    2. The step's logs are averaged over the workers with
       ``strategy.reduce("MEAN", value, axis=0)``, which rejects scalars
       ("Invalid reduction dimension 0"); each replica's logs get a leading
       axis of 1 here, so that mean is the mean over the replicas.

    Example:
        >>> with fit_scope(model, strategy):  # doctest: +SKIP
        ...     model.fit(dataset, epochs=3)
    """
    # Keras' own test for this path (trainer._collective_all_reduce_multi_worker); a cluster of
    # one worker takes Keras' ordinary path.
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()):
        yield
        return
    recorded, model._distribute_strategy = model._distribute_strategy, None
    step = model.train_step
    model.train_step = lambda data: {k: tf.reshape(v, (1,)) for k, v in step(data).items()}
    model.train_function = None
    try:
        with strategy.scope():
            if not model.optimizer.built:  # inside the step it would create per-replica variables
                model.optimizer.build(model.trainable_variables)
            yield
    finally:
        model._distribute_strategy = recorded
        del model.train_step  # the class's own again
        model.train_function = None
