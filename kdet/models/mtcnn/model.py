"""``kdet.models.MTCNN``: the pretrained face detector with 5 landmarks.

Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016 (arXiv:1604.02878).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import pathlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kdet.config import DetectorConfig, keras_field
from kdet.detector import Detector
from kdet.models.mtcnn import cascade
from kdet.models.mtcnn.networks import build_onet, build_pnet, build_rnet
from kdet.validation import check_positive_int, check_probability

#: Defaults of the paper / the mtcnn package: PNet, RNet, ONet score thresholds.
#: (The package's ONet default is 0.8; the paper's MATLAB code and this API use 0.7.)
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
#: NMS overlaps: PNet per scale, PNet across scales, RNet (IoU), ONet ("min" overlap).
DEFAULT_NMS = (0.5, 0.7, 0.7, 0.7)
SCALE_FACTOR = 0.709
WEIGHT_FILES = {"pnet": "pnet.weights.h5", "rnet": "rnet.weights.h5", "onet": "onet.weights.h5"}


def pretrained_dir() -> pathlib.Path:
    """Folder of the packaged pretrained weights (``kdet/assets/mtcnn``)."""
    return pathlib.Path(str(importlib.resources.files("kdet") / "assets" / "mtcnn"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MTCNNConfig(DetectorConfig):
    """MTCNN's settings (one class, "face"; images go in at their own size: ``resize="none"``).

    Args:
        min_face_size: smallest face to find, in pixels (> 0).
        thresholds: PNet, RNet, ONet face-probability thresholds, each in (0, 1).
        scale_factor: pyramid ratio between levels, in (0, 1).
        nms_thresholds: (PNet per scale, PNet cross scale, RNet, ONet "min").
        pnet_top_k: best PNet cells per pyramid level (static candidate budget).
        rnet_candidates: proposals passed to RNet.
        onet_candidates: RNet survivors passed to ONet.
        max_detections: K, rows of the output (64).
        max_pyramid_side: the largest pyramid level's long side is capped at this.
        greedy_nms: classic greedy NMS (True) or the ``mtcnn`` package's
            "suppressed by any higher box" rule (False, the default, for parity).
        jit_compile: True (XLA, static shapes), False (TensorFlow's graph kernels
            and trimmed candidate sets, same detections) or "auto" (XLA on GPU,
            the graph on CPU, where XLA:CPU's convolutions are several times slower).
        width: channel multiplier of the three networks (1.0 for the pretrained weights).
        pnet, rnet, onet: optional prebuilt networks; they override ``width``.
    """

    num_classes: int = 1
    class_names: tuple[str, ...] | None = ("face",)
    resize: str = "none"
    max_detections: int = 64
    min_face_size: float = 20
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    scale_factor: float = SCALE_FACTOR
    nms_thresholds: tuple[float, float, float, float] = DEFAULT_NMS
    pnet_top_k: int = 1000
    rnet_candidates: int = 256
    onet_candidates: int = 64
    max_pyramid_side: int = 2048
    greedy_nms: bool = False
    jit_compile: Any = "auto"
    width: float = 1.0
    pnet: Any = keras_field(None)
    rnet: Any = keras_field(None)
    onet: Any = keras_field(None)

    def validate(self):
        super().validate()
        if self.num_classes != 1 or self.resize != "none":
            raise ValueError(f"MTCNN finds one class (faces) in images at their own size: num_classes must be 1 "
                             f"and resize 'none'; received {self.num_classes}, {self.resize!r}.")
        self._set("min_face_size", _check_min_face_size(self.min_face_size))
        self._set("thresholds", _check_unit_tuple("thresholds", self.thresholds, 3, allow_one=False))
        self._set("scale_factor", check_probability("scale_factor", self.scale_factor, allow_zero=False,
                                                    allow_one=False))
        self._set("nms_thresholds", _check_unit_tuple("nms_thresholds", self.nms_thresholds, 4, allow_one=True))
        for key in ("pnet_top_k", "rnet_candidates", "onet_candidates", "max_pyramid_side"):
            self._set(key, check_positive_int(key, getattr(self, key)))
        if self.max_pyramid_side < 12:
            raise ValueError(f"max_pyramid_side must be >= 12 (PNet's cell); received {self.max_pyramid_side}.")
        self._set("greedy_nms", bool(self.greedy_nms))
        if self.jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto'; received {self.jit_compile!r}.")
        if not float(self.width) > 0:
            raise ValueError(f"width must be a positive channel multiplier; received {self.width!r}.")
        self._set("width", float(self.width))


@keras.saving.register_keras_serializable(package="kdet")
class MTCNN(Detector):
    """Multi-task cascaded face detector (PNet -> RNet -> ONet) with landmarks.

    Takes raw RGB pixels (B, H, W, 3) in 0..255 and returns the kdet output
    dict plus ``landmarks`` (B, K, 5, 2): (x, y) of left eye, right eye,
    nose, mouth left, mouth right. Label 0 is "face". A batch of same-size
    images runs as one compiled call (XLA or a tf.function graph, see
    ``jit_compile``); each new image size compiles once.

    Args:
        weights: "default" (the original authors' weights, packaged with
            kdet), None (random init), or a folder holding
            ``pnet/rnet/onet.weights.h5``. A loading instruction, not a
            setting: ``get_config`` does not keep it (weights travel in the
            ``.keras`` file).
        **settings: every field of ``MTCNNConfig`` (``min_face_size``,
            ``thresholds``, ``scale_factor``, ``nms_thresholds``, candidate
            budgets, ``greedy_nms``, ``jit_compile``, ``width``, prebuilt
            ``pnet``/``rnet``/``onet``, ``bounding_box_format``, ``precision``).

    Example:
        >>> model = MTCNN()                                   # doctest: +SKIP
        >>> faces = model.detect("photo.jpg")                 # doctest: +SKIP
        >>> faces["boxes"], faces["landmarks"]                # doctest: +SKIP
    """

    config_class = MTCNNConfig
    point_outputs = ("landmarks",)
    xla_on_cpu = False
    bfloat16_on_cpu = False  # its small convolutions gain nothing (43 -> 46 ms a photo, 2-core AMX CPU)

    def __init__(self, weights: str | os.PathLike | None = "default", name: str = "mtcnn", **settings):
        super().__init__(name=name, **settings)
        if weights is not None:
            self.load_network_weights(weights)

    @classmethod
    def from_config(cls, config):
        return cls(weights=None, **config)

    def default_pixel_normalization(self) -> dict:
        # The original Caffe models' input: (x - 127.5) / 128.
        return {"scale": cascade.PIXEL_SCALE, "mean": (cascade.PIXEL_MEAN * cascade.PIXEL_SCALE,) * 3}

    def assemble(self):
        cfg = self.config
        self.pnet = cfg.pnet if cfg.pnet is not None else build_pnet(cfg.width)
        self.rnet = cfg.rnet if cfg.rnet is not None else build_rnet(cfg.width)
        self.onet = cfg.onet if cfg.onet is not None else build_onet(cfg.width)

    # ------------------------------------------------------------- weights
    def load_network_weights(self, weights: str | os.PathLike = "default") -> None:
        """Loads PNet/RNet/ONet weights: "default" (packaged) or a folder of ``*.weights.h5``."""
        folder = pretrained_dir() if str(weights) == "default" else pathlib.Path(weights)
        built_from_width = any(getattr(self.config, key) is None for key in WEIGHT_FILES)
        if str(weights) == "default" and self.config.width != 1.0 and built_from_width:
            raise ValueError(f"The pretrained weights need width=1.0; received width={self.config.width}.")
        for attr, filename in WEIGHT_FILES.items():
            path = folder / filename
            if not path.is_file():
                raise ValueError(
                    f"MTCNN weights file not found: {path}. Expected a folder holding "
                    f"{', '.join(WEIGHT_FILES.values())} (see kdet.models.mtcnn.convert)."
                )
            getattr(self, attr).load_weights(str(path))

    def save_network_weights(self, folder: str | os.PathLike) -> None:
        """Writes ``pnet/rnet/onet.weights.h5`` into ``folder`` (the format ``weights=`` reads)."""
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for attr, filename in WEIGHT_FILES.items():
            getattr(self, attr).save_weights(str(folder / filename))

    # ----------------------------------------------------------- inference
    def scales_for(self, height: int, width: int) -> list[float]:
        """The pyramid scales used for an image of this size."""
        cfg = self.config
        return cascade.pyramid_scales(height, width, cfg.min_face_size, cfg.scale_factor, cfg.max_pyramid_side)

    def inference_compiler(self) -> str:
        """``jit_compile``: True -> "xla", False -> "graph", "auto" -> XLA on GPU, the graph on CPU."""
        if self.config.jit_compile == "auto":
            return "xla" if tf.config.list_logical_devices("GPU") else "graph"
        return "xla" if self.config.jit_compile else "graph"

    def uses_xla(self) -> bool:
        """Whether ``detect()`` / ``predict()`` run XLA-compiled (see ``jit_compile``)."""
        return self.inference_compiler() == "xla"

    def network_outputs(self, x, training=False, xla: bool | None = None) -> dict:
        """Every stage's candidates: {"pnet"|"rnet": (scores, valid, boxes), "onet": (+landmarks)}.

        ``x`` is the normalised image batch. Boxes are xyxy input pixels;
        PNet/RNet boxes are the squared boxes fed to the next stage. Used by
        ``call`` and by hard-sample mining. ``xla=False`` selects the graph mode
        of ``cascade`` (TF kernels, trimmed candidate sets of dynamic length;
        not XLA-compilable); None: the mode of the compiled function being
        traced, else the XLA-safe one.
        """
        if xla is None:
            xla = self.active_compiler != "graph"
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            raise ValueError(
                "MTCNN needs images with a static height and width (its pyramid is built at "
                f"trace time); received shape {x.shape}. Batch same-size images, or use "
                "model.detect()/model.predict() on arrays."
            )
        scales = self.scales_for(height, width)
        if not scales:
            return {}
        cfg = self.config
        thr, nms, greedy = cfg.thresholds, cfg.nms_thresholds, cfg.greedy_nms
        x = tf.cast(x, tf.float32)
        out = {"pnet": cascade.pnet_stage(
            self.pnet, x, scales, threshold=thr[0], nms_per_scale=nms[0], nms_cross_scale=nms[1],
            top_k_per_scale=cfg.pnet_top_k, max_candidates=cfg.rnet_candidates, greedy=greedy, xla=xla)}
        _, valid, boxes = out["pnet"]
        out["rnet"] = cascade.rnet_stage(self.rnet, x, boxes, valid, threshold=thr[1], nms=nms[2],
                                         max_candidates=cfg.onet_candidates, greedy=greedy, xla=xla)
        _, valid, boxes = out["rnet"]
        out["onet"] = cascade.onet_stage(self.onet, x, boxes, valid, threshold=thr[2], nms=nms[3],
                                         max_detections=cfg.max_detections, greedy=greedy, xla=xla)
        return out

    def postprocess(self, raw, frame) -> dict:
        """ONet candidates -> the padded output dict (xyxy pixels, clipped to the image)."""
        if "onet" not in raw:
            return cascade.empty_output(tf.shape(frame["scale"])[0], self.config.max_detections)
        height, width = frame["canvas"]
        scores, valid, boxes, landmarks = raw["onet"]
        scores, valid, boxes, landmarks = cascade.pad_candidates(
            self.config.max_detections, scores, valid, boxes, landmarks)
        boxes = cascade.clip_to_image(boxes, height, width)
        return {
            "boxes": tf.where(valid[..., None], boxes, 0.0),
            "scores": tf.where(valid, scores, 0.0),
            "labels": tf.where(valid, 0, -1),
            "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
            "landmarks": tf.where(valid[..., None, None], landmarks, 0.0),
        }

    def compute_losses(self, y, raw, frame):
        raise ValueError(
            "MTCNN trains stage by stage (PNet, then RNet, then ONet) on generated crops, not with "
            "MTCNN.fit(); use kdet.models.mtcnn.training.train_cascade(samples)."
        )


def _check_min_face_size(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"min_face_size must be a positive number of pixels; received {value!r}.") from None
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"min_face_size must be a positive number of pixels; received {value}.")
    return value


def _check_unit_tuple(name: str, values, length: int, allow_one: bool) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != length:
        raise ValueError(f"{name} must be a sequence of {length} numbers in (0, 1); received {values!r}.")
    return tuple(check_probability(f"{name}[{i}]", v, allow_zero=False, allow_one=allow_one)
                 for i, v in enumerate(values))


def load_pretrained(**kwargs) -> MTCNN:
    """The pretrained MTCNN (packaged weights, offline); kwargs go to ``MTCNN``."""
    kwargs.setdefault("weights", "default")
    return MTCNN(**kwargs)
