"""Registry, kdet.load, conversion cache, presets and .keras files, with a tiny fake detector.

The real builders are written in parallel; a tiny functional model registered
here stands in for them and for an upstream checkpoint (a ``.npz`` served by a
local HTTP server and converted by ``convert_npz``).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import textwrap
import types

import keras
import numpy as np
import pytest

import kdet
from kdet.zoo import build, cache, converted, preset, registry, transfer
from kdet.zoo.registry import ModelEntry, WeightsSource
from tests.zoo.helpers import LocalServer, closed_port_url

REPO = pathlib.Path(__file__).resolve().parents[2]
NAME = "tiny_fake_coco"
CALLS: list = []


@keras.saving.register_keras_serializable(package="kdet_tests")
class TinyDetector(keras.Model):
    """Stand-in for a kdet builder: conv stem + class head, keras-hub style config."""

    def __init__(self, num_classes: int = 3, width: int = 4, class_names=None, **kwargs):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(width, 3, padding="same")(inputs)  # auto-named on purpose
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(6, activation="relu", name="hidden")(x)
        outputs = keras.layers.Dense(num_classes, name="class_head")(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.num_classes, self.width, self.class_names = num_classes, width, class_names

    def get_config(self):
        return {"num_classes": self.num_classes, "width": self.width, "name": self.name,
                "class_names": self.class_names}


def _key(path: str) -> str:
    return transfer._canonical(path).replace("/", "__")


def convert_npz(model, path, entry):
    """Converter: an upstream .npz keyed by canonical variable path (or a dir holding one)."""
    CALLS.append((entry.name, str(path)))
    path = pathlib.Path(path)
    if path.is_dir():
        path = next(path.rglob("*.npz"))
    with np.load(path, allow_pickle=False) as ckpt:
        return {v.path: ckpt[_key(v.path)] for v in model.weights}


def convert_npz_two_args(model, path):
    """A converter with the short signature that sets the weights itself."""
    with np.load(path, allow_pickle=False) as ckpt:
        model.set_weights([ckpt[_key(v.path)] for v in model.weights])


def _checkpoint_bytes(num_classes: int = 3) -> tuple[bytes, dict]:
    model = TinyDetector(num_classes)
    rng = np.random.default_rng(1)
    arrays = {_key(v.path): rng.normal(size=v.shape).astype("float32") for v in model.weights}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue(), arrays


CKPT, ARRAYS = _checkpoint_bytes()


def _entry(url: str, name: str = NAME, **source) -> ModelEntry:
    return ModelEntry(
        name=name, builder="tests.zoo.test_registry:TinyDetector", builder_kwargs={"num_classes": 3},
        class_names=("cat", "dog", "bird"), license="test", input_size=(8, 8),
        weights=WeightsSource(url=url, **{"converter": "tests.zoo.test_registry:convert_npz",
                                          **source}),
    )


def _weights_of(model) -> dict:
    return {_key(v.path): np.asarray(v) for v in model.weights}


@pytest.fixture(autouse=True)
def kdet_home(tmp_path, monkeypatch):
    home = tmp_path / "kdet_home"
    monkeypatch.setenv("KDET_HOME", str(home))
    CALLS.clear()
    yield home
    for name in [n for n in registry._REGISTRY if n.startswith("tiny_fake")]:
        registry.unregister(name)


@pytest.fixture
def server():
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("tiny/ckpt.npz")
        info.size = len(CKPT)
        tar.addfile(info, io.BytesIO(CKPT))
    with LocalServer({"/tiny.npz": CKPT, "/tiny.tar.gz": archive.getvalue()}) as s:
        yield s


# --- Built-in entries -------------------------------------------------------

def test_builtin_entries():
    names = kdet.list_models()
    for required in ("mtcnn", "yolov3_darknet53_coco", "yolov3_tiny_coco", "retinanet_resnet50_fpn",
                     "efficientdet_d0", "ssd300_vgg16", "yolov3_darknet53", "fasterrcnn_resnet50_fpn"):
        assert required in names
    assert names == sorted(names)
    assert set(kdet.zoo.list_models(pretrained=True)) >= {"mtcnn", "yolov3_darknet53_coco"}
    yolo = registry.get_entry("yolov3_darknet53_coco")
    assert yolo.weights.url == "https://pjreddie.com/media/files/yolov3.weights"
    assert yolo.weights.size == 248007048 and yolo.weights.sha256 is None
    assert yolo.weights.converter == "kdet.zoo.darknet:load_darknet_weights"
    assert registry.get_entry("yolov3_tiny_coco").weights.size == 35434956
    assert yolo.num_classes == 80 and len(yolo.get_class_names()) == 80
    mtcnn = registry.get_entry("mtcnn")
    assert mtcnn.weights.kind == "package" and mtcnn.num_classes == 1
    assert not registry.get_entry("ssd300_vgg16").pretrained
    with pytest.raises(TypeError):  # entries are frozen
        yolo.builder_kwargs["num_classes"] = 3


def test_class_names_match_darknet_lists(shared_dir):
    from kdet.zoo.coco_classes import COCO_CATEGORY_IDS, COCO_CLASSES
    from kdet.zoo.voc_classes import VOC_CLASSES

    darknet = shared_dir / "data" / "darknet"
    assert list(COCO_CLASSES) == darknet.joinpath("coco.names").read_text().split("\n")[:80]
    assert list(VOC_CLASSES) == [n for n in darknet.joinpath("voc.names").read_text().split("\n") if n]
    assert len(set(COCO_CATEGORY_IDS)) == 80 and list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90


def test_registry_imports_without_tensorflow():
    code = "import sys, kdet; kdet.list_models(); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_name_lists_closest():
    with pytest.raises(ValueError, match=r"Unknown model 'yolov3_darknet'.*yolov3_darknet53"):
        kdet.load("yolov3_darknet")


def test_missing_architecture_module_is_a_clear_import_error():
    entry = ModelEntry(name="tiny_fake_missing", builder="kdet.models.not_written_yet:Nope")
    registry.register(entry)
    with pytest.raises(ImportError, match="not part of this kdet installation"):
        kdet.load("tiny_fake_missing", weights=None)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Bad-Name", "builder": "a.b:C"}, "lower-case"),
    ({"name": "ok", "builder": "a.b.C"}, "import path"),
    ({"name": "ok", "builder": "a:C", "weights": "http://x"}, "WeightsSource"),
])
def test_entry_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelEntry(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"url": "http://example.com/a"}, "only downloads over https"),
    ({"url": "https://e.com/a", "sha256": "abc"}, "hex digits"),
    ({"url": "https://e.com/a", "sha256_prefix": "xyz"}, "hex digits"),
    ({"url": "https://e.com/a", "archive": "zip"}, "archive"),
    ({"kind": "ftp"}, "kind"),
    ({"url": "https://e.com/a", "classifier": "cls_pred"}, "layer names"),
    ({"url": "https://e.com/a", "classifier": ()}, "layer names"),
])
def test_weights_source_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightsSource(**kwargs)


def test_register_refuses_duplicates():
    registry.register(_entry("https://e.com/a.npz"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_entry("https://e.com/b.npz"))
    registry.register(_entry("https://e.com/b.npz"), overwrite=True)
    assert registry.get_entry(NAME).weights.url == "https://e.com/b.npz"


# --- kdet.load of a registered model ---------------------------------------

def test_first_load_downloads_converts_caches_then_offline(server, kdet_home):
    registry.register(_entry(server.url("/tiny.npz")))
    model = kdet.load(NAME)
    assert all(np.array_equal(w, ARRAYS[k]) for k, w in _weights_of(model).items())
    target = kdet_home / "converted" / f"{NAME}.weights.h5"
    assert target.is_file() and len(CALLS) == 1
    record = json.loads(target.with_name(target.name + ".json").read_text())
    assert record["sha256"] == cache.sha256_file(target)
    # Later loads: converted cache only; no download, no conversion, even without the upstream file.
    (kdet_home / "downloads" / "tiny.npz").unlink()
    registry.register(_entry(server.url("/tiny.npz")), overwrite=True)
    again = kdet.load(NAME)
    assert len(CALLS) == 1 and server.hits["/tiny.npz"] == 1
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_corrupt_converted_file_is_reconverted(server, kdet_home):
    registry.register(_entry(server.url("/tiny.npz")))
    kdet.load(NAME)
    target = converted.converted_path(registry.get_entry(NAME))
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="not usable"):
        model = kdet.load(NAME)
    assert len(CALLS) == 2
    assert all(np.array_equal(w, ARRAYS[k]) for k, w in _weights_of(model).items())


def test_weights_none_is_architecture_only(server):
    registry.register(_entry(server.url("/tiny.npz")))
    model = kdet.load(NAME, weights=None, num_classes=7, width=2)
    assert model.output_shape == (None, 7) and model.width == 2
    assert model.class_names is None  # the entry's 3 names do not fit 7 classes
    assert kdet.load(NAME, weights=None).class_names == ["cat", "dog", "bird"]
    assert server.hits["/tiny.npz"] == 0 and not CALLS


def test_local_upstream_checkpoint_converts_without_download(tmp_path, kdet_home):
    registry.register(_entry(closed_port_url("/tiny.npz")))  # unreachable on purpose
    local = tmp_path / "tiny.npz"
    local.write_bytes(CKPT)
    model = kdet.load(NAME, weights=local)
    assert all(np.array_equal(w, ARRAYS[k]) for k, w in _weights_of(model).items())
    assert not (kdet_home / "converted").exists()  # user files are not cached
    with pytest.raises(FileNotFoundError):
        kdet.load(NAME, weights=tmp_path / "nope.npz")


def test_weights_h5_file_loads_directly(tmp_path):
    registry.register(_entry(closed_port_url("/tiny.npz")))
    source = TinyDetector(3)
    source.save_weights(tmp_path / "mine.weights.h5")
    model = kdet.load(NAME, weights=str(tmp_path / "mine.weights.h5"))
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), source.get_weights()))
    # A fine-tuned 5-class file loads into a 5-class model.
    tuned = TinyDetector(5)
    tuned.save_weights(tmp_path / "tuned.weights.h5")
    model5 = kdet.load(NAME, weights=tmp_path / "tuned.weights.h5", num_classes=5)
    assert all(np.array_equal(a, b) for a, b in zip(model5.get_weights(), tuned.get_weights()))


def test_num_classes_keeps_everything_but_the_head(server):
    registry.register(_entry(server.url("/tiny.npz")))
    model = kdet.load(NAME, num_classes=5)
    assert model.output_shape == (None, 5)
    weights = _weights_of(model)
    for key, value in weights.items():
        if key.startswith("class_head"):
            assert value.shape[-1] == 5
        else:
            np.testing.assert_array_equal(value, ARRAYS[key])


def test_mtcnn_loads_packaged_weights_offline(monkeypatch):
    from kdet.models.mtcnn import pretrained_dir

    monkeypatch.setattr("urllib.request.urlopen", None)  # no network used
    model = kdet.load("mtcnn")
    reference = keras.models.clone_model(model.pnet)
    reference.load_weights(pretrained_dir() / "pnet.weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(model.pnet.get_weights(), reference.get_weights()))
    random = kdet.load("mtcnn", weights=None, min_face_size=40)
    assert random.min_face_size == 40
    assert not np.array_equal(random.pnet.get_weights()[0], reference.get_weights()[0])


def test_num_classes_refused_for_class_free_models():
    with pytest.raises(ValueError, match="takes no num_classes"):
        kdet.load("mtcnn", num_classes=3)
    with pytest.raises(ValueError, match="positive integer"):
        kdet.load("yolov3_darknet53", num_classes=0)


def test_offline_load_raises_weights_unavailable(kdet_home):
    url = closed_port_url("/tiny.npz")
    registry.register(_entry(url))
    with pytest.raises(kdet.WeightsUnavailableError, match="tiny.npz") as info:
        kdet.load(NAME)
    assert url in str(info.value) and str(kdet_home / "downloads") in str(info.value)
    (kdet_home / "downloads" / "tiny.npz").write_bytes(CKPT)  # placed by hand
    assert all(np.array_equal(w, ARRAYS[k]) for k, w in _weights_of(kdet.load(NAME)).items())


def test_tar_archive_is_extracted_and_converted(server, kdet_home):
    registry.register(_entry(server.url("/tiny.tar.gz"), archive="tar"))
    model = kdet.load(NAME)
    assert all(np.array_equal(w, ARRAYS[k]) for k, w in _weights_of(model).items())
    assert pathlib.Path(CALLS[0][1]) == kdet_home / "extracted" / "tiny"


def test_two_argument_converter(server):
    registry.register(_entry(server.url("/tiny.npz"),
                             converter="tests.zoo.test_registry:convert_npz_two_args"))
    model = kdet.load(NAME)
    assert all(np.array_equal(w, ARRAYS[k]) for k, w in _weights_of(model).items())


def test_transfer_matching_weights_across_auto_numbered_builds():
    a, b = TinyDetector(3), TinyDetector(4)
    assert a.weights[0].path != b.weights[0].path  # conv2d vs conv2d_N
    skipped = kdet.zoo.transfer_matching_weights(a, b)
    assert skipped == ["class_head/kernel", "class_head/bias"]
    np.testing.assert_array_equal(np.asarray(b.weights[0]), np.asarray(a.weights[0]))
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="zzz")])
    with pytest.raises(ValueError, match="same architecture"):
        kdet.zoo.transfer_matching_weights(a, other)



# --- Changing the class count: the classifier layers ---------------------------

@keras.saving.register_keras_serializable(package="kdet_tests")
class TinyNamedDetector(TinyDetector):
    """Names its classifier layers, as every kdet Detector subclass does (``classifier_layers``)."""

    # "hidden" keeps its shape when the classes change: naming it proves the names are used
    # (shape matching alone would copy it).
    classifier_layers = ("hidden", "class_head")


def _assert_only_classifier_fresh(model, reference: dict, classifier=("hidden", "class_head")):
    for key, value in _weights_of(model).items():
        if key.startswith(classifier):  # fresh: a new shape, or a new random kernel (biases start at 0)
            fresh = value.shape != reference[key].shape or not np.array_equal(value, reference[key])
            assert fresh or key.endswith("bias"), key
        else:
            np.testing.assert_array_equal(value, reference[key], err_msg=key)


def test_entry_classifier_is_reinitialised_and_everything_else_copied(server):
    registry.register(_entry(server.url("/tiny.npz"), classifier=("hidden", "class_head")))
    model = kdet.load(NAME, num_classes=5)
    assert model.output_shape == (None, 5) and model.class_names is None
    _assert_only_classifier_fresh(model, ARRAYS)


@pytest.mark.parametrize("classifier, message", [
    (("hidden",), r"re-initialising only \('hidden',\).*class_head/kernel \(6, 3\) vs class_head/kernel \(6, 5\)"),
    (("class_head", "no_such_layer"), r"has no layer named \['no_such_layer'\]"),
])
def test_incomplete_or_wrong_classifier_fails_clearly(server, classifier, message):
    registry.register(_entry(server.url("/tiny.npz"), classifier=classifier))
    with pytest.raises(ValueError, match=message):
        kdet.load(NAME, num_classes=5)


def test_keras_file_uses_the_model_class_classifier_layers(tmp_path):
    model = TinyNamedDetector(3)
    model.save(tmp_path / "m.keras")
    tuned = kdet.load(tmp_path / "m.keras", num_classes=2)
    assert isinstance(tuned, TinyNamedDetector) and tuned.output_shape == (None, 2)
    _assert_only_classifier_fresh(tuned, _weights_of(model))


# One entry per architecture family (the EfficientDet variants share the class net's layer names).
_CLASSIFIER_FAMILIES = ("yolov3_darknet53_coco", "yolov3_tiny_coco", "efficientdet_d0_coco",
                        "retinanet_resnet50_fpn_coco", "ssd300_vgg16_coco", "fasterrcnn_resnet50_fpn_coco")


def test_every_pretrained_entry_with_classes_names_its_classifier():
    for name in registry.list_models(pretrained=True):
        entry = registry.get_entry(name)
        if "num_classes" in entry.builder_kwargs:
            assert entry.weights.classifier, name
            family = next(f for f in _CLASSIFIER_FAMILIES if f.split("_")[0] == name.split("_")[0])
            assert entry.builder == registry.get_entry(family).builder, name


@pytest.mark.parametrize("name", _CLASSIFIER_FAMILIES)
def test_registered_classifier_layers_are_exactly_the_class_dependent_ones(name):
    """On the real architecture: the named layers suffice, and dropping one fails."""
    entry = registry.get_entry(name)
    classifier = entry.weights.classifier
    source, target = build.build(entry), build.build(entry, num_classes=3)
    fresh = transfer.transfer_all_but_classifier(source, target, classifier)
    assert {path.split("/")[-2] for path in fresh} == set(classifier)
    declared = getattr(source, "classifier_layers", None)  # a property on some classes
    if declared is not None:  # the Detector subclasses' own names agree with the zoo's
        assert set(declared) == set(classifier)
    with pytest.raises(ValueError, match="Cannot change the number of classes"):
        transfer.transfer_all_but_classifier(source, target, classifier[:-1])

# --- .keras files and preset directories ------------------------------------

def test_load_keras_file_and_change_classes(tmp_path):
    model = TinyDetector(3)
    model.save(tmp_path / "m.keras")
    loaded = kdet.load(str(tmp_path / "m.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))
    tuned = kdet.load(tmp_path / "m.keras", num_classes=2)
    assert tuned.output_shape == (None, 2)
    np.testing.assert_array_equal(np.asarray(tuned.weights[0]), np.asarray(model.weights[0]))
    with pytest.raises(FileNotFoundError):
        kdet.load(str(tmp_path / "missing.keras"))
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .keras file"):
        kdet.load(str(tmp_path / "x.bin"))


def test_preset_round_trip_keras_config(tmp_path):
    model = TinyDetector(3)
    directory = kdet.zoo.save_preset(model, tmp_path / "preset", class_names=["a", "b", "c"])
    assert {p.name for p in directory.iterdir()} == {"config.json", "model.weights.h5"}
    loaded = kdet.load(str(directory))
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))
    assert kdet.load(str(directory), num_classes=6).output_shape == (None, 6)


def test_preset_with_builder(tmp_path, monkeypatch):
    fake = types.ModuleType("kdet._fake_test_builders")
    fake.Tiny = TinyDetector
    monkeypatch.setitem(sys.modules, "kdet._fake_test_builders", fake)
    model = TinyDetector(2, width=3)
    preset.save_preset(model, tmp_path / "p", builder="kdet._fake_test_builders:Tiny",
                       builder_kwargs={"num_classes": 2, "width": 3})
    loaded = kdet.load(str(tmp_path / "p"))
    assert loaded.width == 3
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))


def test_preset_refuses_foreign_builder(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps(
        {"format": "kdet.preset", "format_version": 1, "builder": "os:system"}))
    with pytest.raises(ValueError, match="inside kdet"):
        kdet.load(str(tmp_path / "p"))
    (tmp_path / "q").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        kdet.load(str(tmp_path / "q"))


# --- Concurrency -------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import kdet
    from kdet.zoo import registry
    from tests.zoo import test_registry as t
    registry.register(t._entry(sys.argv[1]))
    model = kdet.load(t.NAME)
    print(float(sum(abs(w).sum() for w in model.get_weights())))
""")


def test_two_processes_load_the_same_model(server, kdet_home):
    env = {**os.environ, "KDET_HOME": str(kdet_home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [sys.executable, "-c", _CHILD, server.url("/tiny.npz"), str(REPO)]
    procs = [subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    expected = float(sum(np.abs(v).sum() for v in ARRAYS.values()))
    for out, _ in outs:
        assert float(out.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-6)
    assert server.hits["/tiny.npz"] == 1
    target = kdet_home / "converted" / f"{NAME}.weights.h5"
    record = json.loads(target.with_name(target.name + ".json").read_text())
    assert record["sha256"] == cache.sha256_file(target)


# --- The real Darknet entry, served locally -------------------------------------

def test_yolov3_tiny_entry_end_to_end_from_a_local_server(shared_dir, tmp_path, kdet_home):
    """`yolov3_tiny_coco` as registered (size, builder, converter, cfg), only its URL local."""
    import dataclasses

    from kdet.zoo.darknet import load_darknet_weights
    from tests.zoo.test_darknet import write_random_weights

    weights = tmp_path / "yolov3-tiny.weights"
    write_random_weights(shared_dir / "data" / "darknet" / "yolov3-tiny.cfg", weights)
    real = registry.get_entry("yolov3_tiny_coco")
    assert weights.stat().st_size == real.weights.size  # the published size fits the cfg
    with LocalServer({"/yolov3-tiny.weights": weights.read_bytes()}) as server:
        entry = dataclasses.replace(real, name="tiny_fake_yolo", weights=dataclasses.replace(
            real.weights, url=server.url("/yolov3-tiny.weights"), sha256=None))
        registry.register(entry)
        model = kdet.load("tiny_fake_yolo")
        tuned = kdet.load("tiny_fake_yolo", num_classes=3)
        assert server.hits["/yolov3-tiny.weights"] == 1
    assert list(model.class_names[:2]) == ["person", "bicycle"] and tuned.class_names is None
    reference = build.build(real)
    load_darknet_weights(reference, weights, real)
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (kdet_home / "converted" / "tiny_fake_yolo.weights.h5").is_file()
    # Fine-tuning: every variable but the 3-class output convolutions keeps its value.
    tuned_values = _weights_of(tuned)
    copied = [k for k, v in _weights_of(reference).items()
              if k in tuned_values and tuned_values[k].shape == v.shape]
    assert len(copied) >= len(reference.weights) - 4  # 2 output convs x (kernel, bias)
    for key in copied:
        np.testing.assert_array_equal(tuned_values[key], _weights_of(reference)[key])
