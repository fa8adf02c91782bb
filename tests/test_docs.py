"""Executes every ```python block of docs/*.md and README.md, page by page.

The blocks of one page run in order in one namespace (a page reads like a
session), in a temporary working directory. A line carrying
``# doctest: +SKIP`` is left out (downloads, datasets the reader provides,
full-size training); a block whose lines are all marked is skipped. Also
checks that the zoo table lists every registered model.
"""

import os
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP = "# doctest: +SKIP"


def python_blocks(path: pathlib.Path) -> list[str]:
    """The runnable code of each python block (marked lines removed)."""
    blocks = []
    for code in BLOCK.findall(path.read_text()):
        lines = [line for line in code.splitlines() if SKIP not in line]
        if any(line.strip() and not line.strip().startswith("#") for line in lines):
            blocks.append("\n".join(lines))
    return blocks


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    assert {"index.md", "getting_started.md", "concepts.md", "training.md", "data.md", "api.md",
            "zoo.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python block")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDET_HOME", str(tmp_path / "kdet_home"))
    namespace = {"__name__": "__docs__"}
    for number, code in enumerate(blocks, start=1):
        try:
            exec(compile(code, f"{page.name} block {number}", "exec"), namespace)
        except Exception as error:  # name the page and block, then fail with the original error
            raise AssertionError(f"{page.relative_to(REPO)} python block {number} failed: {error!r}") from error


def test_skip_marker_is_honoured():
    text = "```python\nx = 1\nraise SystemExit  # doctest: +SKIP\n```\n\n```python\nboom()  # doctest: +SKIP\n```\n"
    page = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "kdet_docs_probe.md"
    page.write_text(text)
    try:
        assert python_blocks(page) == ["x = 1"]
    finally:
        page.unlink()


def test_zoo_page_lists_every_model():
    import kdet

    text = (REPO / "docs" / "zoo.md").read_text()
    missing = [name for name in kdet.list_models() if f"`{name}`" not in text]
    assert not missing, f"docs/zoo.md lacks {missing}: add their rows"
