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
