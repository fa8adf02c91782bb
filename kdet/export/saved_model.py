"""SavedModel export: a serving signature from raw pixels to the output dict."""

from __future__ import annotations

import pathlib

import keras
import tensorflow as tf

from kdet.validation import check_image_size


def serving_shape(model, image_size=None) -> tuple:
    """(None, H, W, 3) input shape of the exported signature."""
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
        image_size: (height, width) of the signature; default the model's
            ``image_size`` (fully convolutional models may leave it None).

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
