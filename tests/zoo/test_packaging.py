"""kdet.load("mtcnn") works offline from a non-editable install (weights ship in the wheel)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_mtcnn_loads_offline_from_a_non_editable_install(tmp_path, shared_dir):
    target = tmp_path / "site"
    # Build isolation: the build backend comes from pyproject's [build-system], not the venv.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(REPO)],
                   check=True, cwd=tmp_path)
    assert (target / "kdet" / "assets" / "mtcnn" / "pnet.weights.h5").is_file()
    code = (
        "import kdet, pathlib, sys\n"
        f"assert pathlib.Path(kdet.__file__).is_relative_to({str(target)!r}), kdet.__file__\n"
        f"out = kdet.load('mtcnn').detect({str(shared_dir / 'data' / 'images' / 'ivan.jpg')!r})\n"
        "assert len(out['boxes']) >= 1 and out['landmarks'].shape[1:] == (5, 2)\n"
        "print(len(out['boxes']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target), KDET_HOME=str(tmp_path / "empty_home"),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= 1
