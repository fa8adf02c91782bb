"""SavedModel export: a serving signature from raw pixels to the output dict."""

from __future__ import annotations

import pathlib

import keras
import tensorflow as tf

from kdet.validation import check_image_size


def serving_shape(model, image_size=None) -> tuple:
    """(None, H, W, 3) input shape of the exported signature: the size of the images it serves.

    The model's resize rule maps those images to its network canvas inside
    the exported graph (API.md, "Resizing"), so any (H, W) works; boxes come
    back in the served images' pixels.

    Args:
        model: a kdet detector.
        image_size: (height, width) of the images to serve; default the
            model's ``image_size`` (its canvas). ``resize="min_max"`` sizes the
            canvas from each image, so it needs ``image_size``; ``"none"``
            (MTCNN) exports any size when it is None.

    Raises:
        ValueError: ``resize="min_max"`` without ``image_size``.
    """
    config = getattr(model, "config", None)
    if image_size is None and getattr(config, "resize", None) == "min_max":
        raise ValueError(
            f"{type(model).__name__} uses resize='min_max' (min_size={config.min_size}, max_size={config.max_size}): "
            "its network canvas follows each image's size, so an exported graph needs a fixed input size. Pass "
            "image_size=(height, width) of the images it will serve (e.g. image_size=(480, 640)); the canvas is "
            "then min_max's canvas for that size.")
    size = image_size or getattr(model, "image_size", None)
    if size is None:
        return (None, None, None, 3)
    height, width = check_image_size(size)
    return (None, height, width, 3)


def serving_function(model):
    """The inference function exported: ``images -> output dict`` (float32 outputs)."""

    def serve(images):
        out = model(images, training=False)
        return {key: tf.identity(value, name=key) for key, value in out.items()}

    return serve


def saved_model(model, filepath, image_size=None, verbose: bool = False):
    """Writes a SavedModel whose ``serving_default`` takes float32 raw pixels.

    A second signature ``serve_uint8`` takes uint8 pixels. Both return
    ``{"boxes", "scores", "labels", "num_detections"[, "landmarks"]}`` with
    decoding and NMS inside. Reload with ``tf.saved_model.load(path)``.

    Args:
        model: a kdet detector.
        filepath: output directory.
        image_size: (height, width) of the images the signature serves (any
            size: the resize rule runs inside); default the model's
            ``image_size``. Required for ``resize="min_max"`` (see
            ``serving_shape``); fully convolutional models may leave it None.

    Returns:
        The output path.
    """
    shape = serving_shape(model, image_size)
    serve = serving_function(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    archive.add_endpoint("serve_uint8", lambda images: serve(tf.cast(images, tf.float32)),
                         input_signature=[tf.TensorSpec(shape, tf.uint8, name="images")])
    archive.write_out(str(filepath), verbose=verbose)
    return pathlib.Path(filepath)
