"""The tutorial site builds strictly, and what it shows comes from the code.

`mkdocs build --strict` fails on any broken link, anchor, nav entry or missing
snippet. The hooks that generate parts of the pages are tested here on
throw-away step folders, so that we see them follow an edit.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.server import ROOT
from harness.steps import all_steps, step_of
from tools.docs_commands import all_pages, extract, sources

DOCS = ROOT / "docs"


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


what_changed = load_hook("what_changed")
generated = load_hook("generated")


# How the site is built, here and by .github/workflows/docs.yml, which publishes it.
BUILD = "python -m mkdocs build --strict --site-dir"
WORKFLOW = ROOT / ".github" / "workflows" / "docs.yml"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module with --strict."""
    out = tmp_path_factory.mktemp("site")
    python, *build = BUILD.split()
    assert python == "python"
    result = subprocess.run(
        [sys.executable, *build, str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_the_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    for step in all_steps():
        page = site / step.page_uri.removesuffix(".md") / "index.html"
        assert page.is_file(), step.name


def test_the_published_site_is_built_as_the_suite_builds_it():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = [step.get("run", "") for step in steps]
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11", "the site is built on another Python"
    assert "python -m pip install -r requirements.txt" in runs, "the workflow installs no requirements.txt"
    built = [run for run in runs if run.startswith(BUILD)]
    assert built == [f"{BUILD} site"], f"the workflow builds the site otherwise than with {BUILD!r}: {runs}"
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "site", "the workflow publishes another folder than the one it built"
    assert "actions/deploy-pages" in uses
    # YAML reads the key `on` as True.
    assert workflow[True]["push"]["branches"] == ["main"], "the site is not published on pushes to main"


def test_step_pages_show_the_real_files(site):
    for step in all_steps():
        page = (site / step.page_uri.removesuffix(".md") / "index.html").read_text()
        text = html.unescape(re.sub(r"<[^>]+>", "", page))
        for path in step.path.glob("*.py"):
            # The file's first and last lines, as the file has them today.
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            assert lines[0] in text and lines[-1] in text, path


def test_every_step_page_has_its_generated_sections():
    for step in all_steps():
        page = step.page
        if not page.is_file():
            continue  # the hook generates a page for it; see test_a_step_without_a_page_gets_one
        text = page.read_text()
        number = step.code
        markers = [m for m in what_changed.WHAT_CHANGED.finditer(text) if m.group(1) == number]
        assert markers, f"{page}: no <!-- what-changed {number} --> marker"
        assert f"<!-- step-code {number} -->" in text, page
        if step.previous is None or any(not m.group(2) for m in markers):
            continue
        # A page taught in parts names its files part by part: together they show every change.
        shown = {name for m in markers for name in m.group(2).split()}
        left_out = set(what_changed.changed_files(step.previous.path, step.path)) - shown
        assert not left_out, f"{page}: no part shows what changed in {sorted(left_out)}"


def test_a_step_without_a_page_gets_one(tmp_path):
    folder = tmp_path / "07_new_step"
    folder.mkdir()
    text = what_changed.missing_page(step_of(folder))
    assert text.startswith("# Step 07: New step")
    assert "<!-- what-changed 07 -->" in text and "<!-- step-code 07 -->" in text


# --- what changed -----------------------------------------------------------------


@pytest.fixture
def two_steps(tmp_path):
    """Copies of steps 01 and 02, to edit."""
    old, new = all_steps()[:2]
    copies = tmp_path / "steps"
    shutil.copytree(old.path, copies / old.name)
    shutil.copytree(new.path, copies / new.name)
    return copies / old.name, copies / new.name


def test_what_changed_follows_an_edit(two_steps):
    old, new = two_steps
    before = what_changed.what_changed(old, new)
    line = "# a line that only this test wrote"
    path = new / "main.py"
    path.write_text(path.read_text() + line + "\n")
    after = what_changed.what_changed(old, new)
    assert line not in before
    assert f"+{line}" in after
    assert "```diff" in after or "````diff" in after


def test_what_changed_lists_added_removed_and_binary_files(two_steps):
    old, new = two_steps
    (new / "extra.py").write_text("ANSWER = 42\n")
    (new / "chat_app.py").unlink()
    (new / "static").mkdir()
    (new / "static" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0binary")
    (new / "static" / "app.js").write_text("console.log('hi');\n")
    (new / "__pycache__").mkdir(exist_ok=True)
    (new / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0compiled")
    text = what_changed.what_changed(old, new)
    assert "| `extra.py` | added (1 lines) |" in text
    assert "+ANSWER = 42" in text
    assert re.search(r"\| `chat_app.py` \| removed \(\d+ lines\) \|", text)
    assert "| `static/logo.png` | added (binary file, not shown) |" in text
    assert "+console.log('hi');" in text
    assert "__pycache__" not in text and "README.md" not in text


def test_what_changed_can_show_chosen_files_only(two_steps):
    old, new = two_steps
    (new / "extra.py").write_text("ANSWER = 42\n")
    text = what_changed.what_changed(old, new, ["extra.py"])
    assert "| `extra.py` | added (1 lines) |" in text and "+ANSWER = 42" in text
    assert "main.py" not in text, "a part that names extra.py shows main.py's diff too"
    everything = what_changed.what_changed(old, new)
    assert "main.py" in everything and "extra.py" in everything


def test_a_chosen_file_that_did_not_change_fails_the_build(two_steps):
    old, new = two_steps
    (new / "extra.py").write_text("ANSWER = 42\n")
    (old / "extra.py").write_text("ANSWER = 42\n")
    with pytest.raises(what_changed.PluginError, match="extra.py did not change"):
        what_changed.what_changed(old, new, ["extra.py"])


def test_a_marker_names_the_files_of_its_part():
    page = ("<!-- what-changed 03 -->\n<!-- what-changed 03 capacity.py -->\n"
            "<!-- what-changed 05 static/app.js main.py -->\n")
    markers = what_changed.WHAT_CHANGED.findall(page)
    assert [(number, names.split()) for number, names in markers] == [
        ("03", []), ("03", ["capacity.py"]), ("05", ["static/app.js", "main.py"])]


def test_what_changed_of_the_first_step_lists_its_files():
    first = all_steps()[0]
    text = what_changed.what_changed(None, first.path)
    assert "first step" in text and "`main.py`" in text


def test_step_code_includes_every_text_file(two_steps, tmp_path):
    _, new = two_steps
    (new / "static").mkdir()
    (new / "static" / "index.html").write_text("<p>hi</p>\n")
    (new / "static" / "logo.png").write_bytes(b"\x89PNG\0")
    text = what_changed.step_code(new, root=tmp_path)
    for name in ("main.py", "chat_app.py", "gunicorn_conf.py", "static/index.html"):
        assert f'--8<-- "steps/{new.name}/{name}"' in text, name
    assert "logo.png" not in text and "README.md" not in text


# --- the steps' READMEs, as GitHub shows them -------------------------------------


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_a_step_readme_links_every_file_of_its_step_and_the_built_site():
    # GitHub shows a page's markers, not the diffs and code the site fills in:
    # a README names its step's files itself, and sends the reader to the site.
    for step in all_steps():
        text = (step.path / "README.md").read_text()
        links = LINK.findall(text)
        broken = [target for target in links if "://" not in target and not (step.path / target).exists()]
        assert not broken, f"{step}/README.md links to files that do not exist: {broken}"
        missing = sorted(set(what_changed.step_files(step.path)) - set(links))
        assert not missing, f"{step}/README.md does not link to {missing}"
        assert "`make docs`" in text and "GitHub Pages" in text, f"{step}/README.md: no word of the site"


def test_a_readme_row_that_says_unchanged_is_true():
    for step in all_steps():
        for row in (step.path / "README.md").read_text().splitlines():
            if match := re.search(r"unchanged since step (\d\d)", row):
                earlier = next(s for s in all_steps() if s.code == match.group(1))
                for name in LINK.findall(row):
                    assert (step.path / name).read_bytes() == (earlier.path / name).read_bytes(), (
                        f"{step}/README.md says {name} is unchanged since {earlier}, and it changed")


# --- settings, screenshots, benchmark, notebooks ------------------------------------


def test_every_gunicorn_setting_of_the_steps_is_documented():
    page = (DOCS / generated.SETTINGS_PAGE).read_text()
    assert "<!-- settings-table -->" in page
    assert generated.settings_problems(page, generated.step_settings()) == []


def test_an_undocumented_setting_is_reported(tmp_path):
    folder = tmp_path / "01_x"
    folder.mkdir()
    (folder / "gunicorn_conf.py").write_text('import os\nbind = "127.0.0.1:8000"\nkeepalive = 5\n'
                                             'dirty_workers = int(os.environ.get("DIRTY_WORKERS", "2"))\n')
    settings = generated.step_settings(tmp_path)
    assert settings == {"01_x": {"bind": "`'127.0.0.1:8000'`", "keepalive": "`5`",
                                 "dirty_workers": "`2` (env `DIRTY_WORKERS`)"}}
    page = "### `bind` { #bind }\n\n### `dirty_workers` { #dirty_workers }\n\n### `backlog` { #backlog }\n"
    problems = generated.settings_problems(page, settings)
    assert any("`keepalive`" in p and "no '### `keepalive`" in p for p in problems), problems
    assert any("`backlog`" in p and "no step" in p for p in problems), problems
    assert len(problems) == 2


def test_the_settings_table_reads_the_files(site):
    html = (site / "concepts" / "configuration" / "index.html").read_text()
    for settings in generated.step_settings().values():
        for name in settings:
            assert f'href="#{name}"' in html, name


def test_the_screenshot_is_shown_once_it_exists(tmp_path):
    missing = generated.screenshot("index.md", "chat-ui.png", "The chat", folder=tmp_path)
    assert "make screenshots" in missing and "![" not in missing
    (tmp_path / "chat-ui.png").write_bytes(b"\x89PNG")
    assert generated.screenshot("index.md", "chat-ui.png", "The chat", folder=tmp_path) == \
        "![The chat](assets/generated/chat-ui.png)"
    assert generated.screenshot("steps/05-x.md", "chat-ui.png", "The chat", folder=tmp_path) == \
        "![The chat](../assets/generated/chat-ui.png)"


def test_the_benchmark_table_is_included_once_it_exists(tmp_path):
    table = tmp_path / "docs" / "generated" / "bench" / "table.md"
    assert "No measurements yet" in generated.bench_table(table, root=tmp_path)
    table.parent.mkdir(parents=True)
    table.write_text("| a |\n|---|\n| 1 |\n")
    assert generated.bench_table(table, root=tmp_path) == '--8<-- "docs/generated/bench/table.md"\n'
    (table.parent / "burst.png").write_bytes(b"\x89PNG")
    with_chart = generated.bench_table(table, root=tmp_path)
    assert with_chart.endswith("](../generated/bench/burst.png)\n") and "ttft_by_workers" not in with_chart


def test_the_loop_times_are_included_once_they_exist(tmp_path):
    times = tmp_path / "docs" / "generated" / "loop" / "times.md"
    missing = generated.loop_times(times, root=tmp_path)
    assert "make loop-times" in missing and "--8<--" not in missing
    times.parent.mkdir(parents=True)
    times.write_text("| step | check | test |\n|---|---|---|\n| 01 | 20 s | 60 s |\n")
    assert generated.loop_times(times, root=tmp_path) == '--8<-- "docs/generated/loop/times.md"\n'


def test_the_instructors_timing_section_shows_the_loop_times():
    text = (DOCS / "instructor.md").read_text()
    section = text[text.index("## Timing and what to demo"):]
    section = section[:section.index("\n## ", 1)]
    assert "<!-- loop-times -->" in section, "the timing section leaves out how long the checks take"


def test_the_notebooks_page_works_with_and_without_notebooks(tmp_path, monkeypatch):
    monkeypatch.setattr(generated, "NOTEBOOKS", tmp_path / "notebooks")
    assert "No notebooks yet" in generated.notebook_list("going-further/notebooks.md")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_x.ipynb").write_text(
        '{"cells": [{"cell_type": "markdown", "source": ["# Step 01: hello\\n"]}]}')
    listed = generated.notebook_list("going-further/notebooks.md")
    assert listed == "- [Step 01: hello](../notebooks/01_x.ipynb)\n"


def test_the_notebooks_are_pages_of_the_site(site):
    for notebook in generated.notebooks():
        assert (site / "notebooks" / notebook.stem / "index.html").is_file(), notebook.name


# --- what the pages may contain ----------------------------------------------------


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)|<img[^>]+src=\"([^\"]+)\"")


def test_pictures_are_generated_screenshots_only():
    for page in DOCS.rglob("*.md"):
        for match in IMAGE.finditer(page.read_text()):
            target = match.group(1) or match.group(2)
            assert "generated/" in target, f"{page}: {target} is not a generated picture"
    kinds = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
    images = [p for p in DOCS.rglob("*") if p.suffix.lower() in kinds]
    # Screenshots (make screenshots) and charts (make bench) only: nothing drawn by hand.
    made = (DOCS / "assets" / "generated", DOCS / "generated")
    assert all(any(folder in p.parents for folder in made) for p in images), images


FENCED = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def _windows(lines: list[str], size: int = 3) -> set[tuple[str, ...]]:
    kept = [line.strip() for line in lines if line.strip()]
    return {tuple(kept[i:i + size]) for i in range(len(kept) - size + 1)}


def test_no_step_code_is_pasted_into_a_page():
    # Code from a step is included from the file (snippets); a pasted copy would drift.
    step_windows = set()
    for path in ROOT.glob("steps/*/*"):
        if path.suffix in {".py", ".js", ".html", ".css"}:
            step_windows |= _windows(path.read_text().splitlines())
    for page in DOCS.rglob("*.md"):
        for block in FENCED.finditer(page.read_text()):
            if block["info"].strip().startswith(("console", "mermaid")) or "--8<--" in block["body"]:
                continue
            pasted = _windows(block["body"].splitlines()) & step_windows
            assert not pasted, f"{page}: a block repeats a step's code; include the file instead: {pasted}"


def test_console_blocks_hold_only_commands_and_generated_outputs():
    problems = [problem for page in all_pages() for problem in page.problems]
    assert problems == []
    assert sum(len(page.commands) for page in all_pages()) > 40


def test_a_typed_output_breaks_the_convention(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        '---\nserver_step: "03"\n---\n\n```console\n$ curl -sS --fail --max-time 5 http://127.0.0.1:8000/health\n'
        '{"status":"ok"}\n```\n\n```console\n$ curl -s http://127.0.0.1:8000/health\n```\n')
    found = extract(page, root=tmp_path)
    assert [c.text.split()[-1] for c in found.commands] == ["http://127.0.0.1:8000/health"] * 2
    assert any("holds only `$ command` lines" in p for p in found.problems), found.problems
    assert any("needs -sS and --max-time" in p for p in found.problems), found.problems


INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LOOKS_LIKE_A_COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:make|curl|cd|\.\./\.\./\.venv/bin/gunicorn) \S")


# Mentioned, never run by the suite, and why.
NOT_RUN = {
    "make notebooks": "it opens Jupyter Lab for a person; tests/repo/test_notebooks.py runs the notebooks",
    "make docs-outputs": "it rewrites the outputs this suite checks, with the runners the suite uses",
    "make screenshots": "it rewrites the committed pictures of the page",
    "make bench": "it runs for minutes and rewrites the measurements the docs show; "
    "tests/repo/test_bench.py runs a small bench end to end",
    "make run DIR=workspace": "tests/repo/test_run.py serves a copy of every step that way, then stops it",
    "make loop-times": "it runs every step's make check and make test for a quarter of an hour; "
    "tests/repo/test_learner_loop.py runs make check itself",
}


def test_commands_written_in_the_text_are_run_somewhere():
    # A command mentioned in a sentence must also stand in a console block,
    # which the suite runs; "make run STEP=NN" style placeholders are exempt.
    run = {command.text for page in all_pages() for command in page.commands} | set(NOT_RUN)
    for path in sources():
        text = FENCED.sub("", path.read_text())
        for code in INLINE_CODE.findall(text):
            if LOOKS_LIKE_A_COMMAND.match(code) and "NN" not in code and code not in run:
                pytest.fail(f"{path.relative_to(ROOT)}: `{code}` is not run by any console block")


CALL = re.compile(r"^(?:[\w]+\.)*(\w+)\(.*\)$")


def test_functions_a_step_page_names_are_in_its_code():
    # Prose drifts too: a call the page names, like `dirty_client()` or
    # `place.turn(...)`, must still be in the step's files.
    for step in all_steps():
        page = step.page
        if not page.is_file():
            continue
        code = "\n".join(p.read_text() for p in step.path.rglob("*") if p.suffix in {".py", ".js", ".html"})
        for span in INLINE_CODE.findall(FENCED.sub("", page.read_text())):
            if match := CALL.match(span):
                where = page.relative_to(ROOT)
                assert f"{match.group(1)}(" in code, f"{where}: `{span}` is not in {step.name}"
