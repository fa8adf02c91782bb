"""``kdet.models.MTCNN``: the pretrained face detector with 5 landmarks.

Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016 (arXiv:1604.02878).
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.detector import Detector
from kdet.models.mtcnn import cascade
from kdet.models.mtcnn.networks import build_onet, build_pnet, build_rnet
from kdet.validation import check_images, check_positive_int, check_probability

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


@keras.saving.register_keras_serializable(package="kdet")
class MTCNN(Detector):
    """Multi-task cascaded face detector (PNet -> RNet -> ONet) with landmarks.

    Takes raw RGB pixels (B, H, W, 3) in 0..255 and returns the kdet output
    dict plus ``landmarks`` (B, K, 5, 2): (x, y) of left eye, right eye,
    nose, mouth left, mouth right. Label 0 is "face". A batch of same-size
    images runs as one compiled call (XLA or a tf.function graph, see
    ``jit_compile``); each new image size compiles once.

    Args:
        min_face_size: smallest face to find, in pixels (> 0).
        thresholds: PNet, RNet, ONet face-probability thresholds, each in (0, 1).
        scale_factor: pyramid ratio between levels, in (0, 1).
        weights: "default" (the original authors' weights, packaged with
            kdet), None (random init), or a folder holding
            ``pnet/rnet/onet.weights.h5``.
        nms_thresholds: (PNet per scale, PNet cross scale, RNet, ONet "min").
        pnet_top_k: best PNet cells per pyramid level (static candidate budget).
        rnet_candidates: proposals passed to RNet.
        onet_candidates: RNet survivors passed to ONet.
        max_detections: K, rows of the output.
        max_pyramid_side: the largest pyramid level's long side is capped
            at this many pixels (bounded memory on huge images).
        greedy_nms: classic greedy NMS (True) or the ``mtcnn`` package's
            "suppressed by any higher box" rule (False, the default, for parity).
        jit_compile: how ``detect()`` / ``predict()`` run the cascade: True,
            one XLA-compiled function per image size (static shapes); False,
            one ``tf.function`` graph per image size using TensorFlow's
            ResizeArea / CropAndResize kernels and candidate sets trimmed to
            the valid ones (same detections); "auto" (default): XLA when a
            GPU is visible, the graph on CPU, where XLA:CPU's convolutions
            are several times slower than TensorFlow's for these networks.
        width: channel multiplier of the three networks (1.0 for the
            pretrained weights; smaller for quick training experiments).
        pnet, rnet, onet: optional prebuilt networks (e.g. trained with
            ``kdet.models.mtcnn.training``); they override ``width``.
        bounding_box_format: format of the output boxes.

    Example:
        >>> model = MTCNN()                                   # doctest: +SKIP
        >>> faces = model.detect("photo.jpg")                 # doctest: +SKIP
        >>> faces["boxes"], faces["landmarks"]                # doctest: +SKIP
    """

    def __init__(self, min_face_size: float = 20, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 scale_factor: float = SCALE_FACTOR, weights: str | os.PathLike | None = "default",
                 nms_thresholds: Sequence[float] = DEFAULT_NMS, pnet_top_k: int = 1000,
                 rnet_candidates: int = 256, onet_candidates: int = 64, max_detections: int = 64,
                 max_pyramid_side: int = 2048, greedy_nms: bool = False,
                 jit_compile: bool | str = "auto", width: float = 1.0,
                 pnet: keras.Model | None = None, rnet: keras.Model | None = None,
                 onet: keras.Model | None = None, bounding_box_format: str = "xyxy",
                 name: str = "mtcnn", **kwargs):
        kwargs.pop("num_classes", None)
        kwargs.pop("image_size", None)
        kwargs.pop("class_names", None)
        super().__init__(num_classes=1, bounding_box_format=bounding_box_format,
                         class_names=["face"], name=name, **kwargs)
        self.min_face_size = _check_min_face_size(min_face_size)
        self.thresholds = _check_unit_tuple("thresholds", thresholds, 3, allow_one=False)
        self.scale_factor = check_probability("scale_factor", scale_factor, allow_zero=False,
                                              allow_one=False)
        self.nms_thresholds = _check_unit_tuple("nms_thresholds", nms_thresholds, 4, allow_one=True)
        self.pnet_top_k = check_positive_int("pnet_top_k", pnet_top_k)
        self.rnet_candidates = check_positive_int("rnet_candidates", rnet_candidates)
        self.onet_candidates = check_positive_int("onet_candidates", onet_candidates)
        self.max_detections = check_positive_int("max_detections", max_detections)
        self.max_pyramid_side = check_positive_int("max_pyramid_side", max_pyramid_side)
        if self.max_pyramid_side < 12:
            raise ValueError(f"max_pyramid_side must be >= 12 (PNet's cell); received {max_pyramid_side}.")
        self.greedy_nms = bool(greedy_nms)
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto'; received {jit_compile!r}.")
        self.jit_compile = jit_compile
        if not float(width) > 0:
            raise ValueError(f"width must be a positive channel multiplier; received {width!r}.")
        self.width = float(width)
        self.pnet = pnet if pnet is not None else build_pnet(self.width)
        self.rnet = rnet if rnet is not None else build_rnet(self.width)
        self.onet = onet if onet is not None else build_onet(self.width)
        # Per-size compiled functions: kept out of Keras/TF tracking so the model
        # still exports (a dict with tuple keys cannot be checkpointed).
        object.__setattr__(self, "_compiled", {})
        self.built = True  # the three networks are built functional models
        self._detect_fn = self._run_compiled
        if weights is not None:
            self.load_network_weights(weights)

    # ------------------------------------------------------------- weights
    def load_network_weights(self, weights: str | os.PathLike = "default") -> None:
        """Loads PNet/RNet/ONet weights: "default" (packaged) or a folder of ``*.weights.h5``."""
        folder = pretrained_dir() if str(weights) == "default" else pathlib.Path(weights)
        if str(weights) == "default" and self.width != 1.0:
            raise ValueError(f"The pretrained weights need width=1.0; received width={self.width}.")
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
        return cascade.pyramid_scales(height, width, self.min_face_size, self.scale_factor,
                                      self.max_pyramid_side)

    def raw_outputs(self, images, training=False, xla: bool = True) -> dict:
        """Every stage's candidates: {"pnet"|"rnet": (scores, valid, boxes), "onet": (+landmarks)}.

        Boxes are xyxy input pixels; PNet/RNet boxes are the squared boxes fed
        to the next stage. Used by ``call`` and by hard-sample mining.
        ``xla=False`` selects the graph mode of ``cascade`` (TF kernels,
        trimmed candidate sets of dynamic length; not XLA-compilable).
        """
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError(
                "MTCNN needs images with a static height and width (its pyramid is built at "
                f"trace time); received shape {images.shape}. Batch same-size images, or use "
                "model.detect()/model.predict() on arrays."
            )
        scales = self.scales_for(height, width)
        if not scales:
            return {}
        x = cascade.normalize(images)
        thr, nms, greedy = self.thresholds, self.nms_thresholds, self.greedy_nms
        out = {"pnet": cascade.pnet_stage(
            self.pnet, x, scales, threshold=thr[0], nms_per_scale=nms[0], nms_cross_scale=nms[1],
            top_k_per_scale=self.pnet_top_k, max_candidates=self.rnet_candidates, greedy=greedy,
            xla=xla)}
        _, valid, boxes = out["pnet"]
        out["rnet"] = cascade.rnet_stage(self.rnet, x, boxes, valid, threshold=thr[1], nms=nms[2],
                                         max_candidates=self.onet_candidates, greedy=greedy, xla=xla)
        _, valid, boxes = out["rnet"]
        out["onet"] = cascade.onet_stage(self.onet, x, boxes, valid, threshold=thr[2], nms=nms[3],
                                         max_detections=self.max_detections, greedy=greedy, xla=xla)
        return out

    def postprocess(self, raw, height: int = None, width: int = None, batch=None) -> dict:
        """ONet candidates -> the padded output dict (xyxy pixels, clipped to the image)."""
        if "onet" not in raw:
            return cascade.empty_output(batch, self.max_detections)
        scores, valid, boxes, landmarks = raw["onet"]
        scores, valid, boxes, landmarks = cascade.pad_candidates(
            self.max_detections, scores, valid, boxes, landmarks)
        boxes = cascade.clip_to_image(boxes, height, width)
        return {
            "boxes": tf.where(valid[..., None], boxes, 0.0),
            "scores": tf.where(valid, scores, 0.0),
            "labels": tf.where(valid, 0, -1),
            "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
            "landmarks": tf.where(valid[..., None, None], landmarks, 0.0),
        }

    def call(self, images, training=None):
        return self._forward(images, xla=True)

    def _forward(self, images, xla: bool) -> dict:
        """The whole cascade and output dict; ``xla`` picks the cascade mode."""
        images = tf.convert_to_tensor(images)
        if images.shape.rank != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape (batch, height, width, 3); received {images.shape}.")
        raw = self.raw_outputs(images, xla=xla)
        out = self.postprocess(raw, images.shape[1], images.shape[2], batch=tf.shape(images)[0])
        return self.detections_to_input(images, out)

    def uses_xla(self) -> bool:
        """Whether ``detect()`` / ``predict()`` run XLA-compiled (see ``jit_compile``)."""
        if self.jit_compile == "auto":
            return bool(tf.config.list_logical_devices("GPU"))
        return bool(self.jit_compile)

    def _run_compiled(self, images):
        """Runs the cascade through one compiled function per image size (reused across calls)."""
        images = tf.convert_to_tensor(images, tf.float32)
        xla = self.uses_xla()
        key = (int(images.shape[1]), int(images.shape[2]), xla)
        fn = self._compiled.get(key)
        if fn is None:
            # One function per size: the pyramid is built from the static size at trace time.
            fn = tf.function(lambda x: self._forward(x, xla=xla), jit_compile=xla,
                             reduce_retracing=True)
            self._compiled[key] = fn
        return fn(images)

    def predict(self, x, batch_size: int | None = None, verbose="auto", steps=None,
                callbacks=None) -> dict:
        """Detections for a batch of same-size images (arrays) or a ``tf.data`` input.

        Arrays go through the per-size compiled cascade (see ``jit_compile``) in batches of
        ``batch_size`` (default 32); other inputs use ``keras.Model.predict``.
        """
        if isinstance(x, (np.ndarray, tf.Tensor, list)):
            arr = check_images(x.numpy() if isinstance(x, tf.Tensor) else np.asarray(x))
            step = check_positive_int("batch_size", batch_size or 32)
            parts = [self._run_compiled(arr[i:i + step].astype(np.float32))
                     for i in range(0, len(arr), step)]
            return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}
        return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps,
                               callbacks=callbacks)

    def compute_loss(self, *args, **kwargs):
        raise ValueError(
            "MTCNN trains stage by stage (PNet, then RNet, then ONet) on generated crops, not with "
            "MTCNN.fit(); use kdet.models.mtcnn.training.train_cascade(samples)."
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "min_face_size": self.min_face_size,
            "thresholds": list(self.thresholds),
            "scale_factor": self.scale_factor,
            "nms_thresholds": list(self.nms_thresholds),
            "pnet_top_k": self.pnet_top_k,
            "rnet_candidates": self.rnet_candidates,
            "onet_candidates": self.onet_candidates,
            "max_detections": self.max_detections,
            "max_pyramid_side": self.max_pyramid_side,
            "greedy_nms": self.greedy_nms,
            "jit_compile": self.jit_compile,
            "width": self.width,
            "bounding_box_format": self.bounding_box_format,
            "pnet": keras.saving.serialize_keras_object(self.pnet),
            "rnet": keras.saving.serialize_keras_object(self.rnet),
            "onet": keras.saving.serialize_keras_object(self.onet),
            # Weights travel in the .keras file, not through the config.
            "weights": None,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("pnet", "rnet", "onet"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


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
