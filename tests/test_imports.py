"""The import graph of ``kdet/`` has no cycle, and ``kdet.load`` goes in one direction.

The graph is read from the source (``tests/import_graph.py``: every import
statement, inside functions too, and ``importlib.import_module("literal")``).
The walker itself is checked first on a small package with a known graph.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.import_graph import REPO, cycles, import_graph, reachable

# The zoo's loading modules: the registry and the entries must not reach any of them.
LOADING = {"kdet.zoo.loader", "kdet.zoo.build", "kdet.zoo.converted", "kdet.zoo.preset", "kdet.zoo.transfer",
           "kdet.zoo.darknet", "kdet.zoo.torchvision", "kdet.zoo.automl", "kdet.zoo.pth", "kdet.zoo.converters"}


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO / "kdet")


def _write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_walker_sees_every_kind_of_import(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\n",
        "pkg/a.py": "import os\n\ndef f():\n    from . import b\n    return b\n",
        "pkg/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                     "class C:\n    def m(self):\n        import importlib\n"
                     "        return importlib.import_module('pkg.sub.c')\n"),
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from ..b import C\nfrom pkg.sub import missing_name\n",
    })
    graph = import_graph(tmp_path / "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"},
                     "pkg.sub": set(), "pkg.sub.c": {"pkg.b", "pkg.sub"}}
    assert cycles(graph) == [["pkg.b", "pkg.sub.c"]]
    assert reachable(graph, "pkg.a") == {"pkg.b", "pkg.sub", "pkg.sub.c"}


def test_walker_covers_the_whole_package(graph):
    files = {p for p in (REPO / "kdet").rglob("*.py")}
    assert len(graph) == len(files) > 100
    assert "kdet.zoo.loader" in graph["kdet"]  # the lazy import inside kdet.load() is seen


def test_no_import_cycle_in_kdet(graph):
    assert cycles(graph) == []


def test_load_goes_in_one_direction(graph):
    # kdet.load -> loader -> registry / build / converted / preset / transfer, never back.
    for module in ("kdet.zoo.registry", "kdet.zoo.entries", "kdet.zoo.locate", "kdet.zoo.download",
                   "kdet.zoo.cache"):
        assert not reachable(graph, module) & LOADING, module
    assert {"kdet.zoo.registry", "kdet.zoo.build", "kdet.zoo.converted", "kdet.zoo.preset",
            "kdet.zoo.transfer"} <= graph["kdet.zoo.loader"]
    for module in LOADING | {"kdet.zoo.registry", "kdet.zoo.entries"}:
        assert "kdet.zoo.loader" not in reachable(graph, module), module
        assert "kdet" not in reachable(graph, module), module  # the package's load() is the loader's caller


def test_star_import_works():
    code = "from kdet import *\nimport kdet\nassert set(kdet.__all__) <= set(dir()), set(kdet.__all__) - set(dir())\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
