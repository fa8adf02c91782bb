"""ResNet backbones: keras.applications equivalence (style="keras"), torchvision stride placement."""

import keras
import numpy as np
import pytest

from kdet.backbones.resnet import resnet_backbone


def test_keras_style_reproduces_keras_applications():
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    ours = resnet_backbone(50, (64, 64), style="keras")
    ours_layers = {l.name: l for l in ours.layers}
    for layer in reference.layers:
        if layer.weights:
            ours_layers[layer.name].set_weights(layer.get_weights())
    assert ours.count_params() == reference.count_params()
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0)["P5"], reference.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    assert reference.get_layer("conv4_block6_out").output.shape[1:] == ours.output["P4"].shape[1:]


def test_torchvision_style_strides_in_3x3_without_bias():
    model = resnet_backbone(50, (64, 64))
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert not model.get_layer("conv3_block1_2_conv").use_bias
    assert model.get_layer("conv1_bn").epsilon == 1e-5
    assert {k: tuple(v.shape[1:]) for k, v in model.output.items()} == {
        "P2": (16, 16, 256), "P3": (8, 8, 512), "P4": (4, 4, 1024), "P5": (2, 2, 2048)}
    # torchvision resnet50 without fc: 23,508,032 parameters + 53,120 BN moving statistics.
    assert model.count_params() == 23_508_032 + 53_120


def test_resnet101_depth():
    model = resnet_backbone(101, (64, 64))
    assert "conv4_block23_out" in [l.name for l in model.layers]


@pytest.mark.parametrize("kwargs", [{"depth": 34}, {"style": "caffe"}, {"image_size": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        resnet_backbone(**{"image_size": (64, 64), **kwargs})
