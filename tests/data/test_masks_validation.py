"""Ground-truth masks of the wrong size, count or values: ValueErrors that say what was received and expected."""

import numpy as np
import pytest

from kdet.data import synthetic_arrays
from kdet.validation import check_ground_truth, check_masks


def test_synthetic_masks_pass_and_come_back_as_uint8():
    x, y = synthetic_arrays(3, (40, 56), masks=True)
    out = check_ground_truth({**y, "masks": y["masks"].astype(bool)}, 3, image_size=x.shape[1:3])
    assert out["masks"].dtype == np.uint8 and np.array_equal(out["masks"], y["masks"])
    listed = check_ground_truth({**y, "masks": list(y["masks"])}, image_size=(40, 56))
    np.testing.assert_array_equal(listed["masks"], y["masks"])
    assert "masks" not in check_ground_truth({"boxes": y["boxes"], "labels": y["labels"]})


@pytest.mark.parametrize("masks,message", [
    (np.zeros((2, 3, 40, 56)), r"one mask per box row: expected shape \(3, 3, H, W\).*received \(2, 3, 40, 56\)"),
    (np.zeros((3, 2, 40, 56)),
     r"expected shape \(3, 3, H, W\) to match the boxes \(3, 3, 4\); received \(3, 2, 40, 56\)"),
    (np.zeros((3, 3, 40, 50)), r"pixels of the input images: expected height x width \(40, 56\); received masks of "
                               r"\(40, 50\)"),
    (np.zeros((3, 40, 56)),
     r"shape \(batch, max_boxes, height, width\) = \(3, 3, H, W\).*received shape \(3, 40, 56\)"),
    (np.full((3, 3, 40, 56), 255, np.uint8), r"must hold 0 or 1 \(uint8\); received values such as \[255\]"),
    ([np.zeros((3, 40, 56))] * 2, r"list must hold 3 per-image"),
    (np.full((3, 3, 40, 56), "a"), "dtype <U1"),
])
def test_wrong_masks_raise_with_received_and_expected(masks, message):
    _, y = synthetic_arrays(3, (40, 56))
    with pytest.raises(ValueError, match=message):
        check_ground_truth({**y, "masks": masks}, image_size=(40, 56))


def test_check_masks_names_the_argument():
    with pytest.raises(ValueError, match=r"^y_val\['masks'\] must have one mask per box row"):
        check_masks(np.zeros((1, 2, 4, 4)), (1, 3), name="y_val['masks']")
