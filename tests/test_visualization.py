"""kdet.visualization: pixel-exact rendering, boxes where the coordinates say, masks = a NumPy blend."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kdet.visualization import draw_detections, draw_masks, label_colours

GREY = 128


def _grey(height=60, width=90):
    return np.full((height, width, 3), GREY, np.uint8)


def _changed(drawn, image):
    return np.abs(drawn.astype(np.int16) - image.astype(np.int16)).sum(-1) > 0


@pytest.mark.parametrize("height, width", [(29, 57), (1, 3), (333, 517)])
def test_no_detection_gives_the_image_back_pixel_for_pixel(height, width):
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    np.testing.assert_array_equal(draw_detections(image, empty), image)
    floats = draw_detections(image.astype(np.float32), empty)  # float 0..255 input
    np.testing.assert_array_equal(floats, image)


def test_box_edges_are_drawn_on_the_box_and_nothing_inside():
    image = _grey()
    det = {"boxes": [[20, 25, 70, 50]], "scores": [0.9], "labels": [1]}
    changed = _changed(draw_detections(image, det, ["cat", "dog"]), image)
    for x in (20, 70):  # left and right edges, over the box's height
        assert changed[28:48, x].all()
    for y in (25, 50):
        assert changed[y, 30:60].all()
    assert not changed[30:46, 25:66].any()  # inside, away from the edges
    assert not changed[55:, :].any() and not changed[:, 75:].any()  # outside, away from the label


def test_colour_follows_the_label():
    image = _grey()
    det = {"boxes": [[10, 20, 40, 50], [50, 20, 80, 50]], "scores": [0.9, 0.8], "labels": [0, 3]}
    drawn = draw_detections(image, det)
    expected = np.round(255 * label_colours([0, 3])).astype(int)
    for (x, _y), colour in zip(((10, 35), (50, 35)), expected):
        np.testing.assert_allclose(drawn[35, x].astype(int), colour, atol=2)


def test_box_formats_score_threshold_and_saved_file(tmp_path):
    image = _grey()
    xyxy = {"boxes": [[20, 25, 70, 50], [5, 5, 15, 15]], "scores": [0.9, 0.2], "labels": [1, 0]}
    xywh = {**xyxy, "boxes": [[20, 25, 50, 25], [5, 5, 10, 10]]}
    kept = draw_detections(image, xyxy, score_threshold=0.5, path=tmp_path / "a.png")
    np.testing.assert_array_equal(draw_detections(image, xywh, bounding_box_format="xywh", score_threshold=0.5),
                                  kept)
    np.testing.assert_array_equal(kept, draw_detections(image, {k: v[:1] for k, v in xyxy.items()}))
    with Image.open(tmp_path / "a.png") as saved:
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), kept)


def test_landmarks_are_drawn():
    image = _grey()
    landmarks = np.array([[[30, 35], [60, 35], [45, 42], [35, 46], [55, 46]]], np.float32)
    det = {"boxes": [[20, 25, 70, 50]], "scores": [0.9], "labels": [0]}
    without = _changed(draw_detections(image, det), image)
    with_points = _changed(draw_detections(image, {**det, "landmarks": landmarks}), image)
    for x, y in landmarks[0].astype(int):
        assert with_points[y, x] and not without[y, x]


def test_masks_are_the_alpha_blend_of_the_label_colour():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 50), np.uint8)
    masks[0, 5:20, 5:30] = 1
    masks[1, 10:35, 20:45] = 1  # overlaps detection 0, which is drawn on top
    labels, alpha = np.array([2, 5]), 0.4
    colours = 255 * label_colours(labels)
    expected = image.astype(np.float32)
    owner = np.where(masks[0] > 0, 0, np.where(masks[1] > 0, 1, -1))
    for i in (0, 1):
        inside = owner == i
        expected[inside] = image[inside] * (1 - alpha) + colours[i] * alpha
    drawn = draw_masks(image, masks, labels, alpha=alpha)
    assert drawn.dtype == np.uint8 and drawn.shape == image.shape
    np.testing.assert_allclose(drawn, expected, atol=1.0)  # uint8 rounding
    np.testing.assert_array_equal(drawn[owner < 0], image[owner < 0])
    # draw_detections draws the masks under the boxes.
    det = {"boxes": [[5, 5, 30, 20], [20, 10, 45, 35]], "scores": [0.9, 0.8], "labels": labels, "masks": masks}
    full = draw_detections(image, det, mask_alpha=alpha)
    np.testing.assert_allclose(full[12, 12], expected[12, 12], atol=1.0)  # inside mask 0, away from edges


@pytest.mark.parametrize("call, message", [
    (lambda: draw_detections(np.zeros((4, 4)), {"boxes": [], "scores": [], "labels": []}), r"\(H, W, 3\)"),
    (lambda: draw_detections(_grey(), {"boxes": [[0, 0, 1, 1]], "scores": [0.5]}), "missing"),
    (lambda: draw_detections(_grey(), {"boxes": [[0, 0, 1, 1]], "scores": [0.5, 0.4], "labels": [0]}),
     "has 2 rows but there are 1 boxes"),
    (lambda: draw_masks(_grey(), np.zeros((1, 5, 5), np.uint8), [0]), r"masks must be \(n, 60, 90\)"),
    (lambda: draw_masks(_grey(), np.zeros((1, 60, 90), np.uint8), [0], alpha=2), "alpha"),
    (lambda: draw_detections(_grey(), {"boxes": [[0, 0, 1, 1]], "scores": [1], "labels": [0]},
                             bounding_box_format="xyz"), "bounding_box_format"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
