"""COCO segmentation decoding (polygons, RLE) against pycocotools' annToMask, pixel for pixel."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdet.data.segmentation import (
    counts_from_string, decode_segmentation, mask_to_rle_counts, polygon_to_mask, rle_to_mask,
)

mask_utils = pytest.importorskip("pycocotools.mask")


def coco_ann_to_mask(segmentation, height, width):
    """pycocotools COCO.annToRLE + annToMask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def _random_polygon(rng, height, width):
    n = int(rng.integers(3, 12))
    kind = rng.integers(0, 3)
    if kind == 0:  # star-shaped around a centre, partly outside the image at times
        centre = rng.uniform([-5, -5], [width + 5, height + 5])
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.5, max(height, width) / 2, n)
        pts = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radius[:, None]
    elif kind == 1:  # any points: self-intersecting polygons
        pts = rng.uniform([-3, -3], [width + 3, height + 3], (n, 2))
    else:  # integer and half-integer vertices (exact ties), with repeated vertices
        pts = rng.integers(-2, 2 * max(height, width), (n, 2)) / 2.0
        pts[1] = pts[0]
    return pts.reshape(-1).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_polygons_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        polygons = [_random_polygon(rng, height, width) for _ in range(int(rng.integers(1, 4)))]
        want = coco_ann_to_mask(polygons, height, width)
        np.testing.assert_array_equal(decode_segmentation(polygons, height, width), want)
        np.testing.assert_array_equal(polygon_to_mask(polygons[0], height, width),
                                      coco_ann_to_mask(polygons[:1], height, width))


def test_axis_aligned_rectangle_polygon_covers_its_pixels():
    # COCO polygons follow pixel edges: a rectangle from (2, 1) to (6, 4) covers x 2..5, y 1..3.
    mask = decode_segmentation([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8)
    want = np.zeros((6, 8), np.uint8)
    want[1:4, 2:6] = 1
    np.testing.assert_array_equal(mask, want)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_rle_compressed_and_uncompressed_match_pycocotools(height, width, seed, density):
    rng = np.random.default_rng(seed)
    mask = (rng.random((height, width)) < density).astype(np.uint8)
    if seed % 3 == 0:  # long runs, so multi-character counts and negative differences occur
        mask = np.zeros((height, width), np.uint8)
        mask[: height // 2, : width // 2] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    np.testing.assert_array_equal(decode_segmentation(rle, height, width), mask)
    text = {"counts": rle["counts"].decode("ascii"), "size": rle["size"]}
    np.testing.assert_array_equal(decode_segmentation(text, height, width), mask)
    counts = mask_to_rle_counts(mask)
    uncompressed = {"counts": counts, "size": [height, width]}
    np.testing.assert_array_equal(decode_segmentation(uncompressed, height, width), mask)
    np.testing.assert_array_equal(coco_ann_to_mask(uncompressed, height, width), mask)
    assert mask_utils.frPyObjects(uncompressed, height, width)["counts"] == rle["counts"]


def test_counts_from_string_large_counts():
    mask = np.zeros((700, 900), np.uint8)
    mask[650:, 10:800] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    counts = counts_from_string(rle["counts"])
    assert sum(counts) == 700 * 900 and counts == mask_to_rle_counts(mask)
    np.testing.assert_array_equal(rle_to_mask(counts, 700, 900), mask)


@pytest.mark.parametrize("segmentation,message", [
    ([[1, 2, 3, 4]], "at least 3"),
    ([[1, 2, 3, 4, "a", 5]], "could not convert|finite"),
    ({"counts": [3, 4], "size": [3, 3]}, "sum to height \\* width = 9"),
    ({"counts": [3, 6], "size": [4, 3]}, "does not match the image size"),
    ({"counts": 5, "size": [3, 3]}, "list or a string"),
    ([], "non-empty list of polygons"),
    ("polygon", "non-empty list of polygons"),
])
def test_malformed_segmentations_raise(segmentation, message):
    with pytest.raises(ValueError, match=message):
        decode_segmentation(segmentation, 3, 3)
