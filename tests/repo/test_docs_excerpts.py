"""Excerpts that a page includes from a step by line numbers still fall on whole definitions.

`--8<-- "steps/NN_name/file.py:START:END"` includes those lines only, and an
edit above them would shift the excerpt without a word from the build: each
excerpt must still begin where a top-level statement (or its decorator)
begins and end where one ends.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXCERPT = re.compile(r'--8<-- "(steps/[^":]+\.py):(\d+):(\d+)"')


def excerpts() -> list[tuple[str, str, int, int]]:
    found = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for match in EXCERPT.finditer(page.read_text()):
            found.append((str(page.relative_to(ROOT)), match[1], int(match[2]), int(match[3])))
    return found


def test_the_pages_have_excerpts_to_check():
    assert excerpts(), "no page includes lines of a step file: this test checks nothing"


def first_line(node: ast.stmt) -> int:
    """Where a statement begins: at its first decorator, if it has any."""
    return min([node.lineno, *(decorator.lineno for decorator in getattr(node, "decorator_list", []))])


@pytest.mark.parametrize(("page", "path", "start", "end"), excerpts(), ids=lambda value: str(value))
def test_an_excerpt_is_whole_statements(page, path, start, end):
    tree = ast.parse((ROOT / path).read_text())
    starts = {first_line(node) for node in tree.body}
    ends = {node.end_lineno for node in tree.body}
    excerpt = f"{page}: the excerpt {path}:{start}:{end}"
    assert start in starts, f"{excerpt} no longer begins where a definition begins"
    assert end in ends, f"{excerpt} no longer ends where a definition ends"
