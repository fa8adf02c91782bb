"""Darknet ``.cfg`` + ``.weights`` -> kdet YOLOv3 (the official pjreddie.com checkpoints).

The ``.weights`` format (darknet ``src/parser.c``, ``save_weights``): a header
of int32 ``major, minor, revision`` then ``seen`` (int64 when
``major * 10 + minor >= 2``, else int32), then for every ``[convolutional]``
section in cfg order float32 arrays: with batch norm ``beta (n), gamma (n),
mean (n), variance (n)``, else ``bias (n)``; then the kernel in
(out, in, height, width) order. kdet stores kernels as (height, width, in, out).

The cfg must have the topology of the official ``yolov3.cfg`` or
``yolov3-tiny.cfg`` (any class count, anchors and input size); its layers are
mapped by position onto ``YOLOV3.darknet_conv_order()``.

Example:
    >>> model = convert_darknet("yolov3.cfg", "yolov3.weights")     # doctest: +SKIP
    >>> model.detect("dog.jpg", score_threshold=0.5)                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from kdet.zoo.locate import package_file

SUPPORTED_SECTIONS = ("net", "convolutional", "maxpool", "upsample", "route", "shortcut", "yolo")
# The packaged cfg of each kdet backbone with a Darknet layout.
PACKAGED_CFGS = {"darknet53": "assets/darknet/yolov3.cfg", "darknet_tiny": "assets/darknet/yolov3-tiny.cfg"}
COCO_NAMES = "assets/darknet/coco.names"


@dataclasses.dataclass
class Section:
    """One ``[type]`` block of a Darknet cfg; ``line`` is 1-based."""

    type: str
    line: int
    options: dict

    def get(self, key: str, default=None, cast=int):
        value = self.options.get(key, default)
        return value if value is None else cast(value)


def parse_cfg(path: str | os.PathLike) -> list[Section]:
    """Parses a Darknet cfg into sections; refuses layer types kdet cannot build.

    Raises:
        ValueError: naming the unsupported ``[type]``, its layer index and line.
    """
    sections: list[Section] = []
    text = pathlib.Path(path).read_text()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            kind = line.strip("[]").strip().lower()
            if kind not in SUPPORTED_SECTIONS:
                raise ValueError(
                    f"{path}, line {number}: unsupported Darknet layer [{kind}] (layer {len(sections) - 1}); "
                    f"kdet converts cfgs made of {', '.join(f'[{s}]' for s in SUPPORTED_SECTIONS)}."
                )
            sections.append(Section(kind, number, {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ValueError(f"{path}, line {number}: cannot parse {raw!r} (expected [section] or key=value).")
    if not sections or sections[0].type != "net":
        raise ValueError(f"{path} does not start with a [net] section; is it a Darknet cfg?")
    return sections


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def conv_specs(sections: list[Section]) -> list[dict]:
    """Per ``[convolutional]`` section (cfg order): filters, size, input channels, batch norm, line."""
    net = sections[0]
    channels = [net.get("channels", 3)]  # channels[i + 1] = output channels of layer i
    specs = []
    for index, section in enumerate(sections[1:]):
        previous = channels[-1]
        if section.type == "convolutional":
            out = section.get("filters", 1)
            specs.append(dict(layer=index, line=section.line, filters=out, size=section.get("size", 1),
                              in_channels=previous, batch_normalize=bool(section.get("batch_normalize", 0))))
        elif section.type == "route":
            out = sum(channels[1 + (v if v >= 0 else index + v)] for v in _ints(section.options["layers"]))
        else:  # maxpool, upsample, shortcut, yolo keep the channel count
            out = previous
        channels.append(out)
    return specs


def conv_weight_count(spec: dict) -> int:
    """Float32 values of one conv in the ``.weights`` file."""
    n = spec["filters"]
    return n * (4 if spec["batch_normalize"] else 1) + n * spec["in_channels"] * spec["size"] ** 2


def topology(sections: list[Section]) -> list[tuple]:
    """What defines the graph, without class count, anchors or input size (for matching cfgs)."""
    layers = sections[1:]
    signature = []
    for index, section in enumerate(layers):
        if section.type == "convolutional":
            feeds_yolo = index + 1 < len(layers) and layers[index + 1].type == "yolo"
            signature.append(("convolutional", None if feeds_yolo else section.get("filters"),
                              section.get("size", 1), section.get("stride", 1), section.get("pad", 0),
                              section.get("batch_normalize", 0), section.options.get("activation", "logistic")))
        elif section.type == "route":
            signature.append(("route", tuple(v if v >= 0 else index + v for v in _ints(section.options["layers"]))))
        elif section.type == "shortcut":
            origin = section.get("from")
            signature.append(("shortcut", origin if origin >= 0 else index + origin,
                              section.options.get("activation", "linear")))
        elif section.type == "yolo":
            signature.append(("yolo", tuple(_ints(section.options["mask"]))))
        else:
            signature.append((section.type, section.get("size", 2), section.get("stride", 2)))
    return signature


def yolo_settings(sections: list[Section]) -> dict:
    """Classes, anchors per level (finest first) and input size of a YOLO cfg."""
    yolos = [s for s in sections if s.type == "yolo"]
    if not yolos:
        raise ValueError("The cfg has no [yolo] layer; kdet converts YOLOv3-style detectors only.")
    classes = {s.get("classes", 80) for s in yolos}
    if len(classes) != 1:
        raise ValueError(f"The [yolo] layers disagree on classes: {sorted(classes)}.")
    levels = []
    for section in yolos:  # cfg order: coarsest level first
        flat = [float(v) for v in section.options["anchors"].split(",") if v.strip()]
        pairs = list(zip(flat[0::2], flat[1::2]))
        levels.append([pairs[m] for m in _ints(section.options["mask"])])
    net = sections[0]
    return {"num_classes": classes.pop(), "anchors": levels[::-1],
            "image_size": (net.get("height", 416), net.get("width", 416))}


def _backbone_of(sections: list[Section], cfg_path) -> str:
    signature = topology(sections)
    for backbone, relative in PACKAGED_CFGS.items():
        if topology(parse_cfg(package_file(relative))) == signature:
            return backbone
    raise ValueError(f"{cfg_path} parses, but its layer graph is neither the official yolov3.cfg nor "
                     f"yolov3-tiny.cfg topology, the Darknet layouts kdet's YOLOV3 reproduces.")


def read_darknet_weights(weights_path: str | os.PathLike, specs: list[dict], cfg_name: str = "the cfg") -> list:
    """Reads every conv's arrays; checks the file length before returning anything.

    Returns:
        list (cfg order) of dicts: ``kernel`` (h, w, in, out) and either
        ``bias`` or ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``.

    Raises:
        ValueError: when the file holds a different number of weights than the
            cfg needs (expected vs found), or its header is truncated.
    """
    data = pathlib.Path(weights_path).read_bytes()
    if len(data) < 12:
        raise ValueError(f"{weights_path} is {len(data)} bytes long, too short for a Darknet header.")
    major, minor, _ = np.frombuffer(data[:12], np.int32)
    header = 20 if (major * 10 + minor >= 2 and major < 1000 and minor < 1000) else 16
    expected = sum(conv_weight_count(s) for s in specs)
    found = (len(data) - header) / 4
    if found != expected:
        found_text = f"{found:.2f}".rstrip("0").rstrip(".")
        raise ValueError(
            f"{weights_path} holds {found_text} float32 weights after its {header}-byte header, but {cfg_name} "
            f"needs {expected} ({len(specs)} convolutional layers): expected {header + 4 * expected} bytes, "
            f"found {len(data)}. Is this the .weights file of this cfg?"
        )
    values = np.frombuffer(data, np.float32, offset=header)
    arrays, position = [], 0

    def take(count):
        nonlocal position
        position += count
        return values[position - count:position]

    for spec in specs:
        n, k, c = spec["filters"], spec["size"], spec["in_channels"]
        entry = {}
        if spec["batch_normalize"]:
            entry["beta"], entry["gamma"] = take(n), take(n)
            entry["moving_mean"], entry["moving_variance"] = take(n), take(n)
        else:
            entry["bias"] = take(n)
        entry["kernel"] = take(n * c * k * k).reshape(n, c, k, k).transpose(2, 3, 1, 0)
        arrays.append(entry)
    return arrays


def _find_layer(model, name: str):
    """A layer by name anywhere in ``model`` (nested functional models included)."""
    stack = [model]
    while stack:
        current = stack.pop()
        for layer in getattr(current, "layers", []):
            if layer.name == name:
                return layer
            if hasattr(layer, "layers"):
                stack.append(layer)
    return None


def _model_backbone(model) -> str | None:
    """The backbone name of a kdet YOLOV3 (None for a custom Keras backbone)."""
    config = getattr(model, "config", None)
    backbone = getattr(config, "backbone", None)
    return backbone if isinstance(backbone, str) else None


def _resolve_cfg(model, cfg):
    if cfg is not None and hasattr(cfg, "weights"):  # a zoo ModelEntry (converter(model, path, entry))
        options = cfg.weights.options if cfg.weights is not None else {}
        cfg = options.get("cfg")
        if cfg is not None and not os.path.isabs(cfg):
            return package_file(cfg)
    if cfg is None:
        backbone = _model_backbone(model)
        if backbone not in PACKAGED_CFGS:
            raise ValueError(f"Pass cfg_path: kdet ships cfgs for the backbones {sorted(PACKAGED_CFGS)} only "
                             f"(the model uses {backbone!r}).")
        return package_file(PACKAGED_CFGS[backbone])
    return pathlib.Path(cfg)


def load_darknet_weights(model, weights_path: str | os.PathLike, cfg_path=None) -> None:
    """Loads an official Darknet ``.weights`` file into a kdet ``YOLOV3`` in place.

    Args:
        model: a ``kdet.models.YOLOV3`` with ``backbone="darknet53"`` or
            ``"darknet_tiny"`` and the cfg's class count.
        weights_path: the ``.weights`` file.
        cfg_path: its ``.cfg``; default the packaged cfg of the model's
            backbone. A zoo ``ModelEntry`` is accepted too (its
            ``weights.options["cfg"]`` names a packaged cfg), which is how
            ``kdet.load`` calls this converter.

    Raises:
        ValueError: unsupported cfg layers (with line), a cfg topology the
            model does not have, classes/anchors/shape mismatches, or a file
            of the wrong length (expected vs found). Nothing is assigned
            unless every array fits.
    """
    cfg = _resolve_cfg(model, cfg_path)
    sections = parse_cfg(cfg)
    backbone = _backbone_of(sections, cfg)
    if _model_backbone(model) != backbone:
        raise ValueError(f"{cfg} describes a {backbone} YOLOv3 but the model was built with "
                         f"backbone={_model_backbone(model)!r}.")
    settings = yolo_settings(sections)
    if settings["num_classes"] != model.num_classes:
        raise ValueError(f"{cfg} has classes={settings['num_classes']} but the model has "
                         f"num_classes={model.num_classes}.")
    model_anchors = [[tuple(map(float, a)) for a in level] for level in model.config.anchors]
    if model_anchors != [[tuple(a) for a in level] for level in settings["anchors"]]:
        raise ValueError(f"{cfg} uses anchors {settings['anchors']} but the model was built with "
                         f"{model_anchors}; build it with anchors= from the cfg (see convert_darknet).")
    specs = conv_specs(sections)
    arrays = read_darknet_weights(weights_path, specs, cfg_name=str(cfg))
    assignments = []
    for prefix, spec, values in zip(model.darknet_conv_order(), specs, arrays, strict=True):
        conv = _find_layer(model.network, f"{prefix}_conv")
        bn = _find_layer(model.network, f"{prefix}_bn")
        targets = {"kernel": conv.kernel}
        if spec["batch_normalize"]:
            targets.update(gamma=bn.gamma, beta=bn.beta, moving_mean=bn.moving_mean,
                           moving_variance=bn.moving_variance)
        else:
            targets["bias"] = conv.bias
        for key, variable in targets.items():
            if tuple(variable.shape) != values[key].shape:
                raise ValueError(f"{cfg}, line {spec['line']} (layer {spec['layer']}): {key} of shape "
                                 f"{values[key].shape} does not fit {variable.path} {tuple(variable.shape)}.")
            assignments.append((variable, values[key]))
    for variable, value in assignments:
        variable.assign(value)


def convert_darknet(cfg_path: str | os.PathLike, weights_path: str | os.PathLike, class_names=None,
                    image_size=None, **kwargs):
    """Builds the kdet ``YOLOV3`` a Darknet cfg describes and loads its ``.weights``.

    Args:
        cfg_path: a cfg with the topology of ``yolov3.cfg`` or ``yolov3-tiny.cfg``.
        weights_path: the matching ``.weights`` file.
        class_names: class names; default the COCO names when the cfg has 80 classes.
        image_size: network input; default the cfg's ``[net]`` width/height.
        **kwargs: more ``YOLOV3`` arguments (thresholds, box format...).

    Returns:
        A ``kdet.models.YOLOV3`` (a ``keras.Model``) giving Darknet's outputs.

    Example:
        >>> model = convert_darknet("yolov3-tiny.cfg", "yolov3-tiny.weights")   # doctest: +SKIP
    """
    from kdet.models.yolov3 import YOLOV3

    sections = parse_cfg(cfg_path)
    backbone = _backbone_of(sections, cfg_path)
    settings = yolo_settings(sections)
    if class_names is None and settings["num_classes"] == 80:
        class_names = package_file(COCO_NAMES).read_text().split("\n")[:80]
    model = YOLOV3(settings["num_classes"], backbone=backbone, image_size=image_size or settings["image_size"],
                   anchors=settings["anchors"], anchor_image_size=settings["image_size"],
                   class_names=class_names, **kwargs)
    load_darknet_weights(model, weights_path, cfg_path)
    return model
