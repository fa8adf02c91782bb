"""kdet.zoo.pth: torch-free, code-free reading of torch.save checkpoints (zip and legacy formats)."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from kdet.zoo.pth import UnsafeCheckpointError, load_pth, load_state_dict
from tests.zoo.helpers import _global, _text, tensor_opcodes as _tensor_pickle


def _hand_built_checkpoint(path):
    """A zip checkpoint with the layout torch.save writes, built without torch.

    Holds a (2, 3) float32 tensor, its transpose (a strided view of the same
    storage), a float16 vector at offset 1 of its storage and an int64 scalar.
    """
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    half = np.array([9, 1.5, -2, 0.25], np.float16)
    count = np.array([7], np.int64)
    body = b"\x80\x02" + _global("collections", "OrderedDict") + b")R"
    for name, tensor in (("w", _tensor_pickle("0", "FloatStorage", 6, 0, (2, 3), (3, 1))),
                         ("w_t", _tensor_pickle("0", "FloatStorage", 6, 0, (3, 2), (1, 3))),
                         ("h", _tensor_pickle("1", "HalfStorage", 4, 1, (3,), (1,))),
                         ("n", _tensor_pickle("2", "LongStorage", 1, 0, (), ()))):
        body += _text(name) + tensor + b"s"
    body += b"."
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", body)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", weight.tobytes())
        archive.writestr("archive/data/1", half.tobytes())
        archive.writestr("archive/data/2", count.tobytes())
        archive.writestr("archive/version", "3\n")
    return {"w": weight, "w_t": weight.T, "h": half[1:], "n": np.array(7, np.int64)}


def test_hand_built_zip_checkpoint_reads_exactly(tmp_path):
    expected = _hand_built_checkpoint(tmp_path / "hand.pth")
    state = load_state_dict(tmp_path / "hand.pth")
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        np.testing.assert_array_equal(state[key], value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Evil(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if container == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|nt|os)\.system"):
        load_pth(path)
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "eval.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + _global("builtins", "eval") + b"(" + _text("1+1")
                         + b"tR.")
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        load_pth(path)


def test_not_a_checkpoint_and_truncated_storage(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="neither a zip nor a legacy"):
        load_pth(junk)
    _hand_built_checkpoint(tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as source, zipfile.ZipFile(tmp_path / "cut.pth", "w") as cut:
        for name in source.namelist():
            data = source.read(name)
            cut.writestr(name, data[:8] if name == "archive/data/0" else data)
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        load_pth(tmp_path / "cut.pth")


@pytest.mark.parametrize("zip_format", [True, False])
def test_reads_torch_save_checkpoints(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=generator)
    state = {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
        "fc.weight_t": base.t(),  # non-contiguous view
        "fc.slice": base[1:, 2:],  # view with a storage offset, sharing base's storage
        "half": torch.randn(6, generator=generator).half(),
        "bf16": torch.randn(6, generator=generator).bfloat16(),
        "long": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
        "bn.num_batches_tracked": torch.tensor(3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    path = tmp_path / "model.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_state_dict(path)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        expected = tensor.detach().float().numpy() if key == "bf16" else tensor.detach().numpy()
        assert loaded[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)


def test_reads_nested_training_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = load_state_dict(tmp_path / "ckpt.pth")
    np.testing.assert_array_equal(loaded["weight"], model.weight.detach().numpy())


def test_torch_free_writer_round_trips(tmp_path):
    from tests.zoo.helpers import write_state_dict_zip

    state = {"a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "a.n": np.array(3, np.int64),
             "mask": np.array([True, False]), "h": np.ones(3, np.float16)}
    write_state_dict_zip(state, tmp_path / "w.pth")
    loaded = load_state_dict(tmp_path / "w.pth")
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
    torch = pytest.importorskip("torch")
    # The writer is faithful: torch itself reads the file, even with weights_only=True.
    reread = torch.load(tmp_path / "w.pth", weights_only=True)
    for key, value in state.items():
        np.testing.assert_array_equal(reread[key].numpy(), value)
