"""XLA-compilable area resize and crop-and-resize for the MTCNN cascade.

``tf.image.resize(..., method="area")`` (ResizeArea) and
``tf.image.crop_and_resize`` (CropAndResize) have no XLA kernels, yet the
cascade must compile with ``jit_compile=True``. These re-implementations
reproduce the TensorFlow kernels' semantics (``resize_area_op.cc`` and
``crop_and_resize_op.cc``) with gathers and static shapes; the tests compare
them with the originals.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def _area_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Banded (out_size, K) input indices and weights of TF's ResizeArea along one axis."""
    scale = in_size / out_size
    taps = int(math.ceil(scale)) + 1
    index = np.zeros((out_size, taps), np.int32)
    weight = np.zeros((out_size, taps), np.float32)
    for o in range(out_size):
        start, end = o * scale, (o + 1) * scale
        for t, i in enumerate(range(int(math.floor(start)), int(math.ceil(end)))):
            index[o, t] = min(i, in_size - 1)
            weight[o, t] = (min(i + 1, end) - max(i, start)) / scale
    return index, weight


def area_resize(images, size: tuple[int, int]):
    """Resizes (B, H, W, C) images with static H, W to ``size`` by area averaging.

    Same result as ``tf.image.resize(images, size, method="area")`` (to float
    rounding), but XLA-compilable: each axis is a banded weighted gather.

    Args:
        images: (B, H, W, C) float tensor with static H and W.
        size: (out_height, out_width) Python ints.

    Returns:
        (B, out_height, out_width, C) float32 tensor.

    Example:
        >>> area_resize(tf.ones((1, 10, 10, 3)), (5, 5)).shape
        TensorShape([1, 5, 5, 3])
    """
    images = tf.cast(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return images
    iy, wy = _area_weights(height, out_h)
    ix, wx = _area_weights(width, out_w)
    rows = tf.gather(images, iy, axis=1)                      # (B, out_h, Ky, W, C)
    rows = tf.einsum("bokwc,ok->bowc", rows, tf.constant(wy))
    cols = tf.gather(rows, ix, axis=2)                        # (B, out_h, out_w, Kx, C)
    return tf.einsum("bhokc,ok->bhoc", cols, tf.constant(wx))


def crop_and_resize(images, boxes, box_indices, crop_size: tuple[int, int],
                    extrapolation_value: float = 0.0):
    """Bilinear crops of normalised boxes, like ``tf.image.crop_and_resize``.

    Args:
        images: (B, H, W, C) float tensor with static H and W.
        boxes: (N, 4) normalised ``[y1, x1, y2, x2]``; coordinate ``y1 * (H - 1)``
            is the pixel row, as in TensorFlow.
        box_indices: (N,) int32 image index of each box.
        crop_size: (crop_height, crop_width) Python ints.
        extrapolation_value: value of samples outside the image.

    Returns:
        (N, crop_height, crop_width, C) float32 tensor.

    Example:
        >>> crop_and_resize(tf.ones((1, 8, 8, 3)), [[0., 0, 1, 1]], [0], (4, 4)).shape
        TensorShape([1, 4, 4, 3])
    """
    images = tf.cast(images, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ch, cw = int(crop_size[0]), int(crop_size[1])
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    in_y = _sample_coords(y1, y2, height, ch)                  # (N, ch)
    in_x = _sample_coords(x1, x2, width, cw)                   # (N, cw)
    inside = ((in_y >= 0) & (in_y <= height - 1))[:, :, None] & (
        (in_x >= 0) & (in_x <= width - 1))[:, None, :]
    top = tf.floor(in_y)
    left = tf.floor(in_x)
    dy = (in_y - top)[:, :, None, None]
    dx = (in_x - left)[:, None, :, None]
    # Integer rows/columns clamped into the image; outside samples are replaced below.
    def clamp(v, hi):
        return tf.clip_by_value(tf.cast(v, tf.int32), 0, hi - 1)

    top_i, bot_i = clamp(top, height), clamp(tf.math.ceil(in_y), height)
    left_i, right_i = clamp(left, width), clamp(tf.math.ceil(in_x), width)
    flat = tf.reshape(images, (-1, channels))
    base = tf.cast(box_indices, tf.int32)[:, None, None] * (height * width)

    def sample(rows, cols):
        return tf.gather(flat, base + rows[:, :, None] * width + cols[:, None, :])

    top_v = sample(top_i, left_i) + (sample(top_i, right_i) - sample(top_i, left_i)) * dx
    bot_v = sample(bot_i, left_i) + (sample(bot_i, right_i) - sample(bot_i, left_i)) * dx
    value = top_v + (bot_v - top_v) * dy
    return tf.where(inside[..., None], value, extrapolation_value)


def _sample_coords(c1, c2, size: int, crop: int):
    """Input-pixel coordinates of the crop's samples along one axis (TF's formula)."""
    if crop > 1:
        scale = (c2 - c1) * (size - 1) / (crop - 1)
        steps = tf.range(crop, dtype=tf.float32)
        return c1[:, None] * (size - 1) + steps[None, :] * scale[:, None]
    return (0.5 * (c1 + c2) * (size - 1))[:, None]
