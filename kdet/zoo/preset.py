"""Loading models from disk: ``.keras`` files and kdet preset directories.

A preset directory holds::

    config.json        {"format": "kdet.preset", "format_version": 1,
                        "builder": "kdet.models.yolov3:YOLOV3",   # either a kdet builder
                        "builder_kwargs": {"num_classes": 3, ...},
                        "keras_config": {...},                   # or a serialised model
                        "class_names": [...], "name": "...", "weights": "model.weights.h5"}
    model.weights.h5   the weights (``model.save_weights``)

Exactly one of ``builder`` (an import path inside the ``kdet`` package: a
config file never imports foreign code) or ``keras_config`` (the output of
``keras.saving.serialize_keras_object``, deserialised with ``safe_mode=True``)
is given. ``save_preset`` writes one; ``kdet.load(directory)`` reads it.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

from kdet.zoo import registry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
FORMAT = "kdet.preset"
FORMAT_VERSION = 1


def _fresh_with_classes(model, num_classes: int):
    """Builds a new model like ``model`` but with ``num_classes`` (from its config)."""
    config = model.get_config()
    if "num_classes" not in config:
        raise ValueError(f"{type(model).__name__} has no num_classes in its config; cannot "
                         f"change it to {num_classes}.")
    config = {**config, "num_classes": num_classes}
    if config.get("class_names") is not None:  # the old names no longer fit
        config["class_names"] = None
    return registry.ensure_built(type(model).from_config(config))


def _swap_classes(model, num_classes: int | None):
    if num_classes is None or model.get_config().get("num_classes") == num_classes:
        return model
    target = _fresh_with_classes(model, num_classes)
    registry.transfer_matching_weights(model, target)
    return target


def load_path(path: pathlib.Path, weights: Any = "default", num_classes: int | None = None,
              **overrides: Any):
    """``kdet.load`` for a ``.keras`` file or a preset directory (see ``kdet.load``)."""
    if not path.exists():
        raise FileNotFoundError(f"No model file or preset directory at {str(path)!r} (and "
                                f"{path.name!r} is not a registered model name).")
    if path.is_dir():
        return load_preset(path, weights=weights, num_classes=num_classes, **overrides)
    if not path.name.endswith(".keras"):
        raise ValueError(f"Cannot load {str(path)!r}: expected a .keras file (model.save) or a "
                         f"preset directory with {CONFIG_FILE}; for weights files pass "
                         f"kdet.load(<model name>, weights={str(path)!r}).")
    if overrides:
        raise ValueError(f"Builder arguments {sorted(overrides)} cannot be applied to a saved "
                         f".keras model; load it and rebuild, or use a preset directory.")
    import keras

    import kdet.models  # noqa: F401  (registers kdet's classes for deserialisation, in a fresh process too)

    model = keras.saving.load_model(os.fspath(path), safe_mode=True)
    model = _apply_weights_argument(model, weights)
    return _swap_classes(model, num_classes)


def _apply_weights_argument(model, weights: Any):
    if isinstance(weights, str) and weights == "default":
        return model
    if weights is None:  # architecture only: same configuration, fresh weights
        return registry.ensure_built(type(model).from_config(model.get_config()))
    path = pathlib.Path(weights)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"weights for a saved model must be 'default', None or a .weights.h5 "
                         f"file; received {str(weights)!r}.")
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    model.load_weights(os.fspath(path))
    return model


def read_config(directory: str | os.PathLike) -> dict:
    """Reads and validates a preset's ``config.json``."""
    directory = pathlib.Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{str(directory)!r} is not a kdet preset directory: it has no {CONFIG_FILE}.")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not a kdet preset (expected \"format\": \"{FORMAT}\").")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {config.get('format_version')!r}; this "
                         f"kdet reads version {FORMAT_VERSION}.")
    if ("builder" in config) == ("keras_config" in config):
        raise ValueError(f"{config_path} must give exactly one of 'builder' or 'keras_config'.")
    builder = config.get("builder")
    if builder is not None and not (isinstance(builder, str) and builder.startswith("kdet.")):
        raise ValueError(f"{config_path}: builder must be an import path inside kdet "
                         f"('kdet.models.<arch>:<Builder>'); received {builder!r}.")
    return config


def load_preset(directory: str | os.PathLike, weights: Any = "default",
                num_classes: int | None = None, **overrides: Any):
    """Builds the preset's model and loads its weights (see the module docstring)."""
    directory = pathlib.Path(directory)
    config = read_config(directory)
    if "builder" in config:
        kwargs = {**config.get("builder_kwargs", {}), **overrides}
        model = registry.ensure_built(registry.resolve(config["builder"])(**kwargs))
    else:
        if overrides:
            raise ValueError(f"Builder arguments {sorted(overrides)} need a preset with a "
                             f"'builder'; {directory} stores a serialised keras_config.")
        import keras

        model = registry.ensure_built(
            keras.saving.deserialize_keras_object(config["keras_config"], safe_mode=True))
    if isinstance(weights, str) and weights == "default":
        weights_path = directory / config.get("weights", WEIGHTS_FILE)
        if not weights_path.is_file():
            raise FileNotFoundError(f"Preset {str(directory)!r} has no weights file {weights_path.name!r}.")
        model.load_weights(os.fspath(weights_path))
    elif weights is not None:
        model = _apply_weights_argument(model, weights)
    return _swap_classes(model, num_classes)


def save_preset(model, directory: str | os.PathLike, *, builder: str | None = None,
                builder_kwargs: dict | None = None, class_names: Sequence[str] | None = None,
                name: str | None = None) -> pathlib.Path:
    """Writes ``model`` as a preset directory that ``kdet.load(directory)`` reads.

    Args:
        model: a built kdet model.
        directory: where to write ``config.json`` and ``model.weights.h5``.
        builder: optional ``"kdet.models.<arch>:<Builder>"``; with
            ``builder_kwargs`` it rebuilds the model on load (readable, editable).
            Without it the model's Keras config is serialised instead.
        builder_kwargs: the builder's arguments (JSON-serialisable).
        class_names: label names stored alongside.
        name: a display name.

    Returns:
        ``directory`` as a ``pathlib.Path``.

    Example:
        >>> save_preset(model, "my_detector", class_names=["cat", "dog"])  # doctest: +SKIP
        >>> kdet.load("my_detector")                                       # doctest: +SKIP
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                              "weights": WEIGHTS_FILE}
    if name is not None:
        config["name"] = name
    if builder is not None:
        config["builder"], config["builder_kwargs"] = builder, dict(builder_kwargs or {})
    else:
        import keras

        config["keras_config"] = keras.saving.serialize_keras_object(model)
    if class_names is not None:
        config["class_names"] = [str(c) for c in class_names]
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    read_config(directory)  # what we wrote must be loadable (e.g. builder inside kdet)
    model.save_weights(os.fspath(directory / WEIGHTS_FILE))
    return directory
