"""Export: SavedModel and LiteRT (TFLite) with decoding and NMS inside the graph.

Example:
    >>> model.export("out/model", format="tf_saved_model")        # doctest: +SKIP
    >>> kdet.export.litert(model, "out/model.tflite", quantization="float16")  # doctest: +SKIP
"""

from __future__ import annotations

from kdet.export.litert import assert_builtin_only, litert, litert_operator_types, litert_operators, run_litert
from kdet.export.saved_model import saved_model

FORMATS = ("tf_saved_model", "litert")


def export(model, filepath, format: str = "tf_saved_model", precision: str | None = None, **kwargs):
    """Exports a kdet detector; ``format`` is "tf_saved_model" or "litert".

    ``precision`` ("float32", "bfloat16", "float16", "auto") exports the same
    weights computing at that precision (``model.with_settings(precision=...)``);
    None keeps the model's. LiteRT exports the float32 network whatever the
    precision (it has no bfloat16 kernels; its ``quantization=`` is LiteRT's
    low precision). Other keyword arguments go to :func:`saved_model`
    or :func:`litert`.
    """
    if precision is not None:
        model = model.with_settings(precision=precision)
    if format == "tf_saved_model":
        return saved_model(model, filepath, **kwargs)
    if format in ("litert", "tflite"):
        return litert(model, filepath, **kwargs)
    raise ValueError(f"format must be one of {FORMATS}; received {format!r}.")


__all__ = ["export", "saved_model", "litert", "run_litert", "litert_operators", "litert_operator_types",
           "assert_builtin_only"]
