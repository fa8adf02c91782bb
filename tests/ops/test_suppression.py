"""kdet.ops.suppression against tf.image.non_max_suppression, the mtcnn package and NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.ops.boxes import iou
from kdet.ops.suppression import (any_higher_keep, greedy_keep, ranked_conflicts, sort_by_score,
                                  suppress_sorted)


def random_boxes(rng, shape, spread=100.0):
    """xyxy boxes clustered enough for suppression to have work."""
    xy = rng.uniform(0, spread, shape + (2,))
    wh = rng.uniform(5, 40, shape + (2,))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def numpy_overlap(boxes, mode):
    """Pairwise IoU / intersection over the smaller area, written out in NumPy (float64)."""
    b = boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.maximum(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0)
    ih = np.maximum(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0)
    inter = iw * ih
    if mode == "iou":
        return inter / (area[:, None] + area[None, :] - inter)
    return inter / np.minimum(area[:, None], area[None, :])


def numpy_keep(boxes, valid, threshold, mode, greedy):
    """The two rules position by position: j is removed by an earlier (kept, if greedy) valid box."""
    overlap = numpy_overlap(boxes, mode)
    keep = np.zeros(len(boxes), bool)
    for j in range(len(boxes)):
        suppressors = keep[:j] if greedy else valid[:j]
        keep[j] = valid[j] and not np.any(suppressors & (overlap[:j, j] > threshold))
    return keep


@pytest.mark.parametrize("mode", ["iou", "iomin"])
@pytest.mark.parametrize("greedy", [True, False])
def test_both_rules_match_a_numpy_reference(mode, greedy):
    rng = np.random.default_rng(0)
    for _ in range(4):
        boxes = random_boxes(rng, (3, 50))
        valid = rng.uniform(size=(3, 50)) > 0.2
        keep = suppress_sorted(boxes, valid, 0.4, mode, greedy).numpy()
        for b in range(3):
            np.testing.assert_array_equal(keep[b], numpy_keep(boxes[b], valid[b], 0.4, mode, greedy))


def test_greedy_matches_tf_image_non_max_suppression():
    rng = np.random.default_rng(1)
    for _ in range(5):
        boxes = random_boxes(rng, (60,))
        scores = np.linspace(1.0, 0.1, 60).astype(np.float32)  # sorted, best first
        keep = suppress_sorted(boxes[None], np.ones((1, 60), bool), 0.5, greedy=True)[0].numpy()
        ref = tf.image.non_max_suppression(boxes[:, [1, 0, 3, 2]], scores, 60, 0.5).numpy()
        assert sorted(np.flatnonzero(keep)) == sorted(ref)


@pytest.mark.parametrize("mode, method", [("iou", "union"), ("iomin", "min")])
def test_any_higher_rule_matches_the_mtcnn_package(mode, method):
    bboxes = pytest.importorskip("mtcnn.utils.bboxes")
    boxes = random_boxes(np.random.default_rng(2), (40,))
    ref_overlap = bboxes.iou(boxes, method=method)
    np.testing.assert_allclose(iou(boxes, boxes, mode).numpy(), ref_overlap, atol=1e-5)
    keep = suppress_sorted(boxes[None], np.ones((1, 40), bool), 0.3, mode, greedy=False)[0].numpy()
    assert list(np.flatnonzero(keep)) == list(bboxes.nms(ref_overlap, 0.3))


def test_the_rules_differ_on_a_chain():
    # A suppresses B, B would suppress C, A does not touch C: greedy keeps C, the package's rule drops it.
    boxes = tf.constant([[[0.0, 0, 10, 10], [4, 0, 14, 10], [9, 0, 19, 10]]])
    valid = tf.ones((1, 3), bool)
    assert suppress_sorted(boxes, valid, 0.3, greedy=True).numpy().tolist() == [[True, False, True]]
    assert suppress_sorted(boxes, valid, 0.3, greedy=False).numpy().tolist() == [[True, False, False]]


def test_invalid_candidates_neither_survive_nor_suppress():
    boxes = tf.constant([[[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]])
    for greedy in (True, False):
        keep = suppress_sorted(boxes, tf.constant([[False, True, False]]), 0.5, greedy=greedy)
        assert keep.numpy().tolist() == [[False, True, False]]


def test_ranked_conflicts_and_keep_functions_by_hand():
    overlap = tf.constant([[[1.0, 0.9, 0.1], [0.9, 1.0, 0.8], [0.1, 0.8, 1.0]]])
    conflicts = ranked_conflicts(overlap, 0.5)
    np.testing.assert_array_equal(conflicts.numpy(), [[[0, 1, 0], [0, 0, 1], [0, 0, 0]]])
    valid = tf.ones((1, 3), bool)
    assert greedy_keep(conflicts, valid).numpy().tolist() == [[True, False, True]]
    assert any_higher_keep(conflicts, valid).numpy().tolist() == [[True, False, False]]


def test_xla_and_dynamic_candidate_counts():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, (2, 33))
    valid = rng.uniform(size=(2, 33)) > 0.3
    for greedy in (True, False):
        expected = suppress_sorted(boxes, valid, 0.45, "iou", greedy).numpy()
        xla = tf.function(lambda b, v: suppress_sorted(b, v, 0.45, "iou", greedy), jit_compile=True)
        signature = [tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.bool)]
        dynamic = tf.function(lambda b, v: suppress_sorted(b, v, 0.45, "iou", greedy),
                              input_signature=signature)
        np.testing.assert_array_equal(xla(boxes, valid).numpy(), expected)
        np.testing.assert_array_equal(dynamic(boxes, valid).numpy(), expected)
    empty = suppress_sorted(tf.zeros((2, 0, 4)), tf.zeros((2, 0), bool), 0.5)
    assert empty.shape == (2, 0)


def test_sort_by_score_orders_valid_first_and_breaks_ties_by_index():
    scores = tf.constant([[0.2, 0.9, 0.5, 0.5, 0.7]])
    valid = tf.constant([[True, False, True, True, True]])
    extra = tf.constant([[[0.0], [1.0], [2.0], [3.0], [4.0]]])
    s, v, e = sort_by_score(scores, valid, extra)
    np.testing.assert_allclose(s.numpy(), [[0.7, 0.5, 0.5, 0.2, 0.9]])
    assert v.numpy().tolist() == [[True, True, True, True, False]]
    assert e.numpy()[0, :, 0].tolist() == [4, 2, 3, 0, 1]
    s, v = sort_by_score(scores, valid, k=2)
    assert s.shape == (1, 2) and v.numpy().all()
    trimmed = tf.function(lambda s, v: sort_by_score(s, v, k=tf.constant(3))[0])(scores, valid)
    np.testing.assert_allclose(trimmed.numpy(), [[0.7, 0.5, 0.5]])


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="mode must be one of .*'giou'"):
        suppress_sorted(tf.zeros((1, 2, 4)), tf.ones((1, 2), bool), 0.5, mode="giou")
