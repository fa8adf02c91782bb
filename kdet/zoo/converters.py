"""Helpers shared by the upstream checkpoint converters (torchvision, automl).

The converters map upstream variables onto kdet layers by layer *name*, so
they need every weighted layer of a model, nested sub-models (backbones,
necks, heads built as ``keras.Model``) included, under a unique name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for hints: importing kdet.zoo must stay light
    import keras


def weighted_layers_by_name(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Every weighted leaf layer of ``model``, recursing into nested models, by name.

    A layer that holds sub-layers (a nested ``keras.Model``) is opened rather
    than returned, because the converters assign weights layer by layer and
    the upstream name maps address leaves. Layers without weights are skipped.

    Args:
        model: a Keras model (e.g. a kdet ``Detector``) or any layer with ``.layers``.

    Returns:
        ``{layer.name: layer}`` for every weighted leaf layer.

    Raises:
        ValueError: two weighted layers share a name (a name map could not tell them apart).

    Example:
        >>> layers = weighted_layers_by_name(kdet.models.RetinaNet(3, backbone="tiny"))  # doctest: +SKIP
        >>> layers["fpn_lateral_p3"].kernel.shape                                         # doctest: +SKIP
    """
    found = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if hasattr(layer, "layers") and layer.weights:
            stack.extend(layer.layers)
        elif layer.weights:
            if layer.name in found:
                raise ValueError(f"Two weighted layers are named {layer.name!r}; the converter's name map "
                                 "needs unique layer names.")
            found[layer.name] = layer
    return found
