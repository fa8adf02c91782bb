"""The synthetic dataset: deterministic, exact boxes, disjoint splits."""

import numpy as np
import pytest

from kdet.data import synthetic, synthetic_arrays


def test_deterministic_and_splits_differ():
    a, ya = synthetic_arrays(4, 64, seed=3)
    b, yb = synthetic_arrays(4, 64, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya["boxes"], yb["boxes"])
    c, _ = synthetic_arrays(4, 64, seed=3, split="validation")
    assert not np.array_equal(a, c)


def test_boxes_are_exact_bounds_of_the_drawn_shapes():
    images, y = synthetic_arrays(16, (96, 128), num_classes=6, max_objects=4, seed=1)
    assert images.shape == (16, 96, 128, 3) and images.dtype == np.uint8
    for image, boxes, labels in zip(images, y["boxes"], y["labels"]):
        assert (labels >= 0).sum() >= 1
        for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
            if label < 0:
                continue
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96 and 0 <= label < 6
            if label != 0:
                continue
            # Rectangles fill their box with one colour that stops exactly at the box edge.
            inside = image[y1:y2, x1:x2].reshape(-1, 3)
            assert (inside == inside[0]).all()
            for row in (y1 - 1, y2):
                if 0 <= row < 96:
                    assert not (image[row, x1:x2] == inside[0]).all(axis=1).all()


def test_tf_data_version_and_errors():
    ds = synthetic("train", num_images=5, image_size=32, batch_size=2)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [2, 2, 1]
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_arrays(2, 32, num_classes=9)
    with pytest.raises(ValueError, match="split"):
        synthetic_arrays(2, 32, split="dev")
    with pytest.raises(ValueError, match="image_size"):
        synthetic_arrays(2, (0, 32))


def test_masks_are_the_drawn_pixels_and_change_nothing_else():
    images, y = synthetic_arrays(12, (72, 96), num_classes=6, max_objects=4, seed=2, masks=True)
    plain_images, plain = synthetic_arrays(12, (72, 96), num_classes=6, max_objects=4, seed=2)
    np.testing.assert_array_equal(images, plain_images)
    np.testing.assert_array_equal(y["boxes"], plain["boxes"])
    np.testing.assert_array_equal(y["labels"], plain["labels"])
    assert "masks" not in plain and y["masks"].shape == (12, 4, 72, 96) and y["masks"].dtype == np.uint8
    for image, boxes, labels, masks in zip(images, y["boxes"], y["labels"], y["masks"]):
        assert not masks[labels < 0].any()  # padded rows are empty
        assert masks.sum(0).max() <= 1      # objects never overlap
        for box, mask in zip(boxes[labels >= 0], masks[labels >= 0]):
            ys, xs = np.nonzero(mask)
            # The box is the tight bound of the mask ...
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            # ... the mask is painted in one colour ...
            colours = image[mask == 1]
            assert (colours == colours[0]).all()
            # ... and that colour stops at the mask: the box's other pixels differ from it.
            x1, y1, x2, y2 = box.astype(int)
            rest = image[y1:y2, x1:x2][mask[y1:y2, x1:x2] == 0]
            assert not (rest == colours[0]).all(axis=1).any()
    ds = synthetic("train", num_images=3, image_size=32, batch_size=2, masks=True)
    batch = next(iter(ds))[1]
    assert batch["masks"].shape == (2, 3, 32, 32) and batch["masks"].dtype == np.uint8
