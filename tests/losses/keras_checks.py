"""Shared checks for kdet losses: compile + fit a tiny model, save/load, config round trip."""

from __future__ import annotations

import math

import keras
import numpy as np


def tiny_model(input_dim: int, out_shape: tuple, offset=None) -> keras.Model:
    """Dense -> Reshape(out_shape); the output starts at ``offset`` (e.g. anchor boxes)."""
    bias = "zeros" if offset is None else keras.initializers.Constant(
        np.asarray(offset, "float32").reshape(-1).tolist())
    inputs = keras.Input((input_dim,))
    x = keras.layers.Dense(math.prod(out_shape), kernel_initializer="zeros",
                           bias_initializer=bias)(inputs)
    return keras.Model(inputs, keras.layers.Reshape(out_shape)(x))


def assert_config_round_trip(loss: keras.losses.Loss) -> None:
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(revived) is type(loss) and revived.get_config() == config


def fit_save_load(loss, x, y, out_shape, tmp_path, sample_weight=None, offset=None,
                  epochs: int = 15, learning_rate: float = 0.05) -> list:
    """Trains a tiny model with ``loss`` in compile, checks it learns, saves and reloads it.

    Returns the per-epoch training losses.
    """
    model = tiny_model(x.shape[1], out_shape, offset)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    history = model.fit(x, y, sample_weight=sample_weight, epochs=epochs, batch_size=len(x),
                        verbose=0).history["loss"]
    assert np.all(np.isfinite(history)), history
    assert history[-1] < history[0], history
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
    before = model.evaluate(x, y, verbose=0, **kwargs)
    after = loaded.evaluate(x, y, verbose=0, **kwargs)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-7)
    return history
