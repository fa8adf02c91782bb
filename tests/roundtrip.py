"""The shared save/load round-trip check every architecture passes (DESIGN.md, "Tests").

``check_round_trip(model_class, variants, images, tmp_path)`` builds the model
once per variant (a dict of settings), saves it with ``model.save``, reloads it
with ``keras.models.load_model`` and checks, by behaviour and by config:

* the variants together set **every** field of the model's config class to a
  value other than its default (fields that cannot apply to an architecture
  are listed in ``not_applicable`` with the reason), so a setting added later
  without a round-trip test fails here;
* the built model holds each requested value (``model.config``), so a setting
  the constructor drops is caught even when it is missing from both configs;
* the reloaded model has the same full config and the same predictions.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kdet.config import field_names


def _plain(value):
    """Comparable form of a setting (tuples and lists alike, Keras objects by their config)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (keras.layers.Layer, keras.Model)):
        return keras.saving.serialize_keras_object(value)
    return value


def _defaults(config_class) -> dict:
    out = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
    return out


def check_settings_cover_config(config_class, variants: list[dict], not_applicable: dict[str, str]) -> None:
    """Every config field is set to a non-default value by some variant (or declared not applicable)."""
    defaults = _defaults(config_class)
    covered = set()
    for settings in variants:
        for key, value in settings.items():
            assert key in field_names(config_class), f"{key!r} is not a {config_class.__name__} field"
            if key in defaults and _plain(value) == _plain(defaults[key]):
                continue  # the default again: does not count as covering the field
            covered.add(key)
    missing = sorted(set(field_names(config_class)) - covered - set(not_applicable))
    assert not missing, f"The round trip sets no non-default value for {missing} of {config_class.__name__}"


def assert_same_predictions(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key], np.float64), np.asarray(b[key], np.float64), atol=atol,
                                   err_msg=key)


def check_round_trip(model_class, variants: list[dict], images, tmp_path, not_applicable: dict[str, str] = None,
                     min_detections: int = 1) -> list:
    """Builds, saves, reloads and compares every variant (see the module docstring); returns the models."""
    not_applicable = not_applicable or {}
    check_settings_cover_config(model_class.config_class, variants, not_applicable)
    models = []
    for index, settings in enumerate(variants):
        model = model_class(**settings)
        for key, value in settings.items():
            held = getattr(model.config, key)
            assert _plain(held) == _plain(value) or key in ("image_size",), (key, held, value)
        before = model.predict(images, verbose=0)
        assert int(np.sum(before["num_detections"])) >= min_detections, "choose settings that detect something"
        path = tmp_path / f"variant{index}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        assert type(loaded) is type(model)
        assert loaded.get_config() == model.get_config()
        assert loaded.config.to_dict() == model.config.to_dict()
        assert_same_predictions(before, loaded.predict(images, verbose=0))
        models.append(loaded)
    return models
