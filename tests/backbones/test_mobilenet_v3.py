"""MobileNetV3-Large: keras.applications' layers and names, torchvision's padding and reduced tail."""

import keras
import numpy as np
import pytest

from kdet.backbones.factory import build_backbone, default_normalization
from kdet.backbones.mobilenet_v3 import mobilenet_v3_large


def _shared_random_weights(ours, reference):
    """The same random weights in both models, layer by layer by name (BN variances kept positive)."""
    rng = np.random.default_rng(0)
    for layer in ours.layers:
        if not layer.weights:
            continue
        values = [rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path else 0.2 * rng.standard_normal(w.shape)
                  for w in layer.weights]
        values = [v.astype("float32") for v in values]
        layer.set_weights(values)
        reference.get_layer(layer.name).set_weights(values)


def test_equals_keras_applications_layer_by_layer_on_odd_sizes():
    """65 px is odd at every stride-2 layer, where keras' "same" / correct_pad pad like torchvision."""
    ours = mobilenet_v3_large((65, 65), features={"P5": "conv_1_act"})
    reference = keras.applications.MobileNetV3Large(input_shape=(65, 65, 3), include_top=False, weights=None,
                                                    include_preprocessing=False)
    ours_weighted = {layer.name for layer in ours.layers if layer.weights}
    assert ours_weighted == {layer.name for layer in reference.layers if layer.weights}
    _shared_random_weights(ours, reference)
    x = np.random.default_rng(1).standard_normal((2, 65, 65, 3)).astype("float32")
    expected = reference(x).numpy()
    np.testing.assert_allclose(ours(x)["P5"].numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_even_sizes_pad_symmetrically_unlike_keras_applications():
    ours = mobilenet_v3_large((64, 64), features={"stem": "conv_bn"})
    reference = keras.applications.MobileNetV3Large(input_shape=(64, 64, 3), include_top=False, weights=None,
                                                    include_preprocessing=False)
    _shared_random_weights(ours, reference)
    x = np.random.default_rng(1).standard_normal((1, 64, 64, 3)).astype("float32")
    stem = keras.Model(reference.input, reference.get_layer("conv_bn").output)(x).numpy()
    # Same weights, same output size, shifted sampling grid: the stems differ everywhere.
    assert np.abs(ours(x)["stem"].numpy() - stem).max() > 0.1 * np.abs(stem).max()
    assert ours.get_layer("conv_pad").padding == ((1, 1), (1, 1))


def test_pyramid_reduced_tail_and_taps():
    model, normalization = build_backbone("mobilenet_v3_large", (128, 96))
    assert {k: tuple(v.shape[1:]) for k, v in model.output.items()} == {
        "P2": (32, 24, 24), "P3": (16, 12, 40), "P4": (8, 6, 672), "P5": (4, 3, 960)}
    assert normalization == default_normalization("mobilenet_v3_large") and normalization["std"][0] == 0.229
    reduced = mobilenet_v3_large((64, 64), reduced_tail=True, bn_epsilon=1e-5,
                                 features={"C4": "expanded_conv_12_project_bn", "P5": "conv_1_act"})
    assert reduced.output["C4"].shape[1:] == (2, 2, 80) and reduced.output["P5"].shape[-1] == 480
    assert reduced.get_layer("expanded_conv_13_expand").filters == 480
    assert reduced.get_layer("conv_bn").epsilon == 1e-5
    dynamic = mobilenet_v3_large((None, None))
    assert dynamic.output["P5"].shape[1:3] == (None, None)
    with pytest.raises(ValueError, match="expanded_conv_99"):
        mobilenet_v3_large((64, 64), features={"P4": "expanded_conv_99_add"})
