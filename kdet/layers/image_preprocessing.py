"""ImagePreprocessing: raw 0..255 RGB pixels -> the network's input (resize + normalise)."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kdet")
class ImagePreprocessing(keras.layers.Layer):
    """Resizes raw pixels to the model resolution and normalises them.

    ``out = (resize(images) * scale - mean) / std``, per channel. ImageNet
    backbones use ``scale=1/255``, mean (0.485, 0.456, 0.406), std (0.229,
    0.224, 0.225); Darknet uses ``scale=1/255`` with mean 0, std 1.

    Args:
        image_size: (height, width) the network expects, or None to keep the size.
        scale: multiplier applied first.
        mean, std: per-channel statistics applied after ``scale``.
        interpolation: resize method of ``tf.image.resize``.

    Call:
        images (B, H, W, 3) uint8 or float -> (B, h, w, 3) float in the layer's
        compute dtype.
    """

    def __init__(self, image_size=None, scale: float = 1.0 / 255.0, mean=(0.0, 0.0, 0.0),
                 std=(1.0, 1.0, 1.0), interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.scale = float(scale)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std must have 3 values, std > 0; received {mean}, {std}.")
        self.interpolation = interpolation
        self.built = True

    def call(self, images):
        if images.shape.rank != 4 or (images.shape[-1] is not None and images.shape[-1] != 3):
            raise ValueError(
                f"images must have shape (batch, height, width, 3) raw RGB pixels; received {images.shape}."
            )
        x = tf.cast(images, tf.float32)
        if self.image_size is not None and tuple(images.shape[1:3]) != self.image_size:
            x = tf.image.resize(x, self.image_size, method=self.interpolation)
        x = (x * self.scale - tf.constant(self.mean)) / tf.constant(self.std)
        return tf.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        if self.image_size is None:
            return tuple(input_shape)
        return (input_shape[0], *self.image_size, 3)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, scale=self.scale, mean=self.mean, std=self.std,
                      interpolation=self.interpolation)
        return config
