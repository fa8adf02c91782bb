"""Checks the pyramid detectors' tests share (RetinaNet, EfficientDet, SSD, YOLOv3).

Overfitting and held-out learning, save/load, XLA at several batch sizes,
empty ground truth, mixed precision. Plain functions, called by the test
files; this module holds no tests itself.
"""

from __future__ import annotations

import contextlib
import sys

import keras
import numpy as np
import tensorflow as tf

from kdet.data import synthetic_arrays
from tests.conftest import REPO
from tests.helpers import coco_ap50, fit_one_batch


def fit_eight_images(build, epochs: int, evaluate_coco: bool = True):
    """Seeds Keras, then fits ``build()`` to 8 synthetic 128-px images (batch 8); returns (model, x, y, history).

    A memorisation setup, so the default flip augmentation is off (the
    generalisation tests keep it).
    """
    keras.utils.set_random_seed(0)
    x, y = synthetic_arrays(8, 128, seed=0)
    model = build()
    model.compile(evaluate_coco=evaluate_coco, augment=None)
    history = fit_one_batch(model, x, y, epochs)
    return model, x, y, history


def overfit(build, epochs: int):
    """``fit_eight_images`` with compile()'s defaults (but no flips); returns (model, x, y, AP50 on the same images)."""
    model, x, y, _ = fit_eight_images(build, epochs)
    return model, x, y, coco_ap50(y, model.predict(x, verbose=0))


def check_memorised(model, x, y, history, min_ap50: float = 0.9):
    """The loss fell below 30% of its first epoch's and AP50 on the training images is >= ``min_ap50``."""
    assert history.history["loss"][-1] < 0.3 * history.history["loss"][0]
    ap50 = coco_ap50(y, model.predict(x, verbose=0))
    assert ap50 >= min_ap50, ap50


def held_out_ap50(build, train_images: int = 200, test_images: int = 64, epochs: int = 30) -> float:
    """The generalisation bar: compile() defaults, fit (batch 8) on the train split, AP50 on the validation split."""
    keras.utils.set_random_seed(0)
    x, y = synthetic_arrays(train_images, 128, seed=0)
    x_test, y_test = synthetic_arrays(test_images, 128, seed=0, split="validation")
    model = build()
    model.compile()
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    return coco_ap50(y_test, model.predict(x_test, verbose=0))


def train_synthetic_run(name: str, **kwargs) -> dict:
    """``benchmarks/train_synthetic.py``'s ``run(name, **kwargs)`` (the benchmark's protocol): its results."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_synthetic import run

    return run(name, **kwargs)


def train_synthetic_ap50(name: str, **kwargs) -> float:
    """Held-out AP50 of ``train_synthetic_run(name, **kwargs)``."""
    return train_synthetic_run(name, **kwargs)["AP50"]


def assert_same_detections(a: dict, b: dict, atol=1e-4):
    np.testing.assert_array_equal(np.asarray(a["num_detections"]), np.asarray(b["num_detections"]))
    for i, n in enumerate(np.asarray(a["num_detections"])):
        np.testing.assert_allclose(np.asarray(a["boxes"])[i, :n], np.asarray(b["boxes"])[i, :n], atol=atol * 100)
        np.testing.assert_allclose(np.asarray(a["scores"])[i, :n], np.asarray(b["scores"])[i, :n], atol=atol)
        np.testing.assert_array_equal(np.asarray(a["labels"])[i, :n], np.asarray(b["labels"])[i, :n])


def check_save_load(model, x, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert_same_detections(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-5)
    return loaded


def check_xla_and_batch_sizes(model, x):
    """predict under jit_compile matches eager predictions at batch sizes 1 and 3."""
    reference = model.predict(x[:3], verbose=0)
    xla = tf.function(lambda images: model(images, training=False), jit_compile=True)
    for batch in (1, 3):
        out = {k: v.numpy() for k, v in xla(tf.constant(x[:batch])).items()}
        assert out["boxes"].shape[0] == batch and out["scores"].dtype == np.float32
        ref = {k: v[:batch] for k, v in reference.items()}
        assert_same_detections(ref, out, atol=1e-3)


def check_xla_and_reload(model, images, tmp_path) -> dict:
    """XLA scores match eager ones at batch 1 and 3; a saved and reloaded model predicts the same boxes.

    ``images[:2]`` must give detections (e.g. training images). Returns the eager predictions.
    """
    eager = model.predict(images, verbose=0)
    xla = tf.function(lambda batch_images: model(batch_images, training=False), jit_compile=True)
    for batch in (1, 3):
        out = xla(tf.constant(images[:batch]))
        assert out["boxes"].shape == (batch, *eager["boxes"].shape[1:])
        np.testing.assert_allclose(out["scores"].numpy(), eager["scores"][:batch], atol=1e-5)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored) is type(model) and restored.get_config() == model.get_config()
    assert eager["num_detections"][:2].min() > 0
    np.testing.assert_allclose(restored.predict(images, verbose=0)["boxes"], eager["boxes"], atol=1e-4)
    return eager


def check_one_finite_epoch(build, image_size: int, seed: int = 0):
    """``build()`` compiled without COCO evaluation trains one epoch on 2 synthetic images to a finite loss.

    Returns (model, images) for further checks.
    """
    x, y = synthetic_arrays(2, image_size, seed=seed)
    model = build()
    model.compile(evaluate_coco=False)
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])
    return model, x


def check_empty_ground_truth(model, x):
    """A batch without any object gives a finite loss (normalised by max(#positives, 1))."""
    y = {"boxes": np.zeros((2, 3, 4), np.float32), "labels": np.full((2, 3), -1, np.int32)}
    model.compile(evaluate_coco=False)
    logs = model.train_on_batch(x[:2], y, return_dict=True)
    assert np.isfinite(logs["loss"]), logs
    assert logs["box_loss"] == 0.0


@contextlib.contextmanager
def mixed_float16():
    """Runs the block under the ``mixed_float16`` global policy, then restores ``float32``."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def check_mixed_precision(build):
    """Under mixed_float16 a training step and predict give finite numbers; NMS stays float32."""
    with mixed_float16():
        x, y = synthetic_arrays(2, 128, seed=3)
        model = build()
        model.compile(evaluate_coco=False)
        logs = model.train_on_batch(x, y, return_dict=True)
        assert all(np.isfinite(v) for v in logs.values()), logs
        raw = model.raw_outputs(tf.constant(x))
        assert raw["cls"].dtype == tf.float16
        out = model.predict(x, verbose=0)
        assert out["boxes"].dtype == np.float32 and np.isfinite(out["boxes"]).all()
        assert np.isfinite(out["scores"]).all()
