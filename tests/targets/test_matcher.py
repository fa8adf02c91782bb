"""IoU matcher and label encoder: thresholds, low-quality and forced matches, empty GT."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.targets import BACKGROUND, IGNORE, POSITIVE, AnchorLabelEncoder, match_boxes


def test_thresholds_give_positive_ignore_background():
    sim = np.array([[[0.6, 0.1], [0.45, 0.2], [0.1, 0.3]]], "float32")  # 3 anchors, 2 GTs
    matched, state = match_boxes(sim, [[True, True]], 0.5, 0.4, allow_low_quality_matches=False)
    assert state.numpy().tolist() == [[POSITIVE, IGNORE, BACKGROUND]]
    assert matched.numpy()[0, 0] == 0


def test_low_quality_matches_rescue_every_gt():
    sim = np.array([[[0.6, 0.1], [0.45, 0.2], [0.1, 0.3]]], "float32")
    _, state = match_boxes(sim, [[True, True]], 0.5, 0.4, allow_low_quality_matches=True)
    # GT 1's best anchor (2, IoU 0.3) becomes positive; anchor 1 stays ignored.
    assert state.numpy().tolist() == [[POSITIVE, IGNORE, POSITIVE]]


def test_forced_match_assigns_best_anchor_to_its_gt():
    sim = np.array([[[0.3, 0.2], [0.1, 0.25]]], "float32")
    matched, state = match_boxes(sim, [[True, True]], 0.5, 0.5, allow_low_quality_matches=False,
                                 force_match_for_each_gt=True)
    assert state.numpy().tolist() == [[POSITIVE, POSITIVE]]
    assert matched.numpy().tolist() == [[0, 1]]


def test_padded_gts_never_match():
    sim = np.array([[[0.9, 0.95]]], "float32")
    matched, state = match_boxes(sim, [[True, False]], 0.5, 0.4)
    assert matched.numpy()[0, 0] == 0 and state.numpy()[0, 0] == POSITIVE


def test_threshold_validation():
    with pytest.raises(ValueError, match="negative_threshold"):
        match_boxes(np.zeros((1, 1, 1)), [[True]], 0.4, 0.5)
    with pytest.raises(ValueError, match="positive_threshold"):
        match_boxes(np.zeros((1, 1, 1)), [[True]], 1.5, 0.5)


def test_encoder_targets_and_empty_images():
    enc = AnchorLabelEncoder(variances=(0.1, 0.1, 0.2, 0.2))
    anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 12, 12]], "float32")
    gt_boxes = np.array([[[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]], "float32")
    gt_labels = np.array([[4, -1], [-1, -1]], "int32")
    out = enc(anchors, gt_boxes, gt_labels)
    # Anchor 2 has IoU 100/144 = 0.69 with the GT -> positive too.
    assert out["labels"].numpy().tolist() == [[4, BACKGROUND, 4], [BACKGROUND] * 3]
    np.testing.assert_allclose(out["box_targets"][0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["box_targets"][0, 2], [-1 / 12 / 0.1, -1 / 12 / 0.1,
                                                          np.log(10 / 12) / 0.2, np.log(10 / 12) / 0.2], rtol=1e-5)
    assert out["num_positive"].numpy().tolist() == [2.0, 0.0]


def test_encoder_inside_tf_data_and_with_no_gt_columns():
    enc = AnchorLabelEncoder()
    anchors = tf.constant([[0.0, 0, 10, 10]])
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((2, 3, 4), "float32"), -np.ones((2, 3), "int32")))
    out = next(iter(ds.map(lambda b, lab: enc(anchors, b, lab))))
    assert out["labels"].shape == (1,) and int(out["labels"][0]) == BACKGROUND
    empty = enc(anchors, np.zeros((2, 0, 4), "float32"), np.zeros((2, 0), "int32"))
    assert empty["labels"].numpy().tolist() == [[BACKGROUND], [BACKGROUND]]
