"""EfficientNet backbones: the keras.applications graph minus its own input normalisation."""

import keras
import numpy as np
import pytest

from kdet.backbones.efficientnet import efficientnet_backbone


def test_b0_matches_keras_applications_after_its_normalisation():
    full = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(64, 64, 3))
    ours = efficientnet_backbone("b0", (64, 64))
    for layer in ours.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    # With weights=None keras' Normalization is the identity, so its graph sees x / 255.
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
    stage7 = keras.Model(full.input, full.get_layer("block7a_project_bn").output)
    np.testing.assert_allclose(ours.predict(x / 255.0, verbose=0)["P5"], stage7.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_b0_levels_and_channels():
    model = efficientnet_backbone("b0", (128, 128))
    assert {k: tuple(v.shape[1:]) for k, v in model.output.items()} == {
        "P2": (32, 32, 24), "P3": (16, 16, 40), "P4": (8, 8, 112), "P5": (4, 4, 320)}
    names = [layer.name for layer in model.layers]
    assert "rescaling" not in names and "normalization" not in names and "top_conv" not in names


def test_deeper_variant_uses_last_block_of_each_stage():
    model = efficientnet_backbone("b1", (64, 64))
    assert model.output["P3"].shape[-1] == 40 and model.output["P5"].shape[-1] == 320


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        efficientnet_backbone("b9", (64, 64))
