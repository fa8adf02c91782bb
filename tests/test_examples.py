"""Every example script runs end to end in its --fast mode (what CI runs), offline.

Each runs in a subprocess from a temporary folder (the scripts write pictures,
models and run folders into the working directory), with network access
irrelevant: --fast never downloads.
"""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (REPO / "examples").glob("*.py") if not p.name.startswith("_"))

# What each script must print (a sign that it did its job, not only that it exited 0),
# and the files it must leave behind.
EXPECTED = {
    "detect_faces.py": ("1 face(s)", ["faces.png"]),
    "detect_objects.py": ("detection(s) above", ["objects.png"]),
    "evaluate.py": ("VOC mAP@0.5: 11-point", []),
    "export_tflite.py": ("LiteRT detections per image", ["retinanet_tiny.tflite"]),
    "finetune_retinanet.py": ("fine-tuned on", []),
    "segment_instances.py": ("mask AP50", ["masks.png"]),
    "train.py": ("final model: runs/kdet/final.keras", ["runs/kdet/final.keras", "runs/kdet/history.csv"]),
    "train_from_scratch.py": ("held-out AP50", []),
    "visualize.py": ("wrote ./gallery.png", ["gallery.png", "pr_curves.png"]),
}


def test_every_example_is_covered():
    assert sorted(EXPECTED) == EXAMPLES


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs_in_fast_mode(script, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KDET_HOME=str(tmp_path / "kdet_home"), MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, str(REPO / "examples" / script), "--fast"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text, files = EXPECTED[script]
    assert text in run.stdout, run.stdout[-3000:]
    for name in files:
        assert (tmp_path / name).is_file(), f"{script} did not write {name}"
