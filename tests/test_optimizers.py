"""kdet.optimizers: Adam and SGD give Keras' own updates bit for bit, in every setting and under a strategy."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import optimizers
from tests.conftest import REPO

SETTINGS = [
    (keras.optimizers.Adam, optimizers.Adam, dict(learning_rate=0.05)),
    (keras.optimizers.Adam, optimizers.Adam, dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.5),
                                            beta_1=0.8, beta_2=0.99, epsilon=1e-3, weight_decay=0.01,
                                            global_clipnorm=1.0)),
    (keras.optimizers.Adam, optimizers.Adam, dict(learning_rate=0.05, global_clipnorm=100.0)),  # the norm is within
    (keras.optimizers.Adam, optimizers.Adam, dict(learning_rate=0.05, amsgrad=True)),  # Keras' path
    (keras.optimizers.SGD, optimizers.SGD, dict(learning_rate=0.05, momentum=0.9)),
    (keras.optimizers.SGD, optimizers.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3,
                                          clipnorm=0.5)),
    (keras.optimizers.SGD, optimizers.SGD, dict(learning_rate=0.05)),  # no momentum: Keras' one op
]


def _train(optimizer_class, settings, steps=6, dtype="float32"):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype(dtype), dtype=dtype) for shape in ((3, 4), (5,))]
    optimizer = optimizer_class(**settings)

    @tf.function
    def step(k):
        grads = [tf.sin(v * tf.cast(k + 1, v.dtype)) for v in variables]
        optimizer.apply_gradients(zip(grads, variables))

    for k in range(steps):
        step(tf.constant(k))
    return [v.numpy().astype(np.float32) for v in variables]


@pytest.mark.parametrize("keras_class,fused_class,settings", SETTINGS)
def test_updates_equal_keras(keras_class, fused_class, settings):
    expected, got = _train(keras_class, settings), _train(fused_class, settings)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
        assert not np.allclose(g, _train(keras_class, settings, steps=0)[0 if e.ndim == 2 else 1])


def test_a_nan_gradient_poisons_every_update_as_in_keras():
    # Keras' global-norm clipping turns a non-finite norm into a NaN scale for every gradient.
    for optimizer_class in (keras.optimizers.Adam, optimizers.Adam):
        variables = [keras.Variable(np.ones(3, np.float32)), keras.Variable(np.ones(2, np.float32))]
        optimizer_class(learning_rate=0.1, global_clipnorm=1.0).apply_gradients(
            zip([tf.constant([np.nan, 0.0, 0.0]), tf.constant([1.0, 1.0])], variables))
        assert all(np.isnan(v.numpy()).all() for v in variables), optimizer_class


def test_bfloat16_variables_update_like_keras():
    settings = dict(learning_rate=0.05)
    for e, g in zip(_train(keras.optimizers.Adam, settings, dtype="bfloat16"),
                    _train(optimizers.Adam, settings, dtype="bfloat16")):
        np.testing.assert_array_equal(g, e)  # Keras' own path


def test_traces_far_fewer_ops_than_keras():
    variables = [keras.Variable(np.ones((4, 4), np.float32)) for _ in range(20)]
    counts = {}
    for optimizer_class in (keras.optimizers.Adam, optimizers.Adam):
        optimizer = optimizer_class(learning_rate=0.1, global_clipnorm=1.0)
        optimizer.build(variables)
        step = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
        graph = step.get_concrete_function([tf.TensorSpec((4, 4), tf.float32)] * 20).graph
        counts[optimizer_class] = len(graph.get_operations())
    assert counts[optimizers.Adam] < 0.6 * counts[keras.optimizers.Adam], counts


def test_config_round_trips_and_names_the_class():
    optimizer = optimizers.Adam(learning_rate=0.01, beta_1=0.7, global_clipnorm=3.0, weight_decay=0.1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(restored) is optimizers.Adam
    assert restored.get_config() == optimizer.get_config()
    sgd = optimizers.SGD(learning_rate=0.01, momentum=0.5, nesterov=True)
    assert type(keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sgd))) is optimizers.SGD


STRATEGY = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {repo!r})
    from kdet import optimizers

    def train(optimizer_class, settings, strategy):
        with strategy.scope():
            variable = keras.Variable(np.linspace(-1, 1, 6).astype("float32"))
            optimizer = optimizer_class(**settings)
            optimizer.build([variable])
        @tf.function
        def step(k):
            def replica(k):
                replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
                grad = tf.sin(variable * tf.cast(k + 1 + replica_id, tf.float32))  # differs per replica
                optimizer.apply_gradients([(grad, variable)])
            strategy.run(replica, args=(k,))
        for k in range(5):
            step(tf.constant(k))
        return variable.numpy().tolist()

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {{}}
    for name, keras_class, kdet_class, settings in [
            ("adam", keras.optimizers.Adam, optimizers.Adam, dict(learning_rate=0.05, global_clipnorm=1.0)),
            ("sgd", keras.optimizers.SGD, optimizers.SGD, dict(learning_rate=0.05, momentum=0.9, nesterov=True))]:
        out[name] = [train(keras_class, settings, mirrored), train(kdet_class, settings, mirrored)]
    print("RESULT" + json.dumps(out))
""")


def test_mirrored_strategy_updates_equal_keras(tmp_path):
    # Two replicas with different gradients: the lean updates see the all-reduced gradient and each
    # replica's copy of the slots, as Keras' update does.
    script = tmp_path / "strategy.py"
    script.write_text(STRATEGY.format(repo=str(REPO)))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, (expected, got) in json.loads(run.stdout.split("RESULT")[-1]).items():
        np.testing.assert_array_equal(got, expected, err_msg=name)


LOAD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    import keras
    import kdet.models  # noqa: F401  (what a user imports; kdet.optimizers is not imported by hand)

    model = keras.models.load_model(sys.argv[1])
    print("OPTIMIZER", type(model.optimizer).__module__, type(model.optimizer).__name__, model.compiled)
""")


def test_a_saved_detector_compiles_again_in_a_fresh_process(tmp_path):
    # compile_from_config deserialises "kdet>Adam": the class must be registered without importing
    # kdet.optimizers by hand (the first version of this module was not, and load_model raised TypeError).
    from kdet.data import synthetic_arrays
    from kdet.models import RetinaNet

    model = RetinaNet(3, backbone="tiny", image_size=64)
    model.compile(evaluate_coco=False)
    x, y = synthetic_arrays(2, 64)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    script = tmp_path / "load.py"
    script.write_text(LOAD.format(repo=str(REPO)))
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "model.keras")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OPTIMIZER kdet.optimizers Adam True" in run.stdout
