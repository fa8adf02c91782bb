"""Writes a ``{name: np.ndarray}`` state dict in torch.save's zip layout, without torch (test helper).

Lets CI (no torch) serve realistic ``.pth`` files; ``tests/zoo/test_pth.py`` checks with torch, when
installed, that ``torch.load`` reads these files back exactly.
"""

import struct
import zipfile

import numpy as np

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
