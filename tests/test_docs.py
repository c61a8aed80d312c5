"""Every code block in docs/*.md runs, so the guide cannot rot.

Per page, in a fresh working folder (holding a link to the repository's ``examples/``), the
blocks run in document order: ```python blocks in one shared namespace, ```bash blocks
with ``bash -euo pipefail`` and ``simagents`` on the PATH. A ```text block is shown output
and is not run; any other fence language is an error, so no block is skipped by a typo.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
RUN = {"python", "bash"}
SHOWN = {"text"}


def code_blocks(page: Path) -> list[tuple[str, str, int]]:
    """``(language, code, line number)`` of every fenced block on ``page``."""
    text = page.read_text()
    return [(m["lang"], m["body"], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def test_the_guide_has_its_pages():
    assert {p.name for p in DOCS} >= {"concepts.md", "quickstart.md", "reading-the-report.md", "extending.md"}


def test_code_blocks_are_found():
    """The block parser itself: a page with one block of each kind, in order."""
    page = "# t\n```python\nx = 1\n```\ntext\n```bash\necho hi\n```\n```text\nout\n```\n"
    found = [(m["lang"], m["body"]) for m in FENCE.finditer(page)]
    assert found == [("python", "x = 1\n"), ("bash", "echo hi\n"), ("text", "out\n")]


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_every_block_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
):
    blocks = code_blocks(page)
    assert blocks, f"{page.name} has no code blocks"
    for lang, _, line in blocks:
        assert lang in RUN | SHOWN, (
            f"{page.name}:{line}: fence language {lang!r}; use one of {sorted(RUN | SHOWN)}"
        )
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    for lang, code, line in blocks:
        where = f"{page.name}:{line}"
        if lang == "python":
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{where}: the python block fails: {type(exc).__name__}: {exc}") from exc
        elif lang == "bash":
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                capture_output=True, text=True, env=env, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, f"{where}: the bash block fails:\n{result.stderr[-2000:]}"
