"""`pip install kdet` as a user gets it: a built wheel, no extras, only the required dependencies.

The wheel is built from the repository (build isolation: the backend comes from
pyproject's ``[build-system]``) and installed, non-editable, into a fresh
virtual environment. That environment holds exactly the distributions that
kdet's required dependencies pull in, transitively (read from the wheel's
``Requires-Dist`` and the installed distributions' metadata, markers evaluated
with no extra), linked from this test environment: nothing of an extra such as
keras-cv is there. In it kdet imports, a tiny model predicts, MTCNN detects
offline with its packaged weights, and asking for Mosaic fails with the
message that names the ``mosaic`` extra.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import pytest
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[2]
SITE = pathlib.Path(f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages")


def _requirements(requires: list[str] | None, extras: set[str]) -> list[Requirement]:
    """The requirements that apply on this interpreter with ``extras`` requested (always the base ones)."""
    kept = []
    for line in requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in extras | {""}):
            kept.append(req)
    return kept


def dependency_closure(requires: list[str]) -> list[importlib.metadata.Distribution]:
    """Every installed distribution that ``requires`` needs, transitively, extras of the requirements included."""
    todo = [(req.name, set(req.extras)) for req in _requirements(requires, set())]
    found: dict[str, importlib.metadata.Distribution] = {}
    wanted_extras: dict[str, set[str]] = {}
    while todo:
        name, extras = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found and extras <= wanted_extras[key]:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"kdet needs {name}, which this test environment lacks: reinstall with `make install`")
        found[key] = dist
        wanted_extras[key] = wanted_extras.get(key, set()) | extras
        todo += [(req.name, set(req.extras)) for req in _requirements(dist.requires, wanted_extras[key])]
    return list(found.values())


def _link_distribution(dist: importlib.metadata.Distribution, site: pathlib.Path) -> None:
    """Links the distribution's top-level entries (packages, modules, its .dist-info) into ``site``."""
    for top in {pathlib.PurePosixPath(str(f)).parts[0] for f in dist.files or []}:
        source = pathlib.Path(dist.locate_file(top))
        if top != ".." and source.exists() and not (site / top).exists():
            (site / top).symlink_to(source, target_is_directory=source.is_dir())


@pytest.fixture(scope="module")
def user_env(tmp_path_factory):
    """``(python, site-packages)`` of a fresh venv holding kdet's wheel and its required dependencies only."""
    root = tmp_path_factory.mktemp("pip_install_kdet")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(REPO)],
                   check=True, cwd=root)
    wheel = next((root / "dist").glob("kdet-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = email.parser.Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    site = root / "env" / SITE
    for dist in dependency_closure(requires):
        _link_distribution(dist, site)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, cwd=root)
    return root / "env" / "bin" / "python", site


def run_as_user(user_env, code: str, tmp_path) -> str:
    """Runs ``code`` in the user environment (isolated mode: no repository on sys.path); returns stdout."""
    python, site = user_env
    prologue = (f"import kdet, pathlib\n"
                f"assert pathlib.Path(kdet.__file__).is_relative_to({str(site)!r}), kdet.__file__\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(KDET_HOME=str(tmp_path / "empty_home"), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([str(python), "-I", "-c", prologue + textwrap.dedent(code)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_wheel_without_extras_imports_predicts_and_names_the_mosaic_extra(user_env, tmp_path):
    python, site = user_env
    assert (site / "tensorflow").exists() and (site / "keras").exists()
    assert not list(site.glob("keras_cv*"))  # the extra is not installed
    out = run_as_user(user_env, """
        import importlib.util, importlib.metadata
        import numpy as np
        assert importlib.util.find_spec("keras_cv") is None
        extra = [r for r in importlib.metadata.requires("kdet") if r.startswith("keras-cv")]
        assert extra and all('extra == "mosaic"' in r or 'extra == "test"' in r for r in extra), extra
        from kdet import *  # every public name resolves without the extras
        model = kdet.models.RetinaNet(2, backbone="tiny", image_size=64, score_threshold=0.0, max_detections=4)
        out = model.predict(np.zeros((2, 64, 64, 3), np.uint8), verbose=0)
        assert out["boxes"].shape == (2, 4, 4) and out["num_detections"].tolist() == [4, 4], out
        try:
            kdet.data.Augmenter(image_size=64, mosaic=0.5)
        except kdet.MissingExtraError as error:
            assert isinstance(error, ImportError)
            print(error)
        else:
            raise AssertionError("Mosaic without keras-cv did not fail")
    """, tmp_path)
    assert out.strip().splitlines()[-1] == ('Augmenter(mosaic=0.5) needs keras-cv, which kdet installs only with its '
                                            '\'mosaic\' extra: pip install "kdet[mosaic]"')


def test_mtcnn_loads_offline_from_a_non_editable_install(user_env, tmp_path, shared_dir):
    _, site = user_env
    assert (site / "kdet" / "assets" / "mtcnn" / "pnet.weights.h5").is_file()
    out = run_as_user(user_env, f"""
        out = kdet.load('mtcnn').detect({str(shared_dir / 'data' / 'images' / 'ivan.jpg')!r})
        assert len(out['boxes']) >= 1 and out['landmarks'].shape[1:] == (5, 2)
        print(len(out['boxes']))
    """, tmp_path)
    assert int(out.strip().splitlines()[-1]) >= 1
