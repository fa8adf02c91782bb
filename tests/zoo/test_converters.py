"""kdet.zoo.converters: the weighted-layer walk the checkpoint converters share."""

import keras
import pytest

from kdet.zoo.converters import weighted_layers_by_name


def _nested_model(inner_dense_name: str = "inner_dense") -> keras.Model:
    inputs = keras.Input((4,))
    inner = keras.Sequential([keras.layers.Dense(3, name=inner_dense_name), keras.layers.ReLU(name="inner_relu")],
                             name="inner")
    outputs = keras.layers.Dense(2, name="outer_dense")(inner(inputs))
    return keras.Model(inputs, outputs, name="outer")


def test_recurses_into_nested_models_and_skips_weightless_layers():
    layers = weighted_layers_by_name(_nested_model())
    assert sorted(layers) == ["inner_dense", "outer_dense"]
    assert layers["inner_dense"].kernel.shape == (4, 3)


def test_duplicate_names_raise():
    with pytest.raises(ValueError, match="'outer_dense'"):
        weighted_layers_by_name(_nested_model(inner_dense_name="outer_dense"))
