"""Mask R-CNN targets: each RoI's matched ground-truth mask, RoIAligned to the RoI (NumPy reference)."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.targets import RoITargetSampler, mask_targets
from tests.ops.test_roi import ref_roi_align


def test_mask_targets_match_roi_align_of_each_rois_own_mask():
    rng = np.random.default_rng(0)
    masks = (rng.uniform(size=(2, 3, 20, 24)) > 0.5).astype(np.uint8)
    xy = rng.uniform(-3, 18, (2, 5, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 12, (2, 5, 2))], -1).astype(np.float32)
    index = rng.integers(0, 3, (2, 5))
    got = mask_targets(masks, index, boxes, size=6).numpy()
    assert got.shape == (2, 5, 6, 6) and got.dtype == np.float32
    for b in range(2):
        for r in range(5):
            want = ref_roi_align(masks[b, index[b, r], :, :, None].astype(np.float64), boxes[b, r], 6, 1.0, 2, False)
            np.testing.assert_allclose(got[b, r], want[..., 0], atol=1e-5)


def test_a_box_tight_on_a_rectangle_gives_ones_and_images_without_objects_read_nothing():
    masks = np.zeros((1, 1, 40, 40), np.uint8)
    masks[0, 0, 10:30, 5:25] = 1  # rows 10..29, columns 5..24
    # torchvision v1's RoIAlign reads pixel i at coordinate i (no half-pixel shift): samples inside
    # (5, 10, 24, 29) read only object pixels; past it they blend in the background.
    inside = mask_targets(masks, [[0]], [[[5., 10., 24., 29.]]], size=28).numpy()
    np.testing.assert_allclose(inside, 1.0, atol=1e-6)
    edge = mask_targets(masks, [[0]], [[[5., 10., 25., 30.]]], size=28).numpy()[0, 0]
    assert edge[:-2, :-2].min() > 1 - 1e-6 and 0.0 < edge[-1, -1] < 0.9
    outside = mask_targets(masks, [[0]], [[[26., 31., 38., 39.]]], size=28).numpy()
    np.testing.assert_allclose(outside, 0.0, atol=1e-6)
    # No GT row at all (M = 0): a padding row is read, the shapes stay static.
    empty = mask_targets(np.zeros((2, 0, 40, 40), np.uint8), tf.zeros((2, 3), tf.int32), tf.zeros((2, 3, 4)), 28)
    assert empty.shape == (2, 3, 28, 28) and float(tf.reduce_max(empty)) == 0.0
    with pytest.raises(ValueError, match="gt_masks must have shape"):
        mask_targets(masks[0], [[0]], [[[5., 10., 25., 30.]]])


def test_roi_sampler_reports_each_positives_gt_row():
    gt = np.array([[[0., 0, 10, 10], [20, 20, 40, 40], [0, 0, 0, 0]]], np.float32)
    labels = np.array([[1, 0, -1]], np.int32)
    proposals = np.array([[[1., 1, 10, 10], [21, 19, 40, 41], [50, 50, 60, 60]]], np.float32)
    sample = RoITargetSampler(num_samples=8, positive_fraction=0.5, seed=0)(proposals, np.ones((1, 3), bool), gt,
                                                                             labels)
    positive = sample["positive"].numpy()[0]
    boxes, rows = sample["boxes"].numpy()[0][positive], sample["gt_index"].numpy()[0][positive]
    for box, row in zip(boxes, rows):
        assert box[0] < 15 if row == 0 else box[0] >= 15  # each positive points at the GT it overlaps
    assert set(rows.tolist()) == {0, 1}
