"""Checks RetinaNet and EfficientDet share: overfitting, save/load, XLA, batch sizes, mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kdet.data import synthetic_arrays
from tests.conftest import REPO  # noqa: F401
from tests.helpers import coco_ap50


def overfit(build, epochs: int):
    """Trains ``build()`` on 8 synthetic images with compile() defaults; returns (model, x, y, AP50).

    A memorisation test, so the default flip augmentation is off (the
    generalisation tests keep it).
    """
    x, y = synthetic_arrays(8, 128, seed=0)
    model = build()
    model.compile(augment=None)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    pred = model.predict(x, verbose=0)
    return model, x, y, coco_ap50(y, pred)


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


def check_empty_ground_truth(model, x):
    """A batch without any object gives a finite loss (normalised by max(#positives, 1))."""
    y = {"boxes": np.zeros((2, 3, 4), np.float32), "labels": np.full((2, 3), -1, np.int32)}
    model.compile(evaluate_coco=False)
    logs = model.train_on_batch(x[:2], y, return_dict=True)
    assert np.isfinite(logs["loss"]), logs
    assert logs["box_loss"] == 0.0


def check_mixed_precision(build):
    """Under mixed_float16 a training step and predict give finite numbers; NMS stays float32."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
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
    finally:
        keras.mixed_precision.set_global_policy("float32")
