"""The `kdet` command: subprocess runs for the user-facing behaviour, in-process runs for the rest."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kdet
from kdet import cli
from kdet.zoo import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE = REPO / "kdet" / "assets" / "images" / "ivan.jpg"


def _kdet_command() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "kdet"
    if script.exists():
        return [str(script)]
    found = shutil.which("kdet")
    return [found] if found else [sys.executable, "-m", "kdet.cli"]


def run_kdet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*_kdet_command(), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def _error_line(stderr: str) -> str:
    """The one line kdet prints (TensorFlow's C++ start-up logging filtered out)."""
    lines = [line for line in stderr.splitlines() if line.startswith("kdet")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- Subprocess: the installed console script --------------------------------

def test_models_lists_the_zoo():
    result = run_kdet("models")
    assert result.returncode == 0, result.stderr
    for name in kdet.list_models():
        assert name in result.stdout
    assert "pretrained" in result.stdout and result.stderr == ""
    rows = json.loads(run_kdet("models", "--json", "--pretrained").stdout)
    assert {r["name"] for r in rows} == set(kdet.zoo.list_models(pretrained=True))
    assert all(r["pretrained"] for r in rows)


def test_unknown_model_is_one_line_exit_2():
    result = run_kdet("detect", str(IMAGE), "--model", "yolov3_darknet_coco")
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert line.startswith("kdet detect: error: Unknown model 'yolov3_darknet_coco'")
    assert "yolov3_darknet53_coco" in line and result.stdout == ""


def test_missing_image_is_one_line_exit_2(tmp_path):
    result = run_kdet("detect", str(tmp_path / "nope.jpg"), "--model", "mtcnn")
    assert result.returncode == 2
    assert "nope.jpg' does not exist" in _error_line(result.stderr)


def test_missing_model_file_is_one_line_exit_2(tmp_path):
    result = run_kdet("eval", str(tmp_path / "model.keras"), "--data", "synthetic:2")
    assert result.returncode == 2
    assert "No model file or preset directory" in _error_line(result.stderr)


def test_usage_errors_exit_2():
    assert run_kdet().returncode == 2
    result = run_kdet("export", "mtcnn", "--format", "onnx", "--out", "x")
    assert result.returncode == 2 and "invalid choice: 'onnx'" in result.stderr


# TensorFlow's C++ logging (absl's "I0000 00:00:... file.cc:N] ..." lines) and its start-up messages.
TF_LOG = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda|cudnn|cpu_feature_guard|rebuild TensorFlow",
                    re.MULTILINE | re.IGNORECASE)


def run_kdet_as_a_user(*args: str) -> subprocess.CompletedProcess:
    """The console script without the test environment's TF_CPP_MIN_LOG_LEVEL: kdet alone must keep TF quiet."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([*_kdet_command(), *args], capture_output=True, text=True, timeout=300, env=env)


def test_models_prints_no_tensorflow_logs():
    result = run_kdet_as_a_user("models")
    assert result.returncode == 0 and "mtcnn" in result.stdout
    assert result.stderr == ""


def test_detect_prints_tensorflow_logs_only_with_verbose(tmp_path):
    from PIL import Image

    from kdet.models import RetinaNet

    # score_threshold=0: the random tiny model's ~0.01 scores still give detections to print and draw.
    RetinaNet(2, backbone="tiny", image_size=64, score_threshold=0.0, max_detections=3).save(tmp_path / "m.keras")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(image)
    args = ("detect", str(image), "--model", str(tmp_path / "m.keras"), "--score", "0")
    quiet = run_kdet_as_a_user(*args, "--out", str(tmp_path / "out"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert len(json.loads(quiet.stdout)["results"][0]["detections"]) == 3
    assert not TF_LOG.search(quiet.stderr), quiet.stderr
    assert quiet.stderr == ""
    verbose = run_kdet_as_a_user("--verbose", *args)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    # The logs exist on this machine: their absence above is kdet's doing.
    assert TF_LOG.search(verbose.stderr), verbose.stderr
    assert json.loads(verbose.stdout)["results"][0]["detections"] == \
        json.loads(quiet.stdout)["results"][0]["detections"]


def test_a_failing_tensorflow_import_shows_its_logs(tmp_path):
    """The start-up logs are hidden, not lost: when TensorFlow fails to load they explain why."""
    fake = tmp_path / "site" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('import os\nos.write(2, b"E0000 fake.cc:1] cannot load libcuda\\n")\n'
                                      'raise ImportError("fake TensorFlow is broken")\n')
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"}
    result = subprocess.run([*_kdet_command(), "detect", str(IMAGE), "--model", "mtcnn"], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "E0000 fake.cc:1] cannot load libcuda" in result.stderr
    assert "ImportError: fake TensorFlow is broken" in result.stderr


# --- In-process ---------------------------------------------------------------

def test_stderr_capture_takes_file_descriptor_2(capfd):
    with cli._stderr_captured() as sink:
        os.write(2, b"from C++\n")  # what TensorFlow's libraries do, below Python's sys.stderr
        sink.seek(0)
        captured = sink.read()
    os.write(2, b"after\n")
    assert captured == b"from C++\n" and capfd.readouterr().err == "after\n"


@pytest.mark.parametrize("argv, verbose", [
    (["detect", "x.jpg", "--model", "m"], False),
    (["--verbose", "detect", "x.jpg", "--model", "m"], True),
    (["detect", "x.jpg", "--model", "m", "-v"], True),
    (["-v", "models"], True),
])
def test_verbose_flag_before_or_after_the_command(argv, verbose):
    assert cli.build_parser().parse_args(argv).verbose is verbose


@pytest.mark.parametrize("command", ["models", "detect", "export", "eval", "train"])
def test_help_for_each_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: kdet {command}" in capsys.readouterr().out


def test_weights_unavailable_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from tests.zoo.helpers import closed_port_url
    from tests.zoo.test_registry import _entry

    monkeypatch.setenv("KDET_HOME", str(tmp_path))
    url = closed_port_url("/tiny.npz")
    registry.register(_entry(url, name="tiny_fake_cli"))
    try:
        assert cli.main(["detect", str(IMAGE), "--model", "tiny_fake_cli"]) == 2
    finally:
        registry.unregister("tiny_fake_cli")
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdet detect: error: Cannot download " + url) and "\n" not in err
    assert str(tmp_path / "downloads") in err


def test_bad_data_spec_is_one_line_exit_2(tmp_path, capsys):
    from tests.helpers import TinyAnchorDetector

    TinyAnchorDetector(image_size=64, width=8).save(tmp_path / "m.keras")
    for spec in ("imagenet", "coco:" + str(tmp_path / "no-such-dir")):
        assert cli.main(["eval", str(tmp_path / "m.keras"), "--data", spec]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kdet eval: error: --data") and err.count("\n") == 1


class FakeDetector:
    """What `kdet detect` needs from a model: detect(), class_names, bounding_box_format."""

    class_names = ["cat", "dog"]

    def __init__(self, bounding_box_format="xyxy"):
        self.bounding_box_format = bounding_box_format

    def detect(self, image, score_threshold=None):
        boxes = np.array([[40, 30, 120, 90], [10, 100, 50, 150]], np.float32)  # xyxy
        if self.bounding_box_format == "xywh":
            boxes[:, 2:] -= boxes[:, :2]
        out = {"boxes": boxes, "scores": np.array([0.9, 0.4], np.float32),
               "labels": np.array([1, 0], np.int32)}
        keep = out["scores"] >= (score_threshold or 0)
        return {k: v[keep] for k, v in out.items()}


@pytest.mark.parametrize("box_format", ["xyxy", "xywh"])
def test_detect_prints_json_and_draws(box_format, tmp_path, monkeypatch, capsys):
    from PIL import Image

    image = tmp_path / "photo.jpg"
    Image.fromarray(np.full((160, 200, 3), 128, np.uint8)).save(image, quality=100)
    out = tmp_path / "out"
    monkeypatch.setattr(cli, "_load_model", lambda name, weights="default", precision="default": FakeDetector(box_format))
    assert cli.main(["detect", str(image), str(image), "--model", "fake", "--out", str(out),
                     "--score", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["score_threshold"] == 0.5 and len(report["results"]) == 2
    assert report["results"][0]["detections"] == [
        {"box_xyxy": [40.0, 30.0, 120.0, 90.0], "score": 0.9, "label": 1, "class_name": "dog"}]
    paths = [pathlib.Path(r["annotated"]) for r in report["results"]]
    assert paths == [out / "photo.png", out / "photo_1.png"]
    with Image.open(paths[0]) as drawn:
        assert drawn.size == (200, 160)
        diff = np.abs(np.asarray(drawn.convert("RGB"), np.int16) - 128).sum(-1)
    assert diff[35:85, 40].mean() > 30 and diff[35:85, 120].mean() > 30  # left and right edges
    assert diff[100:150, 10:50].max() == 0  # the 0.4 box is below --score: not drawn
    assert diff[50:80, 60:100].max() == 0  # inside the box, away from the label


class FakeMaskDetector(FakeDetector):
    """A detector whose detect() returns pasted instance masks, as MaskRCNN's."""

    def detect(self, image, score_threshold=None):
        out = super().detect(image, score_threshold)
        masks = np.zeros((len(out["boxes"]), *np.asarray(image).shape[:2]), np.uint8)
        masks[0, 40:80, 50:110] = 1  # inside the first box
        return {**out, "masks": masks}


def test_detect_draws_instance_masks(tmp_path, monkeypatch, capsys):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.full((160, 200, 3), 128, np.uint8)).save(image)
    monkeypatch.setattr(cli, "_load_model", lambda name, weights="default", precision="default": FakeMaskDetector())
    assert cli.main(["detect", str(image), "--model", "fake", "--out", str(tmp_path / "out"), "--score", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"][0]["detections"][0]["mask_area"] == 40 * 60
    with Image.open(report["results"][0]["annotated"]) as drawn:
        diff = np.abs(np.asarray(drawn.convert("RGB"), np.int16) - 128).sum(-1)
    assert diff[50:75, 60:100].min() > 10  # the mask's translucent colour, inside the box
    assert diff[95:110, 60:100].max() == 0  # inside the box, below the mask: untouched


@pytest.mark.slow
def test_detect_mtcnn_end_to_end(tmp_path):
    """The real console script on a real photo (XLA compiles MTCNN: slow on CPU)."""
    result = run_kdet("detect", str(IMAGE), "--model", "mtcnn", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    faces = json.loads(result.stdout)["results"][0]["detections"]
    assert len(faces) >= 1 and faces[0]["class_name"] == "face" and faces[0]["score"] > 0.9
    assert (tmp_path / "ivan.png").is_file()


def test_eval_matches_evaluate_coco(tmp_path, capsys):
    from tests.helpers import TinyAnchorDetector
    from kdet.data import synthetic
    from kdet.metrics import evaluate_coco

    model = TinyAnchorDetector(image_size=64, width=8)
    model.save(tmp_path / "m.keras")
    assert cli.main(["eval", str(tmp_path / "m.keras"), "--data", "synthetic:4", "--batch-size", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = evaluate_coco(model, synthetic("validation", num_images=4, image_size=(64, 64),
                                              num_classes=3, batch_size=2))
    assert set(report["metrics"]) == set(expected)
    for key, value in expected.items():
        assert report["metrics"][key] == pytest.approx(float(value), abs=1e-5)


def test_train_saves_a_loadable_trained_model(tmp_path, capsys):
    from tests.helpers import TinyAnchorDetector

    model = TinyAnchorDetector(image_size=64, width=8)
    model.save(tmp_path / "m.keras")
    out = tmp_path / "trained.keras"
    assert cli.main(["train", str(tmp_path / "m.keras"), "--data", "synthetic:2", "--epochs", "1",
                     "--batch-size", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    trained = kdet.load(str(out))
    changed = [not np.array_equal(a, b) for a, b in zip(trained.get_weights(), model.get_weights())]
    assert any(changed)


def test_export_saved_model(tmp_path, capsys):
    import tensorflow as tf
    from tests.helpers import TinyAnchorDetector

    model = TinyAnchorDetector(image_size=64, width=8)
    model.save(tmp_path / "m.keras")
    out = tmp_path / "exported"
    assert cli.main(["export", str(tmp_path / "m.keras"), "--format", "tf_saved_model",
                     "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert tf.saved_model.contains_saved_model(str(out))
    assert cli.main(["export", "mtcnn", "--format", "tf_saved_model", "--out", str(out),
                     "--quantization", "int8"]) == 2
    assert "applies to --format litert only" in capsys.readouterr().err


def test_precision_flags(tmp_path):
    """detect / eval take kdet.load's precision unless --precision; export defaults to float32 (a SavedModel
    runs anywhere); train keeps a file's saved precision and builds zoo models in the global policy."""
    from tests.helpers import TinyAnchorDetector

    parser = cli.build_parser()
    assert parser.parse_args(["detect", "x.jpg", "--model", "m"]).precision == "default"
    assert parser.parse_args(["eval", "m", "--data", "synthetic:2"]).precision == "default"
    assert parser.parse_args(["export", "m", "--format", "litert", "--out", "o"]).precision == "float32"
    assert parser.parse_args(["detect", "x.jpg", "--model", "m", "--precision", "bfloat16"]).precision == "bfloat16"
    path = tmp_path / "m.keras"
    TinyAnchorDetector(image_size=64, width=8, precision="bfloat16").save(path)
    assert cli._load_model(str(path)).config.precision == "bfloat16"  # as saved
    assert cli._load_model(str(path), precision=None).config.precision == "bfloat16"  # train: as saved
    assert cli._load_model(str(path), precision="float32").config.precision == "float32"  # export's default
    zoo = cli._load_model("yolov3_darknet53", weights=None, precision=None, num_classes=3, backbone="tiny",
                          image_size=64)
    assert zoo.config.precision == "float32"
