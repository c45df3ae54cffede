"""The docs (issue 12 §5, issue 16 "Numbers in the docs are generated"): README.md, docs/*.md and
app/README.md link only to files inside the repo that exist, the README stays short, and every
```python block whose first line is ``# doctest: run`` runs and prints exactly what the comment
beside each ``print`` says, so a documented number cannot drift from the code that produces it."""

from __future__ import annotations

import linecache
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "app" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")
BLOCK = re.compile(r"^```python\n# doctest: run\n(.*?)^```", re.S | re.M)
PRINT = re.compile(r"^(\s*)print\((.*)\)\s+# (.+?)\s*$")
README_MAX_LINES = 160


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def links(page: Path) -> list[str]:
    """Relative link targets of a markdown page, without their #anchors."""
    targets = (m.group(1) for m in LINK.finditer(page.read_text()))
    return [t.split("#")[0] for t in targets if not t.startswith(EXTERNAL) and not t.startswith("#")]


def test_pages_exist() -> None:
    assert (ROOT / "docs").is_dir() and len(PAGES) > 3, "README.md, app/README.md and docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_nothing_points_outside_the_repo(page: Path) -> None:
    assert "../shared" not in page.read_text(), f"{rel(page)} points at ../shared; use docs/ instead"
    for target in links(page):
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{rel(page)}: link {target!r} leaves the repo"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page: Path) -> None:
    missing = [t for t in links(page) if not (page.parent / t).exists()]
    assert not missing, f"{rel(page)}: links to missing files {missing}"


def test_readme_is_short() -> None:
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the reference belongs in docs/"


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2:6] == ["```bash", lines[3], lines[4], "```"] and lines[3].startswith("make app")
    assert lines[4].startswith("make test")


def doctest_blocks() -> list[tuple[str, str]]:
    return [(f"{rel(page)}:{i}", m.group(1)) for page in PAGES
            for i, m in enumerate(BLOCK.finditer(page.read_text()), 1)]


def instrument(code: str, where: str) -> str:
    """Replace every ``print(args)  # expected`` line with a check of the printed text; a print
    without an expected value is an error (a documented block states what it prints)."""
    out = []
    for n, line in enumerate(code.splitlines(), 1):
        m = PRINT.match(line)
        if m:
            indent, args, expected = m.groups()
            out.append(f"{indent}_check({args}, expected={expected!r}, where={f'{where} line {n}'!r})")
        else:
            assert not line.lstrip().startswith("print("), f"{where} line {n}: print without '# expected'"
            out.append(line)
    return "\n".join(out)


def _check(*values, expected: str, where: str) -> None:
    printed = " ".join(str(v) for v in values)
    assert printed == expected, f"{where}: prints {printed!r}, the docs say {expected!r}"


def test_readme_has_a_runnable_tour() -> None:
    assert any(where.startswith("README.md:") for where, _ in doctest_blocks())


@pytest.mark.parametrize(("where", "code"), doctest_blocks(), ids=[w for w, _ in doctest_blocks()])
def test_doc_block_prints_what_the_docs_say(where: str, code: str) -> None:
    source = instrument(code, where)
    # nnsight re-reads the body of a `with trace(...)` block from its source: register the block
    linecache.cache[where] = (len(source), None, source.splitlines(keepends=True), where)
    exec(compile(source, where, "exec"), {"_check": _check, "__name__": "__docs__"})
