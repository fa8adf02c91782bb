"""kdet.ops.paste_masks against a NumPy transliteration of torchvision's paste_masks_in_image.

The reference below follows torchvision/models/detection/roi_heads.py
(expand_boxes, expand_masks, paste_mask_in_image, paste_masks_in_image) line
by line, with PyTorch's CPU ``upsample_bilinear2d`` (align_corners=False) in
float32, one detection at a time. The Mask R-CNN fixture adds torchvision's
own pasted masks as an oracle.
"""

import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import paste_masks
from kdet.ops.boxes import convert_format

F32 = np.float32


def _source_index(in_size, out_size):
    """PyTorch compute_source_index_and_lambda (align_corners=False, linear), float32."""
    j = np.arange(out_size)
    if in_size == out_size:  # PyTorch copies when the size does not change
        return j, j, np.ones(out_size, F32), np.zeros(out_size, F32)
    scale = F32(in_size) / F32(out_size)
    src = np.maximum(scale * (j.astype(F32) + F32(0.5)) - F32(0.5), F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lambda1 = np.clip(src - i0.astype(F32), 0, 1).astype(F32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (F32(1) - lambda1).astype(F32), lambda1


def _interpolate_bilinear(mask, out_h, out_w):
    """F.interpolate(mask[None, None], (out_h, out_w), mode="bilinear", align_corners=False)[0, 0]."""
    y0, y1, ly0, ly1 = _source_index(mask.shape[0], out_h)
    x0, x1, lx0, lx1 = _source_index(mask.shape[1], out_w)
    top = lx0[None] * mask[y0][:, x0] + lx1[None] * mask[y0][:, x1]
    bottom = lx0[None] * mask[y1][:, x0] + lx1[None] * mask[y1][:, x1]
    return (ly0[:, None] * top + ly1[:, None] * bottom).astype(F32)


def _expand_boxes(boxes, scale):
    w_half = (boxes[:, 2] - boxes[:, 0]) * F32(0.5)
    h_half = (boxes[:, 3] - boxes[:, 1]) * F32(0.5)
    x_c = (boxes[:, 2] + boxes[:, 0]) * F32(0.5)
    y_c = (boxes[:, 3] + boxes[:, 1]) * F32(0.5)
    w_half = w_half * F32(scale)
    h_half = h_half * F32(scale)
    return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).astype(F32)


def _paste_mask_in_image(mask, box, im_h, im_w):
    w = max(int(box[2] - box[0] + 1), 1)
    h = max(int(box[3] - box[1] + 1), 1)
    mask = _interpolate_bilinear(mask, h, w)
    im_mask = np.zeros((im_h, im_w), F32)
    x_0, x_1 = max(box[0], 0), min(box[2] + 1, im_w)
    y_0, y_1 = max(box[1], 0), min(box[3] + 1, im_h)
    if x_1 > x_0 and y_1 > y_0:  # torch's empty slice assignment is a no-op
        im_mask[y_0:y_1, x_0:x_1] = mask[y_0 - box[1]:y_1 - box[1], x_0 - box[0]:x_1 - box[0]]
    return im_mask


def reference_paste(masks, boxes, im_h, im_w, padding=1):
    """torchvision paste_masks_in_image for (K, M, M) masks and (K, 4) float32 xyxy boxes."""
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = np.pad(masks.astype(F32), ((0, 0), (padding, padding), (padding, padding)))
    boxes = np.trunc(_expand_boxes(boxes.astype(F32), scale)).astype(np.int64)  # .to(torch.int64)
    out = [_paste_mask_in_image(mk, b, im_h, im_w) for mk, b in zip(padded, boxes)]
    return np.stack(out) if out else np.zeros((0, im_h, im_w), F32)


def _random_case(rng, k, height, width, grid=28):
    """Probabilities and boxes: inside, crossing the border, tiny (< 1 px), integer and degenerate."""
    masks = rng.random((k, grid, grid)).astype(F32)
    x1 = rng.uniform(-20, width, k)
    y1 = rng.uniform(-20, height, k)
    w = np.exp(rng.uniform(-1.5, np.log(width), k))
    h = np.exp(rng.uniform(-1.5, np.log(height), k))
    boxes = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(F32)
    boxes[: k // 4] = np.round(boxes[: k // 4])                        # integer corners: exact ties
    boxes[k // 4: k // 4 + 2, 2] = boxes[k // 4: k // 4 + 2, 0] - 0.5  # x2 < x1: nothing pasted
    return masks, boxes


@pytest.mark.parametrize("seed,height,width", [(0, 48, 64), (1, 61, 37), (2, 100, 100)])
def test_matches_the_torchvision_reference(seed, height, width):
    rng = np.random.default_rng(seed)
    masks, boxes = _random_case(rng, 40, height, width)
    want = reference_paste(masks, boxes, height, width)
    got = paste_masks(masks[None], boxes[None], height, width).numpy()[0]
    assert got.shape == (40, height, width) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    # The support (pixels written) is exactly torchvision's: zero outside the integer box.
    support = np.stack([_paste_mask_in_image(np.ones((30, 30), F32), b, height, width) > 0
                        for b in np.trunc(_expand_boxes(boxes, 30 / 28)).astype(np.int64)])
    assert np.all(got[~support] == 0)
    binary = paste_masks(masks[None], boxes[None], height, width, threshold=0.5).numpy()[0]
    assert binary.dtype == np.uint8
    decided = np.abs(want - 0.5) > 1e-5
    np.testing.assert_array_equal(binary[decided], (want > 0.5)[decided])


def test_other_grid_sizes_padding_and_box_formats():
    rng = np.random.default_rng(5)
    masks, boxes = _random_case(rng, 12, 50, 70, grid=14)
    want = reference_paste(masks, boxes, 50, 70, padding=2)
    np.testing.assert_allclose(paste_masks(masks[None], boxes[None], 50, 70, padding=2).numpy()[0], want, atol=2e-6)
    xywh = convert_format(boxes, "xyxy", "xywh").numpy()
    got = paste_masks(masks[None], xywh[None], 50, 70, padding=2, bounding_box_format="xywh").numpy()[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_batches_and_xla_compile_with_static_shapes():
    rng = np.random.default_rng(7)
    m1, b1 = _random_case(rng, 6, 40, 52)
    m2, b2 = _random_case(rng, 6, 40, 52)
    masks, boxes = np.stack([m1, m2]), np.stack([b1, b2])
    eager = paste_masks(masks, boxes, 40, 52).numpy()
    np.testing.assert_allclose(eager[1], reference_paste(m2, b2, 40, 52), atol=2e-6)

    @tf.function(jit_compile=True)
    def compiled(m, b):
        return paste_masks(m, b, 40, 52, threshold=0.5)

    out = compiled(tf.constant(masks), tf.constant(boxes))
    assert out.shape == (2, 6, 40, 52)
    decided = np.abs(eager - 0.5) > 1e-5
    np.testing.assert_array_equal(out.numpy()[decided], (eager > 0.5)[decided])

    @tf.function(jit_compile=True)
    def from_image(images, m, b):  # size read from the image tensor, as inside a detector
        shape = tf.shape(images)
        return paste_masks(m, b, shape[1], shape[2])

    np.testing.assert_allclose(from_image(tf.zeros((2, 40, 52, 3)), masks, boxes).numpy(), eager, atol=1e-6)


def test_matches_torchvision_maskrcnn_fixture(shared_dir):
    """torchvision's own pasted masks (maskrcnn_resnet50_fpn on dog.jpg, 576 x 768).

    The fixture's mask_logits belong to mask_boxes_resized (800 x 1066 network
    pixels); torchvision pastes sigmoid(logits) at the same detections' boxes in
    image pixels (det_boxes = mask_boxes_resized * 576/800, 768/1066) and
    thresholds at 0.5: det_masks_first5.
    """
    ref = np.load(shared_dir / "fixtures" / "torchvision_more" / "maskrcnn_resnet50_fpn" / "reference.npz")
    height, width = ref["image_uint8"].shape[:2]
    boxes = ref["det_boxes"][:5]
    ratio = np.array([width / 1066, height / 800] * 2, F32)  # spec.json transform: resized_hw (800, 1066)
    np.testing.assert_allclose(ref["mask_boxes_resized"][:5] * ratio, boxes, rtol=1e-5)
    probabilities = tf.sigmoid(ref["mask_logits"][:5])
    got = paste_masks(probabilities[None], boxes[None], height, width, threshold=0.5).numpy()[0]
    want = ref["det_masks_first5"]
    assert want.sum() > 0
    np.testing.assert_array_equal(got, want)


def test_bad_inputs_raise_value_errors():
    masks = np.zeros((1, 2, 28, 28), F32)
    boxes = np.zeros((1, 2, 4), F32)
    with pytest.raises(ValueError, match=r"masks must have shape \(batch, detections, M, M\); received \(2, 28, 28\)"):
        paste_masks(masks[0], boxes, 10, 10)
    with pytest.raises(ValueError, match="received \\(1, 2, 28, 14\\)"):
        paste_masks(masks[..., :14], boxes, 10, 10)
    with pytest.raises(ValueError, match=r"boxes must have shape \(batch, detections, 4\)"):
        paste_masks(masks, boxes[0], 10, 10)
    with pytest.raises(ValueError, match="threshold"):
        paste_masks(masks, boxes, 10, 10, threshold=1.5)
    with pytest.raises(ValueError, match="height must be a positive integer; received 0"):
        paste_masks(masks, boxes, 0, 10)
