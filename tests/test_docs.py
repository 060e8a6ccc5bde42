"""The documentation stays true: every Python block of the README and the guides runs, and the site builds strictly.

Each ```python block of ``README.md`` and ``docs/**/*.md`` is one test (id ``FILE:LLINE``). A file's blocks run in
order in one namespace, in a temporary working directory of their own, as a reader would paste them. A block whose
preceding line is ``<!-- skip: reason -->`` is skipped with that reason (data, a GPU or the network it needs). A block
followed by ``<!-- check: EXPRESSION -->`` must leave the expression true in its namespace: the result its text
promises (``mean_dice(dice) >= 0.9``), so that a snippet printing a wrong number fails instead of passing silently;
every block that computes a Dice has one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
SKIP_MARKER = re.compile(r"^<!--\s*skip:\s*(?P<reason>.+?)\s*-->$")
CHECK_MARKER = re.compile(r"^<!--\s*check:\s*(?P<expression>.+?)\s*-->$")


@dataclasses.dataclass(frozen=True)
class CodeBlock:
    file: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason, when the block is marked to be skipped
    check: str | None = None  # an expression the block must leave true (the line after its closing fence)

    @property
    def id(self) -> str:
        return f"{self.file}:L{self.line}"


def python_blocks(text: str, file: str) -> list[CodeBlock]:
    """The ```python blocks of a Markdown text, with the skip reason of each (from the line before its fence)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python" and not lines[i].startswith(" "):
            start = i
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"{file}:{start + 1}: unterminated ```python block")
            previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = SKIP_MARKER.match(previous)
            following = next((lines[j].strip() for j in range(end + 1, len(lines)) if lines[j].strip()), "")
            check = CHECK_MARKER.match(following)
            blocks.append(CodeBlock(file, start + 1, "\n".join(lines[start + 1:end]) + "\n",
                                    marker["reason"] if marker else None, check["expression"] if check else None))
            i = end
        i += 1
    return blocks


ALL_BLOCKS = [b for path in DOC_FILES for b in python_blocks(path.read_text(), str(path.relative_to(ROOT)))]


@dataclasses.dataclass
class _FileRun:
    """One documentation file's shared state: its namespace, its working directory and how far it has run."""

    cwd: Path
    namespace: dict = dataclasses.field(default_factory=lambda: {"__name__": "__doc_snippet__"})
    done: set = dataclasses.field(default_factory=set)
    failed: str | None = None


_RUNS: dict[str, _FileRun] = {}


def _execute(block: CodeBlock, run: _FileRun) -> None:
    # pad with blank lines so that a traceback names the block's own line in the Markdown file
    code = compile("\n" * block.line + block.code, block.id, "exec")
    try:
        exec(code, run.namespace)
    except BaseException:
        run.failed = block.id
        raise
    finally:
        run.done.add(block.line)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_documented_python_block_runs(block: CodeBlock, tmp_path_factory, monkeypatch):
    if block.skip:
        pytest.skip(block.skip)
    run = _RUNS.get(block.file)
    if run is None:
        run = _RUNS[block.file] = _FileRun(tmp_path_factory.mktemp(re.sub(r"\W", "_", block.file)))
    monkeypatch.chdir(run.cwd)
    # a block builds on the ones above it: run those first when they have not run (e.g. under `-k`)
    for earlier in ALL_BLOCKS:
        if earlier.file == block.file and earlier.line < block.line and not earlier.skip:
            if run.failed is not None:
                pytest.fail(f"an earlier block of {block.file} failed ({run.failed}); this one builds on it")
            if earlier.line not in run.done:
                _execute(earlier, run)
    _execute(block, run)
    _check_promise(block, run.namespace)


def _check_promise(block: CodeBlock, namespace: dict) -> None:
    if block.check:
        value = eval(block.check, namespace)  # our own documentation's expression
        assert value, f"{block.id}: the text promises `{block.check}`, which is false after the block"


def test_blocks_that_compute_a_dice_check_it():
    unchecked = [b.id for b in ALL_BLOCKS if re.search(r"dice\w*\(", b.code) and not b.skip and not b.check]
    assert not unchecked, f"blocks printing a Dice without a <!-- check: ... --> of the promised value: {unchecked}"


def test_a_false_check_fails_the_block():
    block = python_blocks("```python\nscore = 0.10\nprint(score)\n```\n<!-- check: score >= 0.9 -->\n", "x.md")[0]
    assert block.check == "score >= 0.9"
    namespace: dict = {}
    exec(block.code, namespace)
    with pytest.raises(AssertionError, match="promises `score >= 0.9`"):
        _check_promise(block, namespace)


def test_block_collector_finds_blocks_and_skip_reasons():
    text = "\n".join([
        "# Title", "```python", "a = 1", "```", "",
        "<!-- skip: needs a GPU -->", "", "```python", "b = 2", "```",
        "```bash", "echo no", "```", "    ```python", "    indented = 'not collected'", "    ```",
    ])
    blocks = python_blocks(text, "x.md")
    assert [(b.line, b.code, b.skip) for b in blocks] == [(2, "a = 1\n", None), (8, "b = 2\n", "needs a GPU")]
    assert blocks[1].id == "x.md:L8"


def test_readme_and_guides_have_runnable_blocks():
    runnable = {b.file for b in ALL_BLOCKS if not b.skip}
    assert "README.md" in runnable and any(f.startswith("docs/guides/") for f in runnable)


# ---- the site -------------------------------------------------------------------------------------------------------

def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=config.parent)


def test_docs_site_builds_in_strict_mode(tmp_path):
    proc = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "layers" / "index.html").read_text()
    assert 'id="rep3d.layers.RepLKConv3d"' in api and "reparameterize" in api  # generated from the code
    assert (tmp_path / "site" / "guides" / "getting-started" / "index.html").is_file()


def test_strict_docs_build_fails_on_broken_links_and_references(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    for name in ("rep3d", "CHANGELOG.md"):
        (project / name).symlink_to(ROOT / name)
    guide = project / "docs" / "guides" / "getting-started.md"
    guide.write_text(guide.read_text() + "\nSee [a page](no-such-page.md), [a section](train.md#no-such-section)"
                     " and [a class][rep3d.layers.NoSuchLayer].\n")
    proc = _mkdocs_build(project / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    for broken in ("no-such-page.md", "no-such-section", "rep3d.layers.NoSuchLayer"):
        assert broken in proc.stderr, f"strict build did not report {broken}:\n{proc.stderr[-4000:]}"
