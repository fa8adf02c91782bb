"""Typed detector configs: every constructor setting in one frozen dataclass per architecture.

A detector's settings live in one ``DetectorConfig`` subclass (``RetinaNetConfig``,
``SSDConfig``, ...). The config:

* holds every constructor setting, and nothing else: ``Detector.get_config()``
  is ``{**keras_base_config, **config.to_dict()}``, so whatever the constructor
  takes survives ``model.save`` / ``keras.models.load_model``;
* rejects unknown keys, naming the closest known ones;
* resolves "preset" defaults once (``None`` fields take the value of the
  architecture's preset for the chosen backbone), so ``get_config`` shows the
  values actually used and a reloaded model is built from the same numbers;
* keeps renamed settings working (``aliases``) with a deprecation message;
* round-trips: ``cls.create(**config.to_dict()) == config``.

Shared concepts carry one name on every architecture (API.md): ``score_threshold``,
``nms_iou_threshold``, ``max_detections``, ``soft_nms_sigma``, ``resize``,
``precision``.

Pattern: automl's ``Config.override(allow_new_keys=False)`` and keras-hub's
presets-as-data, with a dataclass instead of a dict so every field is named
and typed in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import logging
import platform
import warnings
from typing import Any, ClassVar, Mapping

from kdet.validation import (check_box_format, check_image_size, check_positive_int, check_probability)

logger = logging.getLogger("kdet")

#: Resize rules of ``ImagePreprocessing`` (see API.md, "Resizing").
RESIZE_RULES = ("stretch", "letterbox", "pad", "min_max", "none")
#: Network precisions; decoding, scores and NMS always run in float32.
PRECISIONS = ("float32", "bfloat16", "float16")
_POLICY_OF = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# torchvision GeneralizedRCNNTransform defaults (min_size=800, max_size=1333, size_divisible=32).
MIN_MAX_DEFAULTS = (800, 1333)
SIZE_DIVISIBLE = 32


def keras_field(default=None):
    """A config field holding a Keras object (a model, a layer): serialised in ``to_dict``."""
    return dataclasses.field(default=default, metadata={"keras": True}, compare=False)


def _is_keras_field(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get("keras"))


def _tupled(value):
    """Lists (JSON) -> tuples, recursively, so configs compare and hash by value."""
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


def _listed(value):
    if isinstance(value, (list, tuple)):
        return [_listed(v) for v in value]
    return value


def native_bfloat16() -> bool:
    """Whether this machine computes bfloat16 natively (how ``precision="auto"`` decides).

    GPU: compute capability 8.0 or newer (Ampere+ tensor cores). CPU: the
    ``avx512_bf16`` or ``amx_bf16`` flag in ``/proc/cpuinfo`` (x86 Linux), which
    oneDNN uses for bf16 matmuls and convolutions at about twice the fp32 peak.
    """
    return _native_bfloat16()


@functools.lru_cache(maxsize=1)
def _native_bfloat16() -> bool:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return True
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str | None) -> str:
    """None -> the global Keras dtype policy's precision; "auto" -> bfloat16 where native, else float32."""
    if precision is None:
        import keras

        name = keras.config.dtype_policy().name
        return {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "float16": "float16",
                "bfloat16": "bfloat16"}.get(name, "float32")
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, 'auto' or None; received {precision!r}.")
    return precision


@contextlib.contextmanager
def precision_scope(precision: str):
    """Builds the layers created inside with the Keras mixed policy of ``precision``.

    "bfloat16" -> ``mixed_bfloat16`` (bf16 compute, float32 variables), "float16"
    -> ``mixed_float16``; the global policy is restored on exit.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_POLICY_OF[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """Settings every detector shares (API.md, "Builders").

    Args:
        num_classes: object classes (labels 0..num_classes-1).
        bounding_box_format: format of ground-truth and predicted boxes.
        image_size: (height, width) of the network canvas for the fixed-size
            resize rules; None where the architecture takes any size.
        class_names: optional names of the classes.
        resize: how raw images become the network input, inside the graph:
            "stretch", "letterbox", "pad", "min_max" or "none" (API.md).
        min_size, max_size: the "min_max" rule's shorter-side target and
            longer-side bound (torchvision: 800, 1333).
        size_divisible: "min_max" pads the canvas to a multiple of this.
        precision: "float32", "bfloat16" or "float16" network compute; None
            takes the global Keras dtype policy, "auto" bfloat16 where the
            hardware computes it natively (``native_bfloat16``).
        pixel_scale, pixel_mean, pixel_std: the network input is
            ``(pixels * scale - mean) / std``; None: the backbone's own
            normalisation (ImageNet statistics, 0..1, ...).
        max_detections: rows of the output dict (K).
        fine_tune: the weights outside the classifier layers are pretrained
            (``kdet.load(name, num_classes=k)`` sets it): every batch norm
            keeps its pretrained statistics, scale and shift while the rest
            trains (``Detector.freeze_batch_norm``). False: training from scratch.
    """

    num_classes: int
    bounding_box_format: str = "xyxy"
    image_size: tuple[int, int] | None = None
    class_names: tuple[str, ...] | None = None
    resize: str = "stretch"
    min_size: int | None = None
    max_size: int | None = None
    size_divisible: int = SIZE_DIVISIBLE
    precision: str | None = None
    pixel_scale: float | None = None
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None
    max_detections: int = 100
    fine_tune: bool = False

    #: Old setting names still accepted (with a deprecation message): {old: new}.
    aliases: ClassVar[Mapping[str, str]] = {}
    #: The multiple the fixed canvas must be divisible by (the coarsest stride).
    size_multiple: ClassVar[int] = 1

    # ------------------------------------------------------------ creation
    @classmethod
    def create(cls, **kwargs) -> "DetectorConfig":
        """Builds a config from keyword settings: aliases mapped, unknown keys rejected."""
        kwargs = dict(kwargs)
        for old, new in cls.aliases.items():
            if old in kwargs:
                warnings.warn(f"{cls.__name__.removesuffix('Config')}: {old!r} is deprecated; use {new!r}.",
                              DeprecationWarning, stacklevel=4)
                value = kwargs.pop(old)
                if kwargs.get(new, value) != value:
                    raise ValueError(f"Both {old!r} (deprecated) and {new!r} were given, with different values.")
                kwargs[new] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known | set(cls.aliases)), n=3, cutoff=0.5)
                hints.append(f"{key!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
            raise ValueError(f"Unknown {cls.__name__.removesuffix('Config')} setting(s): {', '.join(hints)}. "
                             f"Known settings: {', '.join(sorted(known))}.")
        if "num_classes" not in kwargs and any(f.name == "num_classes" and f.default is dataclasses.MISSING
                                               for f in dataclasses.fields(cls)):
            raise ValueError(f"{cls.__name__.removesuffix('Config')} needs num_classes.")
        for field in dataclasses.fields(cls):
            if _is_keras_field(field) and isinstance(kwargs.get(field.name), dict):
                import keras

                kwargs[field.name] = keras.saving.deserialize_keras_object(kwargs[field.name])
        return cls(**{k: _tupled(v) if not isinstance(v, dict) else v for k, v in kwargs.items()})

    def __post_init__(self):
        self._set("num_classes", check_positive_int("num_classes", self.num_classes))
        self._set("bounding_box_format", check_box_format(self.bounding_box_format))
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize must be one of {RESIZE_RULES}; received {self.resize!r}.")
        self._set("precision", resolve_precision(self.precision))
        self.resolve()
        self._validate_shared()
        self.validate()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def resolve(self) -> None:
        """Fills preset-dependent settings left as None (subclasses override; call ``_set``)."""

    def validate(self) -> None:
        """Checks architecture-specific settings (subclasses override)."""

    def _validate_shared(self) -> None:
        if self.image_size is not None:
            self._set("image_size", check_image_size(self.image_size, multiple_of=self.size_multiple))
        if self.class_names is not None:
            names = tuple(str(c) for c in self.class_names)
            if len(names) != self.num_classes:
                raise ValueError(f"class_names has {len(names)} names but num_classes is {self.num_classes}.")
            self._set("class_names", names)
        if self.resize == "min_max":
            lo, hi = (self.min_size or MIN_MAX_DEFAULTS[0], self.max_size or MIN_MAX_DEFAULTS[1])
            self._set("min_size", check_positive_int("min_size", lo))
            self._set("max_size", check_positive_int("max_size", hi))
            if self.max_size < self.min_size:
                raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size}).")
        elif self.min_size is not None or self.max_size is not None:
            raise ValueError(f"min_size / max_size apply to resize='min_max' only; received resize={self.resize!r}.")
        elif self.resize != "none" and self.image_size is None:
            raise ValueError(f"resize={self.resize!r} needs an image_size (the network canvas).")
        check_positive_int("size_divisible", self.size_divisible)
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 3 or (name == "pixel_std" and min(value) <= 0):
                    raise ValueError(f"{name} must be 3 numbers (std > 0); received {value!r}.")
                self._set(name, tuple(float(v) for v in value))
        if self.pixel_scale is not None:
            self._set("pixel_scale", float(self.pixel_scale))
        if self.resize == "min_max" and self.size_divisible % self.size_multiple:
            raise ValueError(f"size_divisible must be a multiple of {self.size_multiple}; "
                             f"received {self.size_divisible}.")
        self._set("max_detections", check_positive_int("max_detections", self.max_detections))
        if not isinstance(self.fine_tune, bool):
            raise ValueError(f"fine_tune must be True or False; received {self.fine_tune!r}.")

    # ------------------------------------------------------------ access
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (Keras objects serialised), the input of ``create``."""
        import keras

        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if _is_keras_field(field) and value is not None and not isinstance(value, str):
                # Through JSON: the form a saved and reloaded config has (lists, not tuples).
                value = json.loads(json.dumps(keras.saving.serialize_keras_object(value)))
            out[field.name] = _listed(value)
        return out

    def replace(self, **changes) -> "DetectorConfig":
        """A copy with ``changes`` applied (validated like ``create``)."""
        return type(self).create(**{**self.to_dict(), **changes})

    def pixel_normalization(self, default: dict) -> dict:
        """``default`` (the backbone's {"scale", "mean", "std"}) with the pixel_* settings applied."""
        out = dict(default)
        for key in ("scale", "mean", "std"):
            if getattr(self, f"pixel_{key}") is not None:
                out[key] = getattr(self, f"pixel_{key}")
        return out

    @property
    def fixed_canvas(self) -> bool:
        """Whether the network input has one fixed size (every rule but "min_max" and "none")."""
        return self.resize not in ("min_max", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NMSConfig(DetectorConfig):
    """Settings of detectors that end in class-aware NMS (every architecture but cascades).

    Args:
        score_threshold: detections scoring below this are dropped.
        nms_iou_threshold: IoU above which a lower-scoring box of the same class is suppressed.
        soft_nms_sigma: > 0 for Gaussian soft-NMS (Bodla et al. 2017) instead of hard NMS,
            in TensorFlow's convention (decay ``exp(-0.5 * iou**2 / sigma)``, half the paper's sigma).
        class_agnostic: one NMS over all classes per image: a selected box suppresses (or decays)
            overlapping boxes of every class (automl's ``postprocess_global``), not only its own.
    """

    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    soft_nms_sigma: float = 0.0
    class_agnostic: bool = False

    def _validate_shared(self) -> None:
        super()._validate_shared()
        self._set("score_threshold", check_probability("score_threshold", self.score_threshold))
        self._set("nms_iou_threshold", check_probability("nms_iou_threshold", self.nms_iou_threshold))
        if not float(self.soft_nms_sigma) >= 0:
            raise ValueError(f"soft_nms_sigma must be >= 0; received {self.soft_nms_sigma!r}.")
        self._set("soft_nms_sigma", float(self.soft_nms_sigma))
        if not isinstance(self.class_agnostic, bool):
            raise ValueError(f"class_agnostic must be True or False; received {self.class_agnostic!r}.")


def field_names(config_class) -> list[str]:
    """The settings a config class holds, in declaration order."""
    return [f.name for f in dataclasses.fields(config_class)]


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """A model's training recipe: optimizer, peak learning rate at ``batch_size``, warm-up.

    Each detector declares its own (``Detector.training_recipe()``); ``kdet.training``
    scales the rate linearly with the batch size (Goyal et al. 2017).
    """

    optimizer: str
    learning_rate: float
    batch_size: int
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_steps: int = 500
    source: str = ""


#: Small models trained from scratch (the tiny presets, custom detectors): Adam with the peak
#: rate of ``Detector.default_optimizer``, which the tiny configurations are tested with.
SCRATCH_RECIPE = TrainingRecipe("adam", 1e-3, 8, 0.0, 0.9, 100, "kdet Detector.default_optimizer")
