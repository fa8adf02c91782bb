"""A restricted reader of PyTorch checkpoints (``torch.save`` files) that needs no torch.

It reads both formats ``torch.save`` writes: the zip archive (torch >= 1.6:
``<name>/data.pkl`` + one raw file per storage under ``<name>/data/<key>``)
and the legacy stream (magic number, protocol, sys info, the pickle, the
storage keys, then each storage as an int64 element count + raw bytes).

Nothing in the file is executed: the pickle is read by an ``Unpickler`` whose
``find_class`` resolves only the globals a tensor ``state_dict`` needs
(``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, the
``torch.*Storage`` types, ``collections.OrderedDict``) to kdet's own NumPy
implementations, and refuses every other global (``os.system``,
``builtins.eval``, ...) with :class:`UnsafeCheckpointError`. This is the
same policy as ``torch.load(weights_only=True)``, restricted further.

Example:
    >>> state = load_state_dict("retinanet_resnet50_fpn_coco-eeacb38b.pth")  # doctest: +SKIP
    >>> state["head.regression_head.bbox_reg.weight"].shape                   # doctest: +SKIP
    (36, 256, 3, 3)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

# torch storage class name -> NumPy dtype (BFloat16 is widened to float32 after reading).
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
# Legacy (pre-zip) stream: torch/serialization.py MAGIC_NUMBER and PROTOCOL_VERSION.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle references a global outside the tensor allow-list."""


class _StorageType:
    """Stands for ``torch.<Name>Storage`` inside the pickle; carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A flat typed buffer (one ``torch`` storage)."""

    def __init__(self, array: np.ndarray, name: str):
        self.array = array
        self.name = name


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """NumPy twin of ``torch._utils._rebuild_tensor_v2``: a strided view, copied."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 expects a storage; received {type(storage).__name__}.")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    flat = storage.array
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
    if needed > flat.size:
        raise pickle.UnpicklingError(f"A tensor of size {size}, stride {stride}, offset {offset} needs {needed} "
                                     f"elements but its storage holds {flat.size}: the checkpoint is corrupt.")
    if not all(size):
        array = np.zeros(size, flat.dtype)
    else:
        item = flat.dtype.itemsize
        array = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * item for s in stride]).copy()
    if storage.name == "BFloat16Storage":  # bfloat16 = the high half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """``nn.Parameter`` -> its array."""
    return data


# (module, name) -> the object the restricted unpickler returns for it.
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-rebuild / storage globals; storages come from ``load_storage``."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"Refusing to load global {module}.{name}: this checkpoint's pickle references code outside the "
                "tensor allow-list (torch._utils._rebuild_tensor_v2 / _rebuild_parameter, torch.*Storage, "
                "collections.OrderedDict). kdet reads tensors only and never executes code from a checkpoint."
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"Unsupported persistent id {pid!r}; expected ('storage', type, key, ...).")
        _, storage_type, key, _location, numel = pid[:5]
        return _Storage(self._load_storage(str(key), storage_type, int(numel)), storage_type.name)


def _from_bytes(data: bytes, storage_type: _StorageType, numel: int, key: str) -> np.ndarray:
    dtype = storage_type.dtype
    if storage_type.name == "UntypedStorage":
        numel = len(data)
    if len(data) < numel * dtype.itemsize:
        raise pickle.UnpicklingError(f"Storage {key!r} holds {len(data)} bytes; {numel} x {dtype} needs "
                                     f"{numel * dtype.itemsize}. The checkpoint is truncated.")
    return np.frombuffer(data, dtype, count=numel)


def _load_zip(path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip file but not a torch.save checkpoint: expected one "
                             f"'<name>/data.pkl', found {pickles or 'none'}.")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path} stores big-endian tensors; kdet reads little-endian checkpoints only.")

        def load_storage(key, storage_type, numel):
            member = f"{prefix}data/{key}"
            if member not in names:
                raise pickle.UnpicklingError(f"{path} lacks storage {member!r} referenced by its pickle.")
            return _from_bytes(archive.read(member), storage_type, numel, key)

        return RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _no_storage(key, storage_type, numel):
    raise pickle.UnpicklingError("Storage reference outside the checkpoint's main pickle.")


def load_pth(path: str | os.PathLike) -> object:
    """Reads a ``torch.save`` file into Python containers of ``np.ndarray`` without executing code.

    Args:
        path: a ``.pth`` / ``.pt`` file (zip or legacy format).

    Returns:
        The saved object with every tensor as a NumPy array (dicts stay dicts).

    Raises:
        UnsafeCheckpointError: the pickle references a global outside the allow-list.
        ValueError: the file is not a (little-endian) ``torch.save`` checkpoint.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy_twice(path)


def _load_legacy_twice(path):
    """Legacy streams store tensor bytes after the pickle: read the bytes first, then rebuild tensors."""
    with open(path, "rb") as stream:
        try:
            magic = RestrictedUnpickler(stream, _no_storage).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            if isinstance(error, UnsafeCheckpointError):
                raise
            raise ValueError(f"{path} is neither a zip nor a legacy torch.save checkpoint.") from error
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path} is neither a zip nor a legacy torch.save checkpoint (bad magic number).")
        if RestrictedUnpickler(stream, _no_storage).load() != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy checkpoint protocol (expected {LEGACY_PROTOCOL}).")
        sys_info = RestrictedUnpickler(stream, _no_storage).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path} stores big-endian tensors; kdet reads little-endian checkpoints only.")
        seen = {}

        def record(key, storage_type, numel):
            seen.setdefault(key, (storage_type, numel))
            return np.zeros(numel, storage_type.dtype)

        start = stream.tell()
        RestrictedUnpickler(stream, record).load()
        keys = RestrictedUnpickler(stream, _no_storage).load()
        buffers = {}
        for key in keys:
            storage_type, numel = seen[str(key)]
            header = stream.read(8)
            if len(header) != 8:
                raise pickle.UnpicklingError(f"{path} is truncated before storage {key!r}.")
            count = int(np.frombuffer(header, np.int64)[0])
            data = stream.read(count * storage_type.dtype.itemsize)
            buffers[str(key)] = _from_bytes(data, storage_type, count, str(key))
        stream.seek(start)
        return RestrictedUnpickler(stream, lambda key, t, n: buffers[key]).load()


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A checkpoint's ``state_dict`` as ``{name: np.ndarray}``.

    Accepts a bare state dict or one nested under ``"model"`` / ``"state_dict"``
    (training checkpoints); ``num_batches_tracked`` counters are kept.

    Example:
        >>> state = load_state_dict("ssd300_vgg16_coco-b556d3b4.pth")  # doctest: +SKIP
    """
    obj = load_pth(path)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict) and not isinstance(obj.get(key), np.ndarray):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{os.fspath(path)} does not hold a state_dict of tensors (received "
                         f"{type(obj).__name__}); save one with torch.save(model.state_dict(), path).")
    return {str(k): v for k, v in obj.items()}
