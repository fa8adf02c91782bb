"""LiteRT (TFLite) export with NMS inside, builtin ops only, and helpers to run and inspect it."""

from __future__ import annotations

import logging
import pathlib
import tempfile

import numpy as np
import tensorflow as tf

from kdet.export.quantize import network_scopes, quantize_int8, representative_batches
from kdet.export.saved_model import saved_model, serving_shape

QUANTIZATIONS = (None, "float16", "dynamic_int8", "int8")


def litert(model, filepath, quantization: str | None = None, representative_data=None, image_size=None,
           saved_model_dir=None, float_predictors: bool = True):
    """Converts a kdet detector to a ``.tflite`` file with builtin ops only.

    The signature ``serving_default`` takes float32 raw pixels (1..B, H, W, 3)
    and returns outputs named ``boxes``, ``scores``, ``labels``,
    ``num_detections`` (the API.md dict); decoding and NMS run as builtin
    operators (kdet's NMS is top-k, gathers and a bounded while loop).

    With ``quantization="int8"`` the networks (the operators of the
    detector's Keras sub-models: backbone, neck, heads) run with int8 weights
    and activations, while the pre-processing and the post-processing (box
    decoding, sigmoid/softmax, top-k, NMS) stay float32: quantizing those
    destroys the detections (see :mod:`kdet.export.quantize`). So do, by
    default, the heads' predictor convolutions (the layers producing the
    class logits and box deltas).

    Args:
        model: a kdet detector. A bfloat16 / float16 model (``precision``)
            exports its float32 network: LiteRT has no bfloat16 kernels.
        filepath: the ``.tflite`` path to write.
        quantization: None (float32), "float16", "dynamic_int8" (weights) or
            "int8" (weights and activations, calibrated on ``representative_data``).
        representative_data: calibration images for "int8": a (N, H, W, 3)
            array or an iterable of (H, W, 3) images / (B, H, W, 3) batches,
            raw pixels. A handful (8 to 32) is enough.
        image_size: (height, width) of the images the exported model serves
            (any size: the resize rule runs inside); default the model's
            ``image_size``. Required for ``resize="min_max"``.
        saved_model_dir: convert this existing kdet SavedModel export instead
            of exporting ``model`` again.
        float_predictors: with "int8", keep the operators computing the
            networks' outputs float (default); False quantizes them too
            (slightly smaller and faster, more low-score detections change).

    Returns:
        The path written. Raises ``ValueError`` if the converter needed ops
        outside the builtin set.

    Example:
        >>> x, _ = kdet.data.synthetic_arrays(8, 128)  # doctest: +SKIP
        >>> litert(model, "m_int8.tflite", quantization="int8", representative_data=x)  # doctest: +SKIP
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}; received {quantization!r}.")
    if quantization == "int8" and representative_data is None:
        raise ValueError("quantization='int8' needs representative_data: an iterable of image batches.")
    shape = serving_shape(model, image_size)
    if shape[1] is None:
        raise ValueError(
            f"{type(model).__name__} has no fixed image_size; pass image_size=(height, width) of the images the "
            "LiteRT model will serve."
        )
    if quantization == "int8":
        batches = representative_batches(representative_data, shape[1:3])
    precision = model.config.precision
    if precision != "float32" and saved_model_dir is None:
        # LiteRT has no bfloat16 kernels (the converter refuses a bfloat16 Conv2D); its low precisions are
        # `quantization=`. The same weights export as the float32 network.
        logging.info("kdet: LiteRT export of a %s model: converting its float32 network (LiteRT's low "
                     "precisions are quantization='float16' / 'dynamic_int8' / 'int8').", precision)
        model = model.with_settings(precision="float32")
    with tempfile.TemporaryDirectory() as tmp:
        if saved_model_dir is None:
            saved_model(model, tmp, image_size=image_size)
            saved_model_dir = tmp
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir),
                                                             signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == "int8":
            content = quantize_int8(converter, batches, network_scopes(model), float_predictors)
        else:
            if quantization is not None:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantization == "float16":
                converter.target_spec.supported_types = [tf.float16]
            content = converter.convert()
    path = pathlib.Path(filepath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    assert_builtin_only(path)
    return path


def litert_operators(path) -> list[str]:
    """Names of the operator codes in a ``.tflite`` flatbuffer (custom ops by their custom code)."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = pathlib.Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.append("CUSTOM:" + code.CustomCode().decode())
        else:
            ops.append(names.get(builtin, str(builtin)))
    return ops


def litert_operator_types(path) -> list[tuple[str, tuple[str, ...]]]:
    """(operator, output tensor types) of every operator of every subgraph of a ``.tflite`` file.

    Shows what a quantized export computes in int8, e.g. ``("CONV_2D", ("INT8",))``
    vs ``("EXP", ("FLOAT32",))``.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(pathlib.Path(path).read_bytes(), 0)
    ops = litert_operators(path)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    rows = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            outputs = [op.Outputs(j) for j in range(op.OutputsLength()) if op.Outputs(j) >= 0]
            rows.append((ops[op.OpcodeIndex()], tuple(types[graph.Tensors(t).Type()] for t in outputs)))
    return rows


def assert_builtin_only(path) -> None:
    """Raises ``ValueError`` if the model uses Flex (Select TF) or custom ops."""
    custom = [op for op in litert_operators(path) if op.startswith("CUSTOM:")]
    if custom:
        raise ValueError(f"{path} needs non-builtin ops {custom}; kdet exports builtin ops only.")


def run_litert(path, images) -> dict:
    """Runs a kdet ``.tflite`` file with ``ai_edge_litert`` on a batch; returns the output dict."""
    from ai_edge_litert.interpreter import Interpreter

    images = np.asarray(images, np.float32)
    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    input_name = interpreter.get_signature_list()["serving_default"]["inputs"][0]
    # The signature runner resizes its input to the batch given and reallocates.
    return runner(**{input_name: images})
