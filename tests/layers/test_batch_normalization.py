"""kdet's BatchNormalization: Keras' layer, fused training step; Keras' results everywhere."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.layers.batch_normalization import BatchNormalization


def _pair(shape, rng, **kwargs):
    """Keras' layer and kdet's, built with the same random (non-trivial) weights."""
    ours, theirs = BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    ours.build(shape)
    theirs.build(shape)
    for a, b in zip(ours.weights, theirs.weights):
        value = rng.uniform(0.5, 2.0, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, theirs


def _train_call(layer, x, weights):
    """(output, d loss / d x, d loss / d trainable weights) of one training call."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return [np.asarray(t, np.float32) for t in (y, *grads)]


def _fused_kernel_dtypes(layer, x, mask=None) -> list:
    """Input dtypes of the FusedBatchNormV3 ops a training call of ``layer`` on ``x`` traces."""
    graph = tf.function(lambda t: layer(t, training=True, mask=mask)).get_concrete_function(x).graph
    return [op.inputs[0].dtype for op in graph.get_operations() if op.type == "FusedBatchNormV3"]


def _uses_fused_kernel(layer, x, mask=None) -> bool:
    return bool(_fused_kernel_dtypes(layer, x, mask))


@pytest.mark.parametrize("kwargs", [{}, {"epsilon": 1e-5, "momentum": 0.9},
                                    {"center": False, "scale": False, "momentum": 0.5}])
def test_training_step_matches_keras(kwargs):
    rng = np.random.default_rng(0)
    shape = (3, 5, 7, 6)
    x = tf.constant(rng.normal(2.0, 3.0, shape), tf.float32)
    weights = tf.constant(rng.normal(size=shape), tf.float32)
    ours, theirs = _pair(shape, rng, **kwargs)
    assert _uses_fused_kernel(ours, x) and not _uses_fused_kernel(theirs, x)
    for step in range(2):  # the second step starts from the updated moving statistics
        for a, b in zip(_train_call(ours, x + step, weights), _train_call(theirs, x + step, weights)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-5)


def test_inference_and_unfusable_calls_are_keras_bit_for_bit():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 4, 4, 5)), tf.float32)
    ours, theirs = _pair(x.shape, rng)
    np.testing.assert_array_equal(ours(x, training=False), theirs(x, training=False))
    ours.trainable = theirs.trainable = False  # frozen: moving statistics even when training
    np.testing.assert_array_equal(ours(x, training=True), theirs(x, training=True))
    np.testing.assert_array_equal(ours.moving_mean, theirs.moving_mean)
    # 2-D inputs, masks, renorm, channels-first and float64 run Keras' own training code.
    flat = tf.constant(rng.normal(size=(6, 5)), tf.float32)
    cases = [({}, flat, None), ({}, x, tf.constant(rng.uniform(size=(2, 4, 4)) > 0.3)),
             ({"renorm": True}, x, None), ({"axis": 1}, x, None),
             ({"dtype": "float64"}, tf.cast(x, tf.float64), None)]
    for kwargs, inputs, mask in cases:
        ours, theirs = _pair(inputs.shape, rng, **kwargs)
        assert not _uses_fused_kernel(ours, inputs, mask)
        np.testing.assert_array_equal(ours(inputs, training=True, mask=mask),
                                      theirs(inputs, training=True, mask=mask))
        np.testing.assert_array_equal(ours.moving_variance, theirs.moving_variance)


def test_mixed_bfloat16_keeps_float32_statistics():
    keras.config.set_dtype_policy("mixed_bfloat16")  # conftest restores float32
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(1.0, 2.0, (4, 6, 6, 8)), tf.bfloat16)
    ours, theirs = _pair(x.shape, rng, momentum=0.8)
    assert _fused_kernel_dtypes(ours, x) == [tf.bfloat16]  # no cast to float32 and back
    weights = tf.constant(rng.normal(size=x.shape), tf.float32)
    got, want = _train_call(ours, x, weights), _train_call(theirs, x, weights)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0.02, atol=0.05)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-3)
    assert ours(x, training=True).dtype == tf.bfloat16 and ours.moving_mean.dtype == "float32"


def test_xla_training_step_matches_eager():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 8, 8, 4)), tf.float32)
    eager, compiled = _pair(x.shape, rng)
    compiled.set_weights(eager.get_weights())
    step = tf.function(lambda t: compiled(t, training=True), jit_compile=True)
    np.testing.assert_allclose(step(x), eager(x, training=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled.moving_variance, eager.moving_variance, rtol=1e-6)


def test_saved_model_keeps_the_layer_and_its_settings(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = BatchNormalization(epsilon=1e-5, momentum=0.7, center=False, name="bn")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 3)).astype("float32")
    model(x, training=True)  # moving statistics away from their initial values
    model.save(tmp_path / "bn.keras")
    loaded = keras.models.load_model(tmp_path / "bn.keras")
    layer = loaded.get_layer("bn")
    assert type(layer) is BatchNormalization
    assert (layer.epsilon, layer.momentum, layer.center) == (1e-5, 0.7, False)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_detector_backbones_use_it():
    from kdet.models import RetinaNet

    model = RetinaNet(3, backbone="tiny", image_size=64)
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is BatchNormalization for layer in norms)
