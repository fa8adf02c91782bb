"""CombinedNMS layer: serialisation, saved models, mixed precision, validation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.layers import CombinedNMS
from kdet.ops import combined_nms


def inputs(batch=2, n=30, c=3, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (batch, n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (batch, n, 2))], -1).astype(np.float32)
    return boxes, rng.uniform(size=(batch, n, c)).astype(np.float32)


def assert_dicts_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-6)


def test_layer_equals_op_and_config_round_trip():
    layer = CombinedNMS(7, 9, 0.4, 0.2, soft_nms_sigma=0.3, class_agnostic=True, pre_nms_top_k=50)
    boxes, scores = inputs()
    assert_dicts_equal(layer(boxes, scores),
                       combined_nms(boxes, scores, 7, 9, 0.4, 0.2, 0.3, True, 50))
    clone = CombinedNMS.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert_dicts_equal(clone(boxes, scores), layer(boxes, scores))


def test_saved_keras_model_round_trips_at_any_batch_size(tmp_path):
    boxes_in, scores_in = keras.Input((30, 4)), keras.Input((30, 3))
    model = keras.Model([boxes_in, scores_in], CombinedNMS(max_total_size=12)(boxes_in, scores_in))
    assert model.output["labels"].shape == (None, 12)
    path = tmp_path / "nms.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for batch in (1, 3):
        boxes, scores = inputs(batch, seed=batch)
        want = combined_nms(boxes, scores, 100, 12, 0.5, 0.05)
        assert_dicts_equal(loaded.predict([boxes, scores], verbose=0), want)
        assert_dicts_equal(loaded([boxes, scores]), want)


def test_mixed_precision_runs_in_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")  # conftest restores float32
    layer = CombinedNMS(max_total_size=5)
    boxes, scores = inputs()
    out = layer(tf.cast(boxes, tf.float16), tf.cast(scores, tf.float16))
    assert out["boxes"].dtype == tf.float32 and out["scores"].dtype == tf.float32
    assert out["labels"].dtype == tf.int32
    want = combined_nms(tf.cast(tf.cast(boxes, tf.float16), tf.float32),
                        tf.cast(tf.cast(scores, tf.float16), tf.float32), 100, 5)
    assert_dicts_equal(out, want)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_total_size": 0}, "max_total_size"),
    ({"max_output_size_per_class": -3}, "max_output_size_per_class"),
    ({"iou_threshold": 2.0}, "iou_threshold"),
    ({"score_threshold": float("nan")}, "score_threshold"),
    ({"soft_nms_sigma": "big"}, "soft_nms_sigma"),
    ({"pre_nms_top_k": 0}, "pre_nms_top_k"),
])
def test_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CombinedNMS(**kwargs)


def test_call_validates_shapes():
    with pytest.raises(ValueError, match="scores must have shape"):
        CombinedNMS()(np.zeros((1, 5, 4), np.float32), np.zeros((1, 5), np.float32))


def test_predict_matches_tf_kernel_on_sparse_scores():
    # The path a detector's predict takes by default (graph on CPU: nested XLA)
    # on trained-like scores: few candidates, some rows with two classes.
    rng = np.random.default_rng(3)
    boxes, _ = inputs(batch=3, n=200, c=4, seed=3)
    scores = (rng.uniform(size=(3, 200, 4)) ** 40).astype(np.float32)  # ~7% above 0.05 per image
    scores[:, ::17, 1] = np.linspace(0.5, 0.7, 12)  # rows with a second candidate class
    boxes_in, scores_in = keras.Input((200, 4)), keras.Input((200, 4))
    model = keras.Model([boxes_in, scores_in], CombinedNMS(100, 100)(boxes_in, scores_in))
    got = model.predict([boxes, scores], verbose=0)
    b, s, c, n = tf.image.combined_non_max_suppression(
        boxes[..., [1, 0, 3, 2]][:, :, None], scores, 100, 100, 0.5, 0.05, clip_boxes=False)
    assert 0 < int(tf.reduce_min(n)) and int(tf.reduce_max(n)) < 100
    np.testing.assert_array_equal(got["num_detections"], n)
    for i in range(3):
        k = int(n[i])
        want = sorted(zip(s[i, :k].numpy().tolist(), c[i, :k].numpy().astype(int).tolist(),
                          b[i, :k].numpy()[:, [1, 0, 3, 2]].round(4).tolist()))
        mine = sorted(zip(got["scores"][i, :k].tolist(), got["labels"][i, :k].tolist(),
                          got["boxes"][i, :k].round(4).tolist()))
        assert mine == want
