"""Augmenter: boxes stay on their pixels, leave-the-image boxes are clipped or dropped, seeds repeat."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import kdet.data
from kdet.data.augment import Augmenter

SIZE = 64
NO_COLOUR = dict(brightness=None, contrast=None, saturation=None, hue=None, gamma=None)


def _rectangles(boxes):
    """Images with a white filled rectangle per valid box, one image per row of boxes."""
    images = np.zeros((len(boxes), SIZE, SIZE, 3), np.float32)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = box
        images[i, y1:y2, x1:x2] = 255.0
    return images


def _tight_box(image, threshold=127.0):
    ys, xs = np.nonzero(image[..., 0] > threshold)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


box_strategy = st.tuples(st.integers(2, 40), st.integers(2, 40), st.integers(10, 22), st.integers(10, 22)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))

GEOMETRIC = {
    "flip": dict(flip="horizontal_and_vertical"),
    "translate": dict(flip=None, translate=0.2),
    "zoom": dict(flip=None, zoom=0.3),
    "scale": dict(flip=None, scale=(0.6, 1.5)),
    "rotate": dict(flip=None, rotate=0.08),
    "crop": dict(flip=None, image_size=SIZE, crop=0.75),
}
# Bilinear resampling blurs edges by about a pixel; rotation and zoom in addition round
# corners through interpolation. The tolerance is in pixels of the 64 x 64 image.
TOLERANCE = {"flip": 0.01, "translate": 1.5, "zoom": 2.0, "scale": 2.0, "rotate": 2.5, "crop": 2.0}


@pytest.mark.parametrize("kind", sorted(GEOMETRIC))
# No shrinking (each example runs TensorFlow ops; a failure prints its inputs anyway) and a fixed
# example sequence, so CI time stays bounded and failures reproduce.
@settings(max_examples=6, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boxes=st.lists(box_strategy, min_size=4, max_size=4), seed=st.integers(0, 1000))
def test_boxes_stay_on_their_pixels(kind, boxes, seed):
    images = _rectangles(boxes)
    y = {"boxes": tf.constant(np.array(boxes, np.float32)[:, None]), "labels": tf.zeros((4, 1), tf.int32)}
    aug = Augmenter(seed=seed, min_box_size=3.0, fill_value=0.0, **NO_COLOUR, **GEOMETRIC[kind])
    out_images, out = aug(tf.constant(images), y)
    out_images, out_boxes, out_labels = out_images.numpy(), out["boxes"].numpy(), out["labels"].numpy()
    for i in range(4):
        drawn = _tight_box(out_images[i])
        if out_labels[i, 0] < 0:  # dropped: nothing (or only a sliver) of the rectangle is left
            assert drawn is None or min(drawn[2] - drawn[0], drawn[3] - drawn[1]) <= 3.0 + TOLERANCE[kind] * 2
            continue
        assert drawn is not None, f"{kind}: box {out_boxes[i, 0]} kept but no rectangle pixels left"
        np.testing.assert_allclose(out_boxes[i, 0], drawn, atol=TOLERANCE[kind], err_msg=kind)
        assert np.all(out_boxes[i, 0] >= 0) and np.all(out_boxes[i, 0] <= SIZE)


def test_boxes_leaving_the_image_are_clipped_or_dropped_with_labels():
    images = _rectangles([(0, 0, 10, 10)])
    y = {"boxes": tf.constant([[[0.0, 0, 10, 10], [40, 40, 60, 60], [0, 0, 0, 0]]]),
         "labels": tf.constant([[1, 2, -1]])}
    # A translation far enough to push the first box out and clip the second.
    aug = Augmenter(flip=None, translate=(0.3, 0.3), seed=0, **NO_COLOUR)
    aug._geometric[0][1].height_lower = aug._geometric[0][1].height_upper = 0.3
    aug._geometric[0][1].width_lower = aug._geometric[0][1].width_upper = 0.3
    _, out = aug(tf.constant(images), y)
    boxes, labels = out["boxes"].numpy()[0], out["labels"].numpy()[0]
    # 0.3 * 64 = 19.2 px shift: box 1 -> (19.2, 19.2, 29.2, 29.2); box 2 -> (59.2, 59.2, 64, 64) clipped.
    np.testing.assert_allclose(boxes[0], [19.2, 19.2, 29.2, 29.2], atol=1e-3)
    np.testing.assert_allclose(boxes[1], [59.2, 59.2, 64, 64], atol=1e-3)
    assert labels.tolist() == [1, 2, -1]
    aug = Augmenter(flip=None, translate=(0.8, 0.8), seed=0, min_box_size=5.0, **NO_COLOUR)
    layer = aug._geometric[0][1]
    layer.height_lower = layer.height_upper = layer.width_lower = layer.width_upper = 0.8
    _, out = aug(tf.constant(images), y)
    # Box 2 leaves the image and box 1 keeps a 64 - 51.2 = 12.8 px part: box 2 and its label are gone.
    assert out["labels"].numpy()[0].tolist() == [1, -1, -1]
    np.testing.assert_allclose(out["boxes"].numpy()[0, 0], [51.2, 51.2, 61.2, 61.2], atol=1e-3)
    np.testing.assert_array_equal(out["boxes"].numpy()[0, 1:], 0.0)


def test_colour_layers_do_not_move_boxes_and_stay_in_range():
    x, y = kdet.data.synthetic_arrays(4, SIZE, seed=2)
    aug = Augmenter(flip=None, brightness=0.3, contrast=0.3, saturation=(0.2, 0.8), hue=0.1, gamma=(0.5, 2.0),
                    seed=5)
    images, out = aug(tf.constant(x, tf.float32), y)
    np.testing.assert_array_equal(out["boxes"].numpy(), y["boxes"])
    np.testing.assert_array_equal(out["labels"].numpy(), y["labels"])
    images = images.numpy()
    assert images.min() >= 0 and images.max() <= 255 and not np.allclose(images, x)


def test_mosaic_and_mixup_keep_boxes_on_objects():
    x, y = kdet.data.synthetic_arrays(4, SIZE, seed=7, max_objects=2)
    aug = Augmenter(image_size=SIZE, flip=None, mosaic=1.0, seed=3, **NO_COLOUR)
    images, out = aug(tf.constant(x, tf.float32), y)
    assert images.shape == (4, SIZE, SIZE, 3) and out["boxes"].shape == (4, 2, 4)
    labels = out["labels"].numpy()
    assert (labels >= 0).any()
    valid = labels >= 0
    boxes = out["boxes"].numpy()[valid]
    assert np.all(boxes[:, 2] - boxes[:, 0] >= 2) and np.all(boxes[:, 3] - boxes[:, 1] >= 2)
    assert np.all(boxes >= 0) and np.all(boxes <= SIZE)
    # MixUp keeps the boxes of both images (up to the padded rows).
    aug = Augmenter(flip=None, mixup=1.0, seed=3, **NO_COLOUR)
    _, mixed = aug(tf.constant(x, tf.float32), {"boxes": y["boxes"], "labels": y["labels"]})
    assert mixed["labels"].shape == (4, 2)
    own = {tuple(b) for b in y["boxes"][0][y["labels"][0] >= 0].tolist()}
    got = {tuple(b) for b in mixed["boxes"].numpy()[0][mixed["labels"].numpy()[0] >= 0].tolist()}
    assert own & got or len(own) > 2


def test_overflow_after_mosaic_is_reported(caplog):
    kdet.data.truncation_stats(reset=True)
    x, y = kdet.data.synthetic_arrays(4, SIZE, seed=1, max_objects=3, min_size=0.1, max_size=0.2)
    with caplog.at_level(logging.WARNING, logger="kdet.data"):
        Augmenter(image_size=SIZE, flip=None, mixup=1.0, seed=0, **NO_COLOUR)(tf.constant(x, tf.float32), y)
    stats = kdet.data.truncation_stats()
    assert stats["boxes"] > 0 and "max_boxes=3" in caplog.text


def test_same_seed_same_augmentations_in_a_pipeline():
    def batches(seed):
        aug = Augmenter(image_size=SIZE, scale=(0.5, 1.5), rotate=0.05, translate=0.1, mosaic=0.5, mixup=0.5,
                        seed=seed)
        ds = kdet.data.prepare(kdet.data.synthetic("train", 8, SIZE), image_size=SIZE, batch_size=4, max_boxes=6,
                               augmenter=aug)
        return [(i.numpy(), t["boxes"].numpy()) for i, t in ds]

    a, b, c = batches(1), batches(1), batches(2)
    for (ia, ba), (ib, bb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ba, bb)
    assert not np.array_equal(a[0][0], c[0][0])


def test_augmenter_validates_arguments():
    with pytest.raises(ValueError, match="image_size"):
        Augmenter(mosaic=0.5)
    with pytest.raises(ValueError, match="mosaic"):
        Augmenter(image_size=64, mosaic=2.0)
    with pytest.raises(ValueError, match="gamma"):
        Augmenter(gamma=(2.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        Augmenter(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="batches"):
        Augmenter()(tf.zeros((8, 8, 3)), {"boxes": tf.zeros((1, 4)), "labels": tf.zeros((1,), tf.int32)})


def test_other_box_formats_round_trip():
    x, y = kdet.data.synthetic_arrays(2, SIZE, seed=4)
    from kdet.ops.boxes import convert_format

    yxyx = convert_format(y["boxes"], "xyxy", "yxyx").numpy()
    aug_xyxy = Augmenter(flip="horizontal", seed=9, **NO_COLOUR)
    aug_yxyx = Augmenter(flip="horizontal", seed=9, bounding_box_format="yxyx", **NO_COLOUR)
    _, a = aug_xyxy(tf.constant(x, tf.float32), y)
    _, b = aug_yxyx(tf.constant(x, tf.float32), {"boxes": yxyx, "labels": y["labels"]})
    valid = a["labels"].numpy() >= 0
    np.testing.assert_allclose(convert_format(b["boxes"], "yxyx", "xyxy").numpy()[valid],
                               a["boxes"].numpy()[valid], atol=1e-4)


# ------------------------------------------------------------------ masks
def _rectangle_batch(rng, batch=4):
    """White rectangles on black, two per image (left and right half), with their masks."""
    images = np.zeros((batch, SIZE, SIZE, 3), np.float32)
    masks = np.zeros((batch, 3, SIZE, SIZE), np.uint8)  # one padded row
    boxes = np.zeros((batch, 3, 4), np.float32)
    labels = np.full((batch, 3), -1, np.int32)
    for i in range(batch):
        for j, x0 in enumerate((2, SIZE // 2 + 2)):
            w, h = (int(v) for v in rng.integers(8, SIZE // 2 - 6, 2))
            x1, y1 = x0 + int(rng.integers(0, SIZE // 2 - 4 - w)), int(rng.integers(0, SIZE - h))
            images[i, y1:y1 + h, x1:x1 + w] = 255.0
            masks[i, j, y1:y1 + h, x1:x1 + w] = 1
            boxes[i, j] = (x1, y1, x1 + w, y1 + h)
            labels[i, j] = j
    return images, {"boxes": boxes, "labels": labels, "masks": masks}


def _check_masks_on_objects(images, out, tolerance, min_union_iou=0.85):
    masks, boxes, labels = out["masks"].numpy(), out["boxes"].numpy(), out["labels"].numpy()
    assert masks.dtype == np.uint8 and masks.shape[:2] == labels.shape
    assert not masks[labels < 0].any()  # dropped and padded rows carry no mask
    for i in range(len(images)):
        white = images[i, ..., 0] > 127
        for box, mask in zip(boxes[i][labels[i] >= 0], masks[i][labels[i] >= 0]):
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue  # a sliver whose pixels all fell between samples
            # The mask lies on its object's pixels and inside its box.
            assert white[mask == 1].mean() >= 0.9
            assert xs.min() >= box[0] - tolerance and xs.max() + 1 <= box[2] + tolerance
            assert ys.min() >= box[1] - tolerance and ys.max() + 1 <= box[3] + tolerance
        union = masks[i].max(0) == 1
        if white.sum() > 40:  # what the pixels show is covered by the masks
            assert (union & white).sum() / (union | white).sum() >= min_union_iou


@pytest.mark.parametrize("kind", sorted(GEOMETRIC))
@pytest.mark.parametrize("seed", [0, 1])
def test_masks_move_with_their_boxes(kind, seed):
    images, y = _rectangle_batch(np.random.default_rng(seed))
    aug = Augmenter(seed=seed, min_box_size=3.0, fill_value=0.0, **NO_COLOUR, **GEOMETRIC[kind])
    out_images, out = aug(tf.constant(images), y)
    out_images = out_images.numpy()
    _check_masks_on_objects(out_images, out, TOLERANCE[kind] + 1.0)
    if kind == "flip":  # exact: the mask is the flipped rectangle and its box the mask's tight box
        masks, boxes = out["masks"].numpy()[:, :2], out["boxes"].numpy()[:, :2]
        for mask, box in zip(masks.reshape(-1, SIZE, SIZE), boxes.reshape(-1, 4)):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_masks_survive_a_fill_value_of_one():
    # The pixel value that marks masks inside Keras' layers must differ from the fill value.
    images, y = _rectangle_batch(np.random.default_rng(3))
    aug = Augmenter(seed=4, fill_value=1.0, flip=None, translate=0.3, **NO_COLOUR)
    out_images, out = aug(tf.constant(images), y)
    _check_masks_on_objects(out_images.numpy(), out, TOLERANCE["translate"] + 1.0)


def test_mosaic_and_mixup_move_masks():
    images, y = _rectangle_batch(np.random.default_rng(5))
    out_images, out = Augmenter(image_size=SIZE, flip=None, mosaic=1.0, seed=3, **NO_COLOUR)(tf.constant(images), y)
    assert out["masks"].shape == (4, 3, SIZE, SIZE)
    _check_masks_on_objects(out_images.numpy(), out, 2.0, min_union_iou=0.5)  # 3 rows: some objects truncated
    wide = Augmenter(image_size=SIZE, flip=None, mosaic=1.0, seed=3, **NO_COLOUR)
    padded = {k: np.pad(v, [(0, 0), (0, 5)] + [(0, 0)] * (v.ndim - 2), constant_values=-1 if k == "labels" else 0)
              for k, v in y.items()}
    out_images, out = wide(tf.constant(images), padded)  # 8 rows: every object of the mosaic fits
    _check_masks_on_objects(out_images.numpy(), out, 2.0)
    # MixUp keeps both images' objects with their masks, unchanged.
    _, mixed = Augmenter(flip=None, mixup=1.0, seed=3, **NO_COLOUR)(tf.constant(images), padded)
    pairs = {(tuple(b), m.tobytes()) for b, m, lab in zip(y["boxes"].reshape(-1, 4), y["masks"].reshape(-1, SIZE, SIZE),
                                                           y["labels"].reshape(-1)) if lab >= 0}
    labels = mixed["labels"].numpy()
    got = [(tuple(b), m.tobytes()) for b, m in zip(mixed["boxes"].numpy()[labels >= 0],
                                                   mixed["masks"].numpy()[labels >= 0])]
    assert len(got) > 8 and all(p in pairs for p in got)


def test_pipeline_with_masks_repeats_for_a_seed():
    def batches(seed):
        aug = Augmenter(image_size=SIZE, scale=(0.5, 1.5), rotate=0.05, mosaic=0.5, mixup=0.5, seed=seed)
        ds = kdet.data.prepare(kdet.data.synthetic("train", 8, SIZE, masks=True), image_size=SIZE, batch_size=4,
                               max_boxes=6, augmenter=aug)
        return [(t["boxes"].numpy(), t["masks"].numpy()) for _, t in ds]

    a, b = batches(1), batches(1)
    for (ba, ma), (bb, mb) in zip(a, b):
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(ma, mb)
        assert ma.shape == (4, 6, SIZE, SIZE)
