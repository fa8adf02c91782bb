"""ImagePreprocessing: raw 0..255 RGB pixels -> the network input (resize rule + normalise + pad).

Every detector turns raw images into its network input with one of these
rules (API.md, "Resizing"), inside the graph so exported models serve it:

* ``"stretch"``: resize to ``image_size``, aspect ratio ignored (bilinear,
  half-pixel centres: torchvision's fixed-size transform, OpenCV's
  ``blobFromImage``).
* ``"letterbox"``: Darknet's ``letterbox_image`` (src/image.c): the new size
  by integer arithmetic (the limiting side fills the canvas, the other is
  ``side * canvas / other`` floored), Darknet's align-corners bilinear
  ``resize_image``, centred at ``((W - w) // 2, (H - h) // 2)``, the rest
  filled with mid-grey (0.5 of the 0..1 range).
* ``"pad"``: automl's ``DetectionInputProcessor`` (efficientdet/dataloader.py,
  ``set_scale_factors_to_output_size`` + ``resize_and_crop_image``, called by
  inference.py ``image_preprocess``): one scale ``min(H / h, W / w)`` in
  float32, size ``int(h * scale)``, TF1 bilinear (``tf.compat.v1.image.resize``),
  top-left, zero padding after normalisation; boxes back by ``1 / scale``.
* ``"min_max"``: torchvision's ``GeneralizedRCNNTransform``: scale
  ``min(min_size / short side, max_size / long side)`` in double, size
  ``floor(side * scale)`` (``interpolate(recompute_scale_factor=True)``),
  bilinear, then padded bottom/right with zeros (after normalisation) to a
  multiple of ``size_divisible``. The canvas then depends on the input size.
* ``"none"``: the image as it is (detectors that take any size, e.g. MTCNN).

The mapping between input-image and network pixels is a per-image *frame*:
``network = input * scale + offset`` per axis (``frame``), used to move ground
truth in and detections (boxes, landmarks) back out exactly. Boxes come back
with torchvision's per-axis ratios (``resized / original``), automl's single
scale for "pad", Darknet's per-axis ratios and centring offset for "letterbox".

Images in a batch share one size, so one resize serves the whole batch (XLA
and LiteRT friendly). A padded batch of images of different sizes goes
through ``call(images, image_sizes)``: each image is cropped to its size and
resized on its own (graph mode; not XLA-compilable).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

RULES = ("stretch", "letterbox", "pad", "min_max", "none")
# Darknet fills the letterbox with 0.5 of the 0..1 range (src/image.c, letterbox_image).
DARKNET_GREY = 127.5
INTERPOLATIONS = ("bilinear", "bilinear_align_corners", "bilinear_legacy", "nearest", "area", "bicubic")
# Default interpolation per rule: Darknet's resize_image is align-corners bilinear; automl resizes with
# tf.compat.v1.image.resize (TF1's ResizeBilinear: no half-pixel centres); torchvision / OpenCV use
# half-pixel centres (tf.image.resize).
DEFAULT_INTERPOLATION = {"letterbox": "bilinear_align_corners", "pad": "bilinear_legacy"}


def _ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


@keras.saving.register_keras_serializable(package="kdet")
class ImagePreprocessing(keras.layers.Layer):
    """Resizes raw pixels by a resize rule, normalises them and pads them to the canvas.

    ``normalised = (resized * scale - mean) / std`` per channel. ImageNet
    backbones use ``scale=1/255``, mean (0.485, 0.456, 0.406), std (0.229,
    0.224, 0.225); Darknet ``scale=1/255`` with mean 0, std 1.

    Args:
        image_size: (height, width) of the canvas for "stretch", "letterbox"
            and "pad"; unused by "min_max" and "none".
        resize: the rule (module docstring).
        min_size, max_size, size_divisible: the "min_max" rule's settings.
        scale: multiplier applied first.
        mean, std: per-channel statistics applied after ``scale``.
        interpolation: "bilinear" (half-pixel centres), "bilinear_align_corners"
            (Darknet), "bilinear_legacy" (TF1, automl), "nearest", "area",
            "bicubic"; default per rule.
        pad_pixel: raw pixel value of the padding (letterbox: 127.5); None pads
            with 0 after normalisation (the mean colour: automl, torchvision).

    Call:
        ``layer(images)`` with images (B, H, W, 3) uint8 or float ->
        (B, h, w, 3) in the layer's compute dtype; ``layer(images, image_sizes)``
        with image_sizes (B, 2) int (height, width) of each image's valid
        top-left region of a padded batch.

    Example:
        >>> pre = ImagePreprocessing((64, 64), resize="letterbox")
        >>> pre.canvas_size(30, 60)
        (64, 64)
        >>> pre.geometry(30, 60)["resized"]
        (32, 64)
    """

    def __init__(self, image_size=None, resize: str = "stretch", min_size: int | None = None,
                 max_size: int | None = None, size_divisible: int = 32, scale: float = 1.0 / 255.0,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation: str | None = None,
                 pad_pixel: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if resize not in RULES:
            raise ValueError(f"resize must be one of {RULES}; received {resize!r}.")
        self.resize = resize
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        if resize in ("stretch", "letterbox", "pad") and self.image_size is None:
            raise ValueError(f"resize={resize!r} needs image_size (the canvas).")
        self.min_size = None if min_size is None else int(min_size)
        self.max_size = None if max_size is None else int(max_size)
        if resize == "min_max" and (not self.min_size or not self.max_size):
            raise ValueError(f"resize='min_max' needs min_size and max_size; received {min_size}, {max_size}.")
        self.size_divisible = int(size_divisible)
        self.scale = float(scale)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std must have 3 values, std > 0; received {mean}, {std}.")
        self.interpolation = interpolation or DEFAULT_INTERPOLATION.get(resize, "bilinear")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; received {interpolation!r}.")
        if pad_pixel is None and resize == "letterbox":
            pad_pixel = DARKNET_GREY
        self.pad_pixel = None if pad_pixel is None else float(pad_pixel)
        self.built = True

    # ----------------------------------------------------------- geometry
    def geometry(self, height: int, width: int) -> dict:
        """Static geometry of one image size: resized (h, w), scale (sy, sx), offset (oy, ox), canvas (H, W)."""
        height, width = int(height), int(width)
        if height <= 0 or width <= 0:
            raise ValueError(f"Images must have a positive size; received {height}x{width}.")
        if self.resize == "none":
            return {"resized": (height, width), "scale": (1.0, 1.0), "offset": (0, 0), "canvas": (height, width)}
        if self.resize == "stretch":
            ch, cw = self.image_size
            return {"resized": (ch, cw), "scale": (ch / height, cw / width), "offset": (0, 0), "canvas": (ch, cw)}
        if self.resize == "letterbox":
            ch, cw = self.image_size
            # Darknet compares (float)w/im.w < (float)h/im.h and floors with integer division.
            if np.float32(cw) / np.float32(width) < np.float32(ch) / np.float32(height):
                rw, rh = cw, (height * cw) // width
            else:
                rh, rw = ch, (width * ch) // height
            rh, rw = max(rh, 1), max(rw, 1)
            return {"resized": (rh, rw), "scale": (rh / height, rw / width),
                    "offset": ((ch - rh) // 2, (cw - rw) // 2), "canvas": (ch, cw)}
        if self.resize == "pad":
            ch, cw = self.image_size
            s = min(np.float32(ch) / np.float32(height), np.float32(cw) / np.float32(width))
            rh, rw = max(int(np.float32(height) * s), 1), max(int(np.float32(width) * s), 1)
            return {"resized": (rh, rw), "scale": (float(s), float(s)), "offset": (0, 0), "canvas": (ch, cw)}
        # min_max: torchvision 0.28's GeneralizedRCNNTransform (eager) takes ``image.shape`` as Python ints, so
        # ``scale = min(min_size / short, max_size / long)`` is a double, and F.interpolate(recompute_scale_factor
        # =True) floors ``side * scale`` in double: 561 px -> 800 (float32 arithmetic would give 799).
        s = min(self.min_size / min(height, width), self.max_size / max(height, width))
        rh, rw = max(int(math.floor(height * s)), 1), max(int(math.floor(width * s)), 1)
        canvas = (_ceil_to(rh, self.size_divisible), _ceil_to(rw, self.size_divisible))
        return {"resized": (rh, rw), "scale": (rh / height, rw / width), "offset": (0, 0), "canvas": canvas}

    def canvas_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input (height, width) for images of this size."""
        return self.geometry(height, width)["canvas"]

    def batch_canvas(self, height: int, width: int) -> tuple[int, int]:
        """The canvas of a padded (height, width) batch of images of any sizes up to it."""
        if self.resize in ("stretch", "letterbox", "pad"):
            return self.image_size
        if self.resize == "none":
            return (int(height), int(width))
        # min_max: the largest resized size any h <= height, w <= width can reach.
        hs = np.arange(1, int(height) + 1, dtype=np.float64)[:, None]
        ws = np.arange(1, int(width) + 1, dtype=np.float64)[None, :]
        s = np.minimum(self.min_size / np.minimum(hs, ws), self.max_size / np.maximum(hs, ws))
        rh = np.floor(hs * s).max()
        rw = np.floor(ws * s).max()
        return (_ceil_to(int(rh), self.size_divisible), _ceil_to(int(rw), self.size_divisible))

    # ----------------------------------------------------------- frames
    def frame(self, images, image_sizes=None) -> dict:
        """The input <-> network mapping of each image: ``network = input * scale + offset``.

        Returns:
            {"scale": (B, 2) (sy, sx), "offset": (B, 2) (oy, ox), "input_hw": (B, 2),
            "valid_hw": (B, 2) the bottom-right corner of the image in network
            pixels (offset + resized size), "canvas": (H, W) Python ints or None}.
        """
        images = tf.convert_to_tensor(images)
        batch = tf.shape(images)[0]
        if image_sizes is not None:
            sizes = tf.cast(image_sizes, tf.float32)
            scale, offset, resized = self._dynamic_geometry(sizes)
            return {"scale": scale, "offset": offset, "input_hw": sizes, "valid_hw": offset + resized,
                    "canvas": self.batch_canvas(*self._static_hw(images))}
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            if not self.fixed_canvas:
                raise ValueError(f"resize={self.resize!r} needs images of a static height and width (the canvas "
                                 f"depends on them); received shape {images.shape}.")
            hw = tf.cast(tf.shape(images)[1:3], tf.float32)
            sizes = tf.tile(hw[None], [batch, 1])
            scale, offset, resized = self._dynamic_geometry(sizes)
            return {"scale": scale, "offset": offset, "input_hw": sizes, "valid_hw": offset + resized,
                    "canvas": self.image_size}
        g = self.geometry(height, width)
        rows = lambda v: tf.tile(tf.constant([v], tf.float32), [batch, 1])  # noqa: E731
        return {"scale": rows(g["scale"]), "offset": rows([float(o) for o in g["offset"]]),
                "input_hw": rows([float(height), float(width)]),
                "valid_hw": rows([g["offset"][0] + g["resized"][0], g["offset"][1] + g["resized"][1]]),
                "canvas": g["canvas"]}

    @property
    def fixed_canvas(self) -> bool:
        """Whether every input size maps to the same canvas (``image_size``)."""
        return self.resize in ("stretch", "letterbox", "pad")

    @staticmethod
    def _static_hw(images):
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError(f"A padded batch with image_sizes needs a static height and width; "
                             f"received shape {images.shape}.")
        return int(height), int(width)

    def _dynamic_geometry(self, sizes):
        """(B, 2) float sizes -> scale (B, 2), offset (B, 2), resized (B, 2) with the rule's arithmetic."""
        h, w = sizes[:, 0], sizes[:, 1]
        zero = tf.zeros_like(h)
        if self.resize == "none":
            return tf.ones_like(sizes), tf.zeros_like(sizes), sizes
        if self.resize == "stretch":
            ch, cw = (float(v) for v in self.image_size)
            resized = tf.stack([zero + ch, zero + cw], axis=1)
            return resized / sizes, tf.zeros_like(sizes), resized
        if self.resize == "letterbox":
            ch, cw = (float(v) for v in self.image_size)
            width_limited = cw / w < ch / h
            hi, wi = tf.cast(h, tf.int64), tf.cast(w, tf.int64)  # Darknet's integer division
            rw = tf.where(width_limited, cw, tf.cast(wi * int(ch) // hi, tf.float32))
            rh = tf.where(width_limited, tf.cast(hi * int(cw) // wi, tf.float32), ch)
            rh, rw = tf.maximum(rh, 1.0), tf.maximum(rw, 1.0)
            resized = tf.stack([rh, rw], axis=1)
            offset = tf.stack([tf.floor((ch - rh) / 2), tf.floor((cw - rw) / 2)], axis=1)
            return resized / sizes, offset, resized
        if self.resize == "pad":
            ch, cw = (float(v) for v in self.image_size)
            s = tf.minimum(ch / h, cw / w)
            resized = tf.maximum(tf.floor(tf.stack([h * s, w * s], axis=1)), 1.0)
            return tf.stack([s, s], axis=1), tf.zeros_like(sizes), resized
        h64, w64 = tf.cast(h, tf.float64), tf.cast(w, tf.float64)  # in double, as torchvision (see geometry)
        s = tf.minimum(float(self.min_size) / tf.minimum(h64, w64), float(self.max_size) / tf.maximum(h64, w64))
        resized = tf.cast(tf.floor(tf.cast(sizes, tf.float64) * s[:, None]), tf.float32)
        resized = tf.maximum(resized, 1.0)
        return resized / sizes, tf.zeros_like(sizes), resized

    # ----------------------------------------------------------- pixels
    def _normalise(self, x):
        return (x * self.scale - tf.constant(self.mean)) / tf.constant(self.std)

    def _pad_value(self) -> np.ndarray:
        """The padding in normalised units, per channel."""
        if self.pad_pixel is None:
            return np.zeros(3, np.float32)
        return ((self.pad_pixel * self.scale - np.array(self.mean)) / np.array(self.std)).astype(np.float32)

    def _resize(self, x, size):
        if self.interpolation in ("bilinear_align_corners", "bilinear_legacy"):
            return tf.raw_ops.ResizeBilinear(images=x, size=tf.cast(size, tf.int32),
                                             align_corners=self.interpolation == "bilinear_align_corners",
                                             half_pixel_centers=False)
        return tf.image.resize(x, size, method=self.interpolation)

    def call(self, images, image_sizes=None):
        if images.shape.rank != 4 or (images.shape[-1] is not None and images.shape[-1] != 3):
            raise ValueError(
                f"images must have shape (batch, height, width, 3) raw RGB pixels; received {images.shape}."
            )
        x = tf.cast(images, tf.float32)
        if image_sizes is not None:
            return tf.cast(self._per_image(x, image_sizes), self.compute_dtype)
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            x = self._dynamic_batch(x)
        else:
            g = self.geometry(height, width)
            if g["resized"] != (height, width):
                x = self._resize(x, g["resized"])
            x = self._normalise(x)
            (rh, rw), (oy, ox), (ch, cw) = g["resized"], g["offset"], g["canvas"]
            if (rh, rw) != (ch, cw):
                pad = tf.constant(self._pad_value())
                x = tf.pad(x - pad, [[0, 0], [oy, ch - rh - oy], [ox, cw - rw - ox], [0, 0]]) + pad
        return tf.cast(x, self.compute_dtype)

    def _dynamic_batch(self, x):
        """A batch of one size unknown at trace time (fixed-canvas rules only)."""
        if self.resize == "none":
            return self._normalise(x)
        if not self.fixed_canvas:
            raise ValueError(f"resize={self.resize!r} needs images of a static height and width.")
        hw = tf.cast(tf.shape(x)[1:3], tf.float32)
        _, offset, resized = self._dynamic_geometry(hw[None])
        return self._place(x, resized[0], offset[0], self.image_size)

    def _place(self, image, resized, offset, canvas):
        """Resize (B, h, w, 3) to ``resized``, normalise, pad at ``offset`` into ``canvas`` (dynamic sizes)."""
        x = self._normalise(self._resize(image, tf.cast(resized, tf.int32)))
        pad = tf.constant(self._pad_value())
        rh, rw = tf.cast(resized[0], tf.int32), tf.cast(resized[1], tf.int32)
        oy, ox = tf.cast(offset[0], tf.int32), tf.cast(offset[1], tf.int32)
        x = tf.pad(x - pad, [[0, 0], [oy, canvas[0] - rh - oy], [ox, canvas[1] - rw - ox], [0, 0]]) + pad
        return tf.ensure_shape(x, [None, canvas[0], canvas[1], 3])

    def _per_image(self, x, image_sizes):
        """A padded batch of images of different sizes: each resized on its own into one canvas."""
        canvas = self.batch_canvas(*self._static_hw(x))
        sizes = tf.cast(image_sizes, tf.float32)
        _, offsets, resized = self._dynamic_geometry(sizes)

        def one(args):
            image, size, rsz, off = args
            crop = image[None, :tf.cast(size[0], tf.int32), :tf.cast(size[1], tf.int32)]
            return self._place(crop, rsz, off, canvas)[0]

        return tf.map_fn(one, (x, sizes, resized, offsets),
                         fn_output_signature=tf.TensorSpec((canvas[0], canvas[1], 3), tf.float32))

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if self.fixed_canvas:
            return (input_shape[0], *self.image_size, 3)
        if height is None or width is None:
            return (input_shape[0], None, None, 3)
        return (input_shape[0], *self.canvas_size(height, width), 3)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, resize=self.resize, min_size=self.min_size,
                      max_size=self.max_size, size_divisible=self.size_divisible, scale=self.scale,
                      mean=self.mean, std=self.std, interpolation=self.interpolation, pad_pixel=self.pad_pixel)
        return config


def boxes_to_network(boxes, frame: dict):
    """xyxy boxes (B, M, 4) in input pixels -> network pixels (``frame`` of ``ImagePreprocessing.frame``)."""
    scale = tf.tile(frame["scale"][:, ::-1], [1, 2])[:, None, :]   # (sx, sy, sx, sy)
    offset = tf.tile(frame["offset"][:, ::-1], [1, 2])[:, None, :]
    return tf.cast(boxes, tf.float32) * scale + offset


def boxes_to_input(boxes, frame: dict, clip: bool = True):
    """xyxy boxes (B, K, 4) in network pixels -> input pixels, clipped to each image."""
    scale = tf.tile(frame["scale"][:, ::-1], [1, 2])[:, None, :]
    offset = tf.tile(frame["offset"][:, ::-1], [1, 2])[:, None, :]
    boxes = (tf.cast(boxes, tf.float32) - offset) / scale
    if clip:
        limit = tf.tile(frame["input_hw"][:, ::-1], [1, 2])[:, None, :]
        boxes = tf.clip_by_value(boxes, 0.0, limit)
    return boxes


def points_to_input(points, frame: dict):
    """(x, y) points (B, K, P, 2) in network pixels -> input pixels (not clipped)."""
    scale = frame["scale"][:, None, None, ::-1]
    offset = frame["offset"][:, None, None, ::-1]
    return (tf.cast(points, tf.float32) - offset) / scale
