"""AnchorGenerator, SSD default boxes and YOLO anchors: hand-derived values."""

import math

import keras
import numpy as np
import pytest

from kdet.layers import AnchorGenerator, ssd_anchor_shapes
from kdet.layers.anchor_generator import YOLOV3_COCO_ANCHORS


def test_single_level_cell_centres():
    gen = AnchorGenerator(strides=(16,), sizes=(32,), scales=(1.0,), aspect_ratios=(1.0,))
    # 32x32 image, stride 16 -> 2x2 grid, centres at 8 and 24 (offset 0.5), size 32.
    np.testing.assert_allclose(
        gen.generate(32, 32),
        [[-8, -8, 24, 24], [8, -8, 40, 24], [-8, 8, 24, 40], [8, 8, 40, 40]],
    )


def test_torchvision_convention_offset_zero_and_rounding():
    # torchvision: centres at i * stride, base anchors rounded. Size 32, ratio 0.5
    # (h/w): w = 32 / sqrt(.5) = 45.25 -> +-22.63 -> rounded to +-23; h = 22.63 -> +-11.31 -> +-11.
    gen = AnchorGenerator(strides=(8,), sizes=(32,), scales=(1.0,), aspect_ratios=(0.5,), offset=0.0,
                          round_base_anchors=True)
    anchors = gen.generate(16, 16)
    np.testing.assert_allclose(anchors[0], [-23, -11, 23, 11])
    np.testing.assert_allclose(anchors[1], [8 - 23, -11, 8 + 23, 11])


def test_aspect_ratio_is_height_over_width_and_area_preserved():
    gen = AnchorGenerator(strides=(8,), sizes=(32,), scales=(1.0,), aspect_ratios=(0.5, 1.0, 2.0))
    base = gen.base_anchors(0)
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    np.testing.assert_allclose(h / w, [0.5, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(w * h, [1024] * 3, rtol=1e-5)


def test_orders():
    kw = dict(strides=(8,), sizes=(32,), scales=(1.0, 2.0), aspect_ratios=(0.5, 2.0))
    ratio_major = AnchorGenerator(order="ratio_major", **kw).base_anchors(0)
    scale_major = AnchorGenerator(order="scale_major", **kw).base_anchors(0)
    # ratio_major: (r0,s0) (r0,s1) (r1,s0) (r1,s1); scale_major: (r0,s0) (r1,s0) (r0,s1) (r1,s1)
    np.testing.assert_allclose(ratio_major[[0, 2, 1, 3]], scale_major)


def test_retinanet_counts_and_level_order():
    gen = AnchorGenerator()  # P3-P7, 9 anchors per location
    anchors = gen.generate(128, 128)
    expected = sum(math.ceil(128 / s) ** 2 * 9 for s in (8, 16, 32, 64, 128))
    assert anchors.shape == (expected, 4)
    assert gen.compute_output_shape((None, 128, 128, 3)) == (expected, 4)
    # First anchors belong to P3 (size 32), the last to P7 (size 512).
    first, last = anchors[0], anchors[-1]
    assert math.isclose((first[2] - first[0]) * (first[3] - first[1]), (32 / math.sqrt(0.5)) * (32 * math.sqrt(0.5)), rel_tol=1e-5)
    assert (last[2] - last[0]) * (last[3] - last[1]) > 512**2


def test_explicit_shapes_for_yolo():
    gen = AnchorGenerator(strides=(8, 16, 32), anchor_shapes=YOLOV3_COCO_ANCHORS, offset=0.5)
    anchors = gen.generate(416, 416)
    assert anchors.shape == ((52 * 52 + 26 * 26 + 13 * 13) * 3, 4)
    np.testing.assert_allclose(anchors[0], [4 - 5, 4 - 6.5, 4 + 5, 4 + 6.5])
    np.testing.assert_allclose(anchors[-1][2:] - anchors[-1][:2], [373, 326])


def test_ssd_default_boxes_match_paper():
    shapes = ssd_anchor_shapes(300)
    assert [len(level) for level in shapes] == [4, 6, 6, 6, 4, 4]
    # Level 1: s = 0.2 -> 60 px; the extra box sqrt(0.2 * 0.34) * 300.
    np.testing.assert_allclose(shapes[0][0], (60, 60))
    np.testing.assert_allclose(shapes[0][1], (math.sqrt(0.2 * 0.34) * 300,) * 2)
    np.testing.assert_allclose(shapes[0][2], (60 * math.sqrt(2), 60 / math.sqrt(2)))
    np.testing.assert_allclose(shapes[-1][0], (0.9 * 300, 0.9 * 300))


def test_feature_shapes_override_and_dynamic_shapes():
    gen = AnchorGenerator(strides=(8,), sizes=(16,), scales=(1.0,), aspect_ratios=(1.0,))
    assert gen.generate(300, 300, feature_shapes=[(38, 38)]).shape == (38 * 38, 4)
    import tensorflow as tf

    fn = tf.function(lambda x: gen(x), input_signature=[tf.TensorSpec((None, None, None, 3))])
    assert fn(tf.zeros((1, 64, 32, 3))).shape == (8 * 4, 4)


def test_serialisation_round_trip():
    gen = AnchorGenerator(strides=(8, 16), sizes=(32, 64), offset=0.0, round_base_anchors=True)
    clone = AnchorGenerator.from_config(gen.get_config())
    np.testing.assert_array_equal(gen.generate(64, 64), clone.generate(64, 64))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(gen))
    np.testing.assert_array_equal(gen.generate(64, 64), restored.generate(64, 64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(strides=(0,)), "strides"),
    (dict(strides=(8, 16), sizes=(32,)), "sizes has 1 levels"),
    (dict(order="random"), "order"),
    (dict(strides=(8,), sizes=(32,), aspect_ratios=(-1.0,)), "aspect_ratios"),
    (dict(strides=(8,), anchor_shapes=[[(1, 1)], [(2, 2)]]), "anchor_shapes has 2 levels"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnchorGenerator(**kwargs)
