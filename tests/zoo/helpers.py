"""Helpers of the zoo tests (a helper module, no tests): a local HTTP server,
a torch-free ``torch.save`` zip writer and the fixtures' synthetic weights.

Local server: a real HTTP server on 127.0.0.1 for download tests (no network involved)::

    with LocalServer({"/ckpt.bin": data}) as server:
        kdet.zoo.fetch(server.url("/ckpt.bin"), ...)
        server.hits["/ckpt.bin"]          # how many GETs it answered

Routes map a path to bytes, or to a ``Route`` for special behaviour: a slow
body (to overlap concurrent clients), a truncated body (the connection closes
before ``Content-Length`` bytes are sent), a status code, or a redirect.

``write_state_dict_zip`` writes a ``{name: np.ndarray}`` state dict in
torch.save's zip layout without torch, so CI (no torch) serves realistic
``.pth`` files; ``tests/zoo/test_pth.py`` checks with torch, when installed,
that ``torch.load`` reads these files back exactly.

``synth_weight`` is the shared fixtures' rule for deterministic weights
(``../shared/fixtures/{automl,torchvision}/README.md``).

Darknet references (``tests/zoo/test_darknet.py`` on random weights,
``tests/zoo/test_darknet_real.py`` on the official ones): ``opencv_yolo_raw``
runs OpenCV's Darknet importer up to the convs feeding the ``[yolo]`` layers;
``decode_yolo`` is a NumPy port of Darknet's ``get_yolo_detections``;
``darknet_letterbox`` / ``uncorrect_letterbox`` port ``letterbox_image``
(src/image.c) and ``correct_yolo_boxes`` (src/yolo_layer.c); ``class_nms``
is OpenCV's per-class NMS; ``detection_mismatches`` is the matching rule.
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import struct
import threading
import time
import zipfile
import zlib

import numpy as np


@dataclasses.dataclass
class Route:
    body: bytes = b""
    status: int = 200
    delay_per_chunk_s: float = 0.0  # sleep between 4 KiB chunks
    truncate_at: int | None = None  # close the connection after this many bytes
    location: str | None = None     # redirect target (status 3xx)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server.owner
        with server.lock:
            server.hits[self.path] += 1
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        if route.location is not None:
            self.send_response(route.status)
            self.send_header("Location", route.location)
            self.end_headers()
            return
        if route.status != 200:
            self.send_error(route.status)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        body = route.body if route.truncate_at is None else route.body[: route.truncate_at]
        for i in range(0, len(body), 4096):
            self.wfile.write(body[i:i + 4096])
            if route.delay_per_chunk_s:
                time.sleep(route.delay_per_chunk_s)
        if route.truncate_at is not None:
            self.close_connection = True


class LocalServer:
    """``ThreadingHTTPServer`` on 127.0.0.1, an OS-chosen port, in a daemon thread."""

    def __init__(self, routes: dict[str, bytes | Route]):
        self.routes = {p: r if isinstance(r, Route) else Route(body=r) for p, r in routes.items()}
        self.hits: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def closed_port_url(path: str = "/model.bin") -> str:
    """A loopback URL on a port nothing listens on (connection refused: 'offline')."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# --- torch.save zip writer ---------------------------------------------------

# NumPy dtype -> torch storage class name.
STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
            np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(int(v)) for v in values) + b"t"


def tensor_opcodes(key: str, storage: str, numel: int, offset: int, size, stride) -> bytes:
    """Pickle opcodes of ``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    persistent = b"(" + _text("storage") + _global("torch", storage) + _text(key) + _text("cpu") + _int(numel)
    hooks = _global("collections", "OrderedDict") + b")R"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + persistent + b"tQ" + _int(offset)
            + _ints(size) + _ints(stride) + b"\x89" + hooks + b"tR")


def write_state_dict_zip(state: dict, path, archive_name: str = "archive") -> None:
    """One storage per (C-contiguous) array, keys in order, as torch.save writes a state_dict."""
    body = b"\x80\x02" + _global("collections", "OrderedDict") + b")R"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for index, (name, value) in enumerate(state.items()):
            array = np.ascontiguousarray(value)
            strides = [s // array.itemsize for s in array.strides]
            body += _text(name) + tensor_opcodes(str(index), STORAGES[array.dtype], array.size, 0, array.shape,
                                                 strides) + b"s"
            archive.writestr(f"{archive_name}/data/{index}", array.tobytes())
        archive.writestr(f"{archive_name}/data.pkl", body + b".")
        archive.writestr(f"{archive_name}/byteorder", "little")
        archive.writestr(f"{archive_name}/version", "3\n")


# --- the fixtures' synthetic weights -------------------------------------------

# How each fixture README names batch-norm statistics and offsets, and which kernel axes are the
# fan-in: TF layouts (HWIO, HWCM, IO) put the outputs last, PyTorch's (out, in, kh, kw) first.
_WEIGHT_NAMING = {
    "tf": {"variance": "moving_variance", "mean": "moving_mean", "offsets": ("bias", "beta"),
           "fan_in": slice(None, -1)},
    "torch": {"variance": "running_var", "mean": "running_mean", "offsets": ("bias",), "fan_in": slice(1, None)},
}


def synth_weight(name: str, shape: tuple, layout: str) -> np.ndarray:
    """The fixtures' deterministic weight for variable ``name``: it depends only on the name and shape.

    Args:
        name: automl variable name (``layout="tf"``) or torchvision ``state_dict`` key (``"torch"``).
        shape: the variable's shape in that library's layout.
        layout: ``"tf"`` or ``"torch"``.

    Returns:
        float32 array: BN variances U(0.5, 1.5), BN means 0.1 N(0, 1), bias/beta vectors 0.05 N(0, 1),
        other vectors and scalars (scales, BiFPN fusion weights) 1 + 0.1 N(0, 1), kernels
        N(0, 1) / sqrt(fan_in), drawn from a generator seeded with crc32(name).
    """
    naming = _WEIGHT_NAMING[layout]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name.endswith(naming["variance"]):
        return rng.uniform(0.5, 1.5, shape).astype("float32")
    if name.endswith(naming["mean"]):
        return (0.1 * rng.standard_normal(shape)).astype("float32")
    if len(shape) <= 1:
        if name.endswith(naming["offsets"]):
            return (0.05 * rng.standard_normal(shape)).astype("float32")
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype("float32")
    fan_in = int(np.prod(shape[naming["fan_in"]]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype("float32")


# --- Darknet references: OpenCV's importer and NumPy ports of Darknet's C ----------------------------------

# Darknet's own inference defaults (examples/detector.c, test_detector): per-class NMS at IoU 0.45.
DARKNET_NMS_IOU = 0.45


def yolo_input_convs(sections: list) -> list[str]:
    """OpenCV's names of the convs feeding each ``[yolo]`` layer, in cfg order (coarsest level first).

    OpenCV names layers by cfg index; those convs hold the raw head outputs (the yolo layer itself
    applies sigmoid / exp and normalises).
    """
    return [f"conv_{i - 1}" for i, s in enumerate(sections[1:]) if s.type == "yolo"]


def opencv_yolo_raw(cfg, weights, blob: np.ndarray) -> list[np.ndarray]:
    """Raw outputs (1, A * (5 + C), H, W) of OpenCV's Darknet importer, one per ``[yolo]`` layer, cfg order.

    Args:
        cfg, weights: Darknet ``.cfg`` and ``.weights`` paths.
        blob: (1, 3, h, w) float32 network input, RGB in 0..1 (e.g. ``cv2.dnn.blobFromImage``).
    """
    import cv2
    from kdet.zoo import darknet as dk

    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(blob)
    return list(net.forward(yolo_input_convs(dk.parse_cfg(cfg))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_yolo(raw_levels: list[np.ndarray], sections: list) -> tuple[np.ndarray, np.ndarray]:
    """Darknet's ``get_yolo_detections`` + ``get_yolo_box`` (src/yolo_layer.c) in NumPy.

    Args:
        raw_levels: the raw conv outputs of ``opencv_yolo_raw``, cfg order.
        sections: the parsed cfg (``kdet.zoo.darknet.parse_cfg``): anchors and masks of each ``[yolo]``,
            network size of ``[net]``.

    Returns:
        ``(boxes, scores)``: (N, 4) centre x, centre y, width, height relative to the network input
        (0..1), and (N, C) objectness x class probability, one row per anchor of every cell.
    """
    net_w, net_h = int(sections[0].options["width"]), int(sections[0].options["height"])
    yolos = [s for s in sections if s.type == "yolo"]
    boxes, scores = [], []
    for raw, section in zip(raw_levels, yolos):
        mask = [int(v) for v in section.options["mask"].split(",")]
        anchors = np.array([float(v) for v in section.options["anchors"].split(",")]).reshape(-1, 2)[mask]
        _, channels, height, width = raw.shape
        x = raw[0].reshape(len(mask), channels // len(mask), height, width)  # (anchor, 5 + C, row, col)
        rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        cx = (cols + _sigmoid(x[:, 0])) / width
        cy = (rows + _sigmoid(x[:, 1])) / height
        w = np.exp(x[:, 2]) * anchors[:, 0, None, None] / net_w
        h = np.exp(x[:, 3]) * anchors[:, 1, None, None] / net_h
        boxes.append(np.stack([cx, cy, w, h], -1).reshape(-1, 4))
        probs = _sigmoid(x[:, 4:5]) * _sigmoid(x[:, 5:])  # (anchor, C, row, col)
        scores.append(probs.transpose(0, 2, 3, 1).reshape(-1, probs.shape[1]))
    return np.concatenate(boxes), np.concatenate(scores)


def stretch_to_image(boxes: np.ndarray, image_w: int, image_h: int) -> np.ndarray:
    """Relative centre-size boxes of a stretched input -> xyxy pixels of the ``image_w`` x ``image_h`` image."""
    cx, cy, w, h = (boxes[:, i] for i in range(4))
    return np.stack([(cx - w / 2) * image_w, (cy - h / 2) * image_h, (cx + w / 2) * image_w,
                     (cy + h / 2) * image_h], -1)


def letterbox_size(image_w: int, image_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """The size the image is resized to inside the canvas: integer arithmetic as Darknet (src/image.c)."""
    if net_w / image_w < net_h / image_h:
        return net_w, (image_h * net_w) // image_w
    return (image_w * net_h) // image_h, net_h


def darknet_resize(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's ``resize_image`` (src/image.c) on an (H, W, C) float32 image, in float32 as the C code.

    Bilinear with aligned corners (scale (in - 1) / (out - 1)), columns first. Kept as in C: the last
    column copies the last input column, and the last row gets only its ``(1 - dy)`` term.
    """
    image = np.asarray(image, np.float32)
    in_h, in_w = image.shape[:2]
    with np.errstate(divide="ignore", invalid="ignore"):  # a 1-pixel output: the scale is never used
        w_scale = np.float32(in_w - 1) / np.float32(w - 1)
        h_scale = np.float32(in_h - 1) / np.float32(h - 1)
    sx = np.arange(w, dtype=np.float32) * w_scale if w > 1 else np.zeros(1, np.float32)
    ix = np.minimum(sx.astype(np.int64), in_w - 1)
    dx = (sx - ix.astype(np.float32))[None, :, None]
    part = (np.float32(1) - dx) * image[:, ix] + dx * image[:, np.minimum(ix + 1, in_w - 1)]
    part[:, w - 1] = image[:, in_w - 1]
    if in_w == 1:
        part[:] = image[:, :1]
    sy = np.arange(h, dtype=np.float32) * h_scale if h > 1 else np.zeros(1, np.float32)
    iy = np.minimum(sy.astype(np.int64), in_h - 1)
    dy = (sy - iy.astype(np.float32))[:, None, None]
    resized = (np.float32(1) - dy) * part[iy]
    second = dy * part[np.minimum(iy + 1, in_h - 1)]
    rows = slice(0, h - 1) if in_h > 1 else slice(0, 0)
    resized[rows] += second[rows]
    return resized


def darknet_letterbox(image_uint8: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    """Darknet's ``letterbox_image`` (src/image.c) of an (H, W, 3) uint8 RGB image: (net_h, net_w, 3) in 0..1.

    As ``test_detector``: pixels / 255 (``load_image_stb``), ``resize_image`` to ``letterbox_size``, embedded
    at ``((net_w - new_w) / 2, (net_h - new_h) / 2)`` (integer division) on a canvas filled with 0.5.
    """
    image = (image_uint8.astype(np.float64) / 255.0).astype(np.float32)
    new_w, new_h = letterbox_size(image.shape[1], image.shape[0], net_w, net_h)
    canvas = np.full((net_h, net_w, image.shape[2]), 0.5, np.float32)
    dx, dy = (net_w - new_w) // 2, (net_h - new_h) // 2
    canvas[dy:dy + new_h, dx:dx + new_w] = darknet_resize(image, new_w, new_h)
    return canvas


def uncorrect_letterbox(boxes: np.ndarray, image_w: int, image_h: int, net_w: int, net_h: int) -> np.ndarray:
    """Darknet's ``correct_yolo_boxes`` (src/yolo_layer.c): relative boxes on the letterboxed input ->
    xyxy pixels of the original image. Note Darknet's float offset ``(net - new) / 2.``."""
    new_w, new_h = letterbox_size(image_w, image_h, net_w, net_h)
    cx = (boxes[:, 0] - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w)
    cy = (boxes[:, 1] - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h)
    w = boxes[:, 2] * net_w / new_w
    h = boxes[:, 3] * net_h / new_h
    return stretch_to_image(np.stack([cx, cy, w, h], -1), image_w, image_h)


def class_nms(boxes_xyxy: np.ndarray, scores: np.ndarray, image_w: int, image_h: int, min_score: float,
              iou_threshold: float = DARKNET_NMS_IOU) -> dict:
    """Per-class greedy NMS by OpenCV (``cv2.dnn.NMSBoxesBatched``, float boxes), boxes clipped to the image.

    Args:
        boxes_xyxy: (N, 4) pixel boxes; scores: (N, C) per-class scores.
        min_score: candidates scoring below it are dropped before NMS (they cannot suppress higher ones).

    Returns:
        ``{"boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,)}``, sorted by score.
    """
    import cv2

    anchor, label = np.nonzero(scores >= min_score)
    if anchor.size == 0:
        return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    boxes, kept_scores = boxes_xyxy[anchor], scores[anchor, label]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], -1).astype(np.float64)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, kept_scores.astype(np.float32), label.astype(np.int32),
                                              0.0, iou_threshold), int).reshape(-1)
    keep = keep[np.argsort(-kept_scores[keep], kind="stable")]
    clipped = np.clip(boxes[keep], 0, [image_w, image_h, image_w, image_h])
    return {"boxes": clipped, "scores": kept_scores[keep], "labels": label[keep]}


def detection_mismatches(reference: dict, ours: dict, min_score: float, iou_threshold: float = 0.9,
                         score_tolerance: float = 0.01) -> list[str]:
    """Which detections of either side the other lacks; empty when they agree.

    Every ``reference`` detection scoring >= ``min_score`` needs one of ``ours`` with the same label,
    IoU >= ``iou_threshold`` and a score within ``score_tolerance``; so does every one of ``ours``
    scoring >= ``min_score + score_tolerance`` (so a detection just above the bar on one side and just
    below on the other is not a mismatch). Dicts hold xyxy ``boxes``, ``scores`` and ``labels``.
    """
    from keras.utils import bounding_boxes

    problems = []
    for name, mine, other, bar in (("reference", reference, ours, min_score),
                                   ("kdet", ours, reference, min_score + score_tolerance)):
        if len(other["scores"]) == 0:
            overlaps = np.zeros((len(mine["scores"]), 0))
        else:
            overlaps = np.asarray(bounding_boxes.compute_iou(np.asarray(mine["boxes"], np.float32),
                                                             np.asarray(other["boxes"], np.float32),
                                                             bounding_box_format="xyxy"))
        for i in np.flatnonzero(np.asarray(mine["scores"]) >= bar):
            ok = ((np.asarray(other["labels"]) == mine["labels"][i]) & (overlaps[i] >= iou_threshold)
                  & (np.abs(np.asarray(other["scores"]) - mine["scores"][i]) <= score_tolerance))
            if not ok.any():
                same = np.flatnonzero(np.asarray(other["labels"]) == mine["labels"][i])
                best = same[np.argmax(overlaps[i, same])] if same.size else None
                near = ("no detection of that class" if best is None else
                        f"closest: IoU {overlaps[i, best]:.3f}, score {other['scores'][best]:.4f}")
                problems.append(f"{name} label {int(mine['labels'][i])} score {mine['scores'][i]:.4f} box "
                                f"{np.round(mine['boxes'][i], 1).tolist()} unmatched ({near})")
    return problems
