"""kdet.ops.boxes: hand-derived IoU family, Keras oracles, formats, properties, XLA, errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from kdet.ops.boxes import (IOU_MODES, aligned_iou, area, clip_boxes, convert_format, from_xyxy,
                            iou, to_xyxy)

A = [[0.0, 0, 2, 2], [0.0, 0, 1, 1]]
B = [[1.0, 0, 3, 2], [2.0, 0, 3, 1], [0.0, 0, 2, 2]]
# Derived by hand (all boxes are squares, so CIoU's aspect term v is 0 and CIoU = DIoU).
HAND = {
    # Intersections / unions; touching boxes have IoU 0.
    "iou": [[1 / 3, 0.0, 1.0], [0.0, 0.0, 1 / 4]],
    # IoU - (enclosing - union) / enclosing; enclosing areas 6, 6, 4 / 6, 3, 4.
    "giou": [[1 / 3, -1 / 6, 1.0], [-1 / 6, -1 / 3, 1 / 4]],
    # IoU - centre distance^2 / enclosing diagonal^2.
    "diou": [[1 / 3 - 1 / 13, -2.5 / 13, 1.0], [-2.5 / 13, -4 / 10, 1 / 4 - 0.5 / 8]],
}
HAND["ciou"] = HAND["diou"]
FORMATS = ["xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw"]


def random_boxes(rng, shape, low=0.0, high=60.0):
    xy = rng.uniform(low, high, shape + (2,))
    wh = rng.uniform(1, 30, shape + (2,))
    return np.concatenate([xy, xy + wh], -1).astype("float32")


@pytest.mark.parametrize("mode", IOU_MODES)
def test_hand_computed_pairwise_values(mode):
    np.testing.assert_allclose(iou(A, B, mode=mode), HAND[mode], atol=1e-6)


def test_hand_computed_ciou_with_aspect_term():
    # 2 x 2 box in the left half of a 4 x 2 box: IoU 1/2, d^2 = 1, c^2 = 20,
    # v = 4 / pi^2 (atan 2 - atan 1)^2, alpha = v / (1 - IoU + v).
    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
    expected = 0.5 - 1 / 20 - v * v / (0.5 + v)
    assert float(aligned_iou([0.0, 0, 2, 2], [0.0, 0, 4, 2], "ciou")) == pytest.approx(expected, 1e-6)
    assert float(aligned_iou([0.0, 0, 2, 2], [0.0, 0, 4, 2], "diou")) == pytest.approx(0.45, 1e-6)


def test_iou_matches_keras_compute_iou():
    rng = np.random.default_rng(0)
    b1, b2 = random_boxes(rng, (2, 7)), random_boxes(rng, (2, 5))
    oracle = keras.utils.bounding_boxes.compute_iou(b1, b2, "xyxy")
    np.testing.assert_allclose(iou(b1, b2), oracle, atol=1e-5)


def test_aligned_ciou_matches_keras_compute_ciou():
    rng = np.random.default_rng(1)
    b1, b2 = random_boxes(rng, (3, 9)), random_boxes(rng, (3, 9))
    oracle = keras.utils.bounding_boxes.compute_ciou(b1, b2, "xyxy")
    np.testing.assert_allclose(aligned_iou(b1, b2, "ciou"), oracle, atol=2e-5)


@pytest.mark.parametrize("mode", IOU_MODES)
def test_aligned_is_the_diagonal_of_pairwise(mode):
    rng = np.random.default_rng(2)
    b1, b2 = random_boxes(rng, (6,)), random_boxes(rng, (6,))
    np.testing.assert_allclose(aligned_iou(b1, b2, mode), np.diag(iou(b1, b2, mode)), atol=1e-6)


@pytest.mark.parametrize("mode", IOU_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_iou(mode, fmt):
    rng = np.random.default_rng(3)
    b1, b2 = random_boxes(rng, (2, 4)), random_boxes(rng, (2, 6))
    expected = iou(b1, b2, mode)
    got = iou(from_xyxy(b1, fmt), from_xyxy(b2, fmt), mode, bounding_box_format=fmt)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["iou", "giou"])  # invariant to per-axis rescaling
@pytest.mark.parametrize("fmt", ["rel_xyxy", "rel_yxyx", "rel_xywh", "rel_center_xywh"])
def test_relative_formats_give_the_same_iou(mode, fmt):
    rng = np.random.default_rng(4)
    b1, b2 = random_boxes(rng, (5,)), random_boxes(rng, (3,))
    rel = [from_xyxy(b, fmt, height=90, width=120) for b in (b1, b2)]
    np.testing.assert_allclose(iou(*rel, mode, bounding_box_format=fmt), iou(b1, b2, mode), atol=1e-5)


def test_broadcasting_and_batching():
    rng = np.random.default_rng(5)
    b1, b2 = random_boxes(rng, (3, 4)), random_boxes(rng, (6,))
    out = iou(b1, b2, "giou")
    assert out.shape == (3, 4, 6)
    np.testing.assert_allclose(out[1], iou(b1[1], b2, "giou"), atol=1e-6)


box = st.tuples(*[st.floats(0, 100, width=32)] * 2, *[st.floats(0.5, 50, width=32)] * 2).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=60, deadline=None)
@given(b1=box, b2=box)
def test_properties(b1, b2):
    values = {m: float(aligned_iou(b1, b2, m)) for m in IOU_MODES}
    assert 0.0 <= values["iou"] <= 1.0 + 1e-6
    assert -1.0 - 1e-6 <= values["giou"] <= values["iou"] + 1e-6
    assert -1.0 - 1e-6 <= values["diou"] <= values["iou"] + 1e-6
    assert values["ciou"] <= values["diou"] + 1e-6
    for m in IOU_MODES:  # symmetric
        assert float(aligned_iou(b2, b1, m)) == pytest.approx(values[m], abs=1e-5)
        assert float(aligned_iou(b1, b1, m)) == pytest.approx(1.0, abs=1e-5)


DEGENERATE_1 = [[0.0, 0, 0, 0], [5.0, 5, 5, 5], [1.0, 2, 8, 9], [4.0, 4, 4, 4], [2.0, 0, 2, 10],
                [8.0, 8, 2, 2]]
DEGENERATE_2 = [[0.0, 0, 0, 0], [5.0, 5, 5, 5], [1.0, 2, 8, 9], [0.0, 0, 10, 10], [0.0, 0, 10, 0]]


@pytest.mark.parametrize("mode", IOU_MODES)
def test_degenerate_boxes_have_finite_values_and_gradients(mode):
    b1, b2 = tf.constant(DEGENERATE_1), tf.constant(DEGENERATE_2)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([b1, b2])
        pairwise = iou(b1, b2, mode)
        total = tf.reduce_sum(pairwise)
    assert np.all(np.isfinite(pairwise.numpy()))
    for grad in tape.gradient(total, [b1, b2]):
        assert np.all(np.isfinite(grad.numpy()))
        assert np.max(np.abs(grad.numpy())) < 1e4  # bounded, not just finite
    # Empty boxes have IoU 0 with everything (including themselves).
    assert np.all(iou(b1, b2, "iou").numpy()[:2] == 0.0)


def test_area_clip_and_float16_inputs():
    np.testing.assert_allclose(area([[0.0, 0, 2, 3], [4.0, 4, 2, 2]]), [6.0, 0.0])
    clipped = clip_boxes([[-5.0, 2, 30, 50]], height=40, width=20)
    np.testing.assert_allclose(clipped, [[0.0, 2, 20, 40]])
    half = tf.constant([[1.0, 2, 3, 4]], tf.float16)
    assert to_xyxy(half, "xywh").dtype == tf.float32
    np.testing.assert_allclose(to_xyxy(half, "xywh"), [[1.0, 2, 4, 6]])
    assert float(iou(half, half)[0, 0]) == pytest.approx(1.0)
    # rel -> rel goes through absolute pixels.
    rel = convert_format([[0.1, 0.2, 0.5, 0.6]], "rel_xyxy", "rel_center_xywh", height=10, width=10)
    np.testing.assert_allclose(rel, [[0.3, 0.4, 0.4, 0.4]], atol=1e-6)


@pytest.mark.parametrize("mode", IOU_MODES)
def test_xla_compiles_at_any_batch_size(mode):
    fn = tf.function(lambda a, b: (iou(a, b, mode), aligned_iou(a, a[:, ::-1], mode)),
                     jit_compile=True,
                     input_signature=[tf.TensorSpec([None, 3, 4]), tf.TensorSpec([None, 5, 4])])
    rng = np.random.default_rng(6)
    for batch in (1, 3):
        b1, b2 = random_boxes(rng, (batch, 3)), random_boxes(rng, (batch, 5))
        pairwise, aligned = fn(b1, b2)
        np.testing.assert_allclose(pairwise, iou(b1, b2, mode), atol=1e-5)
        np.testing.assert_allclose(aligned, aligned_iou(b1, b1[:, ::-1], mode), atol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"mode must be one of .*'eiou'"):
        iou(A, B, mode="eiou")
    with pytest.raises(ValueError, match=r"Unknown bounding_box_format 'cxcywh'.*center_xywh"):
        iou(A, B, bounding_box_format="cxcywh")
    with pytest.raises(ValueError, match=r"last dimension of 4.*\(2, 3\)"):
        iou(np.zeros((2, 3)), B)
    for fmt in ("yxyx", "center_xywh"):
        with pytest.raises(ValueError, match="last dimension of 4"):
            aligned_iou(np.zeros((2, 5)), np.zeros((2, 5)), bounding_box_format=fmt)
    with pytest.raises(ValueError, match="needs the image height and width"):
        convert_format(A, "rel_xyxy", "xyxy")


def test_intersection_over_min_area_mode():
    # Hand-derived on A x B: intersections 2, 0, 4 / 0, 0, 1 over the smaller areas 4, 1, 4 / 1, 1, 1.
    np.testing.assert_allclose(iou(A, B, "iomin"), [[0.5, 0.0, 1.0], [0.0, 0.0, 1.0]], atol=1e-6)
    rng = np.random.default_rng(7)
    b1, b2 = random_boxes(rng, (4, 6)), random_boxes(rng, (4, 9))
    overlap = iou(b1, b2, "iomin").numpy()
    # A box inside another has overlap 1 with it; iomin >= iou always; symmetric; aligned = diagonal.
    inner = np.array([[10.0, 10, 20, 20]], np.float32)
    assert float(iou(inner, [[0.0, 0, 50, 50]], "iomin")[0, 0]) == pytest.approx(1.0)
    assert np.all(overlap >= iou(b1, b2, "iou").numpy() - 1e-6)
    np.testing.assert_allclose(iou(b2, b1, "iomin").numpy(), np.swapaxes(overlap, -1, -2), atol=1e-6)
    np.testing.assert_allclose(aligned_iou(b1, b1[:, ::-1], "iomin"),
                               np.diagonal(iou(b1, b1[:, ::-1], "iomin"), axis1=-2, axis2=-1), atol=1e-6)
    # NumPy reference: intersection / min(area1, area2).
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    iw = np.clip(np.minimum(b1[..., :, None, 2], b2[..., None, :, 2])
                 - np.maximum(b1[..., :, None, 0], b2[..., None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b1[..., :, None, 3], b2[..., None, :, 3])
                 - np.maximum(b1[..., :, None, 1], b2[..., None, :, 1]), 0, None)
    np.testing.assert_allclose(overlap, iw * ih / np.minimum(area1[..., :, None], area2[..., None, :]), rtol=1e-5)
    # Empty boxes overlap nothing; values stay finite, under XLA too.
    degenerate = iou(DEGENERATE_1, DEGENERATE_2, "iomin").numpy()
    assert np.all(np.isfinite(degenerate)) and np.all(degenerate[:2] == 0.0)
    xla = tf.function(lambda a, b: iou(a, b, "iomin"), jit_compile=True)
    np.testing.assert_allclose(xla(b1, b2), overlap, atol=1e-6)


def test_iomin_is_not_a_loss_mode():
    from kdet.ops.boxes import IOU_MODES, OVERLAP_MODES

    assert "iomin" in OVERLAP_MODES and "iomin" not in IOU_MODES
