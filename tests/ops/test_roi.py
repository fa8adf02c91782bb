"""RoIAlign / RoIPool against straightforward NumPy references of torchvision's CPU kernels."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.ops.roi import (assign_levels, multilevel_roi_align, multilevel_roi_pool, roi_align, roi_align_indexed,
                          roi_pool)


def _bilinear(f, y, x):
    """torchvision's bilinear_interpolate, one sample, f (H, W, C)."""
    height, width = f.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(f.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * f[y_low, x_low] + hy * lx * f[y_low, x_high]
            + ly * hx * f[y_high, x_low] + ly * lx * f[y_high, x_high])


def ref_roi_align(f, box, pooled, scale, ratio, aligned):
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * scale - off for v in box)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    pooled_h, pooled_w = (pooled, pooled) if isinstance(pooled, int) else pooled
    bh, bw = rh / pooled_h, rw / pooled_w
    out = np.zeros((pooled_h, pooled_w, f.shape[-1]))
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            acc = 0.0
            for iy in range(ratio):
                y = y1 + ph * bh + (iy + 0.5) * bh / ratio
                for ix in range(ratio):
                    x = x1 + pw * bw + (ix + 0.5) * bw / ratio
                    acc = acc + _bilinear(f, y, x)
            out[ph, pw] = acc / (ratio * ratio)
    return out


def _c_round(v):
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def ref_roi_pool(f, box, pooled, scale):
    height, width = f.shape[:2]
    x1, y1, x2, y2 = (_c_round(v * scale) for v in box)
    rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    bh, bw = rh / pooled, rw / pooled
    out = np.zeros((pooled, pooled, f.shape[-1]))
    for ph in range(pooled):
        for pw in range(pooled):
            hs = min(max(math.floor(ph * bh) + y1, 0), height)
            he = min(max(math.ceil((ph + 1) * bh) + y1, 0), height)
            ws = min(max(math.floor(pw * bw) + x1, 0), width)
            we = min(max(math.ceil((pw + 1) * bw) + x1, 0), width)
            if he <= hs or we <= ws:
                continue
            out[ph, pw] = f[hs:he, ws:we].reshape(-1, f.shape[-1]).max(axis=0)
    return out


def _random_boxes(rng, n, size):
    """Random boxes incl. ones crossing the borders, fully outside, tiny and degenerate."""
    xy = rng.uniform(-0.2 * size, 1.1 * size, (n, 2))
    wh = rng.uniform(0.0, 0.7 * size, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    special = np.array([
        [0, 0, size, size],            # the whole image
        [-5, -5, 3, 3],                # crossing the top-left corner
        [size - 2, size - 2, size + 8, size + 8],  # crossing the bottom-right corner
        [7.3, 7.3, 7.3, 7.3],          # a point (degenerate)
        [10, 4, 10, 20],               # zero width
        [12, 12, 5, 5],                # x2 < x1 (malformed)
        [size + 20, size + 20, size + 40, size + 50],  # fully outside
        [-30, -30, -20, -20],
    ], np.float64)
    return np.concatenate([boxes, special]).astype(np.float32)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale,ratio,pooled", [(1.0, 2, 3), (0.25, 2, 7), (0.5, 1, 2), (0.125, 3, 4)])
def test_roi_align_matches_reference(aligned, scale, ratio, pooled):
    rng = np.random.default_rng(int(scale * 100) + ratio + 10 * aligned)
    feats = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    size = int(10 / scale)
    boxes = np.stack([_random_boxes(rng, 12, size), _random_boxes(rng, 12, size)])
    got = roi_align(tf.constant(feats), tf.constant(boxes), pooled, scale, ratio, aligned).numpy()
    for b in range(2):
        for r in range(boxes.shape[1]):
            want = ref_roi_align(feats[b].astype(np.float64), boxes[b, r], pooled, scale, ratio, aligned)
            np.testing.assert_allclose(got[b, r], want, atol=1e-5, rtol=1e-5, err_msg=f"{b} {r} {boxes[b, r]}")


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_indexed_reads_each_rois_own_map(aligned):
    """Mask R-CNN's targets: RoI r pools map image_index[r] (uint8 masks read as such, averaged in float32)."""
    rng = np.random.default_rng(3 + aligned)
    masks = (rng.uniform(size=(5, 12, 9, 1)) > 0.5).astype(np.uint8)
    boxes = _random_boxes(rng, 10, 10)
    index = rng.integers(0, 5, len(boxes))
    got = roi_align_indexed(tf.constant(masks), boxes, index, (4, 3), 2, aligned).numpy()
    assert got.shape == (len(boxes), 4, 3, 1) and got.dtype == np.float32
    for r in range(len(boxes)):
        want = ref_roi_align(masks[index[r]].astype(np.float64), boxes[r], (4, 3), 1.0, 2, aligned)
        np.testing.assert_allclose(got[r], want, atol=1e-6, err_msg=f"{r} {boxes[r]}")
    with pytest.raises(ValueError, match=r"boxes \(R, 4\)"):
        roi_align_indexed(tf.constant(masks), boxes[None], index, 4)


@pytest.mark.parametrize("scale,pooled", [(1.0, 3), (0.25, 7), (0.5, 2), (1 / 3, 4)])
def test_roi_pool_matches_reference(scale, pooled):
    rng = np.random.default_rng(int(scale * 100) + pooled)
    feats = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    size = int(10 / scale)
    boxes = np.stack([_random_boxes(rng, 12, size), _random_boxes(rng, 12, size)])
    got = roi_pool(tf.constant(feats), tf.constant(boxes), pooled, scale).numpy()
    for b in range(2):
        for r in range(boxes.shape[1]):
            want = ref_roi_pool(feats[b].astype(np.float64), boxes[b, r], pooled, scale)
            np.testing.assert_allclose(got[b, r], want, atol=1e-5, err_msg=f"{b} {r} {boxes[b, r]}")


def test_multilevel_reads_each_rois_level():
    rng = np.random.default_rng(3)
    f0 = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
    f1 = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    boxes = rng.uniform(0, 50, (2, 6, 4)).astype(np.float32)
    boxes[..., 2:] += boxes[..., :2]
    levels = rng.integers(0, 2, (2, 6)).astype(np.int32)
    for op, ref in ((multilevel_roi_align, lambda f, b, s: ref_roi_align(f, b, 3, s, 2, False)),
                    (multilevel_roi_pool, lambda f, b, s: ref_roi_pool(f, b, 3, s))):
        got = op([tf.constant(f0), tf.constant(f1)], tf.constant(boxes), tf.constant(levels), [0.25, 0.125], 3)
        for b in range(2):
            for r in range(6):
                f, s = (f0, 0.25) if levels[b, r] == 0 else (f1, 0.125)
                np.testing.assert_allclose(got[b, r].numpy(), ref(f[b].astype(np.float64), boxes[b, r], s),
                                           atol=1e-5)


def test_roi_ops_compile_with_xla_and_any_batch():
    rng = np.random.default_rng(0)
    feats = [tf.constant(rng.normal(size=(3, 8, 8, 2)), tf.float32), tf.constant(rng.normal(size=(3, 4, 4, 2)),
                                                                                   tf.float32)]
    boxes = tf.constant(rng.uniform(0, 30, (3, 5, 4)), tf.float32)
    levels = tf.constant(rng.integers(0, 2, (3, 5)), tf.int32)
    for op in (multilevel_roi_align, multilevel_roi_pool):
        eager = op(feats, boxes, levels, [0.25, 0.125], 2)
        xla = tf.function(lambda f0, f1, b, l, op=op: op([f0, f1], b, l, [0.25, 0.125], 2), jit_compile=True)
        np.testing.assert_allclose(xla(*feats, boxes, levels).numpy(), eager.numpy(), atol=1e-5)
        one = xla(feats[0][:1], feats[1][:1], boxes[:1], levels[:1]).numpy()
        np.testing.assert_allclose(one, eager.numpy()[:1], atol=1e-5)


def test_roi_align_gradient_flows_to_features():
    feats = tf.Variable(tf.random.normal((1, 6, 6, 2)))
    with tf.GradientTape() as tape:
        out = roi_align(feats, tf.constant([[[0.5, 0.5, 4.0, 5.0]]]), 2, 1.0, 2)
        loss = tf.reduce_sum(out)
    grad = tape.gradient(loss, feats).numpy()
    # Each output is the mean of 4 bilinear samples: total gradient mass = 2 * 2 * 2 channels.
    assert grad.sum() == pytest.approx(8.0, rel=1e-5)


def test_assign_levels_matches_fpn_equation():
    sides = np.array([10, 111, 112, 223.9, 224, 448, 2000], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    got = assign_levels(tf.constant(boxes), 2, 5).numpy() + 2
    want = np.clip(np.floor(4 + np.log2(sides / 224.0) + 1e-6), 2, 5)
    np.testing.assert_array_equal(got, want)
    assert got.tolist() == [2, 2, 3, 3, 4, 5, 5]


def test_bad_inputs_are_rejected():
    f = tf.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="boxes must have shape"):
        roi_align(f, tf.zeros((1, 4)))
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(f, tf.zeros((1, 1, 4)), sampling_ratio=0)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(f, tf.zeros((1, 1, 4)), output_size=0)
    with pytest.raises(ValueError, match="spatial_scales"):
        multilevel_roi_align([f, f], tf.zeros((1, 1, 4)), tf.zeros((1, 1), tf.int32), [1.0])
