"""``fine_tune``: what ``kdet.load(name, num_classes=k)`` marks and what the mark changes (issue 20, point 2).

Fast checks on tiny and untrained models; the learning bar itself (real
yolov3-tiny weights, pretrained vs scratch) is ``tests/zoo/test_finetune_real.py``.
"""

import keras
import numpy as np
import pytest

import kdet
from kdet.data import synthetic_arrays
from kdet.models import YOLOV3


def _batch_norms(model):
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _tiny(**settings):
    return YOLOV3(3, backbone="tiny", image_size=64, **settings)


def test_fine_tune_freezes_every_batch_norm_and_training_leaves_its_statistics():
    model = _tiny(fine_tune=True)
    norms = _batch_norms(model)
    assert len(norms) > 10 and not any(layer.trainable for layer in norms)
    before = [v.numpy().copy() for layer in norms for v in layer.weights]
    x, y = synthetic_arrays(4, 64, seed=1)
    model.compile(evaluate_coco=False, augment=None)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after = [v.numpy() for layer in norms for v in layer.weights]
    for old, new in zip(before, after):  # moving mean / variance and gamma / beta
        np.testing.assert_array_equal(old, new)
    convs = [v for v in model.trainable_variables if "kernel" in v.path]
    assert convs, "the convolutions still train"


def test_scratch_models_keep_training_batch_norms():
    assert all(layer.trainable for layer in _batch_norms(_tiny()))


def test_fine_tune_survives_save_and_load_and_with_settings_unfreezes(tmp_path):
    model = _tiny(fine_tune=True)
    path = tmp_path / "tuned.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.config.fine_tune is True and not any(layer.trainable for layer in _batch_norms(loaded))
    unfrozen = loaded.with_settings(fine_tune=False)
    assert all(layer.trainable for layer in _batch_norms(unfrozen))


def test_fine_tune_must_be_a_bool():
    with pytest.raises(ValueError, match="fine_tune must be True or False; received 'yes'"):
        _tiny(fine_tune="yes")


def test_load_with_new_classes_marks_fine_tune(tmp_path, monkeypatch):
    """A .keras file (the path flow) and a zoo entry with a .weights.h5 file (the entry flow).

    The model to be trained keeps the global policy even where bfloat16 is native (tests/zoo/test_load_precision.py).
    """
    from kdet import config as kdet_config

    monkeypatch.setattr(kdet_config, "native_bfloat16", lambda: True)
    path = tmp_path / "coco_like.keras"
    _tiny().save(path)
    tuned = kdet.load(path, num_classes=2)
    assert tuned.num_classes == 2 and tuned.config.fine_tune is True
    assert kdet.load(path, num_classes=2, fine_tune=False).config.fine_tune is False
    assert kdet.load(path).config.fine_tune is False  # same classes: the model as saved

    entry_model = kdet.load("yolov3_tiny_coco", weights=None)
    weights = tmp_path / "tiny.weights.h5"
    entry_model.save_weights(weights)
    tuned = kdet.load("yolov3_tiny_coco", weights=weights, num_classes=3)
    assert tuned.config.fine_tune is True and not any(layer.trainable for layer in _batch_norms(tuned))
    assert tuned.config.precision == "float32"
    assert kdet.load("yolov3_tiny_coco", weights=None, num_classes=3).config.fine_tune is False  # scratch


def test_new_classes_keep_yolo_box_and_objectness_outputs(tmp_path):
    """Of each anchor's (tx, ty, tw, th, objectness, classes) outputs, only the classes start fresh."""
    keras.utils.set_random_seed(3)
    source = _tiny()
    for name in source.classifier_layers:  # distinct values everywhere (the fresh biases are a constant prior)
        layer = source.network.get_layer(name)
        layer.bias.assign(np.random.default_rng(0).normal(size=layer.bias.shape).astype(np.float32))
    path = tmp_path / "three_classes.keras"
    source.save(path)
    tuned = kdet.load(path, num_classes=5)
    for name in source.classifier_layers:
        old, new = source.network.get_layer(name), tuned.network.get_layer(name)
        for a, b in ((old.kernel, new.kernel), (old.bias, new.bias)):
            a = a.numpy().reshape(*a.shape[:-1], 3, 5 + 3)  # 3 anchors per location, 3 classes
            b = b.numpy().reshape(*b.shape[:-1], 3, 5 + 5)
            np.testing.assert_array_equal(b[..., :5], a[..., :5])
            assert not np.allclose(b[..., 5:8], a[..., 5:])
    x, _ = synthetic_arrays(2, 64, seed=2)
    np.testing.assert_allclose(tuned.raw_outputs(x)["box"], source.raw_outputs(x)["box"], atol=1e-5)
    np.testing.assert_allclose(tuned.raw_outputs(x)["obj"], source.raw_outputs(x)["obj"], atol=1e-5)


def test_inherit_refuses_other_anchors():
    two = (((10, 10), (20, 20)), ((40, 40), (60, 60)), ((100, 100), (200, 200)))
    with pytest.raises(ValueError, match="do not match this model's"):
        _tiny().inherit_classifier_outputs(_tiny(anchors=two))
