"""kdet.data.prepare and its parts: padding with reported truncation, letterbox/stretch resizing, seeding."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import kdet.data
from kdet.data.pipeline import pad_targets, resize, sanitize_boxes, truncation_stats


def _examples(sizes, boxes_per_image):
    """Images of the given (h, w) sizes, each with `boxes_per_image` boxes."""
    def gen():
        for k, (h, w) in enumerate(sizes):
            image = np.full((h, w, 3), k, np.uint8)
            boxes = np.array([[1 + i, 2, 5 + i, 6] for i in range(boxes_per_image)], np.float32)
            yield image, {"boxes": boxes, "labels": np.arange(boxes_per_image, dtype=np.int32)}

    return tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, None, 3), tf.uint8),
        {"boxes": tf.TensorSpec((None, 4), tf.float32), "labels": tf.TensorSpec((None,), tf.int32)}))


def test_pad_targets_pads_and_reports_truncation(caplog):
    out = pad_targets({"boxes": [[0.0, 0, 4, 4], [1, 1, 2, 2]], "labels": [3, 1]}, max_boxes=4)
    assert out["labels"].numpy().tolist() == [3, 1, -1, -1]
    np.testing.assert_array_equal(out["boxes"].numpy()[2:], 0.0)
    truncation_stats(reset=True)
    with caplog.at_level(logging.WARNING, logger="kdet.data"):
        ds = kdet.data.prepare(_examples([(8, 8)] * 3, 5), batch_size=3, max_boxes=2)
        _, y = next(iter(ds))
    assert y["labels"].numpy().tolist() == [[0, 1]] * 3
    assert truncation_stats() == {"examples": 3, "boxes": 9}
    assert "has 5 boxes but max_boxes=2" in caplog.text
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_boxes=2"):
        next(iter(kdet.data.prepare(_examples([(8, 8)], 5), batch_size=1, max_boxes=2, on_truncate="raise")))
    with pytest.raises(ValueError, match="on_truncate"):
        pad_targets({"boxes": [[0.0, 0, 1, 1]], "labels": [0]}, on_truncate="drop")


def test_letterbox_matches_a_numpy_reference():
    # 40 x 80 image -> 64 x 64 letterbox: scale 0.8, content 32 rows tall, 16 rows padding above.
    image = np.zeros((40, 80, 3), np.uint8)
    image[10:20, 30:50] = 255
    out_image, out = resize(image, {"boxes": [[30.0, 10, 50, 20]], "labels": [0]}, 64, "letterbox", fill_value=0)
    np.testing.assert_allclose(out["boxes"].numpy(), [[24, 24, 40, 32]], atol=1e-4)
    ys, xs = np.nonzero(out_image.numpy()[..., 0] > 127)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [24, 24, 40, 32], atol=1)
    assert out_image.numpy()[:16].max() == 0 and out_image.numpy()[48:].max() == 0  # the padding
    stretched, out = resize(image, {"boxes": [[30.0, 10, 50, 20]], "labels": [0]}, 64, "stretch")
    np.testing.assert_allclose(out["boxes"].numpy(), [[24, 16, 40, 32]], atol=1e-4)
    with pytest.raises(ValueError, match="resize mode"):
        resize(image, {"boxes": [[0.0, 0, 1, 1]], "labels": [0]}, 64, "crop")


def test_prepare_without_image_size_pads_images_bottom_right():
    ds = kdet.data.prepare(_examples([(8, 10), (12, 6)], 1), batch_size=2, max_boxes=3)
    images, y = next(iter(ds))
    assert images.shape == (2, 12, 10, 3)
    assert images.numpy()[0, 8:].max() == 0 and images.numpy()[1, :, 6:].max() == 0
    np.testing.assert_array_equal(y["boxes"].numpy()[:, 0], [[1, 2, 5, 6]] * 2)  # boxes untouched


def test_prepare_shapes_shuffle_seed_and_repeat():
    def order(seed):
        ds = kdet.data.prepare(_examples([(4 + k, 4) for k in range(8)], 1), image_size=16, batch_size=4,
                               shuffle_buffer=8, seed=seed, repeat=True)
        return [int(img[8, 8, 0]) for batch, _ in ds.take(4) for img in batch.numpy()]

    a, b, c = order(0), order(0), order(1)
    assert a == b and a != c
    assert sorted(a[:8]) == list(range(8)) and sorted(a[8:]) == list(range(8))  # each epoch sees every image
    assert a[:8] != a[8:]  # and reshuffles


def test_sanitize_boxes_clips_drops_and_compacts():
    boxes = tf.constant([[[-5.0, -5, 10, 10], [60, 60, 80, 80], [3, 3, 3.5, 9], [1, 1, 2, 2]]])
    labels = tf.constant([[0, 1, 2, -1]])
    b, lab = sanitize_boxes(boxes, labels, 64, 64, min_size=1.0)
    assert lab.numpy().tolist() == [[0, 1, -1, -1]]
    np.testing.assert_allclose(b.numpy()[0, :2], [[0, 0, 10, 10], [60, 60, 64, 64]])
    np.testing.assert_array_equal(b.numpy()[0, 2:], 0.0)


def test_prepare_validates():
    with pytest.raises(ValueError, match="batch_size"):
        kdet.data.prepare(_examples([(8, 8)], 1), augmenter=lambda x, y: (x, y), batch_size=None)
    with pytest.raises(ValueError, match="resize_mode"):
        kdet.data.prepare(_examples([(8, 8)], 1), resize_mode="fit")
    with pytest.raises(ValueError, match="max_boxes"):
        pad_targets({"boxes": [[0.0, 0, 1, 1]], "labels": [0]}, max_boxes=0)


def _mask_examples(sizes):
    """Images with one rectangle mask each (rows 2..5, cols 1..4 shifted by k) and a matching box."""
    def gen():
        for k, (h, w) in enumerate(sizes):
            masks = np.zeros((2, h, w), np.uint8)
            masks[0, 2:6, 1 + k:5 + k] = 1
            masks[1, 0:2, 0:3] = 1
            boxes = np.array([[1 + k, 2, 5 + k, 6], [0, 0, 3, 2]], np.float32)
            yield np.full((h, w, 3), k, np.uint8), {"boxes": boxes, "labels": np.array([0, 1], np.int32),
                                                     "masks": masks}

    return tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, None, 3), tf.uint8),
        {"boxes": tf.TensorSpec((None, 4), tf.float32), "labels": tf.TensorSpec((None,), tf.int32),
         "masks": tf.TensorSpec((None, None, None), tf.uint8)}))


def test_masks_are_padded_truncated_and_batched_with_the_boxes(caplog):
    out = pad_targets({"boxes": [[0.0, 0, 4, 4]], "labels": [3], "masks": np.ones((1, 5, 6), np.uint8)},
                      max_boxes=3)
    assert out["masks"].shape == (3, 5, 6) and out["masks"].dtype == tf.uint8
    assert out["masks"].numpy()[0].all() and not out["masks"].numpy()[1:].any()
    with caplog.at_level(logging.WARNING, logger="kdet.data"):
        images, y = next(iter(kdet.data.prepare(_mask_examples([(8, 10), (12, 7)]), batch_size=2, max_boxes=1)))
    # No image_size: images and masks are zero-padded bottom/right to the batch's largest; masks stay exact.
    assert images.shape == (2, 12, 10, 3) and y["masks"].shape == (2, 1, 12, 10)
    want = np.zeros((2, 12, 10), np.uint8)
    want[0, 2:6, 1:5] = 1
    want[1, 2:6, 2:6] = 1
    np.testing.assert_array_equal(y["masks"].numpy()[:, 0], want)  # the second row was truncated with its box


def test_letterbox_resizes_masks_like_the_image():
    image = np.zeros((40, 80, 3), np.uint8)
    image[10:20, 30:50] = 255
    masks = (image[None, ..., 0] > 0).astype(np.uint8)
    targets = {"boxes": [[30.0, 10, 50, 20]], "labels": [0], "masks": masks}
    out_image, out = resize(image, targets, 64, "letterbox", fill_value=0)
    mask = out["masks"].numpy()[0]
    ys, xs = np.nonzero(mask)
    np.testing.assert_array_equal([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [24, 24, 40, 32])
    np.testing.assert_array_equal(mask == 1, out_image.numpy()[..., 0] > 127)
    # A fill value of 1 must not leak into the masks' padding.
    _, out = resize(image, {"boxes": [[0.0, 0, 80, 40]], "labels": [0], "masks": np.ones((1, 40, 80), np.uint8)},
                    64, "letterbox", fill_value=1.0)
    assert out["masks"].numpy()[0, :16].max() == 0 and out["masks"].numpy()[0, 16:48].min() == 1
    # No objects: (0, H, W) masks resize to (0, h, w).
    _, empty = resize(image, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int32),
                              "masks": np.zeros((0, 40, 80), np.uint8)}, 64)
    assert empty["masks"].shape == (0, 64, 64)


def test_sanitize_boxes_moves_masks_with_their_rows():
    boxes = tf.constant([[[-5.0, -5, 10, 10], [3, 3, 3.5, 9], [60, 60, 80, 80]]])
    masks = np.stack([np.full((4, 4), k + 1, np.uint8) for k in range(3)])[None]
    b, lab, m = sanitize_boxes(boxes, tf.constant([[0, 2, 1]]), 64, 64, min_size=1.0, masks=masks)
    assert lab.numpy().tolist() == [[0, 1, -1]]
    assert [int(v) for v in m.numpy()[0, :, 0, 0]] == [1, 3, 0]
