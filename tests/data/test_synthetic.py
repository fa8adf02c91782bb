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


def test_standard_difficulty_is_the_default_data():
    a, ya = synthetic_arrays(6, 64, seed=4)
    b, yb = synthetic_arrays(6, 64, seed=4, difficulty="standard", num_classes=3, max_objects=3,
                             min_size=0.15, max_size=0.5, contrast=(80, 255), distractors=0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya["boxes"], yb["boxes"])


def test_hard_difficulty_has_more_smaller_fainter_objects_and_distractors():
    images, y = synthetic_arrays(40, 128, seed=0, difficulty="hard", masks=True)
    labels, boxes = y["labels"], y["boxes"]
    assert labels.shape == (40, 8) and labels.max() == 4 and (labels >= 0).sum(1).max() > 3
    sides = np.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])[labels >= 0]
    assert sides.max() <= 0.3 * 128 * np.sqrt(2) + 1  # side * sqrt(aspect) with aspect <= 2
    assert np.median(sides) < 30
    for image, mask_set, label_row in zip(images, y["masks"], labels):
        # Each object's colour is 40..100 (+ rounding) away from the background, in its largest channel.
        background = np.median(image[mask_set.sum(0) == 0].reshape(-1, 3), axis=0)
        for mask in mask_set[label_row >= 0]:
            colour = image[mask == 1][0].astype(float)
            assert 25 <= np.abs(colour - background).max() <= 100 + 40  # the background is noisy (std 12)
    # Distractors: many unlabelled pixels far from the background colour outside every object.
    plain, _ = synthetic_arrays(40, 128, seed=0, difficulty="hard", distractors=0)
    assert not np.array_equal(plain, images)


def test_difficulty_errors():
    with pytest.raises(ValueError, match="difficulty"):
        synthetic_arrays(2, 32, difficulty="extreme")
    with pytest.raises(ValueError, match="contrast"):
        synthetic_arrays(2, 32, contrast=(90, 50))
    with pytest.raises(ValueError, match="distractors"):
        synthetic_arrays(2, 32, distractors=-1)
