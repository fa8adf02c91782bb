"""One training process of ``tests/test_training_multiworker.py``: ``kdet.training.train`` on a tiny RetinaNet.

    python tests/distribute_worker.py OUT_DIR REPORT_JSON [PAUSE_AT_STEP]

With ``TF_CONFIG`` in the environment the process is one worker of a
``strategy="multiworker"`` cluster; without it, it is the single-device
reference run with the same global batch. Every training step records, on the
worker that ran it, the ids of the examples it consumed: the id of each image
is written into its pixel (0, 0) (no augmentation, and the images already have
the network's size, so the pipeline passes that pixel through) and read back
from the batch inside the replica's ``compute_loss``. The report (JSON) holds
those ids, the loss curve and the final state. With ``PAUSE_AT_STEP`` the
process stops after that step's backup, writes the report of the steps so far
and waits to be killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf  # nothing may run a TF op before train() creates the strategy

import kdet
from kdet.models import RetinaNet
from kdet.training import train

NUM_IMAGES, IMAGE_SIZE, GLOBAL_BATCH, STEPS_PER_EPOCH, EPOCHS, SEED = 16, 64, 8, 2, 3, 1

#: (optimizer step, example ids) for each step this process ran, in order.
CONSUMED: list = []


def _record(step, ids):
    CONSUMED.append((int(step), [int(i) for i in ids.numpy()]))
    return np.int32(0)


@keras.saving.register_keras_serializable(package="kdet_tests")
class RecordingRetinaNet(RetinaNet):
    """RetinaNet that records the ids of the examples each replica trains on."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training:
            ids = tf.cast(tf.round(x[:, 0, 0, 0]), tf.int32)
            tf.py_function(_record, [self.optimizer.iterations, ids], tf.int32)
        return super().compute_loss(x, y, y_pred, sample_weight, training)


class StepLog(keras.callbacks.Callback):
    """Per-step logs, and the pause before a kill: after the backup of step ``pause_at``, report and wait."""

    def __init__(self, pause_at: int, report: str):
        super().__init__()
        self.pause_at, self.report = pause_at, report
        self.running_means = []  # (step, batch, Keras' batch-end "loss": the mean over the epoch so far)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.running_means.append((step, batch, float(logs["loss"])))
        if step == self.pause_at:
            _write(self.report, {"paused_at": step, "running_means": self.running_means, "consumed": CONSUMED})
            time.sleep(600)  # the test kills the process here


def _write(path: str, state: dict) -> None:
    with open(path + ".part", "w") as f:
        json.dump(state, f)
    os.replace(path + ".part", path)  # whole or absent: the test polls for it


def dataset_arrays():
    """The training images (ids in pixel (0, 0)) and targets."""
    images, targets = kdet.data.synthetic_arrays(NUM_IMAGES, IMAGE_SIZE, seed=SEED)
    images = images.copy()
    images[:, 0, 0, 0] = np.arange(NUM_IMAGES)
    return images, targets


def main(out_dir: str, report: str, pause_at: int = 0) -> None:
    # A hard limit of its own (SIGALRM ends the process), should the test that started it be gone.
    signal.alarm(int(os.environ.get("KDET_WORKER_TIMEOUT", "600")))
    multiworker = "TF_CONFIG" in os.environ
    tf.config.experimental.enable_op_determinism()
    log = StepLog(pause_at, report)
    result = train(lambda: RecordingRetinaNet(3, backbone="tiny", image_size=IMAGE_SIZE), dataset_arrays(),
                   epochs=EPOCHS, batch_size=GLOBAL_BATCH, steps_per_epoch=STEPS_PER_EPOCH, augment=False,
                   backup_every=1, out_dir=out_dir, strategy="multiworker" if multiworker else None, seed=SEED,
                   verbose=0, callbacks=[log])
    strategy = result.model.distribute_strategy
    resolver = strategy.cluster_resolver if multiworker else None
    state = {
        "task": None if resolver is None else [resolver.task_type, int(resolver.task_id)],
        "replicas": strategy.num_replicas_in_sync,
        "initial_step": result.initial_step,
        "iterations": int(result.model.optimizer.iterations.numpy()),
        "history": {k: [float(v) for v in values] for k, values in result.history.items()},
        "running_means": log.running_means,
        "consumed": CONSUMED,
        # Trainable weights only: Keras 3 keeps each worker's batch-norm moving statistics to itself.
        "trainable_sha256": hashlib.sha256(b"".join(np.asarray(w).tobytes()
                                                    for w in result.model.trainable_weights)).hexdigest(),
    }
    _write(report, state)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
