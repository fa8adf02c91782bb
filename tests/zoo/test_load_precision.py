"""``kdet.load``'s default precision (issue 19): bfloat16 where ``bfloat16_pays()``, the global policy otherwise.

The machine's answer is replaced (``kdet.config.native_bfloat16``) so that each branch runs on any CPU. The
real-weights check of what bfloat16 keeps is ``tests/zoo/test_darknet_real.py``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kdet
from kdet import config as kdet_config

NAME = "yolov3_darknet53"  # an architecture entry; a kdet .weights.h5 file makes it a pretrained load
TINY = {"backbone": "tiny", "image_size": 64}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    model = kdet.load(NAME, weights=None, num_classes=3, **TINY)
    path = tmp_path_factory.mktemp("weights") / "tiny.weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture
def native(monkeypatch):
    """Sets what ``native_bfloat16()`` answers: ``native(True)``."""
    def set_to(value: bool):
        monkeypatch.setattr(kdet_config, "native_bfloat16", lambda: value)
    return set_to


def test_pretrained_load_is_bfloat16_where_native(weights_file, native):
    native(True)
    model = kdet.load(NAME, weights=weights_file, num_classes=3, **TINY)
    assert model.bfloat16_pays()
    assert model.config.precision == "bfloat16" and model.network.dtype_policy.name == "mixed_bfloat16"
    exact = kdet.load(NAME, weights=weights_file, num_classes=3, precision="float32", **TINY)
    assert exact.config.precision == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), exact.get_weights()))
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    raw_fast, raw_exact = (np.asarray(m.network(x), np.float32) for m in (model, exact))
    assert np.abs(raw_fast - raw_exact).max() < 0.1 * np.abs(raw_exact).max()
    # Asked for XLA on a CPU, a bfloat16 network runs as a graph (oneDNN's kernels).
    assert model.inference_compiler(jit_compile=True) == "graph"
    assert exact.inference_compiler(jit_compile=True) == "xla"
    # Its saved precision survives save / load.
    assert type(model).from_config(model.get_config()).config.precision == "bfloat16"


def test_float32_where_bfloat16_is_not_native(weights_file, native):
    native(False)
    model = kdet.load(NAME, weights=weights_file, num_classes=3, **TINY)
    assert not model.bfloat16_pays() and model.config.precision == "float32"


@pytest.mark.parametrize("case", ["precision=None", "weights=None", "global mixed_float16"])
def test_what_keeps_the_global_policy(case, weights_file, native):
    native(True)
    if case == "precision=None":
        model, expected = kdet.load(NAME, weights=weights_file, num_classes=3, precision=None, **TINY), "float32"
    elif case == "weights=None":  # architecture only: to be trained
        model, expected = kdet.load(NAME, weights=None, num_classes=3, **TINY), "float32"
    else:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            model, expected = kdet.load(NAME, weights=weights_file, num_classes=3, **TINY), "float16"
        finally:
            keras.config.set_dtype_policy(previous)
    assert model.config.precision == expected


def test_architectures_where_bfloat16_does_not_pay_on_cpu(native):
    native(True)
    depthwise = kdet.models.EfficientDet(3, backbone="tiny", image_size=128)
    assert not depthwise.bfloat16_pays()  # depthwise convolutions: slower in bfloat16 on CPU
    assert not kdet.load("mtcnn").bfloat16_pays() and kdet.load("mtcnn").config.precision == "float32"
    assert kdet.models.RetinaNet(num_classes=3, backbone="tiny", image_size=128).bfloat16_pays()
