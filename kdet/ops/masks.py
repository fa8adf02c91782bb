"""Instance masks: pasting fixed-size box masks into image pixels, as pure TensorFlow.

Mask R-CNN (He et al. 2017, "Mask R-CNN", section 3) predicts each detection's
mask as a small ``M x M`` grid (28 x 28) in its box. :func:`paste_masks` puts
those grids into the pixels of the image with the exact rules of torchvision's
``paste_masks_in_image`` (``torchvision/models/detection/roi_heads.py``), so
a converted torchvision checkpoint gives torchvision's masks:

1. ``expand_masks``: the grid gets one pixel of zero padding on each side
   (``M + 2``), and ``expand_boxes`` scales each box about its centre by
   ``(M + 2) / M`` so that the original grid still covers the original box.
2. The expanded box corners are truncated to integers (``.to(torch.int64)``),
   and the padded grid is resized bilinearly (``align_corners=False``, no
   antialiasing) to ``(y2 - y1 + 1, x2 - x1 + 1)`` pixels: the box covers its
   corner pixels on both ends.
3. That patch is written at ``(x1, y1)``; what falls outside the image is cut.
   (A box entirely above or left of the image pastes nothing here; torchvision
   never meets one, as it clips boxes to the image first, and its slicing
   would wrap around for it.)

Implementation: the bilinear resize separates into a row and a column
interpolation, each a ``(pixels, M + 2)`` weight matrix with two non-zero
entries per row (zero rows outside the box), so the whole paste is two batched
matmuls ``Wy @ (grid @ Wx^T)``: static shapes, no loop over detections, XLA
and LiteRT friendly. The column pass runs first, as PyTorch's kernel
interpolates along the width first; the sums then add the same two products.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kdet.ops.boxes import convert_format
from kdet.validation import check_positive_int, check_probability

#: Zero padding around the predicted grid (torchvision ``paste_masks_in_image(padding=1)``).
MASK_PADDING = 1


def expand_boxes(boxes, scale: float):
    """Scales xyxy boxes about their centres (torchvision ``expand_boxes``, float32).

    Args:
        boxes: (..., 4) xyxy boxes.
        scale: factor applied to the width and the height.

    Returns:
        (..., 4) float32 expanded boxes.
    """
    boxes = tf.cast(boxes, tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    # Same operation order as torchvision, so the float32 results (and the
    # integer corners truncated from them) are the same.
    w_half = (x2 - x1) * 0.5 * tf.constant(scale, tf.float32)
    h_half = (y2 - y1) * 0.5 * tf.constant(scale, tf.float32)
    x_c = (x2 + x1) * 0.5
    y_c = (y2 + y1) * 0.5
    return tf.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=-1)


def _interpolation_weights(start, stop, size: int, grid: int):
    """(..., size, grid) bilinear weights of the image pixels 0..size-1 from a ``grid`` row.

    ``start``/``stop`` (...,) are the integer first and last pixel of the box
    (inclusive). Pixels outside them get all-zero rows. The source index
    follows PyTorch's ``upsample_bilinear2d`` (``align_corners=False``):
    ``src = (grid / n) * (j + 0.5) - 0.5`` clamped at 0, in float32.
    """
    length = tf.maximum(stop - start + 1, 1)
    pixel = tf.range(size, dtype=tf.int32)
    local = pixel - start[..., None]                                       # (..., size)
    inside = (pixel >= start[..., None]) & (pixel <= stop[..., None])
    ratio = tf.cast(grid, tf.float32) / tf.cast(length, tf.float32)
    src = tf.maximum(ratio[..., None] * (tf.cast(local, tf.float32) + 0.5) - 0.5, 0.0)
    low = tf.minimum(tf.cast(src, tf.int32), grid - 1)
    high = tf.minimum(low + 1, grid - 1)
    frac = tf.clip_by_value(src - tf.cast(low, tf.float32), 0.0, 1.0)
    weights = (tf.one_hot(low, grid) * (1.0 - frac)[..., None]
               + tf.one_hot(high, grid) * frac[..., None])
    return tf.where(inside[..., None], weights, 0.0)


def paste_masks(masks, boxes, height, width, threshold: float | None = None,
                bounding_box_format: str = "xyxy", padding: int = MASK_PADDING):
    """Pastes per-detection mask grids into image pixels (torchvision ``paste_masks_in_image``).

    Args:
        masks: (B, K, M, M) mask probabilities of each detection in its box
            (the ``"masks"`` output of an instance-segmentation detector).
        boxes: (B, K, 4) boxes in ``bounding_box_format``, in the pixels of the
            image the masks are pasted into.
        height, width: size of that image (Python ints give static shapes).
        threshold: None returns the pasted probabilities (float32); a number
            returns ``uint8`` masks ``probability > threshold`` (torchvision's
            users and COCO evaluation use 0.5).
        bounding_box_format: format of ``boxes`` (any ``keras.utils.bounding_boxes`` format).
        padding: zero padding around the grid (torchvision: 1).

    Returns:
        (B, K, height, width) float32 probabilities, or uint8 {0, 1} masks
        when ``threshold`` is given. Padded detection rows paste whatever their
        box and grid hold; select the valid rows with ``num_detections``.

    Example:
        >>> masks = tf.ones((1, 1, 28, 28))
        >>> out = paste_masks(masks, [[[10., 20., 40., 60.]]], 100, 120, threshold=0.5)
        >>> tuple(out.shape), int(out.numpy().sum()) > 0
        ((1, 1, 100, 120), True)

    Reference: He et al., "Mask R-CNN", ICCV 2017; torchvision ``paste_masks_in_image``.
    """
    masks = tf.cast(masks, tf.float32)
    if masks.shape.rank != 4 or (masks.shape[-1] is not None and masks.shape[-1] != masks.shape[-2]):
        raise ValueError(f"masks must have shape (batch, detections, M, M); received {masks.shape}.")
    if masks.shape[-1] is None:
        raise ValueError("masks must have a static grid size M (e.g. 28); received an unknown size.")
    padding = check_positive_int("padding", padding, allow_zero=True)
    if threshold is not None:
        threshold = check_probability("threshold", threshold)
    # Python / NumPy ints keep the output shape static (XLA); tensors (e.g. tf.shape) are accepted too.
    if isinstance(height, (int, np.integer)):
        height = check_positive_int("height", height)
    if isinstance(width, (int, np.integer)):
        width = check_positive_int("width", width)
    boxes = convert_format(boxes, bounding_box_format, "xyxy", height=height, width=width)
    if boxes.shape.rank != 3 or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"boxes must have shape (batch, detections, 4); received {boxes.shape}.")
    grid = masks.shape[-1] + 2 * padding
    # torchvision: scale = float(M + 2 * padding) / M, applied to float32 boxes.
    corners = tf.cast(expand_boxes(boxes, float(grid) / masks.shape[-1]), tf.int32)  # truncation, as .to(int64)
    padded = tf.pad(masks, [[0, 0], [0, 0], [padding, padding], [padding, padding]])
    size_h = height if isinstance(height, int) else tf.cast(height, tf.int32)
    size_w = width if isinstance(width, int) else tf.cast(width, tf.int32)
    weights_x = _interpolation_weights(corners[..., 0], corners[..., 2], size_w, grid)   # (B, K, W, G)
    weights_y = _interpolation_weights(corners[..., 1], corners[..., 3], size_h, grid)   # (B, K, H, G)
    columns = tf.matmul(padded, weights_x, transpose_b=True)                            # (B, K, G, W)
    pasted = tf.matmul(weights_y, columns)                                               # (B, K, H, W)
    if threshold is None:
        return pasted
    return tf.cast(pasted > threshold, tf.uint8)
